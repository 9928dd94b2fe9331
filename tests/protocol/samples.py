"""One sample of every message protocol/messages.py builds, shared by the frame and stream tests."""
from __future__ import annotations

import inspect
from typing import Any

from protocol import messages as m

BINARY = bytes(range(256)) * 3  # every byte value, including ones that are invalid UTF-8
HEADERS = [["content-type", "application/octet-stream"], ["x-request-id", "r-1"]]


def _samples() -> dict[str, Any]:
    param = m.parameter("body", "application/octet-stream", BINARY)
    req = m.request("r-1", HEADERS, [param, m.parameter("text", "text/plain", b"hi")])
    part = m.response("r-1", 200, "OK", BINARY, "image/png", [["x-a", "b"]])
    metric = m.metric("HandlerTime", "Milliseconds", "gauge", 1.5,
                      [["ModelName", "noop"], ["Level", "Model"]])
    return {
        "hello": m.hello(4242, "9000"),
        "load": m.load("/tmp/model", "noop", "handler.py", {"model": {"modelName": "noop"}}, 4,
                       {"minWorkers": 1, "handler": {"labels": [1, 2.5, None, True]}}, "0.1.0",
                       limit_max_image_pixels=False, gpu_id=1, mode=m.MODE_CONTINUOUS,
                       sequence_headers={"id": "sid", "start": "s0", "end": "s1"}),
        "loaded": m.loaded(False, "ModuleNotFoundError: No module named 'x'", 1.25),
        "parameter": param,
        "request": req,
        "predict": m.predict(7, [req, m.request("r-2", [], [])]),
        "response": m.response("r-2", 503, "Prediction failed", b"", error=True),
        "bare_part": m.bare_part("r-3", b"token"),
        "result": m.result(7, [part], [metric, m.metric("Hits", "Count", "counter", 2, [])]),
        "metric": metric,
        "stream": m.stream(7, part),
        "join": m.join(8, [req], ["r-0"]),
        "step": m.step(8, [m.response("r-1", 200, "OK", b"3", more=True), part], [metric]),
        "describe": m.describe(),
        "threads": m.threads(3),
        "described": m.described(True, {"custom": ["meta", 1]}),
        "ping": m.ping(2**40),
        "pong": m.pong(2**40),
        "shutdown": m.shutdown(),
        "spawn": m.spawn("9001", "/tmp/w/9001.sock", "torchd worker noop 1.0 9001", 4242),
        "spawned": m.spawned("9001", None, "OSError: fork failed"),
        "exited": m.exited(4343, -9),
        "spawn_template": m.spawn_template("9002", "/tmp/w/t9002.sock",
                                           "torchd template noop 1.0", 4242,
                                           m.load("/tmp/model", "noop", "handler.py", {}, 1, {},
                                                  "0.1.0", threads=1)),
        "preloaded": m.preloaded(True, None, 0.5, unsafe="1 more thread"),
    }


SAMPLES = _samples()


def builder_names() -> set[str]:
    """Every public function defined in protocol/messages.py."""
    return {name for name, fn in inspect.getmembers(m, inspect.isfunction)
            if fn.__module__ == m.__name__ and not name.startswith("_")}
