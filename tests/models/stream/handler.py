"""Streams three intermediate parts per request, then a final one."""
from ts.handler_utils.utils import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    for part in range(3):
        send_intermediate_predict_response([f"part {part}" for _ in data], context.request_ids,
                                           "Intermediate Prediction success", 200, context)
    return ["final" for _ in data]
