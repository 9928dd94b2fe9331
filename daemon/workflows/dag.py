"""A workflow's DAG: its edges as the spec's ``dag:`` section lists them, and TorchServe's checks.

``dag:`` maps a node to the nodes it feeds (``pre: [m1, m2]``). A node that feeds none may
appear only on the right. TorchServe's rules, with its messages (InvalidDAGException, 400): no
edge from a node to itself ("Self loop exception"), no edge listed twice ("loop exception"),
exactly one start node ("DAG should have only one start node"), and no cycle ("Not a valid
DAG"). With one start node and no cycle, every node is reached from the start.
"""
from __future__ import annotations

from collections.abc import Iterable

from daemon.workflows.errors import InvalidDAG


class Dag:
    """Nodes in the order the spec first names them; each node's children and parents."""

    def __init__(self) -> None:
        self.children: dict[str, list[str]] = {}
        self.parents: dict[str, list[str]] = {}

    def add_node(self, name: str) -> None:
        if name not in self.children:
            self.children[name] = []
            self.parents[name] = []

    def add_edge(self, source: str, target: str) -> None:
        self.add_node(source)
        self.add_node(target)
        if source == target:
            raise InvalidDAG("Self loop exception")
        if target in self.children[source]:
            raise InvalidDAG("loop exception")
        self.children[source].append(target)
        self.parents[target].append(source)

    @property
    def nodes(self) -> list[str]:
        return list(self.children)

    @property
    def start_nodes(self) -> list[str]:
        return [name for name, parents in self.parents.items() if not parents]

    @property
    def leaves(self) -> list[str]:
        return [name for name, children in self.children.items() if not children]

    def validate(self) -> list[str]:
        """The nodes in an order where every node comes after its parents; InvalidDAG when
        the graph is not one TorchServe serves."""
        if len(self.start_nodes) != 1:
            raise InvalidDAG("DAG should have only one start node")
        order = self._topological_order()
        if len(order) != len(self.children):
            raise InvalidDAG("Not a valid DAG")
        return order

    def _topological_order(self) -> list[str]:
        """Kahn's algorithm: the nodes a cycle holds never reach in-degree 0 and are left out."""
        waiting = {name: len(parents) for name, parents in self.parents.items()}
        ready = [name for name, count in waiting.items() if count == 0]
        order: list[str] = []
        while ready:
            name = ready.pop(0)
            order.append(name)
            for child in self.children[name]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready.append(child)
        return order


def build_dag(edges: Iterable[tuple[str, list[str]]]) -> Dag:
    """The DAG of ``(node, [children])`` pairs, checked (``Dag.validate``)."""
    dag = Dag()
    for source, targets in edges:
        dag.add_node(source)
        for target in targets:
            dag.add_edge(source, target)
    dag.validate()
    return dag


def dag_text(edges: Iterable[tuple[str, list[str]]]) -> str:
    """The ``dag:`` section as TorchServe's describe shows it (``workflowDag``): Java's
    rendering of the YAML map, ``{pre=[m1, m2], m1=[post]}``."""
    return "{" + ", ".join(f"{source}=[{', '.join(targets)}]" for source, targets in edges) + "}"
