"""How many bytes a model archive may unpack to, and a download may hold: the one rule
extraction (daemon/models/extraction.py) and downloads (daemon/models/downloads.py) apply.

A 1 MB .mar of zeros can unpack to 1 GiB, and a larger one fills the disk that the runtime
directory, the model store and the logs share. ``max_unpacked_archive_size`` caps it; unset,
an archive may use what leaves KEEP_FREE bytes free on the filesystem it is written to. The
limit is checked against what the archive declares before anything is written, and against
the bytes really written while writing (a header may lie); a download against its
Content-Length before its body is read, and against the bytes read.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

KEEP_FREE = 1 << 30   # bytes left free on the filesystem when max_unpacked_archive_size is unset


class TooLarge(Exception):
    """An archive or a download past its SizeLimit; the text names the limit."""


@dataclass(frozen=True)
class SizeLimit:
    """Bytes one archive may unpack to, or one download hold, and the rule that set them."""

    limit: int
    rule: str     # the limit as a refusal names it

    def check(self, size: int) -> None:
        """TooLarge when ``size`` bytes pass the limit."""
        if size > self.limit:
            raise TooLarge(f"more than {self.rule}")


def size_limit(configured: int | None, directory: Path) -> SizeLimit:
    """``configured`` (max_unpacked_archive_size) bytes; unset, what leaves KEEP_FREE bytes
    free on ``directory``'s filesystem now."""
    if configured is not None:
        return SizeLimit(configured, f"max_unpacked_archive_size ({configured} bytes)")
    free = shutil.disk_usage(_existing(directory)).free
    room = max(0, free - KEEP_FREE)
    return SizeLimit(room, f"the {room} bytes that leave 1 GiB free on the filesystem of "
                           f"{directory} (max_unpacked_archive_size is unset)")


def _existing(directory: Path) -> Path:
    """``directory`` or its nearest existing parent: the filesystem it will be on."""
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            return candidate
    return Path("/")


class Counter:
    """Bytes written so far against one SizeLimit (an archive's members together)."""

    __slots__ = ("limit", "written")

    def __init__(self, limit: SizeLimit) -> None:
        self.limit = limit
        self.written = 0

    def add(self, size: int) -> None:
        self.written += size
        self.limit.check(self.written)
