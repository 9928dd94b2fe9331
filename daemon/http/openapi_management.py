"""Paths and schemas of the management port's OpenAPI document (SPEC 1)."""
from __future__ import annotations

from typing import Any

from daemon.http.openapi_inference import SCHEMAS as INFERENCE_SCHEMAS
from daemon.http.openapi_inference import v1_model_ready
from daemon.http.openapi_builders import (
    boolean,
    error,
    integer,
    json_content,
    model_description,
    operation,
    page_parameters,
    path_param,
    query,
    ref,
    response,
    status,
    string,
)

MODEL_NAME = path_param("model_name", "The model's registered name.")
MODEL_VERSION = path_param("model_version", "A registered version of the model. For GET, `all` "
                           "selects every version.")

# (name, schema, description): one declaration for the query parameters and the JSON body.
REGISTER_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("url", string(),
     ("The archive: a .mar, .tar.gz/.tgz or directory directly in the model store, an http(s) "
      "URL, or s3://bucket/key. Required, in the query or the JSON body.")),
    ("model_name", string(), "The name to register under. Default: the manifest's modelName."),
    ("handler", string(),
     "Overrides the manifest's handler: `module`, `module:function`, or a path to a .py file."),
    ("runtime", string(enum=["python", "python3"]), "Overrides the manifest's runtime."),
    ("batch_size", integer(1), "The most requests a worker receives in one batch."),
    ("max_batch_delay", integer(100),
     "Milliseconds a batch may wait to fill, counted from its first request's arrival."),
    ("initial_workers", integer(),
     "Workers to start. Default: the configured default_workers_per_model, else 0."),
    ("synchronous", boolean(True),
     "Answer after the workers are up (true), or at once with 202 (false)."),
    ("response_timeout", integer(),
     ("Seconds a worker may take to answer a batch before it is replaced. Default: the "
      "configured default_response_timeout (120).")),
    ("startup_timeout", integer(),
     ("Seconds a worker may take to load the model. Default: the configured "
      "default_startup_timeout (120). 0, as in TorchServe, leaves no time: workers fail to "
      "start (500).")),
    ("s3_sse_kms", boolean(False),
     ("Fetch an https S3 URL with the AWS credentials of the server's environment (SSE-KMS "
      "encrypted objects).")),
]

SCALE_PARAMETERS = [
    query("min_worker", integer(1, minimum=0), "The fewest workers to keep."),
    query("max_worker", integer(minimum=0), "The most workers to run; at least min_worker. "
          "Default: min_worker. Within [min_worker, max_worker] the server autoscales by "
          "queue depth."),
    query("synchronous", boolean(False), "Answer after the workers have been adjusted."),
    query("timeout", integer(-1, minimum=-1), "On scale-down, seconds a stopping worker may "
          "spend finishing its batch: 0 stops it at once, -1 waits up to the model's "
          "response_timeout."),
]

UNREGISTER_PARAMETERS = [
    query("synchronous", boolean(), "Accepted for compatibility."),
    query("timeout", integer(), "Accepted for compatibility; in-flight requests get up to the "
          "configured unregister_model_timeout."),
]

DESCRIBE_PARAMETERS = [
    query("customized", boolean(False), "Also ask a worker for the handler's "
          "describe_handle() result, returned as customizedMetadata."),
]

NOT_FOUND = error("Unknown model (ModelNotFoundException) or version "
                  "(ModelVersionNotFoundException).")
MODEL_API_OFF = error("The model API is disabled (MethodNotAllowedException): the management "
                      "address is not loopback and enable_model_api is not set.")


def _register() -> dict[str, Any]:
    body_schema = {"type": "object", "required": ["url"],
                   "properties": {name: schema for name, schema, _ in REGISTER_FIELDS}}
    body = {"required": False, "description": "The same fields as the query parameters, read "
            "when Content-Type is application/json.", "content": json_content(body_schema)}
    return operation(
        "registerModel", "Register a model archive and optionally start workers.",
        {
            "200": status("Registered (and every worker READY when synchronous)."),
            "202": status("Registered; workers are starting (synchronous=false)."),
            "206": status("Registered; fewer workers came up than asked for."),
            "400": error("Missing url, invalid runtime, too many workers, failed download "
                         "(DownloadArchiveException) or invalid archive "
                         "(InvalidModelException)."),
            "404": error("Empty or relative url, url not allowed, or archive not found in the "
                         "model store (ModelNotFoundException)."),
            "405": MODEL_API_OFF,
            "409": error("This name and version are already registered "
                         "(ConflictStatusException)."),
            "413": error("The request body exceeds max_request_size."),
            "500": error("The downloaded file already exists in the model store, or the workers "
                         "failed to start (the model is unregistered again)."),
        },
        [query(name, schema, text) for name, schema, text in REGISTER_FIELDS], body)


