"""The workflows' part of the snapshots: their nodes stay out of "models", their own section
is saved beside it, and a saved entry turns back into the registration it stands for."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from daemon.models.registry import Registry
from daemon.models.snapshots import SnapshotStore, capture
from daemon.workflows.manager import WorkflowRequest, restore_request
from tests.daemon.models.test_registry import version


def test_a_workflows_nodes_are_not_saved_as_models() -> None:
    registry = Registry()
    registry.add(version("plain"))
    registry.add(dataclasses.replace(version("wf__m1"), workflow="wf"))
    assert list(capture(registry)["models"]) == ["plain"]


def test_sections_are_saved_beside_the_models(tmp_path) -> None:
    store = SnapshotStore(tmp_path / "config")
    store.sections["workflows"] = lambda: {"wf": {"url": "wf.war", "nodes": {}}}
    asyncio.run(store.save(Registry()))
    _, state = store.load()
    assert state["workflows"] == {"wf": {"url": "wf.war", "nodes": {}}}
    assert state["models"] == {}


def test_a_saved_workflow_restores_its_registration() -> None:
    nodes = {"m1": {"minWorkers": 2, "maxWorkers": 2, "batchSize": 4}}
    entry = {"url": "https://example.com/wf.war", "responseTimeout": 30, "startupTimeout": None,
             "s3SseKms": False, "downloaded": True, "source": "/store/wf.war", "nodes": nodes}
    assert restore_request("wf", entry) == WorkflowRequest(
        url="https://example.com/wf.war", workflow_name="wf", response_timeout=30,
        startup_timeout=None, s3_sse_kms=False, downloaded_copy="wf.war", saved_nodes=nodes)


@pytest.mark.parametrize(("entry", "error"), [
    (["wf.war"], TypeError),
    ({"nodes": {}}, KeyError),
    ({"url": "wf.war", "nodes": []}, TypeError),
    ({"url": "wf.war", "responseTimeout": "30"}, TypeError),
    ({"url": "https://example.com/wf.war", "downloaded": True}, ValueError),
])
def test_an_entry_that_cannot_be_restored_raises(entry, error) -> None:
    with pytest.raises(error):
        restore_request("wf", entry)
