"""TorchServe's paging of a management list (``GET /models``, ``GET /workflows``, gRPC
ListModels): ``limit`` above 100 or below 0 means 100, a negative offset means 0, and
``nextPageToken`` (a string) is present while ``offset + limit`` does not pass the end."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Item = TypeVar("Item")
MAX_LIMIT = 100


def list_page(items: Sequence[Item], limit: int, offset: int, key: str,
              entry: Callable[[Item], dict[str, Any]]) -> dict[str, Any]:
    """One page of ``items`` (already in their listing order) as ``{"nextPageToken", key:
    [entry(item), ...]}``."""
    limit = MAX_LIMIT if limit > MAX_LIMIT or limit < 0 else limit
    offset = max(0, offset)
    body: dict[str, Any] = {}
    if offset + limit <= len(items):
        body["nextPageToken"] = str(offset + limit)
    body[key] = [entry(item) for item in items[offset: offset + limit]]
    return body