def _scale(operation_id: str, target: str) -> dict[str, Any]:
    return operation(
        operation_id, f"Set the worker range of {target}.",
        {
            "200": status("Workers adjusted (synchronous=true)."),
            "202": status("Adjusting workers (synchronous=false)."),
            "206": status("Some workers did not come up."),
            "400": error("max_worker below min_worker, a negative count, or more workers than "
                         "the configured max_workers (BadRequestException)."),
            "404": NOT_FOUND,
            "500": error("The workers failed to start."),
        },
        SCALE_PARAMETERS)


def _describe(operation_id: str, target: str) -> dict[str, Any]:
    return operation(operation_id, f"Describe {target}.",
                     {"200": response("One element per version.",
                                      {"type": "array", "items": ref("ModelDescription")}),
                      "404": NOT_FOUND,
                      "500": error("customized=true: the handler's describe_handle() failed "
                                   "or did not answer in time."),
                      "503": error("customized=true: no READY worker to ask.")},
                     DESCRIBE_PARAMETERS)


def _unregister(operation_id: str, target: str) -> dict[str, Any]:
    return operation(
        operation_id, f"Unregister {target}; queued requests are answered 503.",
        {
            "200": status("Unregistered."),
            "403": error("The default version cannot be removed while other versions exist."),
            "404": NOT_FOUND,
            "405": MODEL_API_OFF,
        },
        UNREGISTER_PARAMETERS)


def paths() -> dict[str, Any]:
    return {
        "/models": {
            "get": operation(
                "listModels", "List the default version of every model, sorted by name.",
                {"200": response("A page of models.", ref("ModelList"))},
                page_parameters()),
            "post": _register(),
        },
        "/models/{model_name}": {
            "parameters": [MODEL_NAME],
            "get": _describe("describeModel", "the model's default version"),
            "put": _scale("scaleWorker", "the model's default version"),
            "delete": _unregister("unregisterModel", "the model's default version"),
            "options": model_description("describeModelApi"),
        },
        "/models/{model_name}/{model_version}": {
            "parameters": [MODEL_NAME, MODEL_VERSION],
            "get": _describe("describeModelVersion", "one version, or every version (`all`)"),
            "put": _scale("scaleWorkerVersion", "one version"),
            "delete": _unregister("unregisterModelVersion", "one version"),
            "options": model_description("describeModelVersionApi"),
        },
        "/models/{model_name}/{model_version}/set-default": {
            "parameters": [MODEL_NAME, MODEL_VERSION],
            "put": operation("setDefault", "Make this version the model's default.",
                             {"200": status("Default version updated."), "404": NOT_FOUND}),
        },
        "/v1/models/{model_name}": {"parameters": [MODEL_NAME],
                                    "get": v1_model_ready("kserveV1ModelReadyManagement")},
        "/token": {
            "get": operation(
                "rotateToken", "Replace a key of key_file.json (requires the API key).",
                {"200": response("The new keys.", {"type": "object"}),
                 "400": error("Missing or unknown type.")},
                [query("type", string(enum=["management", "inference"]), "Which key to "
                       "replace.", required=True)]),
        },
    }


