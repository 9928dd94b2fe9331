"""Make ``import ts...`` resolve to ``worker.ts...`` inside workers when TorchServe is absent.

The finder is appended at the END of ``sys.meta_path``, so a real ``ts`` package found by the
normal path finder always wins. Only when nothing else can import ``ts`` does it alias the name.

Leaf modules are aliased to the very same module objects (``ts.utils.util.PredictionException``
is ``worker.ts.utils.util.PredictionException``). Packages are aliased to thin copies whose
``__path__`` is empty: if ``ts.torch_handler`` carried the real package's path, the ordinary path
finder would load ``ts.torch_handler.base_handler`` a second time as a different module.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from collections.abc import Sequence
from importlib.machinery import ModuleSpec

ALIAS = "ts"
TARGET = "worker.ts"


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, real_name: str, is_package: bool) -> None:
        self.real_name = real_name
        self.is_package = is_package
        self._real_spec: ModuleSpec | None = None

    def create_module(self, spec: ModuleSpec) -> types.ModuleType:
        real = importlib.import_module(self.real_name)
        if not self.is_package:
            self._real_spec = real.__spec__
            return real
        proxy = types.ModuleType(spec.name, real.__doc__)
        proxy.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
        proxy.__path__ = []
        return proxy

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system stamps the alias spec on the shared module; give it back its own.
        if self._real_spec is not None:
            module.__spec__ = self._real_spec


class TsAliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``ts`` and ``ts.*`` as aliases of ``worker.ts`` and ``worker.ts.*``."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> ModuleSpec | None:
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        real_name = TARGET + fullname[len(ALIAS):]
        try:
            real_spec = importlib.util.find_spec(real_name)
        except ModuleNotFoundError:
            return None
        if real_spec is None:
            return None
        is_package = real_spec.submodule_search_locations is not None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(real_name, is_package),
                                               is_package=is_package)


def install_ts_alias() -> None:
    """Append the alias finder to ``sys.meta_path`` once per process."""
    if not any(isinstance(finder, TsAliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(TsAliasFinder())
