"""TorchServe's counters, rendered as TorchServe renders them: ``# TYPE <name> counter`` and
samples named ``<name>``, with no ``_total`` suffix and no ``_created`` series (why: see
daemon/metrics/series.py). The daemon's series and the handlers' own counters both use it; so
does TorchServe's ``GET /metrics?name[]=<family>&name[]=...``, which shows only those families.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.utils import floatToGoString

# The families a scrape asks for (TorchServe's name[] parameter); None: every family.
Names = frozenset[str] | None


def wanted(family: str, names: Names) -> bool:
    return names is None or family in names


def exposition(registry: CollectorRegistry, names: Names) -> bytes:
    """``generate_latest`` of the families of ``registry`` that ``names`` asks for: by family
    name, or by the name its samples carry (prometheus_client names a counter family without
    the ``_total`` of its samples)."""
    return generate_latest(registry if names is None else _Only(registry, names))


class _Only:
    """A registry's view holding only some of its families (generate_latest calls collect)."""

    def __init__(self, registry: CollectorRegistry, names: frozenset[str]) -> None:
        self.registry, self.names = registry, names

    def collect(self) -> Iterator[Any]:
        for family in self.registry.collect():
            if family.name in self.names or (family.type == "counter"
                                             and f"{family.name}_total" in self.names):
                yield family


def remove_child(metric: Any, *labelvalues: str) -> None:
    """Drop one labelled series of a prometheus_client metric, if it was ever made (older
    releases raise KeyError for a label set never used)."""
    try:
        metric.remove(*labelvalues)
    except KeyError:
        pass


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
