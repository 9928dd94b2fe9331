"""Sequence batching with continuous batching (the behaviour of TorchServe's
examples/stateful/sequence_continuous_batching): a sequence's requests add integers to its
running sum, and some of them stream.

- The request with the sequence's start header opens its sum at 0 (and is answered once).
- -1 cancels the sequence's running streams: each ends at its next step; the -1 request itself
  is answered once with -1.
- 0 ends the sequence: answered once, with the end header (context.header_key_sequence_end)
  naming the sequence.
- Another even number is answered once with the new sum; an odd one streams: a part per step
  (the sum as it stands) for STREAM_STEPS steps, then its last answer.

Every response carries the sequence id header (context.header_key_sequence_id). Whether a
request is done is the stopping criteria's verdict, as in TorchServe's example: None (answered
once), False (a part: it goes on), True (its stream's last answer).
"""
import collections
import json
import logging

from ts.context import Context
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10
STREAM_STEPS = 10   # parts of an odd request before its last answer


def request_value(row):
    """The request's integer: its "data" or "body" parameter, JSON, text or bytes."""
    value = row.get("data")
    if value is None:
        value = row.get("body")
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, dict):
        value = value.get("input")
    return int(value)


def new_sequence_status():
    return {"start": False, "cancel": False, "end": False, "requests": 0}


class StatefulStreamHandler(BaseHandler):
    def initialize(self, context: Context):
        # No model: BaseHandler.initialize would look for the archive's serialized file.
        self.context = context
        # "sequences": sequence id -> {start, cancel, end, requests (how many are running)};
        # "requests": request id -> {"criteria", "stream" (False: answered once)}
        context.cache = {"sequences": {}, "requests": {}}
        handler_config = (context.model_yaml_config or {}).get("handler") or {}
        self.capacity = int((handler_config.get("cache") or {}).get("capacity",
                                                                      DEFAULT_CAPACITY))
        self.sums = collections.OrderedDict()   # sequence id -> sum, least recently used first
        self.initialized = True

    @property
    def sequences(self):
        return self.context.cache["sequences"]

    @property
    def requests(self):
        return self.context.cache["requests"]

    def preprocess(self, data):
        self._forget_departed()
        return [self._take(idx, row) for idx, row in enumerate(data)]

    def inference(self, data, *args, **kwargs):
        return data

    def postprocess(self, data):
        self.context.stopping_criteria = [self.requests[request_id]["criteria"]
                                          for request_id in self.context.request_ids.values()]
        return data

    def _forget_departed(self):
        """A running request missing from this step left the running batch (its client hung
        up): it no longer counts among its sequence's requests."""
        present = set(self.context.request_ids.values())
        for request_id in [i for i in self.requests if i not in present]:
            self._clean_up(self.requests[request_id]["sequence"], request_id, False)

    def _take(self, idx, row):
        ctx = self.context
        sequence_id = ctx.get_sequence_id(idx)
        # A sticky router finds the sequence's worker by this response header.
        ctx.set_response_header(idx, ctx.header_key_sequence_id, sequence_id)
        request_id = ctx.get_request_id(idx)
        if request_id in self.requests:   # a stream goes on: the sum as it stands
            return self.sums.get(sequence_id)
        if ctx.get_request_header(idx, ctx.header_key_sequence_start):
            previous = 0
            self.sequences[sequence_id] = dict(new_sequence_status(), start=True)
        elif sequence_id in self.sums:
            previous = self.sums[sequence_id]
        else:
            previous = None
            logger.error("sequence %s: no start request before request %s", sequence_id,
                         request_id)
        status = self.sequences.setdefault(sequence_id, new_sequence_status())
        state = {"criteria": self._stopping_criteria(request_id, sequence_id), "stream": True,
                 "sequence": sequence_id}
        self.requests[request_id] = state
        status["requests"] += 1
        value = request_value(row)
        if value == -1:
            status["cancel"] = True
            state["stream"] = False
            return value
        if previous is None:   # nothing to add to: the sequence closes
            self._end(idx, sequence_id, status, state)
            return value
        total = previous + value
        self._remember(sequence_id, total)
        if value == 0:
            self._end(idx, sequence_id, status, state)
        elif value % 2 == 0:
            state["stream"] = False
        return total

    def _end(self, idx, sequence_id, status, state):
        status["end"] = True
        state["stream"] = False
        self.context.set_response_header(idx, self.context.header_key_sequence_end, sequence_id)

    def _remember(self, sequence_id, total):
        self.sums.pop(sequence_id, None)
        self.sums[sequence_id] = total
        while len(self.sums) > self.capacity:
            self.sums.popitem(last=False)

    def _clean_up(self, sequence_id, request_id, drop_sequence):
        status = self.sequences.get(sequence_id)
        if status is not None:
            status["requests"] -= 1
            if status["requests"] == 0 and drop_sequence:
                del self.sequences[sequence_id]
        del self.requests[request_id]

    def _stopping_criteria(self, request_id, sequence_id):
        left = [STREAM_STEPS]   # parts still to send while streaming

        def criteria(_result):
            status = self.sequences[sequence_id]
            streaming = self.requests[request_id]["stream"]
            if status["end"]:
                self._clean_up(sequence_id, request_id, True)
                return True if streaming else None
            if status["cancel"]:
                self._clean_up(sequence_id, request_id, False)
                if status["requests"] == 0:
                    status["cancel"] = False
                return True if streaming else None
            if status["start"]:
                self._clean_up(sequence_id, request_id, False)
                status["start"] = False
                return None
            if not streaming:
                self._clean_up(sequence_id, request_id, False)
                return None
            if left[0] == 0:
                self._clean_up(sequence_id, request_id, False)
                return True
            left[0] -= 1
            return False

        return criteria
