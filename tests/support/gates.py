"""A gate a handler waits at until the test opens it: the test decides when a batch or a load
ends, instead of a handler that sleeps "long enough" for the test to look meanwhile.

The gate is a named pipe. The handler opens it to read, which blocks until someone opens it to
write; ``Gate.open`` does, once the handler is there, and closes it at once: the handler reads
EOF and goes on. In a handler::

    with open(gate_path) as gate:   # waits until the test opens the gate
        gate.read()
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_until


class Gate:
    """A FIFO at ``path`` (made now, removed on leaving the ``with`` block, which also lets
    through a handler still waiting, so that a failed test leaves no worker stuck)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)

    def __str__(self) -> str:
        return str(self.path)

    def open(self, timeout: float = 60) -> None:
        """Let the handler through: wait until it waits at the gate, then open it."""
        (fd,) = wait_until(self._writer, timeout, what=f"a handler waiting at {self.path}")
        os.close(fd)

    def _writer(self) -> tuple[int] | None:
        try:
            return (os.open(self.path, os.O_WRONLY | os.O_NONBLOCK),)
        except OSError as exc:
            if exc.errno == errno.ENXIO:   # no reader yet
                return None
            raise

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: Any) -> None:
        writer = self._writer()
        if writer is not None:
            os.close(writer[0])
        self.path.unlink(missing_ok=True)
