"""Sequence batching (TorchServe's examples/stateful/sequence_batching): each sequence keeps a
running sum of the integers its requests carry; a request is answered with the sum so far.

The sums live in this worker only (a sequence's requests are pinned to it), at most
``handler.cache.capacity`` of them (default 10), the least recently used forgotten first. Each
response has the header ``x-worker-pid``, so a client can see which worker holds its sequence.
"""
import collections
import json
import os

from ts.context import Context
from ts.torch_handler.base_handler import BaseHandler

DEFAULT_CAPACITY = 10


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


def cache_capacity(context):
    handler_config = (context.model_yaml_config or {}).get("handler") or {}
    return int((handler_config.get("cache") or {}).get("capacity", DEFAULT_CAPACITY))


class RunningSumHandler(BaseHandler):
    def initialize(self, context: Context):
        # No model: BaseHandler.initialize would look for the archive's serialized file.
        self.context = context
        self.capacity = cache_capacity(context)
        self.sums = collections.OrderedDict()   # sequence id -> sum, least recently used first
        self.initialized = True

    def preprocess(self, data):
        sums = []
        for idx, row in enumerate(data):
            sequence_id = self.context.get_sequence_id(idx)
            total = self.sums.pop(sequence_id, 0) + request_value(row)
            self.sums[sequence_id] = total
            while len(self.sums) > self.capacity:
                self.sums.popitem(last=False)
            self.context.set_response_header(idx, "x-worker-pid", str(os.getpid()))
            sums.append(total)
        return sums

    def inference(self, data, *args, **kwargs):
        return data

    def postprocess(self, data):
        return data
