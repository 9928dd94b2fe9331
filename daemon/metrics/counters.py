"""TorchServe's counters, rendered as TorchServe renders them: ``# TYPE <name> counter`` and
samples named ``<name>``, with no ``_total`` suffix and no ``_created`` series (why: see
daemon/metrics/series.py). The daemon's series and the handlers' own counters both use it."""
from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client.utils import floatToGoString


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


class TorchServeCounter:
    """A counter family rendered the way TorchServe renders it (see the module docstring)."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, labelvalues: Iterable[str], amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: counters only go up (got {amount})")
        self.inc_key(tuple(str(v) for v in labelvalues), amount)

    def inc_key(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        """``inc`` for label values already a tuple of str (the per-request path)."""
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def remove(self, labelvalues: Iterable[str]) -> None:
        with self._lock:
            self._values.pop(tuple(str(v) for v in labelvalues), None)

    def render(self) -> str:
        with self._lock:
            series = sorted(self._values.items())
        lines = [f"# HELP {self.name} {self.documentation}", f"# TYPE {self.name} counter"]
        for values, total in series:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(self.labelnames, values))
            lines.append(f"{self.name}{{{labels}}} {floatToGoString(total)}")
        return "\n".join(lines) + "\n"
