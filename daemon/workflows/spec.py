"""A workflow's spec YAML -> its nodes and their settings (TorchServe's keys and defaults).

::

    models:
      min-workers: 1          # global settings: every model node's default
      max-workers: 1
      batch-size: 1
      max-batch-delay: 50
      retry-attempts: 1
      timeout-ms: 10000
      m1:
        url: m1.mar           # a .mar in the model store (or an allowed URL)
        batch-size: 4         # a node's own value wins
    dag:
      pre: [m1]               # a name that is not a model is a function of the handler file
      m1: [post]

A model node's settings are its own, else the global ones, else TorchServe's defaults. A
function node runs with one worker, batches of one and no batch delay, and the global
``retry-attempts`` and ``timeout-ms`` (as TorchServe). Models the DAG does not name are not
served (TorchServe registers only the DAG's nodes).

The data is read strictly (a setting must be an integer, a name a plain string): the walk never
follows more than the spec's own entries, so a YAML alias cannot blow it up.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from daemon.workflows.dag import build_dag, dag_text
from daemon.workflows.errors import InvalidWorkflow

logger = logging.getLogger(__name__)

# The spec's setting keys and the NodeSettings fields they set.
SETTING_KEYS = {"min-workers": "min_workers", "max-workers": "max_workers",
                "batch-size": "batch_size", "max-batch-delay": "max_batch_delay",
                "retry-attempts": "retry_attempts", "timeout-ms": "timeout_ms"}
# The least value of each (a try needs some time to run).
SETTING_MINIMUM = {"timeout-ms": 1}
NODE_SEPARATOR = "__"   # a node's model is named <workflow>__<node>


@dataclass(frozen=True)
class NodeSettings:
    """TorchServe's defaults (docs/workflows.md)."""

    min_workers: int = 1
    max_workers: int = 1
    batch_size: int = 1
    max_batch_delay: int = 50      # milliseconds
    retry_attempts: int = 1        # tries after the first one
    timeout_ms: int = 10000        # each try's limit

    def function_settings(self) -> NodeSettings:
        """A function node's: one worker, batches of one, no delay; these retries and
        timeouts."""
        return dataclasses.replace(self, min_workers=1, max_workers=1, batch_size=1,
                                   max_batch_delay=0)


@dataclass(frozen=True)
class Node:
    name: str
    url: str | None          # the model archive; None for a function of the handler file
    settings: NodeSettings

    @property
    def is_function(self) -> bool:
        return self.url is None


@dataclass(frozen=True)
class WorkflowSpec:
    settings: NodeSettings                 # the global ones (describe shows them)
    nodes: dict[str, Node]                 # every DAG node, parents before children
    parents: dict[str, tuple[str, ...]]
    children: dict[str, tuple[str, ...]]
    start: str
    dag_text: str                          # describe's ``workflowDag``

    @property
    def functions(self) -> list[str]:
        return [name for name, node in self.nodes.items() if node.is_function]


def model_name(workflow: str, node: str) -> str:
    """The model a node is served by."""
    return f"{workflow}{NODE_SEPARATOR}{node}"


def parse_spec(data: Any, label: str) -> WorkflowSpec:
    """The spec from its loaded YAML; InvalidWorkflow for a malformed one (``label`` names the
    file), InvalidDAG for a graph TorchServe refuses."""
    if not isinstance(data, dict):
        raise InvalidWorkflow(f"{label} must be a YAML mapping with models: and dag:")
    models = data.get("models")
    if models is None:
        models = {}
    if not isinstance(models, dict):
        raise InvalidWorkflow(f"{label}: models: must be a mapping")
    settings = _settings(models, NodeSettings(), f"{label}: models")
    urls = _model_urls(models, label)
    edges = _edges(data.get("dag"), label)
    dag = build_dag(edges)
    unused = sorted(set(urls) - set(dag.nodes))
    if unused:
        logger.warning("%s: models not in the dag are not served: %s", label, ", ".join(unused))
    nodes = {name: _node(name, urls, models, settings, label) for name in dag.validate()}
    return WorkflowSpec(settings=settings, nodes=nodes, parents=_frozen(dag.parents),
                        children=_frozen(dag.children), start=dag.start_nodes[0],
                        dag_text=dag_text(edges))


def _settings(section: dict, base: NodeSettings, where: str) -> NodeSettings:
    """``base`` with the setting keys ``section`` holds."""
    values = {}
    for key, field in SETTING_KEYS.items():
        if key in section:
            values[field] = _setting(section[key], f"{where}: {key}",
                                     SETTING_MINIMUM.get(key, 0))
    return dataclasses.replace(base, **values)


def _setting(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidWorkflow(f"{where} must be an integer, not a {type(value).__name__}")
    if value < minimum:
        raise InvalidWorkflow(f"{where} must be at least {minimum}, not {value}")
    return value


def _model_urls(models: dict, label: str) -> dict[str, str]:
    """Every model entry of ``models:`` (its keys other than the global settings)."""
    urls = {}
    for name, entry in models.items():
        if name in SETTING_KEYS:
            continue
        _check_name(name, f"{label}: models")
        if not isinstance(entry, dict):
            raise InvalidWorkflow(f"{label}: model {name} must be a mapping with a url")
        url = entry.get("url")
        if not isinstance(url, str) or not url.strip():
            raise InvalidWorkflow(f"{label}: model {name} has no url")
        urls[name] = url.strip()
    return urls


def _edges(section: Any, label: str) -> list[tuple[str, list[str]]]:
    """``dag:`` as (node, [children]) pairs; blank children are skipped, as TorchServe does."""
    if not isinstance(section, dict) or not section:
        raise InvalidWorkflow(f"{label}: dag: must be a mapping of each node to the nodes it "
                              "feeds")
    edges = []
    for source, targets in section.items():
        _check_name(source, f"{label}: dag")
        if targets is None:
            targets = []
        if not isinstance(targets, list):
            raise InvalidWorkflow(f"{label}: dag: {source} must map to a list of nodes")
        children = []
        for target in targets:
            if target is None or (isinstance(target, str) and not target.strip()):
                continue
            _check_name(target, f"{label}: dag: {source}")
            children.append(target)
        edges.append((source, children))
    return edges


def _check_name(name: Any, where: str) -> None:
    """A node name: a plain string that can be part of a model name in a URL path."""
    if not isinstance(name, str):   # never its repr: an aliased list can be huge
        raise InvalidWorkflow(f"{where}: a {type(name).__name__} is not a valid node name")
    if not name.strip() or "/" in name or name != name.strip():
        raise InvalidWorkflow(f"{where}: {name[:100]!r} is not a valid node name")


def _node(name: str, urls: dict[str, str], models: dict, settings: NodeSettings,
          label: str) -> Node:
    if name not in urls:
        return Node(name, None, settings.function_settings())
    return Node(name, urls[name], _settings(models[name], settings, f"{label}: model {name}"))


def _frozen(table: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    return {name: tuple(names) for name, names in table.items()}


def check_functions(spec: WorkflowSpec, handler: str | None, label: str) -> None:
    """Function nodes need the archive's handler file."""
    if spec.functions and not handler:
        raise InvalidWorkflow(f"{label} has no handler file, but the dag names functions: "
                              f"{', '.join(spec.functions)} (or models missing from models:)")

