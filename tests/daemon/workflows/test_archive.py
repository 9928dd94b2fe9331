"""daemon.workflows.archive: a .war found in the workflow store, extracted, its manifest and spec
read, with TorchServe's messages; nothing left behind when it is refused."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from daemon.errors import TorchdError
from daemon.workflows.archive import prepare_workflow, remove_workflow_files
from tests.support.workflows import build_war

SPEC = "models:\n  m1:\n    url: m1.mar\ndag:\n  pre: [m1]\n  m1: [post]\n"
HANDLER = "def pre(data, context):\n    return data\n\n\ndef post(data, context):\n" \
          "    return data\n"
MANIFEST = {"createdOn": "06/12/2026 10:00:00", "archiverVersion": "0.2.15",
            "workflow": {"workflowName": "hand", "specFile": "spec.yaml",
                         "handler": "handler.py"}}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


def prepare(store: Path, url: str, **kwargs):
    return prepare_workflow(url, workflow_store=store, extract_root=store.parent / "extract",
                            allowed_urls=["https://.*"], **kwargs)


def write_war(store: Path, name: str, manifest: dict | None, files: dict[str, str]) -> Path:
    path = store / f"{name}.war"
    with zipfile.ZipFile(path, "w") as war:
        if manifest is not None:
            war.writestr("WAR-INF/MANIFEST.json", json.dumps(manifest))
        for file_name, text in files.items():
            war.writestr(file_name, text)
    return path


def extracted(store: Path) -> list[Path]:
    root = store.parent / "extract"
    return list(root.iterdir()) if root.exists() else []


def test_archiver_output_is_read(store: Path, tmp_path: Path) -> None:
    build_war("wf", SPEC, store, tmp_path / "work", HANDLER)
    prepared = prepare(store, "wf.war")
    assert (prepared.name, prepared.url, prepared.handler) == ("wf", "wf.war", "wf_handler.py")
    assert list(prepared.spec.nodes) == ["pre", "m1", "post"]
    assert not prepared.downloaded and (prepared.directory / "wf_handler.py").is_file()
    function = prepared.function_archive("wf__pre", "pre")
    assert function.model_dir == prepared.directory and not function.extracted
    assert function.manifest["model"]["handler"] == "wf_handler.py:pre"
    remove_workflow_files(prepared)
    assert not prepared.directory.exists() and (store / "wf.war").exists()


def test_request_name_overrides_the_manifest(store: Path) -> None:
    write_war(store, "hand", {**MANIFEST, "workflow": {**MANIFEST["workflow"],
                                                      "workflowName": None}},
              {"spec.yaml": SPEC, "handler.py": HANDLER})
    assert prepare(store, "hand.war", name="renamed").name == "renamed"


@pytest.mark.parametrize(("url", "status", "kind", "message"), [
    ("missing.war", 404, "WorkflowNotFoundException",
     "Workflow not found in workflow store: missing.war"),
    ("../fake.war", 404, "WorkflowNotFoundException",
     "Relative path is not allowed in url: ../fake.war"),
    ("http://example.com/x.war", 404, "WorkflowNotFoundException",
     "Given URL http://example.com/x.war does not match any allowed URL(s)"),
])
def test_where_archives_come_from(store: Path, url: str, status: int, kind: str,
                                  message: str) -> None:
    with pytest.raises(TorchdError) as caught:
        prepare(store, url)
    assert caught.value.to_json() == {"code": status, "type": kind, "message": message}


def manifest_without(*keys: str) -> dict:
    return {k: v for k, v in MANIFEST.items() if k not in keys}


@pytest.mark.parametrize(("manifest", "files", "message"), [
    (None, {"spec.yaml": SPEC}, "Missing Workflow entry in manifest file."),
    ({**MANIFEST, "workflow": {"specFile": "spec.yaml"}}, {"spec.yaml": SPEC},
     "Workflow name is not defined."),
    (manifest_without("archiverVersion"), {"spec.yaml": SPEC},
     "Workflow archive version is not defined."),
    (manifest_without("createdOn"), {"spec.yaml": SPEC},
     "Workflow archive createdOn is not defined."),
    ({**MANIFEST, "workflow": {"workflowName": "../x", "specFile": "spec.yaml"}},
     {"spec.yaml": SPEC}, "Invalid workflow name"),
    (MANIFEST, {"handler.py": HANDLER}, "specFile spec.yaml named by the manifest"),
    ({**MANIFEST, "workflow": {"workflowName": "h", "specFile": "spec.yaml"}},
     {"spec.yaml": SPEC}, "has no handler file, but the dag names functions: pre, post"),
    (MANIFEST, {"spec.yaml": "models: [", "handler.py": HANDLER}, "is not valid YAML"),
])
def test_bad_archives_are_400_and_leave_nothing(store: Path, manifest: dict | None,
                                                files: dict[str, str], message: str) -> None:
    write_war(store, "hand", manifest, files)
    with pytest.raises(TorchdError) as caught:
        prepare(store, "hand.war")
    assert message in caught.value.message
    assert caught.value.to_json()["type"] == "InvalidWorkflowException"
    assert caught.value.status == 400
    assert extracted(store) == []


def test_not_a_zip_is_refused(store: Path) -> None:
    (store / "junk.war").write_bytes(b"not an archive at all")
    with pytest.raises(TorchdError) as caught:
        prepare(store, "junk.war")
    assert (caught.value.status, caught.value.type) == (400, "InvalidWorkflowException")
    assert extracted(store) == []


def test_invalid_dag_keeps_torchserve_type(store: Path) -> None:
    write_war(store, "hand", MANIFEST, {"handler.py": HANDLER, "spec.yaml":
                                        "dag:\n  a: [c]\n  b: [c]\n"})
    with pytest.raises(TorchdError) as caught:
        prepare(store, "hand.war")
    assert caught.value.to_json() == {"code": 400, "type": "InvalidDAGException",
                                      "message": "DAG should have only one start node"}
