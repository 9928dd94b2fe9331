"""The daemon's Prometheus metrics, served on the metrics port.

``series``: every series the daemon exports (`Metrics`, with the one-line updates its components
make); ``handlers``: the series handlers record; ``counters``: TorchServe's counter rendering,
which both use; ``tally``: the hot path's histogram counts. The rest of the daemon imports
`Metrics` from here.
"""
from daemon.metrics.series import CONTENT_TYPE, WORKER_STATES, Metrics

__all__ = ["CONTENT_TYPE", "WORKER_STATES", "Metrics"]
