"""Workflows end to end (issue 27, point 2): archives built here with the real
torch-workflow-archiver, models with torch-model-archiver, served by a real daemon with real
workers. One daemon for the module: each test registers its own workflow and removes it."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.archives import build_archive
from tests.support.daemon import Daemon
from tests.support.supervision import descendants, title
from tests.support.waiting import wait_until
from tests.support.workflows import build_war

# Two models and two functions, with a fan-out (pre feeds both models) and a fan-in (combine
# waits for both).
CALC_SPEC = """
models:
  min-workers: 1
  max-workers: 1
  batch-size: 2
  max-batch-delay: 20
  double:
    url: double.mar
  square:
    url: square.mar
    batch-size: 3
dag:
  pre: [double, square]
  double: [combine]
  square: [combine]
"""
CALC_HANDLER = '''
import json


def pre(data, context):
    if data is None:   # the load-time call
        return None
    return [json.dumps(row["body"]["x"]) for row in data]


def combine(data, context):
    if data is None:
        return None
    return [{"double": json.loads(row["double"]), "square": json.loads(row["square"]),
             "inputs": sorted(row), "x_test": context.get_request_header(idx, "x-test")}
            for idx, row in enumerate(data)]
'''
# Two leaves: the answer is an object of their outputs by node.
SPLIT_SPEC = """
models:
  double: {url: double.mar}
  square: {url: square.mar}
dag:
  pre: [double, square]
"""
FAULTS_HANDLER = '''
def count(context):
    with open(context.get_request_header(0, "x-count-file"), "a") as f:
        f.write("try\\n")


def boom(data, context):
    if data is None:
        return None
    count(context)
    raise ValueError("boom")


def nap(data, context):
    """Answers only once the test lets it: it reads the FIFO the request names to its end."""
    if data is None:
        return None
    count(context)
    with open(context.get_request_header(0, "x-gate")) as gate:
        gate.read()
    return ["late"]
'''
FLAKY_SPEC = "models:\n  retry-attempts: 2\ndag:\n  boom: []\n"
SLOW_SPEC = "models:\n  retry-attempts: 1\n  timeout-ms: 300\ndag:\n  nap: []\n"
BROKEN_SPEC = """
models:
  bad: {url: fail_load.mar}
  double: {url: double.mar}
dag:
  pre: [bad, double]
"""
CYCLE_SPEC = "models: {}\ndag:\n  pre: [a]\n  a: [b]\n  b: [a]\n"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("workflows")
    store = root / "store"
    build_archive("arith", store, name="double", config_file="double.yaml")
    build_archive("arith", store, name="square", config_file="square.yaml")
    build_archive("fail_load", store)
    work = root / "work"
    build_war("calc", CALC_SPEC, store, work, CALC_HANDLER)
    build_war("split", SPLIT_SPEC, store, work, CALC_HANDLER)
    build_war("flaky", FLAKY_SPEC, store, work, FAULTS_HANDLER)
    build_war("slow", SLOW_SPEC, store, work, FAULTS_HANDLER)
    build_war("broken", BROKEN_SPEC, store, work, CALC_HANDLER)
    build_war("cycle", CYCLE_SPEC, store, work, CALC_HANDLER)
    daemon = Daemon(root / "daemon", store)
    try:
        daemon.start(ncs=False)   # snapshots on: a test restarts it from them (a fresh directory)
        yield daemon
    finally:
        daemon.cleanup()


def register(daemon: Daemon, url: str, **params: Any):
    response = daemon.mgmt("POST", "/workflows", params={"url": url, **params})
    daemon.track_descendants()
    return response


def unregister(daemon: Daemon, name: str) -> None:
    response = daemon.mgmt("DELETE", f"/workflows/{name}")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": f'Workflow "{name}" unregistered'}


def error(response) -> tuple[int, dict[str, Any]]:
    return response.status_code, response.json()


def listed_models(daemon: Daemon) -> list[str]:
    return [m["modelName"] for m in daemon.mgmt("GET", "/models").json()["models"]]


def worker_titles(daemon: Daemon, workflow: str) -> list[str]:
    return [t for t in map(title, descendants(daemon)) if f" {workflow}__" in t]


def assert_gone(daemon: Daemon, workflow: str, nodes: list[str]) -> None:
    """No model of the workflow's nodes is left, nor any of their workers."""
    assert not [m for m in listed_models(daemon) if m.startswith(f"{workflow}__")]
    for node in nodes:
        assert daemon.mgmt("GET", f"/models/{workflow}__{node}").status_code == 404
    wait_until(lambda: not worker_titles(daemon, workflow), 30,
               what=lambda: f"no worker of {workflow} (have {worker_titles(daemon, workflow)})")


