"""Answers OpenAI's routes the way a language model's handler does, with no model: what it was
given, so a test sees what the daemon handed it.

Body (JSON, one request per batch): OpenAI's request. ``"stream": true`` streams three
server-sent events and ``data: [DONE]``; ``"refuse": true`` raises PredictionException 400 (a
bad parameter); anything else answers one JSON document with the request's ``url_path``,
``explain`` and ``content-type`` headers and the body as the handler decoded it.
"""
import json

from ts.handler_utils.utils import send_intermediate_predict_response
from ts.utils.util import PredictionException

EVENT_STREAM = "text/event-stream"


def handle(data, context):
    if data is None:
        return None
    body = data[0].get("body")
    seen = {"object": "text_completion",
            "model": body.get("model") if isinstance(body, dict) else None,
            "url_path": context.get_request_header(0, "url_path"),
            "explain": context.get_request_header(0, "explain"),
            "content_type": context.get_request_header(0, "content-type"),
            "body": body if isinstance(body, (dict, list, str)) else repr(body)}
    if isinstance(body, dict) and body.get("refuse"):
        raise PredictionException("`refuse` is not a parameter this model takes", 400)
    if isinstance(body, dict) and body.get("stream"):
        context.set_response_content_type(0, EVENT_STREAM)
        for n in range(3):
            event = {"object": "text_completion", "choices": [{"index": 0, "text": str(n)}]}
            send_intermediate_predict_response([f"data: {json.dumps(event)}\n\n"],
                                               context.request_ids, "Partly Done", 200,
                                               context)
        return ["data: [DONE]\n\n"]
    context.set_response_content_type(0, "application/json")
    return [json.dumps(seen)]
