"""Message kinds exchanged between the daemon, the zygote and workers, and their fields.

Every message is a msgpack map with a ``kind`` field. Request ids are strings (the HTTP
``x-request-id``), bodies are bytes, headers are lists of ``[name, value]`` string pairs.
Builders below are the single place each message's fields are spelled.
"""
from __future__ import annotations

from typing import Any

from protocol.frames import DEFAULT_MAX_FRAME

# worker -> daemon
HELLO = "hello"            # pid, worker_id
LOADED = "loaded"          # ok, error (cause text, "Type: message"), load_seconds
RESULT = "result"          # batch_id, responses: [response], metrics: [metric] (when any)
STREAM = "stream"          # batch_id, response (one intermediate part for one request)
STEP = "step"              # batch_id, responses: [response (more=True: stays)], metrics
DESCRIBED = "described"    # ok, result (JSON-able), error
PONG = "pong"              # seq

# daemon -> worker
LOAD = "load"              # model_dir, model_name, handler, manifest, threads, gpu_id ...
PREDICT = "predict"        # batch_id, requests: [request]
JOIN = "join"              # batch_id, requests: [request] join, cancel: [id] leave
THREADS = "threads"        # count: torch intra-op threads from now on (the CPU share changed)
DESCRIBE = "describe"      # (no fields)
PING = "ping"              # seq (heartbeat)
SHUTDOWN = "shutdown"      # (no fields)

# LOAD's ``mode``: how the worker takes its requests (TorchServe's model-config.yaml keys)
MODE_BATCH = "batch"            # one PREDICT at a time, one RESULT each (the default)
MODE_CONTINUOUS = "continuous"  # continuousBatching: JOIN frames in, one STEP frame per step out
MODE_ASYNC = "async"            # asyncCommunication: PREDICTs without waiting, RESULTs in any order
MODES = (MODE_BATCH, MODE_CONTINUOUS, MODE_ASYNC)
# Continuous batching: steps a worker may run whose STEP the daemon has not acknowledged yet
# (a JOIN's ``acks``). Two let the worker run a step while the daemon delivers the last one;
# more would let STEP frames pile up unread, and a request joining then waits behind them.
STEP_WINDOW = 2

# TorchServe's request headers of a sequence (config.properties ts_header_key_sequence_*)
SEQUENCE_HEADERS = {"id": "ts_request_sequence_id", "start": "ts_request_sequence_start",
                    "end": "ts_request_sequence_end"}

# daemon <-> zygote, and daemon <-> template (worker/template.py, which forks as the zygote does)
SPAWN = "spawn"            # worker_id, socket_path, title, daemon_pid; preload: a LOAD (template)
SPAWNED = "spawned"        # worker_id, pid  (or error)
EXITED = "exited"          # pid, returncode (negative: killed by that signal)
# template -> daemon, after HELLO: the handler's initialize ran (ok), failed (error), or left
# the process unsafe to fork from (unsafe: why; the workers then load the model themselves)
PRELOADED = "preloaded"    # ok, error, load_seconds, unsafe

Headers = list[list[str]]


def hello(pid: int, worker_id: str) -> dict[str, Any]:
    return {"kind": HELLO, "pid": pid, "worker_id": worker_id}