def calc(daemon: Daemon, x: list[int]):
    return daemon.infer("POST", "/wfpredict/calc", json={"x": x}, headers={"X-Test": "t1"})


@pytest.mark.timeout(240)
def test_register_predict_scale_restart_unregister(daemon: Daemon) -> None:
    response = register(daemon, "calc.war")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "Workflow calc has been registered and scaled successfully."}

    answer = calc(daemon, [1, 2, 3])
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"double": [2, 4, 6], "square": [1, 4, 9],
                             "inputs": ["double", "square"], "x_test": "t1"}

    # the model nodes are models like any other; the function nodes are not listed
    assert [m for m in listed_models(daemon) if m.startswith("calc__")] == [
        "calc__double", "calc__square"]
    openai_list = daemon.infer("GET", "/v1/models").json()["models"]
    assert "calc__double" in openai_list and "calc__pre" not in openai_list
    square = daemon.describe("calc__square")[0]
    assert (square["modelUrl"], square["batchSize"], square["maxBatchDelay"]) == (
        "square.mar", 3, 20)
    assert (square["minWorkers"], square["maxWorkers"]) == (1, 1)
    assert len(daemon.wait_workers("calc__pre", 1)) == 1   # described, served by a worker

    assert daemon.mgmt("GET", "/workflows").json() == {
        "workflows": [{"workflowName": "calc", "workflowUrl": "calc.war"}]}
    assert daemon.mgmt("GET", "/workflows", params={"limit": 1, "next_page_token": -2}).json() \
        == {"nextPageToken": "1", "workflows": [{"workflowName": "calc",
                                                  "workflowUrl": "calc.war"}]}
    assert daemon.mgmt("GET", "/workflows/calc").json() == [{
        "workflowName": "calc", "workflowUrl": "calc.war", "minWorkers": 1, "maxWorkers": 1,
        "batchSize": 2, "maxBatchDelay": 20,
        "workflowDag": "{pre=[double, square], double=[combine], square=[combine]}"}]

    scaled = daemon.mgmt("PUT", "/models/calc__double",
                         params={"min_worker": 2, "synchronous": "true"})
    assert scaled.json() == {"status": "Workers scaled to 2 for model: calc__double"}

    # a restart restores the workflow from the snapshot, its scaled node as it was
    assert daemon.stop() == 0
    daemon.start(ncs=False)
    assert daemon.mgmt("GET", "/workflows/calc").status_code == 200
    assert len(daemon.wait_workers("calc__double", 2)) == 2
    daemon.wait_workers("calc__combine", 1)
    answer = calc(daemon, [4])
    assert answer.status_code == 200, daemon.log(5000)
    assert answer.json()["square"] == [16]

    unregister(daemon, "calc")
    assert_gone(daemon, "calc", ["pre", "double", "square", "combine"])
    assert daemon.mgmt("GET", "/workflows").json() == {"workflows": []}
    assert error(daemon.infer("POST", "/wfpredict/calc", data=b"{}")) == (
        404, {"code": 404, "type": "WorkflowNotFoundException",
              "message": "Workflow not found: calc"})


@pytest.mark.timeout(120)
def test_two_leaves_answer_an_object_by_node(daemon: Daemon) -> None:
    assert register(daemon, "split.war").status_code == 200
    try:
        answer = daemon.infer("POST", "/wfpredict/split", json={"x": [3]})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"double": [6], "square": [9]}
        # a body the form parser refuses is the client's 400, as on /predictions
        assert error(daemon.infer("POST", "/wfpredict/split", data=b"x",
                                  headers={"Content-Type": "multipart/form-data"})) == (400, {
            "code": 400, "type": "BadRequestException",
            "message": "Missing boundary in multipart."})
    finally:
        unregister(daemon, "split")


