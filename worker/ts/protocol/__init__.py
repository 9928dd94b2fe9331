"""``ts.protocol``: the import path TorchServe's older handlers stream from (deprecated there,
still working in 0.12)."""
