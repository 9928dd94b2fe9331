"""TorchServe's system metrics, published: the host's (daemon/metrics/host.py) and each GPU's
(the GPU placement's inventory).

They are read when /metrics is scraped, and, with a metric log (metrics_mode log or legacy),
every ``metric_time_interval`` seconds as TorchServe writes them to ts_metrics.log.
``disable_system_metrics`` turns both off; torchd's own per-worker GPU memory stays.
"""
from __future__ import annotations

import asyncio
from typing import Any

from daemon.metrics.host import read_host_usage
from daemon.metrics.series import Metrics


class SystemMetrics:
    def __init__(self, metrics: Metrics, placement: Any, interval: float) -> None:
        self.metrics = metrics
        self.placement = placement
        self.interval = interval

    @property
    def enabled(self) -> bool:
        return self.metrics.options.system   # not disable_system_metrics

    def publish(self) -> None:
        if self.enabled:
            self.metrics.set_host_usage(read_host_usage())
        self.placement.publish(self.metrics, devices=self.enabled)

    @property
    def logged(self) -> bool:
        """Whether the metric log gets lines on a timer (TorchServe's collector)."""
        return self.enabled and self.metrics.options.log is not None and self.interval > 0

    async def log_every_interval(self) -> None:
        """At once, then every interval: TorchServe's collector runs at a fixed rate from its
        start, so ts_metrics.log has the host's lines as soon as the server serves."""
        while True:
            self.publish()
            await asyncio.sleep(self.interval)
