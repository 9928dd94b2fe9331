"""Records each request it runs (its pid and tag, appended to the file the request names),
optionally sleeps and streams parts first; answers {"pid", "tag", "header"} as JSON.

The request is the JSON in the parameter "data" (gRPC's input map) or "body" (REST):
{"tag": str, "log": path, "sleep": s, "parts": n, "part_sleep": s}."""
import json
import os
import time

from ts.handler_utils.utils import send_intermediate_predict_response


def _run(row, idx, context):
    request = json.loads(row.get("data") or row.get("body") or b"{}")
    if request.get("log"):
        with open(request["log"], "a") as log:
            log.write(f"{os.getpid()} {request.get('tag')}\n")
    time.sleep(request.get("sleep", 0))
    for part in range(request.get("parts", 0)):
        send_intermediate_predict_response([f"part {part}"] * (idx + 1),
                                           {idx: context.request_ids[idx]},
                                           "part", 200, context)
        time.sleep(request.get("part_sleep", 0))
    return json.dumps({"pid": os.getpid(), "tag": request.get("tag"),
                       "header": context.get_request_header(idx, "x-test")})


def handle(data, context):
    if data is None:
        return None
    return [_run(row, idx, context) for idx, row in enumerate(data)]