@pytest.mark.timeout(120)
def test_failing_node_is_retried_then_500(daemon: Daemon, tmp_path: Path) -> None:
    assert register(daemon, "flaky.war").status_code == 200
    tries = tmp_path / "tries"
    try:
        answer = daemon.infer("POST", "/wfpredict/flaky", data=b"x",
                              headers={"x-count-file": str(tries)})
        assert error(answer) == (500, {"code": 500, "type": "InternalServerException",
                                       "message": "Error executing boom"})
        assert tries.read_text().count("try") == 3   # the first try and retry-attempts: 2
        assert daemon.wait_workers("flaky__boom", 1)   # the worker stays up
    finally:
        unregister(daemon, "flaky")


@pytest.mark.timeout(120)
def test_node_past_its_timeout_fails_without_waiting_for_it(daemon: Daemon,
                                                            tmp_path: Path) -> None:
    assert register(daemon, "slow.war").status_code == 200
    gate = tmp_path / "gate"
    os.mkfifo(gate)   # the node's answer waits for it: it never comes within its timeout
    try:
        started = time.monotonic()
        answer = daemon.infer("POST", "/wfpredict/slow", data=b"x",
                              headers={"x-count-file": str(tmp_path / "tries"),
                                       "x-gate": str(gate)})
        elapsed = time.monotonic() - started
        assert error(answer) == (500, {"code": 500, "type": "InternalServerException",
                                       "message": "Error executing nap"})
        assert elapsed < 2.8, elapsed   # two tries of 300 ms, not the node's held answer
    finally:
        release(gate)
        unregister(daemon, "slow")


def release(gate: Path) -> None:
    """Let a node blocked on ``gate`` answer (its late answer is dropped): a writer opens the
    FIFO and closes it, and the reader reads its end. No reader there: nothing to release."""
    try:
        os.close(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:   # ENXIO: no node is reading it
        pass


@pytest.mark.timeout(120)
def test_node_that_fails_to_load_rolls_back_the_workflow(daemon: Daemon) -> None:
    code, body = error(register(daemon, "broken.war"))
    assert (code, body["type"]) == (500, "WorkflowException"), body
    assert body["message"].startswith(
        "Workflow broken has failed to register. Failures: [Failed to start workers for "
        "model broken__bad version: 1.0: "), body
    assert "torchd_no_such_module" in body["message"]
    assert daemon.mgmt("GET", "/workflows/broken").status_code == 404
    assert_gone(daemon, "broken", ["pre", "bad", "double"])


@pytest.mark.timeout(60)
def test_errors_as_torchserve(daemon: Daemon) -> None:
    for method, path in (("GET", "/workflows/nope"), ("DELETE", "/workflows/nope")):
        assert error(daemon.mgmt(method, path)) == (404, {
            "code": 404, "type": "WorkflowNotFoundException",
            "message": "Workflow not found: nope"})
    assert error(daemon.infer("GET", "/wfpredict/nope")) == (404, {
        "code": 404, "type": "WorkflowNotFoundException", "message": "Workflow not found: nope"})
    assert error(daemon.mgmt("POST", "/workflows")) == (400, {
        "code": 400, "type": "BadRequestException", "message": "Parameter url is required."})
    assert error(register(daemon, "nope.war")) == (404, {
        "code": 404, "type": "WorkflowNotFoundException",
        "message": "Workflow not found in workflow store: nope.war"})
    assert error(register(daemon, "../fake.war")) == (404, {
        "code": 404, "type": "WorkflowNotFoundException",
        "message": "Relative path is not allowed in url: ../fake.war"})
    assert error(register(daemon, "cycle.war")) == (400, {
        "code": 400, "type": "InvalidDAGException", "message": "Not a valid DAG"})
    assert daemon.mgmt("PATCH", "/workflows").status_code == 405


@pytest.mark.timeout(120)
def test_duplicate_is_409_and_json_body_names_it(daemon: Daemon) -> None:
    first = daemon.mgmt("POST", "/workflows",
                        json={"url": "split.war", "workflow_name": "twin"})
    assert first.status_code == 200, first.text
    try:
        assert error(register(daemon, "split.war", workflow_name="twin")) == (409, {
            "code": 409, "type": "ConflictStatusException",
            "message": "Workflow twin is already registered."})
        assert "twin__double" in listed_models(daemon)
    finally:
        unregister(daemon, "twin")
    assert_gone(daemon, "twin", ["pre", "double", "square"])