def load(model_dir: str, model_name: str, handler: str, manifest: dict, batch_size: int,
         model_yaml_config: dict, server_version: str, limit_max_image_pixels: bool = True,
         max_response_size: int = DEFAULT_MAX_FRAME, threads: int = 0,
         gpu_id: int | None = None, service_envelope: str | None = None,
         max_request_frame: int = DEFAULT_MAX_FRAME, mode: str = MODE_BATCH,
         sequence_headers: dict[str, str] | None = None,
         compile_cache_dir: str | None = None,
         ipex_enable: bool = False,
         model_metrics: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``threads``: torch threads (intra- and inter-op) to set before the handler loads; 0
    leaves torch's own default. ``gpu_id``: the CUDA device ordinal the worker's model goes on
    (``context.system_properties["gpu_id"]``); None: the CPU. ``service_envelope``: the request
    envelope the handler is wrapped in (json, body, kserve, kservev2); None: none.
    ``max_request_frame``: the largest frame the daemon may send it (``predict_frame_limit``).
    ``mode``: one of MODES. ``sequence_headers``: the names of the sequence headers (id, start,
    end) the handler's context uses (``context.header_key_sequence_id`` ...).
    ``compile_cache_dir``: where the worker's compiler caches go (None: inductor's own choice).
    ``ipex_enable``: BaseHandler runs the model through Intel's extension (TorchServe's
    ``ipex_enable``; ``context.system_properties["ipex_enable"]``). ``model_metrics``: the
    metrics the configuration declares for handlers, ``{"name", "type", "unit", "dimensions"}``
    each, which ``context.metrics.get_metric`` finds before the handler adds them."""
    return {"kind": LOAD, "model_dir": model_dir, "model_name": model_name, "handler": handler,
            "manifest": manifest, "batch_size": batch_size,
            "model_yaml_config": model_yaml_config, "server_version": server_version,
            "limit_max_image_pixels": limit_max_image_pixels,
            "max_response_size": max_response_size, "threads": threads, "gpu_id": gpu_id,
            "service_envelope": service_envelope, "max_request_frame": max_request_frame,
            "mode": mode, "sequence_headers": dict(sequence_headers or SEQUENCE_HEADERS),
            "compile_cache_dir": compile_cache_dir, "ipex_enable": ipex_enable,
            "model_metrics": list(model_metrics or [])}


def loaded(ok: bool, error: str | None = None, load_seconds: float = 0.0,
           metrics: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``metrics``: what the handler recorded while it loaded (``metric`` maps)."""
    message = {"kind": LOADED, "ok": ok, "error": error, "load_seconds": load_seconds}
    if metrics:
        message["metrics"] = metrics
    return message


def parameter(name: str, content_type: str | None, value: bytes) -> dict[str, Any]:
    return {"name": name, "content_type": content_type, "value": value}


def request(request_id: str, headers: Headers, parameters: list[dict[str, Any]],
            ) -> dict[str, Any]:
    return {"id": request_id, "headers": headers, "parameters": parameters}


def bare_part(request_id: str, body: bytes) -> dict[str, Any]:
    """A STEP's part of a request that has had a response already: status 200, and nothing
    else the daemon reads again (its status line and headers went with the first). Every
    reader of a response takes a missing field as its default."""
    return {"id": request_id, "body": body, "more": True}


