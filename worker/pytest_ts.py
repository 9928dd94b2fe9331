"""A pytest plugin (entry point ``pytest11``): ``import ts...`` works in the tests of a project
that has torchd installed, as in torchd's workers.

Handler tests written for TorchServe import ``ts.torch_handler.base_handler``, ``ts.context``
and ``ts.torch_handler.unit_tests.test_utils.mock_context``; without TorchServe installed, those
names are torchd's (worker/ts_alias.py). An installed TorchServe still wins: the alias is the
last place ``import ts`` looks.
"""
from __future__ import annotations

from worker.ts_alias import install_ts_alias

install_ts_alias()
