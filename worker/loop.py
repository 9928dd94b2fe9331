"""The worker's frame loop: LOAD once, then PREDICT / DESCRIBE / THREADS until EOF or SHUTDOWN.

Frames come from a Channel (worker/channel.py), which answers PING itself; this loop runs on the
main thread and handles everything else.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from protocol import messages
from protocol.frames import DEFAULT_MAX_FRAME, ProtocolError, encode_frame
from worker.channel import Channel
from worker.exits import EXIT_FAILED, EXIT_OK, EXIT_PROTOCOL
from worker.threads import set_torch_threads

logger = logging.getLogger(__name__)


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
            return EXIT_FAILED
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
        self.channel.accept_frames_up_to(int(message.get("max_request_frame")
                                             or DEFAULT_MAX_FRAME))
        set_torch_threads(int(message.get("threads") or 0), starting=True)
        self.service, error, seconds = load_service(message)
        self.channel.send(messages.loaded(error is None, error, seconds))
        return error is None

    def _handle(self, kind: str | None, message: dict[str, Any]) -> None:
        if kind == messages.PREDICT:
            self._predict(message["batch_id"], message.get("requests") or [])
        elif kind == messages.DESCRIBE:
            self._describe()
        elif kind == messages.THREADS:
            set_torch_threads(int(message.get("count") or 0), starting=False)
        else:
            logger.warning("ignoring unexpected %r frame", kind)

    def _predict(self, batch_id: int, requests: list[dict[str, Any]]) -> None:
        responses: list[dict[str, Any]] = []
        metrics: list[dict[str, Any]] = []
        if requests:  # an empty batch gets an empty result without bothering the handler
            responses = self.service.run_batch(
                requests, lambda parts: self._send_parts(batch_id, parts))
            metrics = self.service.take_metrics()
        if metrics:
            try:
                frame = encode_frame(messages.result(batch_id, responses, metrics),
                                     self.max_frame)
            except ProtocolError:   # the answers matter more: they go without the metrics
                logger.warning("the batch's %d metric records do not fit its result frame; "
                               "they are dropped", len(metrics))
            else:
                self.channel.send_encoded(frame)
                return
        self._send_fitted(lambda rs: messages.result(batch_id, rs), responses)

    def _send_parts(self, batch_id: int, parts: list[dict[str, Any]]) -> None:
        for part in parts:
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
