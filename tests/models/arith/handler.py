"""Arithmetic on a list of numbers, for workflow tests: the model-config.yaml's ``op`` (double
or square) on each request's ``body``, a JSON list (bytes from a workflow's node, or decoded)."""
import json


def handle(data, context):
    if data is None:  # the load-time call
        return None
    op = context.model_yaml_config.get("op", "double")
    answers = []
    for row in data:
        body = row.get("body")
        values = json.loads(body) if isinstance(body, (bytes, bytearray, str)) else body
        answers.append([v * 2 if op == "double" else v * v for v in values])
    return answers
