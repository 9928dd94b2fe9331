"""A tiny module-level handler: the archive tests only need an archive that holds one."""
from __future__ import annotations


def handle(data, context):
    if data is None:  # called once at load
        return None
    return [len(row) for row in data]
