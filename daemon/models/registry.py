"""Models and their versions: what is registered, with which settings, and which is default.

A version's settings are a frozen ``ModelSettings`` (declared in daemon/config/model_settings.py,
re-exported here); the Supervisor swaps in a changed copy (``Supervisor.update_settings``)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config.model_settings import ModelSettings
from daemon.errors import Conflict, Forbidden, ModelNotFound, ModelVersionNotFound
from daemon.models.queue import JobQueue


@dataclass(eq=False)
class ModelVersion:
    name: str
    version: str
    url: str
    handler: str
    runtime: str
    archive: Any                        # daemon.models.archives.PreparedArchive
    settings: ModelSettings             # frozen; replaced only by Supervisor.update_settings
    queue: JobQueue
    loaded_at_startup: bool = False
    deps_dir: Path | None = None         # its own packages (install_py_dep_per_model)
    compile_cache_dir: Path | None = None  # its workers' shared compiler caches (None: inherited)
    # when it was registered (Unix time): OpenAI's model list shows it as ``created``
    registered_at: float = field(default_factory=time.time)
    # The workflow this version is a node of (daemon/workflows/): the workflow's snapshot entry
    # holds it, not the models' one.
    workflow: str | None = None
    # False for a workflow's function node: GET /models leaves it out, as TorchServe does.
    listed: bool = True

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)

    @property
    def model_dir(self) -> str:
        return str(self.archive.model_dir)

    @property
    def manifest(self) -> dict:
        return self.archive.manifest

    @property
    def yaml_config(self) -> dict:
        return self.archive.model_yaml_config


@dataclass
class Model:
    name: str
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    default_version: str = ""


class Registry:
    """The only owner of the model table. Lookups raise TorchServe's errors."""

    def __init__(self) -> None:
        self._models: dict[str, Model] = {}

    def check_absent(self, name: str, version: str) -> None:
        model = self._models.get(name)
        if model is not None and version in model.versions:
            raise Conflict(f"Model version {version} is already registered for model {name}")

    def add(self, mv: ModelVersion) -> None:
        self.check_absent(mv.name, mv.version)
        model = self._models.setdefault(mv.name, Model(mv.name))
        model.versions[mv.version] = mv
        if not model.default_version:
            model.default_version = mv.version

    def model(self, name: str) -> Model:
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"Model not found: {name}")
        return model

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        model = self.model(name)
        version = version or model.default_version
        mv = model.versions.get(version)
        if mv is None:
            raise ModelVersionNotFound(
                f"Model version: {version} does not exist for model: {name}")
        return mv

    def versions(self, name: str) -> list[ModelVersion]:
        return list(self.model(name).versions.values())

    def check_removable(self, name: str, version: str | None) -> ModelVersion:
        model = self.model(name)
        mv = self.get(name, version)
        if mv.version == model.default_version and len(model.versions) > 1:
            raise Forbidden(f"Cannot remove default version for model {name}", status=403)
        return mv

    def remove(self, mv: ModelVersion) -> None:
        model = self._models.get(mv.name)
        if model is None or model.versions.get(mv.version) is not mv:
            return
        del model.versions[mv.version]
        if not model.versions:
            del self._models[mv.name]
        elif model.default_version == mv.version:
            # Only a rollback gets here (unregister refuses the default while others exist):
            # a first version whose workers failed while a second was registered. Never leave
            # a default that names nothing; the oldest remaining version takes over.
            model.default_version = next(iter(model.versions))

    def set_default(self, name: str, version: str) -> None:
        model = self.model(name)
        if version not in model.versions:
            raise ModelVersionNotFound(
                f"Model version {version} does not exist for model {name}")
        model.default_version = version

    def defaults(self) -> list[ModelVersion]:
        """Every model's default version, sorted by name."""
        return [m.versions[m.default_version] for _, m in sorted(self._models.items())]

    def names(self) -> list[str]:
        """Every registered model's name, sorted."""
        return sorted(self._models)

    def all_versions(self) -> list[ModelVersion]:
        return [mv for _, m in sorted(self._models.items()) for mv in m.versions.values()]

    def holds(self, mv: ModelVersion) -> bool:
        """True while ``mv`` itself (not another object of that name and version) is registered."""
        model = self._models.get(mv.name)
        return model is not None and model.versions.get(mv.version) is mv
