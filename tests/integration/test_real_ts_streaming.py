"""Streaming through the real daemon when the worker imports TorchServe's own ``ts`` package
(on its PYTHONPATH, ahead of torchd's alias): the handler's parts still arrive as chunks."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.test_inference import read_chunked
from tests.support.archives import archive_source
from tests.support.daemon import REPO
from tests.support.real_ts import install_real_ts

HANDLER = '''
import ts.handler_utils.utils as ts_utils
from ts.handler_utils.utils import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    for part in range(3):
        send_intermediate_predict_response([f"part {part}" for _ in data], context.request_ids,
                                           "Intermediate Prediction success", 200, context)
    return [ts_utils.__file__ for _ in data]   # which ts it streamed with
'''


@pytest.fixture(scope="session")
def real_ts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_real_ts(tmp_path_factory.mktemp("real-ts"))


def test_parts_stream_as_chunks_with_the_real_ts_package(make_daemon, real_ts, tmp_path):
    daemon = make_daemon(env={"PYTHONPATH": os.pathsep.join([str(real_ts), str(REPO)])},
                         start=False)
    archive_source(HANDLER, "real_ts_stream", daemon.model_store, tmp_path / "src")
    daemon.start()
    r = daemon.register("real_ts_stream.mar", initial_workers=1)
    assert r.status_code == 200, r.text
    status, head, chunks = read_chunked(daemon.ports["inference"], "/predictions/real_ts_stream")
    assert status == 200 and "ts_stream_next" not in head, head
    bodies = [chunk for _, chunk in chunks]
    assert bodies[:3] == [b"part 0", b"part 1", b"part 2"], bodies
    assert bodies[3:] == [str(real_ts / "ts" / "handler_utils" / "utils.py").encode()], bodies
