"""``HotRoutes``: the inference port's prediction routes matched past starlette's router.

A request whose path and method fully match a prediction route (daemon/http/predict.py) goes
straight to its ASGI endpoint; every other request goes through the starlette app, whose router
holds the same routes (and answers 405 for these paths with a wrong method).
"""
from __future__ import annotations

from typing import Any, Callable

from starlette.routing import Route

from daemon.http.predict import TORCHSERVE_METHODS

HOT_METHODS = frozenset(TORCHSERVE_METHODS)


class HotRoutes:
    """Pure ASGI: a request that fully matches one of ``routes`` (path and method) goes straight
    to its endpoint; anything else to ``app``, whose router holds the same routes.

    Matching splits the path once and looks its shape up by segment count and first segment:
    the same answers as the routes' own regexes (a parameter is one non-empty segment) at a
    fraction of their cost, which profiling put at a tenth of the daemon's time per request.
    A route ending in a ``{name:path}`` parameter (any number of segments) is looked up by its
    first segment, after the fixed shapes."""

    def __init__(self, app: Callable, routes: list[Route]) -> None:
        self.app = app
        self.shapes: dict[tuple[int, str], list[_Shape]] = {}
        self.tails: dict[str, list[_Shape]] = {}
        for route in routes:
            shape = _Shape(route)
            if shape.tail is None:
                self.shapes.setdefault((len(shape.parts), shape.parts[1]), []).append(shape)
            else:
                self.tails.setdefault(shape.parts[1], []).append(shape)

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            found = self.match(scope["path"], scope["method"])
            if found is not None:
                route, scope["path_params"] = found
                scope["endpoint"] = route.endpoint
                await route.app(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def match(self, path: str, method: str) -> tuple[Route, dict[str, str]] | None:
        """The route ``path`` and ``method`` fully match, and its path parameters."""
        if method not in HOT_METHODS:
            return None
        parts = path.split("/")
        first = parts[1] if len(parts) > 1 else ""
        for shape in self.shapes.get((len(parts), first), ()):
            params = shape.match(parts, method)
            if params is not None:
                return shape.route, params
        for shape in self.tails.get(first, ()):
            if len(parts) > len(shape.parts):
                params = shape.match(parts, method)
                if params is not None:
                    return shape.route, params
        return None


class _Shape:
    """A route's path as segments: fixed ones must be equal, ``{name}`` ones non-empty; a last
    ``{name:path}`` (``tail``) takes every segment after the others, joined with "/"."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.parts = route.path.split("/")
        self.tail: str | None = None
        if self.parts[-1].endswith(":path}"):
            self.tail = self.parts.pop()[1:-len(":path}")]
        self.params = [(i, part[1:-1]) for i, part in enumerate(self.parts)
                       if part.startswith("{")]
        self.fixed = [(i, part) for i, part in enumerate(self.parts) if not part.startswith("{")]
        self.methods = route.methods or set()

    def match(self, parts: list[str], method: str) -> dict[str, str] | None:
        if method not in self.methods:
            return None
        for i, fixed in self.fixed:
            if parts[i] != fixed:
                return None
        params = {}
        for i, name in self.params:
            if not parts[i]:
                return None
            params[name] = parts[i]
        if self.tail is not None:
            params[self.tail] = "/".join(parts[len(self.parts):])
        return params
