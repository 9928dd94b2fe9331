"""The daemon's end of one worker's Unix socket: request/reply over frames, one batch at a time."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from protocol import messages
from protocol.frames import ProtocolError
from protocol.streams import read_frame, write_frame

logger = logging.getLogger(__name__)


class ConnectionLost(Exception):
    """The worker's socket closed (the process died, or we poisoned the connection)."""


class WorkerConnection:
    """Owns the socket; a reader task routes each incoming frame to whoever awaits it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_frame: int) -> None:
        self._reader = reader
        self._writer = writer
        self._max_frame = max_frame
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future = loop.create_future()
        self._replies: dict[str, asyncio.Future] = {}
        self._on_part: Callable[[dict], None] | None = None
        self._batch_id: int | None = None
        self.last_pong = 0
        self._task: asyncio.Task | None = None

    async def handshake(self, timeout: float) -> dict[str, Any]:
        """Read the worker's hello before anything else, then start routing frames."""
        hello = await asyncio.wait_for(read_frame(self._reader, self._max_frame), timeout)
        if not hello or hello.get("kind") != messages.HELLO:
            raise ProtocolError(f"expected hello, got {hello!r}")
        self._task = asyncio.get_running_loop().create_task(self._route())
        return hello

    async def _route(self) -> None:
        try:
            while (message := await read_frame(self._reader, self._max_frame)) is not None:
                self._dispatch(message)
            reason: Exception = ConnectionLost("worker closed its socket")
        except (ProtocolError, OSError) as exc:
            reason = ConnectionLost(f"worker connection broken: {exc}")
        except asyncio.CancelledError:
            reason = ConnectionLost("connection closed by the daemon")
        self._lose(reason)

    def _lose(self, reason: Exception) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)
        for future in self._replies.values():
            if not future.done():
                future.set_exception(reason)
        self._replies.clear()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("kind")
        if kind == messages.PONG:
            self.last_pong = message.get("seq", 0)
            return
        if kind == messages.STREAM:
            if message.get("batch_id") == self._batch_id and self._on_part:
                self._on_part(message["response"])
            return
        if kind == messages.RESULT and message.get("batch_id") != self._batch_id:
            logger.warning("dropping a result for batch %s (expected %s)",
                           message.get("batch_id"), self._batch_id)
            return
        future = self._replies.pop(kind, None)
        if future is not None and not future.done():
            future.set_result(message)

    def _expect(self, kind: str) -> asyncio.Future:
        if self.lost.done():
            raise self.lost.result()
        future = asyncio.get_running_loop().create_future()
        self._replies[kind] = future
        return future

    async def request(self, message: dict[str, Any], reply_kind: str,
                      timeout: float | None) -> dict[str, Any]:
        future = self._expect(reply_kind)
        self.send(message)
        return await asyncio.wait_for(future, timeout)

    def send(self, message: dict[str, Any]) -> None:
        if self.lost.done():
            raise self.lost.result()
        write_frame(self._writer, message)

    def start_batch(self, batch_id: int, requests: list[dict[str, Any]],
                    on_part: Callable[[dict], None]) -> asyncio.Future:
        """Send one batch; the returned future resolves with the RESULT message."""
        future = self._expect(messages.RESULT)
        self._batch_id, self._on_part = batch_id, on_part
        self.send(messages.predict(batch_id, requests))
        return future

    def end_batch(self) -> None:
        self._batch_id, self._on_part = None, None

    def ping(self, seq: int) -> None:
        self.send(messages.ping(seq))

    def close(self) -> None:
        """Poison the connection: nothing the worker sends later can answer anything."""
        self._lose(ConnectionLost("connection closed by the daemon"))
        if self._task is not None:
            self._task.cancel()
        self._writer.close()
