"""A registration URL -> a workflow archive ready to serve: found (or downloaded) in the workflow
store, extracted, its manifest checked and its spec parsed.

A ``.war`` (torch-workflow-archiver) is a zip::

    WAR-INF/MANIFEST.json   {"createdOn", "archiverVersion",
                             "workflow": {"workflowName", "specFile", "handler"}}
    <specFile>              the spec YAML (spec.py)
    <handler>               the functions of the DAG's function nodes (optional)

Where the archive comes from follows the model archives' rules (daemon/models/archives.py:
allowed_urls, downloads into the store, no ``..``), with TorchServe's workflow messages.
``prepare_workflow`` is blocking (run it in a thread) and all-or-nothing: when it raises, nothing
it created is left behind.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from daemon.errors import InternalServerError, InvalidModel, ModelNotFound
from daemon.models.archives import PreparedArchive, resolve_source
from daemon.models.extraction import extract_archive
from daemon.workflows.errors import InvalidWorkflow, WorkflowNotFound
from daemon.workflows.spec import WorkflowSpec, check_functions, parse_spec

logger = logging.getLogger(__name__)

MANIFEST_PATH = "WAR-INF/MANIFEST.json"
SPEC_MAX_BYTES = 1 << 20
_ALREADY_EXISTS = "Model file already exists "


@dataclass(frozen=True)
class PreparedWorkflow:
    url: str                  # as given at registration (describe's workflowUrl)
    source: Path              # the .war file
    downloaded: bool          # we downloaded source into the store: delete it on unregister
    directory: Path           # our extracted copy
    name: str
    manifest: dict[str, Any]
    handler: str | None       # the handler file's name in ``directory``
    spec: WorkflowSpec

    def function_archive(self, model: str, function: str) -> PreparedArchive:
        """What a function node's model version runs from: the workflow's own directory (its
        model_dir; the workflow, not the node, removes it), handler ``<file>.py:<function>``.
        source == model_dir marks it as not the node's to delete."""
        handler = f"{self.handler}:{function}"
        manifest = {"runtime": "python", "model": {"modelName": model, "modelVersion": "1.0",
                                                   "handler": handler}}
        return PreparedArchive(source=self.directory, downloaded=False,
                               model_dir=self.directory, manifest=manifest,
                               model_yaml_config={})


def prepare_workflow(url: str, *, workflow_store: Path, extract_root: Path,
                     allowed_urls: list[str], s3_sse_kms: bool = False,
                     name: str | None = None, downloaded_copy: str | None = None,
                     ) -> PreparedWorkflow:
    """Resolve, fetch if remote, extract and read the workflow ``url`` names; ``name``
    overrides the manifest's workflowName. ``downloaded_copy`` (a snapshot's restore): the
    store file ``url`` was downloaded to once, read instead of fetching again."""
    source, downloaded = _resolve(downloaded_copy or url, workflow_store, allowed_urls,
                                  s3_sse_kms, label=url)
    downloaded = downloaded or downloaded_copy is not None
    try:
        if source.is_dir():
            raise WorkflowNotFound(f"Workflow not found at: {url}")
        directory = _extract(source, extract_root)
    except BaseException:
        if downloaded and downloaded_copy is None:
            source.unlink(missing_ok=True)
        raise
    try:
        return _read(url, source, downloaded, directory, name)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        if downloaded and downloaded_copy is None:
            source.unlink(missing_ok=True)
        raise


def remove_workflow_files(prepared: PreparedWorkflow, keep_download: bool = False) -> None:
    """Delete our extracted copy and, unless ``keep_download``, a downloaded archive."""
    shutil.rmtree(prepared.directory, ignore_errors=True)
    if prepared.downloaded and not keep_download:
        try:
            prepared.source.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot delete downloaded workflow archive %s: %s", prepared.source,
                           exc)


def _resolve(url: str, store: Path, allowed_urls: list[str], s3_sse_kms: bool,
             label: str) -> tuple[Path, bool]:
    """The model archives' resolution, answered with TorchServe's workflow errors."""
    try:
        return resolve_source(url, model_store=store, allowed_urls=allowed_urls,
                              s3_sse_kms=s3_sse_kms)
    except ModelNotFound as exc:
        if exc.message.startswith(("Model not found at:", "empty url")):
            raise WorkflowNotFound(f"Workflow not found in workflow store: {label}") from exc
        raise WorkflowNotFound(exc.message) from exc   # relative path, URL not allowed
    except InternalServerError as exc:
        if exc.message.startswith(_ALREADY_EXISTS):
            name = exc.message[len(_ALREADY_EXISTS):]
            raise InternalServerError(f"Workflow file already exists {name}") from exc
        raise


