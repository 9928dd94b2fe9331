"""TorchServe's workflow exceptions, rendered as every torchd error is: {"code", "type",
"message"} with TorchServe's type names."""
from __future__ import annotations

from daemon.errors import TorchdError


class WorkflowNotFound(TorchdError):
    status, type = 404, "WorkflowNotFoundException"


class InvalidWorkflow(TorchdError):
    """The archive or its spec cannot be served. TorchServe answers these with 500 (they fall
    through its handler's catch-all); a client's bad archive is a 400 here, as for models."""

    status, type = 400, "InvalidWorkflowException"


class InvalidDAG(TorchdError):
    status, type = 400, "InvalidDAGException"


class WorkflowFailed(TorchdError):
    """A node failed to register: the whole workflow was rolled back."""

    status, type = 500, "WorkflowException"


def not_found(name: str) -> WorkflowNotFound:
    return WorkflowNotFound(f"Workflow not found: {name}")
