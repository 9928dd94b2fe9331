"""Streams three intermediate parts per request, then a final one.

A JSON body {"delay": s} waits s seconds after each part (so a test can cancel mid-stream).
"""
import time

from ts.handler_utils.utils import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    delay = max(float(row.get("body", {}).get("delay", 0)) for row in data)
    for part in range(3):
        send_intermediate_predict_response([f"part {part}" for _ in data], context.request_ids,
                                           "Intermediate Prediction success", 200, context)
        time.sleep(delay)
    return ["final" for _ in data]
