"""TorchServe's metrics log (``metrics_mode`` log or legacy): one line per metric update, the
frontend's in ``ts_metrics.log``, the handlers' in ``model_metrics.log``, in
``$METRICS_LOCATION`` (else the log directory), in the line format metric agents parse:

    2026-12-06T10:00:00,123 - Requests2XX.Count:1.0|#Level:Host|#hostname:web-1,timestamp:1796...
    2026-12-06T10:00:00,125 - HandlerTime.ms:0.42|#ModelName:mlp,Level:Model|#hostname:web-1,\
requestID:4f0c...,timestamp:1796...

Lines are written as the updates happen (line-buffered files), each file set aside past
``log_file_max_size``; /metrics is served besides.
"""
from __future__ import annotations

import datetime
import functools
import math
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path

from daemon.logfiles import RotatingLines

FRONTEND_FILE = "ts_metrics.log"
MODEL_FILE = "model_metrics.log"


def java_double(value: float) -> str:
    """``value`` as Java's Double.toString writes it (the numbers TorchServe's lines hold):
    plain between 10^-3 and 10^7, scientific (``1.0E7``) outside, shortest digits both ways."""
    value = float(value)
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        return repr(value)   # Python's repr is the shortest round-trip form, Java's too here
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    shown = "".join(map(str, digits))
    power = len(digits) + exponent - 1
    return f"{'-' if sign else ''}{shown[0]}.{shown[1:] or '0'}E{power}"


@functools.lru_cache(maxsize=4)
def _second_stamp(second: int) -> str:
    return datetime.datetime.fromtimestamp(second).strftime("%Y-%m-%dT%H:%M:%S,")


def log_paths(directory: Path) -> tuple[Path, Path]:
    """The two metrics log files in ``directory``: the frontend's, the handlers'."""
    return directory / FRONTEND_FILE, directory / MODEL_FILE


def _stamp(now: float) -> str:
    """Local time to the millisecond, as log4j2's ISO8601. The second's part is made once a
    second: a busy daemon writes several lines per request, and strftime was a third of
    each line's cost."""
    second = math.floor(now)
    micros = round((now - second) * 1_000_000)   # to the microsecond first, as datetime does
    if micros == 1_000_000:
        second, micros = second + 1, 0
    return f"{_second_stamp(second)}{micros // 1000:03d}"


class MetricsLog:
    """The two metrics log files of one daemon; ``clock`` gives Unix time (tests inject one)."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time,
                 max_bytes: int = 0) -> None:
        """``max_bytes``: each file is set aside past it (daemon/logfiles.py; 0: never)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        frontend, model = log_paths(directory)
        self._frontend = RotatingLines(frontend, max_bytes)
        self._model = RotatingLines(model, max_bytes)

    def frontend(self, name: str, unit: str, dimensions: Sequence[tuple[str, str]],
                 hostname: str, value: float) -> None:
        now = self.clock()
        self._frontend.write(f"{_stamp(now)} - {_body(name, unit, dimensions, value)}"
                             f"|#hostname:{hostname},timestamp:{int(now)}\n")

    def model(self, name: str, unit: str, dimensions: Sequence[tuple[str, str]],
              hostname: str, value: float, request_id: str | None) -> None:
        now = self.clock()
        self._model.write(f"{_stamp(now)} - {_body(name, unit, dimensions, value)}"
                          f"|#hostname:{hostname},requestID:{request_id or ''},"
                          f"timestamp:{int(now)}\n")

    def close(self) -> None:
        self._frontend.close()
        self._model.close()


def _body(name: str, unit: str, dimensions: Sequence[tuple[str, str]], value: float) -> str:
    dims = ",".join(f"{key}:{val}" for key, val in dimensions)
    return f"{name}.{unit}:{java_double(value)}|#{dims}"
