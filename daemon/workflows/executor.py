"""One workflow request through its DAG, node by node, each node a prediction call on the node's
model version (daemon/models/call.py: its queue, batching, workers and metrics, as any request).

The data flow is TorchServe's (its DagExecutor):
- the start node gets the request as it came: its headers and its parameters (a form's fields
  one each, else ``body``);
- a node with one parent gets that parent's output as ``body``; a node with several gets each
  parent's output as a parameter named after that parent, once all of them have answered
  (fan-in); a node feeding several children starts them together (fan-out). Outputs pass on as
  bytes, with no content type: the handler receives bytes. Every node sees the request's headers.
- the leaves' outputs are the answer.

A node's try fails when its call fails (the handler raised, the worker died, no worker, queue
full) or gives no answer within the node's ``timeout-ms`` (its job is then dropped: still
queued, it never runs). After ``retry-attempts`` more tries the request fails with 500
``Error executing <node>``, TorchServe's message, and every other node's call is dropped too.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from daemon.errors import InternalServerError, TorchdError
from daemon.models.call import PredictionCall
from daemon.models.job import Answer, Failure, Part
from daemon.workflows.spec import Node, WorkflowSpec
from protocol import messages

logger = logging.getLogger(__name__)

Headers = list[list[str]]
Parameters = list[dict[str, Any]]
# Predictions.start as the executor uses it: (model, version, headers, params) -> a call.
StartCall = Callable[[str, None, Headers, Parameters], PredictionCall]


class AttemptFailed(Exception):
    """One try of a node failed; the message says why (for the log)."""


class DagRun:
    """Runs one request through ``spec``; ``models`` maps each node to its model's name."""

    def __init__(self, spec: WorkflowSpec, models: dict[str, str], start_call: StartCall,
                 headers: Headers) -> None:
        self.spec = spec
        self.models = models
        self.start_call = start_call
        self.headers = headers
        self._inputs: dict[str, Parameters] = {}
        self._waiting = {name: len(parents) for name, parents in spec.parents.items()}
        self._running: dict[asyncio.Task[bytes], str] = {}

    async def run(self, params: Parameters) -> list[tuple[str, bytes]]:
        """The leaves' outputs, in the order they finished; InternalServerError naming the node
        that failed. Cancelled (the client hung up), it drops every call still open."""
        leaves: list[tuple[str, bytes]] = []
        self._inputs[self.spec.start] = params
        self._launch(self.spec.start)
        try:
            while self._running:
                done, _ = await asyncio.wait(self._running,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    node = self._running.pop(task)
                    output = task.result()
                    if not self.spec.children[node]:
                        leaves.append((node, output))
                    self._feed_children(node, output)
        finally:
            await self._cancel_running()
        return leaves

    def _launch(self, node: str) -> None:
        run = self._run_node(self.spec.nodes[node], self._inputs.pop(node))
        self._running[asyncio.ensure_future(run)] = node

    def _feed_children(self, node: str, output: bytes) -> None:
        for child in self.spec.children[node]:
            name = "body" if len(self.spec.parents[child]) == 1 else node
            self._inputs.setdefault(child, []).append(messages.parameter(name, None, output))
            self._waiting[child] -= 1
            if self._waiting[child] == 0:
                self._launch(child)

    async def _cancel_running(self) -> None:
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        self._running.clear()

    async def _run_node(self, node: Node, params: Parameters) -> bytes:
        tries = node.settings.retry_attempts + 1
        for attempt in range(tries):
            try:
                return await self._attempt(node, params)
            except AttemptFailed as exc:
                logger.warning("workflow node %s, try %d of %d: %s", node.name, attempt + 1,
                               tries, exc)
        raise InternalServerError(f"Error executing {node.name}")

    async def _attempt(self, node: Node, params: Parameters) -> bytes:
        model = self.models[node.name]
        try:
            call = self.start_call(model, None, self.headers, params)
        except TorchdError as exc:
            raise AttemptFailed(exc.message) from None
        try:
            return await _within(node.settings.timeout_ms, _output(call))
        except TimeoutError:
            raise AttemptFailed(f"no answer within {node.settings.timeout_ms} ms "
                                "(timeout-ms)") from None
        finally:
            call.hang_up()   # a no-op once answered; else the job is dropped, never run


async def _within(timeout_ms: int, output: Awaitable[bytes]) -> bytes:
    async with asyncio.timeout(timeout_ms / 1000.0):
        return await output


async def _output(call: PredictionCall) -> bytes:
    """The call's whole answer: its streamed parts and its last one, joined."""
    parts = []
    while True:
        event = await call.next_event()
        if isinstance(event, Failure):
            raise AttemptFailed(f"{event.error.status} {event.error.message}")
        if not isinstance(event, Part):   # Gone: the job was dropped
            raise AttemptFailed("the request was dropped")
        parts.append(_bytes(event.response.get("body")))
        if isinstance(event, Answer):
            return b"".join(parts)


def _bytes(body: Any) -> bytes:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return b"" if body is None else bytes(body)
