"""Self-pipe wake-ups: a byte written to a pipe gets a thread out of poll()/select()."""
from __future__ import annotations

import os


def drain(fd: int) -> None:
    """Read every pending wake-up byte from the non-blocking pipe end ``fd``."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
