"""TorchServe's paging of the management lists (GET /models, GET /workflows, gRPC ListModels)."""
from __future__ import annotations

import pytest

from daemon.control.paging import list_page

ITEMS = ["a", "b", "c", "d", "e"]


def page(limit: int, offset: int) -> dict:
    return list_page(ITEMS, limit, offset, "things", lambda item: {"name": item})


def names(body: dict) -> list[str]:
    return [entry["name"] for entry in body["things"]]


def test_a_page_with_more_after_it_names_the_next_offset() -> None:
    assert page(2, 1) == {"nextPageToken": "3", "things": [{"name": "b"}, {"name": "c"}]}


@pytest.mark.parametrize(("limit", "offset", "token", "expected"), [
    (2, 3, "5", ["d", "e"]),     # ends exactly at the end: a token still (TorchServe's <=)
    (2, 4, None, ["e"]),         # passes the end: none
    (3, 9, None, []),            # past the end: an empty page
    (0, 2, "2", []),
])
def test_the_token_is_there_while_the_page_does_not_pass_the_end(
        limit: int, offset: int, token: str | None, expected: list[str]) -> None:
    body = page(limit, offset)
    assert body.get("nextPageToken") == token and names(body) == expected


@pytest.mark.parametrize("limit", [101, -1, 10**9])
def test_a_limit_above_100_or_below_0_means_100(limit: int) -> None:
    many = [str(i) for i in range(150)]
    body = list_page(many, limit, 0, "things", lambda item: {"name": item})
    assert body["nextPageToken"] == "100" and len(body["things"]) == 100


def test_a_negative_offset_means_0() -> None:
    assert page(2, -3) == page(2, 0) == {"nextPageToken": "2",
                                         "things": [{"name": "a"}, {"name": "b"}]}
