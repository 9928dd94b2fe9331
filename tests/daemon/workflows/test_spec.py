"""daemon.workflows.spec and dag: the spec YAML read as TorchServe reads it, its DAG checked
with TorchServe's messages."""
from __future__ import annotations

import pytest
import yaml

from daemon.workflows.dag import Dag, build_dag, dag_text
from daemon.workflows.errors import InvalidDAG, InvalidWorkflow
from daemon.workflows.spec import NodeSettings, model_name, parse_spec

DOG_BREED = """
models:
    min-workers: 1
    max-workers: 1
    batch-size: 4
    max-batch-delay: 100
    retry-attempts: 5
    timeout-ms: 300000

    cat_dog_classification:
      url: cat_dog_classification.mar

    dog_breed_classification:
      url: dog_breed_classification.mar
      batch-size: 2
      max-workers: 3

dag:
  pre_processing: [cat_dog_classification, dog_breed_classification]
  cat_dog_classification: [dog_breed_classification]
"""


def spec_of(text: str):
    return parse_spec(yaml.safe_load(text), "spec.yaml")


def test_torchserve_example_nodes_settings_and_order() -> None:
    spec = spec_of(DOG_BREED)
    assert list(spec.nodes) == ["pre_processing", "cat_dog_classification",
                                "dog_breed_classification"]
    assert spec.start == "pre_processing"
    assert spec.settings == NodeSettings(1, 1, 4, 100, 5, 300000)
    cat, dog = spec.nodes["cat_dog_classification"], spec.nodes["dog_breed_classification"]
    assert cat.url == "cat_dog_classification.mar" and cat.settings == spec.settings
    assert (dog.settings.batch_size, dog.settings.max_workers) == (2, 3)
    # a function: one worker, batches of one, no delay; the global retries and timeout
    pre = spec.nodes["pre_processing"]
    assert pre.is_function and spec.functions == ["pre_processing"]
    assert pre.settings == NodeSettings(1, 1, 1, 0, 5, 300000)
    # fan-in: the dog breed model waits for both of its parents
    assert spec.parents["dog_breed_classification"] == ("pre_processing",
                                                        "cat_dog_classification")
    assert spec.dag_text == ("{pre_processing=[cat_dog_classification, "
                             "dog_breed_classification], "
                             "cat_dog_classification=[dog_breed_classification]}")


def test_torchserve_defaults_and_node_names() -> None:
    spec = spec_of("models:\n  m1:\n    url: a.mar\ndag:\n  pre: [m1]\n  m1: [post]\n")
    assert spec.settings == NodeSettings(min_workers=1, max_workers=1, batch_size=1,
                                         max_batch_delay=50, retry_attempts=1,
                                         timeout_ms=10000)
    assert spec.children["m1"] == ("post",) and spec.children["post"] == ()
    assert model_name("wf", "m1") == "wf__m1"


def test_blank_children_are_skipped_and_unused_models_ignored() -> None:
    spec = spec_of("models:\n  m1: {url: a.mar}\n  unused: {url: b.mar}\n"
                   "dag:\n  pre: [m1, '', null]\n  m1:\n")
    assert list(spec.nodes) == ["pre", "m1"]
    assert spec.dag_text == "{pre=[m1], m1=[]}"


@pytest.mark.parametrize(("edges", "message"), [
    ([("a", ["a"])], "Self loop exception"),
    ([("a", ["b", "b"])], "loop exception"),
    ([("a", ["c"]), ("b", ["c"])], "DAG should have only one start node"),
    ([("a", ["b"]), ("b", ["c"]), ("c", ["b"])], "Not a valid DAG"),
    ([("a", ["b"]), ("b", ["a"])], "DAG should have only one start node"),
])
def test_dags_torchserve_refuses(edges, message: str) -> None:
    with pytest.raises(InvalidDAG) as caught:
        build_dag(edges)
    assert caught.value.message == message
    assert caught.value.to_json()["type"] == "InvalidDAGException"
    assert caught.value.status == 400


def test_topological_order_puts_parents_first() -> None:
    dag = build_dag([("d", ["c"]), ("a", ["b", "c"]), ("s", ["a", "d"]), ("b", ["c"])])
    order = dag.validate()
    assert order[0] == "s" and order[-1] == "c"
    for node in order:
        for parent in dag.parents[node]:
            assert order.index(parent) < order.index(node)
    assert dag.leaves == ["c"] and dag.start_nodes == ["s"]


def test_empty_dag_has_no_start_node() -> None:
    with pytest.raises(InvalidDAG, match="only one start node"):
        Dag().validate()


def test_dag_text_is_javas_map_rendering() -> None:
    assert dag_text([("preprocessing", ["m1"]), ("m1", ["postprocessing"])]) == \
        "{preprocessing=[m1], m1=[postprocessing]}"


@pytest.mark.parametrize(("text", "fragment"), [
    ("[1, 2]", "must be a YAML mapping"),
    ("models: [a]\ndag: {a: []}", "models: must be a mapping"),
    ("models: {}\n", "dag: must be a mapping"),
    ("models: {}\ndag: {a: b}", "a must map to a list"),
    ("models: {m1: a.mar}\ndag: {m1: []}", "model m1 must be a mapping"),
    ("models: {m1: {batch-size: 2}}\ndag: {m1: []}", "model m1 has no url"),
    ("models: {batch-size: two}\ndag: {a: []}", "batch-size must be an integer"),
    ("models: {batch-size: true}\ndag: {a: []}", "batch-size must be an integer"),
    ("models: {retry-attempts: -1}\ndag: {a: []}", "retry-attempts must be at least 0"),
    ("models: {timeout-ms: 0}\ndag: {a: []}", "timeout-ms must be at least 1"),
    ("models: {m1: {url: a.mar, max-workers: 1.5}}\ndag: {m1: []}",
     "model m1: max-workers must be an integer"),
    ("dag: {a/b: []}", "'a/b' is not a valid node name"),
    ("dag: {a: [1]}", "a int is not a valid node name"),
])
def test_malformed_specs_are_400_invalid_workflow(text: str, fragment: str) -> None:
    with pytest.raises(InvalidWorkflow) as caught:
        spec_of(text)
    assert fragment in caught.value.message
    assert caught.value.status == 400
    assert caught.value.to_json()["type"] == "InvalidWorkflowException"


def test_alias_bomb_is_refused_without_expanding() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(20))
    data = yaml.safe_load(bomb + "dag:\n  s: *u\n")
    with pytest.raises(InvalidWorkflow, match="a list is not a valid node name"):
        parse_spec(data, "bomb.yaml")
