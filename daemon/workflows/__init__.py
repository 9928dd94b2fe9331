"""Workflows: TorchServe's DAGs of models and Python functions, served from ``.war`` archives.

A workflow archive (torch-workflow-archiver) holds a spec YAML (``models:`` and ``dag:``) and a
handler file of functions. Registering one registers a model version per DAG node, named
``<workflow>__<node>``, through the normal model path (daemon/control/manager.py): a model node
from its ``.mar``, a function node from the workflow's own directory with the handler
``<file>.py:<function>``. Both run in workers like any model; the daemon only routes each
request's data from node to node (executor.py).

    archive.py   a .war URL -> its extracted directory, manifest and parsed spec
    spec.py      the spec YAML -> nodes with their settings (pure)
    dag.py       the DAG: edges, TorchServe's checks, the order (pure)
    manager.py   the workflow table: register (with rollback), unregister, describe, list,
                 snapshots both ways
    executor.py  one /wfpredict request through the DAG: fan-out, fan-in, retries, timeouts

Its HTTP routes and their OpenAPI paths are daemon/http's (workflows.py, openapi_workflows.py).
"""
