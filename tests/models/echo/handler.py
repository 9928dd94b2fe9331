"""Class handler that answers with what it received, for checking the worker's plumbing."""
import os

from ts.context import Context


def _show(value):
    if isinstance(value, (bytes, bytearray)):
        return {"type": type(value).__name__, "hex": bytes(value).hex()}
    return {"type": type(value).__name__, "value": value}


class EchoHandler:
    def __init__(self):
        self.initialized = False
        self.load_context = None

    def initialize(self, context):
        self.initialized = True
        self.load_context = context
        print("echo handler initialized for", context.model_name)

    def handle(self, data, context):
        return [self._echo(idx, row, context, len(data)) for idx, row in enumerate(data)]

    def _echo(self, idx, row, context, batch_size):
        return {
            "params": {name: _show(value) for name, value in row.items()},
            "headers": {name: context.get_request_header(idx, name)
                        for name in ("x-test", "X-Test", "content-type")},
            "batch_size": batch_size,
            "request_id": context.get_request_id(idx),
            "request_ids": context.request_ids,
            "system_properties": context.system_properties,
            "model_name": context.model_name,
            "manifest_model": context.manifest.get("model", {}),
            "model_yaml_config": context.model_yaml_config,
            "cwd": os.getcwd(),
            "context_is_ts_context": isinstance(context, Context),
            "initialized": self.initialized,
        }