_WORKER = {
    "type": "object",
    "required": ["id", "startTime", "status"],
    "properties": {
        "id": string(description="Unique for the daemon's life, counting from 9000."),
        "startTime": string(description="ISO 8601, UTC."),
        "status": string(enum=["READY", "STARTING", "BACKOFF", "STOPPING", "FAILED"]),
        "memoryUsage": {"type": "integer", "description": "Live RSS in bytes."},
        "pid": {"type": "integer"},
        "gpu": {"type": "boolean", "description": "The worker was placed on a GPU."},
        "gpuUsage": string(description="Its GPU's use, as TorchServe writes it: gpuId::0 "
                           "utilization.gpu [%]::5 % utilization.memory [%]::1 % "
                           "memory.used [MiB]::612 MiB; N/A for a CPU worker."),
        "gpuMemoryUsage": {"type": "integer", "description": "GPU memory of the worker process "
                           "in bytes; only for GPU workers, where NVML reports it."},
        "lastError": string(description="Why the worker last failed or died (torchd)."),
        "threads": {"type": "integer",
                    "description": "torch threads the worker runs with (its share of the CPUs)."},
        "template": {"type": "integer",
                     "description": "pid of the template the worker was forked from, sharing "
                                    "its loaded weights (preloadModel); absent otherwise."},
    },
}

_TEMPLATE = {
    "type": "object",
    "required": ["pid", "status", "memoryUsage"],
    "description": "The version's template process (preloadModel): it ran the handler's "
                   "initialize once and forks the workers. Absent when there is none.",
    "properties": {
        "pid": {"type": "integer"},
        "status": string(enum=["STARTING", "READY", "FALLBACK", "FAILED", "STOPPING"]),
        "memoryUsage": {"type": "integer", "description": "Live RSS in bytes."},
    },
}

SCHEMAS: dict[str, Any] = {
    "V1ModelReady": INFERENCE_SCHEMAS["V1ModelReady"],
    "ModelList": {
        "type": "object",
        "required": ["models"],
        "properties": {
            "nextPageToken": string(description="Offset of the next page; absent on the "
                                    "last page."),
            "models": {"type": "array", "items": {
                "type": "object", "required": ["modelName", "modelUrl"],
                "properties": {"modelName": string(), "modelUrl": string()}}},
        },
    },
    "Worker": _WORKER,
    "ModelDescription": {
        "type": "object",
        "required": ["modelName", "modelVersion", "modelUrl", "runtime", "minWorkers",
                     "maxWorkers", "batchSize", "maxBatchDelay", "workers"],
        "properties": {
            "modelName": string(),
            "modelVersion": string(),
            "modelUrl": string(description="The url given at registration."),
            "engine": string(),
            "runtime": string(),
            "minWorkers": {"type": "integer"},
            "maxWorkers": {"type": "integer"},
            "batchSize": {"type": "integer"},
            "maxBatchDelay": {"type": "integer"},
            "responseTimeout": {"type": "integer"},
            "startupTimeout": {"type": "integer"},
            "loadedAtStartup": {"type": "boolean"},
            "maxRetryTimeoutInSec": {"type": "integer"},
            "clientTimeoutInMills": {"type": "integer"},
            "parallelType": string(description="Always \"\": no model parallelism."),
            "parallelLevel": {"type": "integer"},
            "deviceType": string(description="cpu, gpu, or \"\" when model-config.yaml "
                                 "names none."),
            "deviceIds": {"type": "array", "items": {"type": "integer"},
                          "description": "The GPUs its workers may use; absent: any."},
            "continuousBatching": {"type": "boolean"},
            "useJobTicket": {"type": "boolean"},
            "useVenv": {"type": "boolean"},
            "stateful": {"type": "boolean", "description": "sequenceBatching"},
            "sequenceMaxIdleMSec": {"type": "integer"},
            "sequenceTimeoutMSec": {"type": "integer"},
            "maxNumSequence": {"type": "integer"},
            "maxSequenceJobQueueSize": {"type": "integer"},
            "redispatchOnWorkerDeath": {
                "type": "boolean",
                "description": "Whether a dead worker's requests run once more elsewhere."},
            "ignoredConfigKeys": {
                "type": "array", "items": {"type": "string"},
                "description": "Keys of the archive's model-config.yaml that TorchServe acts "
                               "on and torchd does not implement, ignored because they change "
                               "nothing in the answers (the others refuse the register)."},
            "workers": {"type": "array", "items": ref("Worker")},
            "template": _TEMPLATE,
            "jobQueueStatus": {"type": "object", "properties": {
                "remainingCapacity": {"type": "integer"},
                "pendingRequests": {"type": "integer"}}},
            "customizedMetadata": {"description": "The handler's describe_handle() result "
                                   "(customized=true)."},
        },
    },
}
