"""``MockContext``: the context a handler's ``initialize`` and ``handle`` get, without a server.

TorchServe users test their handlers with it (its example
``examples/image_classifier/resnet_18/debugging_backend`` shows how): build the handler, call
``initialize(MockContext(...))``, then ``handle(data, context)``. The constructor takes
TorchServe's arguments with their defaults. Everything else is torchd's own ``Context``, so a
handler may call what it calls in a worker; its metrics are recorded and go nowhere.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from worker.runtime.context import Context
from worker.ts.utils.util import get_yaml_config


class MockContext(Context):
    """The manifest names ``model_pt_file`` and ``model_file`` (either may be None);
    ``system_properties`` holds ``model_dir``, and ``gpu_id`` where CUDA is available;
    ``model_yaml_config`` is ``model_yaml_config_file`` (a path inside ``model_dir``) read."""

    def __init__(self, model_pt_file: str | None = "model.pt",
                 model_dir: str = "ts/torch_handler/unit_tests/models/tmp",
                 model_file: str | None = "model.py", gpu_id: str | None = "0",
                 model_name: str = "mnist", model_yaml_config_file: str | None = None) -> None:
        model: dict[str, str] = {}
        if model_pt_file:
            model["serializedFile"] = model_pt_file
        if model_file:
            model["modelFile"] = model_file
        yaml_config = (get_yaml_config(os.path.join(model_dir, model_yaml_config_file))
                       if model_yaml_config_file else {})
        super().__init__(model_name, model_dir, {"model": model}, batch_size=1, gpu=None,
                         mms_version="", model_yaml_config=yaml_config)
        # TorchServe's mock has these properties only (a handler's .get() finds no others)
        self._system_properties = {"model_dir": model_dir}
        if torch.cuda.is_available() and gpu_id:
            self._system_properties["gpu_id"] = gpu_id
        self.explain = False

    def get_request_header(self, idx: int, key: str) -> Any:
        """As TorchServe's mock: True for a request after the first and any key while
        ``explain`` is set, else False (there are no requests, so no headers)."""
        return bool(idx and key and self.explain)
