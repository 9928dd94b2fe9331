"""TorchServe-compatible import surface for handlers (``import ts...`` inside a worker).

Workers alias ``ts.*`` to ``worker.ts.*`` (see worker/ts_alias.py) when no real TorchServe is
installed, so archives written for TorchServe run unchanged.
"""
