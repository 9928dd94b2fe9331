"""The daemon's end of one worker's Unix socket: request/reply over frames, one batch at a time."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from protocol import messages
from protocol.frames import FrameDecoder, ProtocolError, encode_frame

logger = logging.getLogger(__name__)


class ConnectionLost(ConnectionError):
    """The worker's socket closed (the process died, or we poisoned the connection)."""


class WorkerConnection(asyncio.Protocol):
    """The daemon's end of one worker socket, as an asyncio protocol: frames are decoded as the
    bytes arrive and routed to whoever awaits them, with no reader task between."""

    def __init__(self, max_frame: int) -> None:
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future = loop.create_future()
        self._hello: asyncio.Future = loop.create_future()
        self._decoder = FrameDecoder(max_frame)
        self._transport: asyncio.Transport | None = None
        self._replies: dict[str, asyncio.Future] = {}
        self._on_part: Callable[[dict], None] | None = None
        self._on_result: Callable[[dict], None] | None = None
        self._batch_id: int | None = None
        self._holders: set[str] = set()   # jobs whose clients are not taking their parts
        self.last_pong = 0

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream socket's transport, a Transport (BaseTransport is what the base class declares)
        self._transport = transport   # type: ignore[assignment]
        if self.lost.done():   # closed before it was even connected
            transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            for message in self._decoder.feed(data):
                if not self._hello.done():
                    self._greet(message)
                else:
                    self._dispatch(message)
        except ProtocolError as exc:
            self._lose(ConnectionLost(f"worker connection broken: {exc}"))
            self.close()   # the reason above stays the connection's

    def eof_received(self) -> bool:
        if self._decoder.pending:
            self._lose(ConnectionLost("worker connection broken: stream ended inside a frame"))
        self._lose(ConnectionLost("worker closed its socket"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(ConnectionLost(f"worker connection broken: {exc}" if exc else
                                  "worker closed its socket"))

    # ---- requests ----------------------------------------------------------------------------

    async def handshake(self, timeout: float) -> dict[str, Any]:
        """The worker's hello, which comes before anything else."""
        waiters = {self._hello, self.lost}
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if self._hello.done():
            return self._hello.result()
        if self.lost.done():
            raise self.lost.result()
        raise asyncio.TimeoutError()

    def _greet(self, message: dict[str, Any]) -> None:
        if message.get("kind") != messages.HELLO:
            raise ProtocolError(f"expected hello, got {message!r}")
        self._hello.set_result(message)

    def _lose(self, reason: Exception) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)
        for future in self._replies.values():
            if not future.done():
                future.set_exception(reason)
        self._replies.clear()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind: str = message.get("kind", "")
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
            if kind == messages.RESULT and self._on_result is not None:
                self._on_result(message)
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
        assert self._transport is not None   # connection_made came before any request
        self._transport.write(encode_frame(message))

    def start_batch(self, batch_id: int, requests: list[dict[str, Any]],
                    on_part: Callable[[dict], None],
                    on_result: Callable[[dict], None]) -> asyncio.Future:
        """Send one batch. ``on_part`` gets each STREAM part, ``on_result`` the RESULT as soon
        as it is read (the requests are answered from there, without waiting for the task that
        awaits the returned future, which then resolves with the same message)."""
        future = self._expect(messages.RESULT)
        self._batch_id, self._on_part, self._on_result = batch_id, on_part, on_result
        self.send(messages.predict(batch_id, requests))
        return future

    def end_batch(self) -> None:
        self._batch_id, self._on_part, self._on_result = None, None, None
        if self._holders:
            self._holders.clear()
            self._resume()

    # ---- flow control ------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """Reading is paused for a job whose client is not taking its parts: the worker's
        writes block once the socket's buffers are full (so its heartbeat goes unread too)."""
        return bool(self._holders)

    def hold(self, job_id: str) -> None:
        if not self._holders and self._transport is not None and not self.lost.done():
            self._transport.pause_reading()
        self._holders.add(job_id)

    def release(self, job_id: str) -> None:
        if job_id in self._holders:
            self._holders.discard(job_id)
            if not self._holders:
                self._resume()

    def _resume(self) -> None:
        if self._transport is not None and not self.lost.done() \
                and not self._transport.is_closing():
            self._transport.resume_reading()

    def ping(self, seq: int) -> None:
        self.send(messages.ping(seq))

    def close(self) -> None:
        """Poison the connection: nothing the worker sends later can answer anything."""
        self._lose(ConnectionLost("connection closed by the daemon"))
        if self._transport is not None:
            self._transport.close()