def predict(batch_id: int, requests: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": PREDICT, "batch_id": batch_id, "requests": requests}


BAD_REQUEST = "BadRequestException"   # an error_type: the request, not the handler, failed


def response(request_id: str, status: int, reason: str, body: bytes,
             content_type: str | None = None, headers: Headers | None = None,
             error: bool = False, more: bool = False,
             error_type: str | None = None) -> dict[str, Any]:
    """One request's answer. ``error=True`` means the handler failed: ``reason`` is the message
    the daemon renders as TorchServe's error JSON, and ``body`` is empty; ``error_type``
    (BAD_REQUEST) says the worker refused the request itself, before any handler saw it.
    ``more=True`` (a STEP's responses only): a part; the request stays in the running batch for
    the next step."""
    message = {"id": request_id, "status": status, "reason": reason, "body": body,
               "content_type": content_type, "headers": headers or [], "error": error}
    if more:
        message["more"] = True
    if error_type:
        message["error_type"] = error_type
    return message


def result(batch_id: int, responses: list[dict[str, Any]],
           metrics: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``metrics``: what the handler recorded during the batch (``metric`` records); the
    field is left out when there are none, which is most batches."""
    message = {"kind": RESULT, "batch_id": batch_id, "responses": responses}
    if metrics:
        message["metrics"] = metrics
    return message


def metric(name: str, unit: str, metric_type: str, value: float,
           dimensions: list[list[str]], request_id: str | None = None) -> dict[str, Any]:
    """One handler metric record of a RESULT. ``metric_type``: counter, gauge or histogram;
    ``dimensions``: ``[name, value]`` pairs; ``request_id``: the request it was recorded for
    (the metrics log's ``requestID``), when there is one."""
    record = {"name": name, "unit": unit, "type": metric_type, "value": value,
              "dimensions": dimensions}
    if request_id is not None:
        record["request_id"] = request_id
    return record


def join(batch_id: int, requests: list[dict[str, Any]], cancel: list[str],
         acks: int = 0) -> dict[str, Any]:
    """Continuous batching: ``requests`` join the worker's running batch at its next step, the
    requests named in ``cancel`` leave it (their clients hung up). ``batch_id`` names the
    running batch; the worker's STEP and STREAM frames carry it. ``acks``: how many STEP frames
    the daemon has read since its last JOIN (it sends one JOIN per STEP): a worker runs at most
    STEP_WINDOW steps ahead of them."""
    return {"kind": JOIN, "batch_id": batch_id, "requests": requests, "cancel": cancel,
            "acks": acks}


def step(batch_id: int, responses: list[dict[str, Any]],
         metrics: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One step of a running batch: a response per request that took part (``more`` set on
    those that stay for the next step)."""
    message = {"kind": STEP, "batch_id": batch_id, "responses": responses}
    if metrics:
        message["metrics"] = metrics
    return message


def stream(batch_id: int, part: dict[str, Any]) -> dict[str, Any]:
    return {"kind": STREAM, "batch_id": batch_id, "response": part}


def threads(count: int) -> dict[str, Any]:
    return {"kind": THREADS, "count": count}


def describe() -> dict[str, Any]:
    return {"kind": DESCRIBE}


def described(ok: bool, result: Any = None, error: str | None = None) -> dict[str, Any]:
    return {"kind": DESCRIBED, "ok": ok, "result": result, "error": error}


def ping(seq: int) -> dict[str, Any]:
    return {"kind": PING, "seq": seq}


def pong(seq: int) -> dict[str, Any]:
    return {"kind": PONG, "seq": seq}


def shutdown() -> dict[str, Any]:
    return {"kind": SHUTDOWN}


def spawn(worker_id: str, socket_path: str, title: str, daemon_pid: int,
          compiler: bool = False) -> dict[str, Any]:
    """``compiler``: the child's model compiles (model-config.yaml ``pt2``): the zygote imports
    torch's compiler before it forks, once, so this child and every later one inherit it."""
    message = {"kind": SPAWN, "worker_id": worker_id, "socket_path": socket_path,
               "title": title, "daemon_pid": daemon_pid}
    if compiler:
        message["compiler"] = True
    return message


def spawned(worker_id: str, pid: int | None, error: str | None = None) -> dict[str, Any]:
    return {"kind": SPAWNED, "worker_id": worker_id, "pid": pid, "error": error}


def exited(pid: int, returncode: int) -> dict[str, Any]:
    return {"kind": EXITED, "pid": pid, "returncode": returncode}


def spawn_template(template_id: str, socket_path: str, title: str, daemon_pid: int,
                   load: dict[str, Any], compiler: bool = False) -> dict[str, Any]:
    """Asks the zygote to fork a model version's template, which runs ``load`` (a LOAD
    message) once and then forks that version's workers."""
    return {**spawn(template_id, socket_path, title, daemon_pid, compiler), "preload": load}


def preloaded(ok: bool, error: str | None = None, load_seconds: float = 0.0,
              unsafe: str | None = None) -> dict[str, Any]:
    return {"kind": PRELOADED, "ok": ok, "error": error, "load_seconds": load_seconds,
            "unsafe": unsafe}
