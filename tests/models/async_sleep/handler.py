"""Async mode: ``async def handle`` sleeps without holding the worker's event loop.

Body (JSON): {"sleep": seconds (default 0.5), "part": true (stream one part first)}. Answers
{"slept": seconds, "id": request id} per request, read from the context after the sleep (a
context shared by concurrent batches would show another batch's ids by then), and echoes the
request header ``x-tag`` as the response header ``x-tag``.
"""
import asyncio
import json

from ts.handler_utils.utils import send_intermediate_predict_response

DEFAULT_SLEEP = 0.5


def _body(row):
    body = row.get("body")
    if body is None:
        body = row.get("data")
    if isinstance(body, (bytes, bytearray, str)):
        body = json.loads(body) if body else {}
    return body if isinstance(body, dict) else {}


async def handle(data, context):
    if data is None:   # the load-time call
        return None
    bodies = [_body(row) for row in data]
    seconds = max(float(body.get("sleep", DEFAULT_SLEEP)) for body in bodies)
    if any(body.get("part") for body in bodies):
        send_intermediate_predict_response(
            [{"part": context.get_request_id(idx)} for idx in range(len(data))],
            context.request_ids, "Intermediate", 200, context)
    await asyncio.sleep(seconds)
    answers = []
    for idx in range(len(data)):
        tag = context.get_request_header(idx, "x-tag")
        if tag is not None:
            context.set_response_header(idx, "x-tag", tag)
        answers.append({"slept": seconds, "id": context.get_request_id(idx)})
    return answers
