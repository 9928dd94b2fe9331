"""The daemon's end of one worker's Unix socket: request/reply over frames; the batches in the
worker (one at a time, several with asyncCommunication, a running one with continuous batching)
by batch id."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from protocol import messages
from protocol.frames import FrameDecoder, ProtocolError, encode_frame

logger = logging.getLogger(__name__)


class ConnectionLost(ConnectionError):
    """The worker's socket closed (the process died, or we poisoned the connection)."""


# A batch in the worker: (on_part, on_result, future). A plain tuple: one is made per batch, on
# the hot path, where an object's __init__ would cost more than the rest of the bookkeeping.
_Batch = tuple[Callable[[dict], None], Callable[[dict], None], asyncio.Future]


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
        self._batches: dict[int, _Batch] = {}   # in the worker now, by batch id
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
        for *_, future in self._batches.values():
            if not future.done():
                future.set_exception(reason)
                # Only the batch dispatcher awaits a batch's future; async workers and
                # continuous batching learn of the loss from `lost`. Mark it retrieved so
                # asyncio does not log their unawaited futures as errors.
                future.exception()
        self._replies.clear()
        self._batches.clear()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind: str = message.get("kind", "")
        if kind == messages.PONG:
            self.last_pong = message.get("seq", 0)
            return
        if kind == messages.STREAM:
            batch = self._batches.get(message.get("batch_id"))   # type: ignore[arg-type]
            if batch is not None:
                batch[0](message["response"])
            return
        if kind == messages.RESULT or kind == messages.STEP:
            self._batch_answered(kind, message)
            return
        future = self._replies.pop(kind, None)
        if future is not None and not future.done():
            future.set_result(message)

    def _batch_answered(self, kind: str, message: dict[str, Any]) -> None:
        """A RESULT ends its batch; a STEP is one step of the running batch, which goes on."""
        batch_id = message.get("batch_id")
        batch = (self._batches.pop(batch_id, None) if kind == messages.RESULT   # type: ignore[arg-type]
                 else self._batches.get(batch_id))   # type: ignore[arg-type]
        if batch is None:
            logger.warning("dropping a %s for batch %s (not in the worker)", kind, batch_id)
            return
        _, on_result, future = batch
        on_result(message)
        if not future.done():
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
        future = self._track(batch_id, on_part, on_result)
        self.send(messages.predict(batch_id, requests))
        return future

    def join(self, batch_id: int, requests: list[dict[str, Any]], cancel: list[str],
             acks: int, on_part: Callable[[dict], None],
             on_step: Callable[[dict], None]) -> None:
        """Continuous batching: ``requests`` join the running batch ``batch_id`` at its next
        step and ``cancel`` leave it; ``acks``: the STEP frames read since the last JOIN.
        ``on_step`` gets each STEP as it is read, ``on_part`` the STREAM parts sent during a
        step."""
        if batch_id not in self._batches:
            self._track(batch_id, on_part, on_step)
        self.send(messages.join(batch_id, requests, cancel, acks))

    def _track(self, batch_id: int, on_part: Callable[[dict], None],
               on_result: Callable[[dict], None]) -> asyncio.Future:
        if self.lost.done():
            raise self.lost.result()
        future = self.lost.get_loop().create_future()
        self._batches[batch_id] = (on_part, on_result, future)
        return future

    def end_batch(self, batch_id: int | None = None) -> None:
        """Nothing (``batch_id``: that batch) runs in the worker any more: forget it, and
        any holds its jobs had."""
        if batch_id is not None:
            self._batches.pop(batch_id, None)
            if self._batches:
                return
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
