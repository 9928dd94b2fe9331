"""The model manager: TorchServe's register/scale/unregister rules, the one layer that uses both
what is served (daemon/models/) and the worker processes (daemon/workers/)."""
