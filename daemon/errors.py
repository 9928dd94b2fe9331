"""Exceptions that map to TorchServe's error JSON: {"code", "type", "message"}.

The types only, free of any HTTP library: every layer raises them; the HTTP side renders them
(daemon/http/common.py: error_response), gRPC maps them to its status codes (daemon/rpc/status.py).
"""
from __future__ import annotations


class TorchdError(Exception):
    """An error with an HTTP status and TorchServe's exception type name."""

    status = 500
    type = "InternalServerException"

    def __init__(self, message: str, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def to_json(self) -> dict:
        return {"code": self.status, "type": self.type, "message": self.message}


class BadRequest(TorchdError):
    status, type = 400, "BadRequestException"


class InvalidKey(TorchdError):
    status, type = 401, "InvalidKeyException"


class Forbidden(TorchdError):
    status, type = 403, "InvalidModelVersionException"


class ModelNotFound(TorchdError):
    status, type = 404, "ModelNotFoundException"


class ModelVersionNotFound(TorchdError):
    status, type = 404, "ModelVersionNotFoundException"


class ResourceNotFound(TorchdError):
    status, type = 404, "ResourceNotFoundException"


class MethodNotAllowed(TorchdError):
    status, type = 405, "MethodNotAllowedException"


class Conflict(TorchdError):
    status, type = 409, "ConflictStatusException"


class DownloadArchiveError(TorchdError):
    status, type = 400, "DownloadArchiveException"


class InvalidModel(TorchdError):
    status, type = 400, "InvalidModelException"


class PayloadTooLarge(TorchdError):
    status, type = 413, "BadRequestException"


class InternalServerError(TorchdError):
    status, type = 500, "InternalServerException"


class ServiceUnavailable(TorchdError):
    status, type = 503, "ServiceUnavailableException"


class StreamCutOff(ServiceUnavailable):
    """A streamed answer ended because its client fell too far behind (its job logs why)."""


class RequestTimeout(TorchdError):
    status, type = 504, "RequestTimeoutException"


def no_worker_error(model_name: str) -> ServiceUnavailable:
    """TorchServe's answer to an inference request for a model with no worker to serve it,
    whether it is refused at once or was queued when the last worker went away."""
    return ServiceUnavailable(f'Model "{model_name}" has no worker to serve inference request. '
                              'Please use scale workers API to add workers.')

