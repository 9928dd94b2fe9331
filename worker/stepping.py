"""Continuous batching (LOAD's mode "continuous", TorchServe's ``continuousBatching``).

The worker keeps a *running batch*: the requests that have joined and not yet finished. Each
turn it takes the frames that have arrived (JOIN adds requests and drops cancelled ones), then
runs one *step*: the handler sees every running request once (a new one with its parameters, a
continuing one with none, as TorchServe sends it) and the handler's
``context.stopping_criteria`` says, per request, whether it is done. One STEP frame answers the
step: a part (``more``) for each request that goes on, the last answer for each that is done.
With nothing running it waits for a frame, as batch mode does.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol import messages
from worker import codec, responses
from worker.channel import Channel
from worker.exits import EXIT_OK, after_eof
from worker.responses import NO_PART
from worker.runtime.context import Context
from worker.sending import FrameSender

logger = logging.getLogger(__name__)

Control = Callable[[dict[str, Any]], None]


@dataclass
class Running:
    """One request of the running batch."""

    id: str
    headers: dict[str, str]
    # The JOIN's request until its first step; None once it continues (no parameters then).
    request: dict[str, Any] | None
    # A response of it has gone out: the daemon has its status and headers, so its later
    # parts may go as bare parts (protocol.messages.bare_part), a third of a part's bytes.
    spoke: bool = False


class StepLoop:
    """Serves a loaded model in continuous mode until SHUTDOWN or EOF."""

    def __init__(self, channel: Channel, service: Any, sender: FrameSender,
                 control: Control) -> None:
        self.channel = channel
        self.service = service
        self.sender = sender
        self.control = control
        self.running: list[Running] = []
        # The latest JOIN's: the daemon names the running batch, STEP and STREAM frames carry it.
        self.batch_id = 0
        # STEP frames sent that no JOIN has acknowledged yet: at STEP_WINDOW the worker waits
        # for the daemon, so steps never pile up unread (a joining request would wait behind
        # them) and a hang-up leaves within a step or two.
        self.unacked = 0

    def run(self) -> int:
        """Serve; the process exit code."""
        while True:
            # With a step due, take what has arrived and never wait; with none (or the daemon
            # STEP_WINDOW steps behind), wait for a frame, and take those that came with it.
            wait = not self.running or self.unacked >= messages.STEP_WINDOW
            for message in self.channel.take_arrived(wait=wait):
                if message is None:
                    return after_eof(self.channel.protocol_error)
                if message.get("kind") == messages.SHUTDOWN:
                    logger.info("shutdown requested (%d running requests dropped)",
                                len(self.running))
                    return EXIT_OK
                self._take(message)
            if self.running and self.unacked < messages.STEP_WINDOW:
                self.step()

    def _take(self, message: dict[str, Any]) -> None:
        if message.get("kind") == messages.JOIN:
            self.join(message)
        else:
            self.control(message)

    def join(self, message: dict[str, Any]) -> None:
        """Cancelled requests leave (those that never ran too), then the new ones join, in
        order, at the next step."""
        if message.get("requests"):   # (a bare acknowledgement or cancel names nothing new)
            self.batch_id = message.get("batch_id", self.batch_id)
        self.unacked = max(0, self.unacked - int(message.get("acks") or 0))
        cancel = set(message.get("cancel") or [])
        if cancel:
            before = len(self.running)
            self.running = [r for r in self.running if r.id not in cancel]
            logger.debug("%d of %d cancelled requests left the running batch",
                         before - len(self.running), len(cancel))
        known = {r.id for r in self.running}
        for request in message.get("requests") or []:
            if request["id"] in known:   # two answers for one id would confuse the daemon
                logger.error("request %s is already in the running batch; the second one is "
                             "ignored", request["id"])
                continue
            known.add(request["id"])
            self.running.append(Running(request["id"], codec.request_headers(request), request))

    def step(self) -> None:
        """Run the handler once on the running batch and send the STEP frame."""
        batch, data, refused = self._decoded()
        batch_id = self.batch_id
        context: Context = self.service.context
        ids = [r.id for r in batch]
        context.begin_batch(ids, [r.headers for r in batch])
        self.service.stream_parts(context, lambda parts: self.sender.parts(batch_id, parts))
        answers: list[dict[str, Any] | None] = []
        try:
            if batch:
                answers = self._answers(context, self.service.call(data, context), batch)
        except (Exception, SystemExit) as exc:  # a handler must never take the worker down
            answers = list(responses.handler_failed(exc, ids))   # ... and every request fails
        finally:
            context.stream_writer = None
        # a request that goes on with nothing to send this step has no response in the frame
        quiet = {ids[idx] for idx, answer in enumerate(answers) if answer is None}
        sent = self.sender.answers(lambda rs, ms: messages.step(batch_id, rs, ms),
                                   refused + [answer for answer in answers if answer is not None],
                                   self.service.take_metrics())
        self.unacked += 1
        going_on = {r["id"] for r in sent if r.get("more")} | quiet
        self.running = [r for r in batch if r.id in going_on]
        for running in self.running:
            running.spoke = running.spoke or running.id not in quiet

    def _decoded(self) -> tuple[list[Running], list[dict[str, Any]], list[dict[str, Any]]]:
        """The running requests the handler sees this step, their parameters (a new one's
        from its JOIN, a continuing one's none), and a 400 for each new one the codec refused
        (it leaves the running batch with that answer)."""
        batch: list[Running] = []
        data: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        for running in self.running:
            try:
                data.append({} if running.request is None
                            else codec.decode_request(running.request))
            except codec.RefusedRequest as exc:
                refused.append(codec.refusal(running.id, exc))
                continue
            running.request = None
            batch.append(running)
        return batch, data, refused

    def _answers(self, context: Context, output: Any,
                 batch: list[Running]) -> list[dict[str, Any] | None]:
        failure = responses.output_failure(output, len(batch))
        if failure is not None:
            return list(responses.failed([r.id for r in batch], failure))
        return [self._answer(context, idx, running, value)
                for idx, (running, value) in enumerate(zip(batch, output))]

    def _answer(self, context: Context, idx: int, running: Running,
                value: Any) -> dict[str, Any] | None:
        """The request's response, a part if its stopping criteria says it goes on. Asked
        before the response is encoded, as TorchServe does: a criteria may set headers.
        None: it goes on with nothing to send (the handler's value was ``NO_PART``, as
        torchd's text_generation handler answers a request that is not streamed)."""
        request_id = running.id
        try:
            more = goes_on(context.stopping_criteria, idx, value)
        except (Exception, SystemExit):
            logger.exception("the stopping criteria of request %s failed", request_id)
            return responses.failed([request_id], codec.PREDICTION_FAILED)[0]
        if more and value is NO_PART:
            return None
        if more and running.spoke and context.get_response_status(idx)[0] == 200:
            return messages.bare_part(request_id, codec.encode_body(value))
        return responses.encode_one(context, idx, request_id, value, more=more)


def goes_on(criteria: Any, idx: int, value: Any) -> bool:
    """Whether request ``idx`` stays in the running batch: its criteria said False (TorchServe:
    any false value but None). No criteria, no entry for it, True or None: it is done."""
    if criteria is None:
        return False
    try:
        check = criteria[idx]
    except (IndexError, KeyError, TypeError):
        return False
    if check is None:
        return False
    verdict = check(value)
    return verdict is not None and not verdict
