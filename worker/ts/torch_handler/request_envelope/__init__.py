"""Request envelopes (``service_envelope``): reshape requests for the handler and answers back.

One module per envelope name TorchServe knows: ``body``, ``json``, ``kserve``, ``kservev2``.
The worker wraps the handler's entry point in the one the daemon's settings name.
"""
