"""What the front ends take from the daemon: the ``Core`` protocol.

The HTTP apps (daemon/http/), the gRPC services (daemon/rpc/) and the listeners are built around
one object that owns the daemon's state; daemon/ops/server.py's ``DaemonCore`` is the one that
serves. They read these attributes and never assign them; the objects behind them change state
only through their own methods (the manager, the Supervisor). A test may hand the front ends any
object of this shape.

Only annotations live here: the classes are imported for the type checker alone, so this module
imports nothing of the daemon at run time and every layer may depend on it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from daemon.config.settings import Config
    from daemon.workers.readiness import Health
    from daemon.control.tokens import TokenStore
    from daemon.metrics import Metrics
    from daemon.models.call import Predictions
    from daemon.control.manager import ModelManager
    from daemon.models.registry import Registry
    from daemon.workers.supervisor import Supervisor
    from daemon.workflows.manager import WorkflowManager


class Core(Protocol):
    config: Config
    version: str                              # the server's version, as /v2 and describe say
    registry: Registry                        # models -> versions -> ModelVersion
    supervisor: Supervisor                    # the worker table (read: counts, readiness)
    manager: ModelManager                     # every management change goes through it
    workflows: WorkflowManager                # the workflows (their nodes are manager's models)
    predictions: Predictions                  # where every front end starts a prediction call
    metrics: Metrics
    health: Health                            # /ping's and the readiness probes' answers
    tokens: TokenStore                        # token authorization (off: ``enabled`` False)
    documents: dict[str, dict[str, Any]]      # the OpenAPI documents: "management", "inference"
