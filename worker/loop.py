"""The worker's frame loop: LOAD once, then PREDICT / DESCRIBE until EOF or SHUTDOWN.

A reader thread owns the receiving side of the socket. It answers PING itself (so heartbeats
are answered while a batch runs), records CANCELs, and queues every other frame for the main
thread, which runs the handler. All sends share one lock.
"""
from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

from protocol import messages
from protocol.frames import DEFAULT_MAX_FRAME, ProtocolError, encode_frame
from protocol.streams import recv_frame

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_LOAD_FAILED = 1
EXIT_PROTOCOL = 2
# After EOF, how long a busy main thread may keep running before the process exits anyway:
# nobody can receive its result.
EOF_GRACE_SECONDS = 1.0
_NONE_CANCELLED: frozenset[str] = frozenset()


class Channel:
    """The worker's end of its socket."""

    def __init__(self, sock: socket.socket, on_abandoned: Callable[[int], None]) -> None:
        self._sock = sock
        self._on_abandoned = on_abandoned
        self._send_lock = threading.Lock()
        # SimpleQueue: the C implementation; its put/get cost less than Queue's Condition dance,
        # and nothing here needs Queue's task_done/join or size limits.
        self._inbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._state_lock = threading.Lock()
        self._pending: dict[int, set[str]] = {}  # batch id -> cancelled request ids
        self._finished = threading.Event()
        self.protocol_error = False

    def send(self, message: dict[str, Any]) -> None:
        self.send_encoded(encode_frame(message))

    def send_encoded(self, frame: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(frame)

    def start_reader(self) -> None:
        threading.Thread(target=self._read_loop, name="frame-reader", daemon=True).start()

    def next_message(self) -> dict[str, Any] | None:
        """The next frame for the main thread; None once the daemon has hung up."""
        return self._inbox.get()

    def finished(self) -> None:
        """The main thread is done: the reader need not force an exit after EOF."""
        self._finished.set()

    def is_cancelled(self, batch_id: int, request_id: str) -> bool:
        with self._state_lock:
            return request_id in self._pending.get(batch_id, ())

    def cancelled(self, batch_id: int) -> frozenset[str]:
        """The request ids of the batch cancelled so far (one lock for a whole batch)."""
        with self._state_lock:
            found = self._pending.get(batch_id)
            return frozenset(found) if found else _NONE_CANCELLED

    def forget_batch(self, batch_id: int) -> None:
        with self._state_lock:
            self._pending.pop(batch_id, None)

    def _read_loop(self) -> None:
        try:
            while (message := recv_frame(self._sock)) is not None:
                self._dispatch(message)
        except ProtocolError as exc:
            logger.error("bad frame from the daemon: %s", exc)
            self.protocol_error = True
        except OSError as exc:
            logger.info("socket closed: %s", exc)
        self._inbox.put(None)
        if not self._finished.wait(EOF_GRACE_SECONDS):
            logger.warning("daemon hung up while a batch was running; exiting")
            self._on_abandoned(EXIT_PROTOCOL if self.protocol_error else EXIT_OK)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("kind")
        if kind == messages.PING:
            self.send(messages.pong(message.get("seq", 0)))
        elif kind == messages.CANCEL:
            self._record_cancel(message.get("batch_id"), message.get("request_ids") or [])
        else:
            if kind == messages.PREDICT:
                with self._state_lock:
                    self._pending.setdefault(message.get("batch_id"), set())
            self._inbox.put(message)

    def _record_cancel(self, batch_id: Any, request_ids: list[str]) -> None:
        with self._state_lock:
            cancelled = self._pending.get(batch_id)
            if cancelled is None:
                logger.debug("cancel for batch %s, which is not pending; ignored", batch_id)
                return
            cancelled.update(request_ids)
        logger.info("batch %s: %d request(s) cancelled by the daemon", batch_id,
                    len(request_ids))


class WorkerLoop:
    """Serves one model on one channel."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.service: Any = None
        # The daemon refuses bigger frames; LOAD may say how big a response may be.
        self.max_frame = DEFAULT_MAX_FRAME

    def run(self) -> int:
        """Serve until EOF or SHUTDOWN; the process exit code."""
        try:
            return self._run()
        except (BrokenPipeError, ConnectionResetError):
            logger.info("daemon hung up")
            return EXIT_OK
        finally:
            self.channel.finished()

    def _run(self) -> int:
        message = self.channel.next_message()
        if message is None:
            return self._eof_code()
        if message.get("kind") != messages.LOAD:
            logger.error("expected a load frame first, got %r", message.get("kind"))
            return EXIT_PROTOCOL
        if not self._load(message):
            return EXIT_LOAD_FAILED
        while (message := self.channel.next_message()) is not None:
            kind = message.get("kind")
            if kind == messages.SHUTDOWN:
                logger.info("shutdown requested")
                return EXIT_OK
            self._handle(kind, message)
        return self._eof_code()

    def _eof_code(self) -> int:
        return EXIT_PROTOCOL if self.channel.protocol_error else EXIT_OK

    def _load(self, message: dict[str, Any]) -> bool:
        from worker.service import load_service  # imported late: pulls in the handler's deps
        self.max_frame = int(message.get("max_response_size") or DEFAULT_MAX_FRAME)
        self.service, error, seconds = load_service(message)
        self.channel.send(messages.loaded(error is None, error, seconds))
        return error is None

    def _handle(self, kind: str | None, message: dict[str, Any]) -> None:
        if kind == messages.PREDICT:
            self._predict(message["batch_id"], message.get("requests") or [])
        elif kind == messages.DESCRIBE:
            self._describe()
        else:
            logger.warning("ignoring unexpected %r frame", kind)

    def _predict(self, batch_id: int, requests: list[dict[str, Any]]) -> None:
        live = self._uncancelled(batch_id, requests)
        responses = []
        if live:
            responses = self.service.run_batch(
                live, lambda parts: self._send_parts(batch_id, parts))
        responses = self._uncancelled(batch_id, responses)
        self._send_fitted(lambda rs: messages.result(batch_id, rs), responses)
        self.channel.forget_batch(batch_id)

    def _uncancelled(self, batch_id: int, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Requests (or responses) whose request the daemon has not cancelled."""
        cancelled = self.channel.cancelled(batch_id)
        return [item for item in items if item["id"] not in cancelled] if cancelled else items

    def _send_parts(self, batch_id: int, parts: list[dict[str, Any]]) -> None:
        for part in parts:
            if not self.channel.is_cancelled(batch_id, part["id"]):
                self._send_fitted(lambda rs: messages.stream(batch_id, rs[0]), [part])

    def _send_fitted(self, wrap: Callable[[list[dict[str, Any]]], dict[str, Any]],
                     responses: list[dict[str, Any]]) -> None:
        """Send wrap(responses); while the frame is too big, the largest body becomes an error
        (the daemon would otherwise drop the connection and the whole batch with it)."""
        responses = list(responses)
        while True:
            try:
                frame = encode_frame(wrap(responses), self.max_frame)
                break
            except ProtocolError:
                largest = max(range(len(responses)), key=lambda i: len(responses[i]["body"]))
                too_big = responses[largest]
                if not too_big["body"]:
                    raise
                reason = (f"Response of {len(too_big['body'])} bytes exceeds the limit of "
                          f"{self.max_frame} bytes")
                logger.error("request %s: %s", too_big["id"], reason)
                responses[largest] = messages.response(too_big["id"], 500, reason, b"",
                                                       error=True)
        self.channel.send_encoded(frame)

    def _describe(self) -> None:
        try:
            described = messages.described(True, self.service.describe())
        except (Exception, SystemExit) as exc:
            logger.exception("describe_handle failed")
            described = messages.described(False, error=f"{type(exc).__name__}: {exc}")
        self.channel.send(described)
