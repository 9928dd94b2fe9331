"""model-config.yaml's ``pt2`` section: whether BaseHandler compiles its model, and how.

The forms TorchServe 0.12 reads, and what each means here:

- ``pt2: {compile: {enable: true, backend: inductor, mode: ..., ...}}``: compile when ``enable``
  is true; every other key is an argument of ``torch.compile``.
- ``pt2: {export: {aot_compile: true}}``: the serialized file is an AOTInductor ``.so``
  (``torch._export.aot_compile``); nothing is compiled at load.
- ``pt2: "inductor"`` (a backend) and ``pt2: {backend: ..., mode: ...}`` (torch.compile's
  arguments): the older forms, still honoured, with a deprecation warning.

A backend outside ``PT2Backend``'s names is refused with a warning and the model stays eager, as
in TorchServe. Where torchd is stricter: a backend whose package is not installed fails the load
(TorchServe compiles anyway and the first request fails), and the user's dict is never changed.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from worker.ts.torch_handler.accelerators import import_backend_package
from worker.ts.utils.util import check_valid_pt2_backend

logger = logging.getLogger(__name__)

DEFAULT_BACKEND = "inductor"   # torch.compile's own default


class Pt2ConfigError(ValueError):
    """The pt2 section cannot be read: a load failure."""


@dataclass(frozen=True)
class CompilePlan:
    """What the pt2 section asks for: ``kwargs`` for ``torch.compile``, or None for no compile
    (``reason`` says why, for the log)."""

    kwargs: dict[str, Any] | None
    reason: str = ""
    deprecated: bool = False

    @property
    def backend(self) -> str:
        return str((self.kwargs or {}).get("backend", DEFAULT_BACKEND))

    def describe(self) -> str:
        """``backend=inductor, mode=max-autotune``: the arguments, for log lines and errors."""
        kwargs = {"backend": self.backend, **(self.kwargs or {})}
        return ", ".join(f"{key}={value}" for key, value in kwargs.items())


NO_COMPILE = CompilePlan(None, "model-config.yaml has no pt2 section")


def compile_plan(model_yaml_config: Mapping[str, Any] | None) -> CompilePlan:
    """The plan for a model whose model-config.yaml is ``model_yaml_config``."""
    if not model_yaml_config or "pt2" not in model_yaml_config:
        return NO_COMPILE
    pt2 = model_yaml_config["pt2"]
    if isinstance(pt2, Mapping) and "compile" in pt2:
        return _from_compile_section(pt2["compile"])
    if isinstance(pt2, Mapping) and "export" in pt2:
        return CompilePlan(None, "pt2 asks for export, not compile")
    if isinstance(pt2, str):
        return _deprecated(pt2, {"backend": pt2})
    if isinstance(pt2, Mapping):
        return _deprecated(pt2, dict(pt2))
    raise Pt2ConfigError(f"pt2 in model-config.yaml should be a str or a dict, not "
                         f"{type(pt2).__name__} ({pt2!r})")


def _from_compile_section(section: Any) -> CompilePlan:
    if not isinstance(section, Mapping):
        raise Pt2ConfigError(f"pt2.compile in model-config.yaml should be a dict, not "
                             f"{type(section).__name__} ({section!r})")
    if section.get("enable") is not True:
        return CompilePlan(None, f"pt2.compile.enable is {section.get('enable')!r}, not true")
    kwargs = {key: value for key, value in section.items() if key != "enable"}
    return _checked(CompilePlan(kwargs, "pt2.compile"))


def _deprecated(pt2: Any, kwargs: dict[str, Any]) -> CompilePlan:
    logger.warning("pt2: %r in model-config.yaml is a deprecated form; write pt2: {compile: "
                   "{enable: true, backend: ..., mode: ...}} instead (TorchServe issue 3164)", pt2)
    return _checked(CompilePlan(kwargs, "pt2 (deprecated form)", deprecated=True))


def _checked(plan: CompilePlan) -> CompilePlan:
    """No compile, with TorchServe's warning, for a backend outside PT2Backend's names."""
    if "backend" in (plan.kwargs or {}) and not check_valid_pt2_backend(plan.backend):
        return CompilePlan(None, f"pt2 backend {plan.backend!r} is not one TorchServe allows",
                           plan.deprecated)
    return plan


def uses_aot_compile(model_yaml_config: Mapping[str, Any] | None) -> bool:
    """``pt2: {export: {aot_compile: true}}``: a ``.so`` serialized file is an AOTInductor one."""
    pt2 = (model_yaml_config or {}).get("pt2")
    export = pt2.get("export") if isinstance(pt2, Mapping) else None
    return isinstance(export, Mapping) and export.get("aot_compile") is True


def compile_model(model: Any, plan: CompilePlan) -> tuple[Any, bool]:
    """(the model compiled as ``plan`` says, True), or (``model``, False) when the plan asks
    for no compile or ``torch.compile`` refuses (a warning: the model serves eager, as
    TorchServe does). torch.compile itself is lazy: the compile happens on the first call."""
    if plan.kwargs is None:
        logger.debug("no torch.compile: %s", plan.reason)
        return model, False
    import_backend_package(plan.backend)
    try:
        compiled = torch.compile(model, **plan.kwargs)
    except Exception as exc:
        logger.warning("torch.compile(%s) failed, the model serves without compiling: %s: %s",
                       plan.describe(), type(exc).__name__, exc)
        return model, False
    # TorchServe's line, to its end ("Compiled model with backend inductor, mode ..."): its
    # users and tests grep the log for it, some with the line's end
    options = {"backend": plan.backend, **plan.kwargs}
    logger.info("Compiled model with %s",
                ", ".join(f"{key} {value}" for key, value in options.items()))
    logger.info("torch.compile(%s) (from %s)", plan.describe(), plan.reason)
    return compiled, True