def _extract(source: Path, extract_root: Path) -> Path:
    try:
        return extract_archive(source, extract_root)
    except InvalidModel as exc:
        raise InvalidWorkflow(exc.message) from exc


def _read(url: str, source: Path, downloaded: bool, directory: Path,
          name: str | None) -> PreparedWorkflow:
    manifest = read_manifest(directory, source.name)
    workflow = manifest["workflow"]
    name = name or workflow.get("workflowName")
    check_workflow_name(name)
    assert name is not None
    check_manifest_versions(manifest)
    spec_file = _file_in(directory, workflow.get("specFile"), "specFile", source.name)
    handler = workflow.get("handler") or None
    if handler is not None:
        _file_in(directory, handler, "handler", source.name)
    spec = parse_spec(_load_yaml(spec_file), f"{source.name}: {spec_file.name}")
    check_functions(spec, handler, source.name)
    logger.info("prepared workflow %s from %s in %s (%d nodes)", name, url, directory,
                len(spec.nodes))
    return PreparedWorkflow(url=url, source=source, downloaded=downloaded, directory=directory,
                            name=name, manifest=manifest, handler=handler, spec=spec)


def read_manifest(directory: Path, label: str) -> dict[str, Any]:
    """WAR-INF/MANIFEST.json with TorchServe's checks and messages (a missing file reads as an
    empty manifest, as in TorchServe, and fails its checks)."""
    path = directory / MANIFEST_PATH
    manifest: Any = {}
    if path.is_file():
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidWorkflow(f"{MANIFEST_PATH} in {label} is not valid JSON: "
                                  f"{exc}") from exc
    if not isinstance(manifest, dict):
        raise InvalidWorkflow(f"{MANIFEST_PATH} in {label} must be a JSON object")
    workflow = manifest.get("workflow")
    if not isinstance(workflow, dict):
        raise InvalidWorkflow("Missing Workflow entry in manifest file.")
    for field in ("workflowName", "specFile", "handler"):
        if workflow.get(field) is not None and not isinstance(workflow[field], str):
            raise InvalidWorkflow(f"{MANIFEST_PATH} in {label}: workflow.{field} must be a "
                                  "string")
    return manifest


def check_workflow_name(name: str | None) -> None:
    """The manifest's (or the request's) name: one that URL paths and node models can carry."""
    if not name:
        raise InvalidWorkflow("Workflow name is not defined.")
    if "/" in name or name in (".", "..") or name != name.strip():
        raise InvalidWorkflow(f"Invalid workflow name: {name!r} (it must not contain '/' or "
                              "be '.' or '..')")


def check_manifest_versions(manifest: dict[str, Any]) -> None:
    """TorchServe's remaining manifest checks, in its order (after the name's)."""
    if manifest.get("archiverVersion") is None:
        raise InvalidWorkflow("Workflow archive version is not defined.")
    if manifest.get("createdOn") is None:
        raise InvalidWorkflow("Workflow archive createdOn is not defined.")


def _file_in(directory: Path, name: Any, field: str, label: str) -> Path:
    """A file the manifest names, inside the extracted archive."""
    if not isinstance(name, str) or not name:
        raise InvalidWorkflow(f"{MANIFEST_PATH} in {label} names no {field}")
    path = directory / name
    root = os.path.realpath(directory)
    if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file() \
            or not os.path.realpath(path).startswith(root + os.sep):
        raise InvalidWorkflow(f"{field} {name} named by the manifest of {label} is not in the "
                              "archive")
    return path


def _load_yaml(path: Path) -> Any:
    if path.stat().st_size > SPEC_MAX_BYTES:
        raise InvalidWorkflow(f"{path.name} is larger than {SPEC_MAX_BYTES} bytes")
    try:
        return yaml.safe_load(path.read_bytes())
    except (OSError, yaml.YAMLError) as exc:
        # PyYAML's messages span lines (with a source excerpt); an error message should not.
        raise InvalidWorkflow(f"{path.name} is not valid YAML: "
                              f"{' '.join(str(exc).split())}") from exc
