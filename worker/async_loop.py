"""Async mode (LOAD's mode "async", TorchServe's ``asyncCommunication``).

The handler runs on the worker's asyncio loop (worker/eventloop.py) in the main thread. A
reader thread receives every frame (through the Channel, which answers PING even while a handler
holds the loop) and hands it to the loop. Each PREDICT becomes a task at once, without waiting
for the batches before it: it runs the handler on its own copy of the context, awaits the
result, and sends its RESULT when done, so RESULTs go back in the order their batches finish.
The daemon bounds how many batches are in flight.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from protocol import messages
from worker import codec, responses
from worker.channel import Channel
from worker.eventloop import worker_loop
from worker.exits import EXIT_OK, after_eof
from worker.sending import FrameSender

logger = logging.getLogger(__name__)

Control = Callable[[dict[str, Any]], None]
# At SHUTDOWN or EOF the running batches are cancelled: how long they may take to unwind.
CANCEL_GRACE_SECONDS = 1.0


class AsyncLoop:
    """Serves a loaded model in async mode until SHUTDOWN or EOF."""

    def __init__(self, channel: Channel, service: Any, sender: FrameSender,
                 control: Control) -> None:
        self.channel = channel
        self.service = service
        self.sender = sender
        self.control = control
        self._tasks: set[asyncio.Task[None]] = set()
        self._inbox: asyncio.Queue[dict[str, Any] | None] | None = None

    def run(self) -> int:
        """Serve; the process exit code."""
        return worker_loop().run_until_complete(self._serve())

    async def _serve(self) -> int:
        inbox = self._inbox = asyncio.Queue()
        threading.Thread(target=self._receive, args=(asyncio.get_running_loop(), inbox),
                         name="async-frame-reader", daemon=True).start()
        try:
            while (message := await inbox.get()) is not None:
                kind = message.get("kind")
                if kind == messages.SHUTDOWN:
                    logger.info("shutdown requested (%d batches running)", len(self._tasks))
                    return EXIT_OK
                if kind == messages.PREDICT:
                    self._start(message["batch_id"], message.get("requests") or [])
                else:
                    self.control(message)
            return after_eof(self.channel.protocol_error)
        finally:
            await self._cancel_running()

    def _receive(self, loop: asyncio.AbstractEventLoop,
                 inbox: asyncio.Queue[dict[str, Any] | None]) -> None:
        """The reader thread: every frame to the loop, then None at EOF."""
        while True:
            message = self.channel.receive_message()
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, message)
            except RuntimeError:   # the loop has closed: the worker is on its way out
                return
            if message is None:
                return

    def _start(self, batch_id: int, requests: list[dict[str, Any]]) -> None:
        task = asyncio.get_running_loop().create_task(self._predict(batch_id, requests))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a batch's task failed", exc_info=task.exception())

    async def _predict(self, batch_id: int, requests: list[dict[str, Any]]) -> None:
        answers = await self._run(batch_id, requests) if requests else []
        try:
            self.sender.answers(lambda rs, ms: messages.result(batch_id, rs, ms), answers,
                                self.service.take_metrics())
        except (BrokenPipeError, ConnectionResetError):
            logger.info("daemon hung up")
            if self._inbox is not None:
                self._inbox.put_nowait(None)

    async def _run(self, batch_id: int, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One batch on its own context: its responses, errors included."""
        requests, data, refused = codec.decode_batch(requests)
        if not requests:
            return refused
        ids = [r["id"] for r in requests]
        # Batches run at once: each has its own request ids, headers and statuses.
        context = self.service.context.for_batch(ids, [codec.request_headers(r)
                                                       for r in requests])
        context.bind_to_task()
        self.service.stream_parts(context, lambda parts: self.sender.parts(batch_id, parts))
        try:
            started = time.perf_counter()
            output = self.service.entry(data, context)
            if inspect.isawaitable(output):   # a plain handler's value is fine too
                output = await output
            self.service.record_prediction_time(context, time.perf_counter() - started)
            return refused + responses.encode_output(context, output, ids)
        except (Exception, SystemExit) as exc:  # a handler must never take the worker down
            return refused + responses.handler_failed(exc, ids)
        finally:
            context.stream_writer = None

    async def _cancel_running(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE_SECONDS)
