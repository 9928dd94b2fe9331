"""The worker's frame loop: LOAD once, then serve in the mode LOAD names until EOF or SHUTDOWN.

Batch mode (the default) is here: PREDICT / DESCRIBE / THREADS, one at a time. Continuous
batching (worker/stepping.py) and async mode (worker/async_loop.py) take over after the load
and come back here for the frames every mode handles alike (DESCRIBE, THREADS).

Frames come from a Channel (worker/channel.py), which answers PING itself; this loop runs on the
main thread and handles everything else.
"""
from __future__ import annotations

import logging
from typing import Any

from protocol import messages
from protocol.frames import DEFAULT_MAX_FRAME
from worker import responses
from worker.async_loop import AsyncLoop
from worker.channel import Channel
from worker.exits import EXIT_FAILED, EXIT_OK, EXIT_PROTOCOL, after_eof
from worker.sending import FrameSender
from worker.stepping import StepLoop
from worker.compile_cache import use_compile_cache
from worker.threads import set_torch_threads

logger = logging.getLogger(__name__)

# What a frame of another mode's protocol gets (the daemon and the worker disagree on the
# mode): an answer for each of its requests, so that none waits for ever.
WRONG_MODE_STATUS = 500


class WorkerLoop:
    """Serves one model on one channel."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.service: Any = None
        self.mode = messages.MODE_BATCH
        self.sender = FrameSender(channel)

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
        if self.mode == messages.MODE_CONTINUOUS:
            return StepLoop(self.channel, self.service, self.sender, self.control).run()
        if self.mode == messages.MODE_ASYNC:
            return AsyncLoop(self.channel, self.service, self.sender, self.control).run()
        return self._serve_batches()

    def _serve_batches(self) -> int:
        while (message := self.channel.next_message()) is not None:
            kind = message.get("kind")
            if kind == messages.SHUTDOWN:
                logger.info("shutdown requested")
                return EXIT_OK
            if kind == messages.PREDICT:
                self._predict(message["batch_id"], message.get("requests") or [])
            else:
                self.control(message)
        return self._eof_code()

    def _eof_code(self) -> int:
        return after_eof(self.channel.protocol_error)

    def _load(self, message: dict[str, Any]) -> bool:
        from worker.service import load_service  # imported late: pulls in the handler's deps
        self.mode = str(message.get("mode") or messages.MODE_BATCH)
        if self.mode not in messages.MODES:
            unknown = (f"ValueError: unknown serving mode {self.mode!r} (expected one of "
                       f"{', '.join(messages.MODES)})")
            logger.error("cannot load model %s: %s", message.get("model_name"), unknown)
            self.channel.send(messages.loaded(False, unknown))
            return False
        self.sender.max_frame = int(message.get("max_response_size") or DEFAULT_MAX_FRAME)
        self.channel.accept_frames_up_to(int(message.get("max_request_frame")
                                             or DEFAULT_MAX_FRAME))
        set_torch_threads(int(message.get("threads") or 0), starting=True)
        use_compile_cache(message.get("compile_cache_dir"))
        self.service, error, seconds = load_service(message)
        if error is None and self.mode != messages.MODE_BATCH:
            logger.info("serving in %s mode", self.mode)
        metrics = self.service.load_metrics if self.service is not None else None
        self.channel.send(messages.loaded(error is None, error, seconds, metrics))
        return error is None

    def control(self, message: dict[str, Any]) -> None:
        """The frames every mode handles alike; a frame of another mode's batches is refused."""
        kind = message.get("kind")
        if kind == messages.DESCRIBE:
            self._describe()
        elif kind == messages.THREADS:
            set_torch_threads(int(message.get("count") or 0), starting=False)
        elif kind in (messages.PREDICT, messages.JOIN):
            self._refuse(kind, message)
        else:
            logger.warning("ignoring unexpected %r frame", kind)

    def _predict(self, batch_id: int, requests: list[dict[str, Any]]) -> None:
        answers: list[dict[str, Any]] = []
        metrics: list[dict[str, Any]] = []
        if requests:  # an empty batch gets an empty result without bothering the handler
            answers = self.service.run_batch(
                requests, lambda parts: self.sender.parts(batch_id, parts))
            metrics = self.service.take_metrics()
        self.sender.answers(lambda rs, ms: messages.result(batch_id, rs, ms), answers, metrics)

    def _refuse(self, kind: str, message: dict[str, Any]) -> None:
        reason = f"the worker serves in {self.mode} mode: it cannot answer a {kind} frame"
        logger.error("%s", reason)
        batch_id = message.get("batch_id", 0)
        ids = [r["id"] for r in message.get("requests") or []]
        if kind == messages.JOIN and not ids:
            return   # only cancels: nothing waits for an answer
        answers = responses.failed(ids, (WRONG_MODE_STATUS, reason))
        wrap = messages.result if kind == messages.PREDICT else messages.step
        self.sender.answers(lambda rs, ms: wrap(batch_id, rs, ms), answers)

    def _describe(self) -> None:
        try:
            described = messages.described(True, self.service.describe())
        except (Exception, SystemExit) as exc:
            logger.exception("describe_handle failed")
            described = messages.described(False, error=f"{type(exc).__name__}: {exc}")
        self.channel.send(described)
