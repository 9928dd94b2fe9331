"""Answer frames (RESULT, STEP, STREAM) sent within the daemon's frame limit.

The daemon drops a connection, and every batch on it, when a frame is bigger than LOAD's
``max_response_size``: rather than send one, the largest bodies become errors, and the metric
records of a batch are left out before any answer is.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from protocol import messages
from protocol.frames import DEFAULT_MAX_FRAME, ProtocolError, encode_frame
from worker.channel import Channel

logger = logging.getLogger(__name__)

Responses = list[dict[str, Any]]
Metrics = list[dict[str, Any]]
# Builds the frame around the responses (and the metric records, when they fit).
Wrap = Callable[[Responses, Metrics | None], dict[str, Any]]


class FrameSender:
    """Sends one worker's answer frames on its channel."""

    def __init__(self, channel: Channel, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.channel = channel
        self.max_frame = max_frame

    def answers(self, wrap: Wrap, responses: Responses,
                metrics: Metrics | None = None) -> Responses:
        """wrap(responses, metrics), else without the metrics, else with bodies made errors;
        the responses as sent."""
        if metrics:
            try:
                frame = encode_frame(wrap(responses, metrics), self.max_frame)
            except ProtocolError:   # the answers matter more: they go without the metrics
                logger.warning("the batch's %d metric records do not fit its frame; they are "
                               "dropped", len(metrics))
            else:
                self.channel.send_encoded(frame)
                return responses
        return self.fitted(lambda rs: wrap(rs, None), responses)

    def parts(self, batch_id: int, parts: Responses) -> None:
        """The streamed parts of one send_intermediate_predict_response call: a frame each."""
        for part in parts:
            self.fitted(lambda rs: messages.stream(batch_id, rs[0]), [part])

    def fitted(self, wrap: Callable[[Responses], dict[str, Any]],
               responses: Responses) -> Responses:
        """Send wrap(responses); while the frame is too big, the largest body becomes an error
        (the daemon would otherwise drop the connection and the whole batch with it). The
        responses as sent."""
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
                # A part that was to continue ends here: its request is answered.
                responses[largest] = messages.response(too_big["id"], 500, reason, b"",
                                                       error=True)
        self.channel.send_encoded(frame)
        return responses
