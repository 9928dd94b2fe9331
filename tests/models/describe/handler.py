"""Class handler with describe_handle (customized metadata)."""
import json


class DescribeHandler:
    def initialize(self, context):
        self.model_name = context.model_name

    def handle(self, data, context):
        return [{"ok": 1} for _ in data]

    def describe_handle(self):
        return json.dumps({"hello": "world", "model": self.model_name})
