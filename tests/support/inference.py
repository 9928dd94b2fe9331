"""The inference tests' daemon (tests/integration/test_inference.py and
test_inference_requests.py): a module-scoped daemon whose store holds the test archives plus
probe.mar, a handler that reports everything it was given, and helpers both modules use. A module
binds the fixtures to its own names (``daemon, probe = inference.daemon, inference.probe``) and
so gets its own daemon."""
from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.support.archives import archive_source, copy_store
from tests.support.daemon import Daemon

MAX_REQUEST = 2 * 1024 * 1024

# A handler that reports everything it was given, so tests see the worker's side of a request.
PROBE = '''
import json
import time

from ts.handler_utils.utils import send_intermediate_predict_response


def _show(value):
    if isinstance(value, (bytes, bytearray)):
        return {"type": "bytes", "hex": bytes(value).hex()}
    return {"type": type(value).__name__, "value": value}


def handle(data, context):
    if data is None:
        return None
    gap = context.get_request_header(0, "x-stream-gap")
    if gap is not None:
        for part in range(3):
            send_intermediate_predict_response([f"part {part}" for _ in data],
                                               context.request_ids, "Partly Done", 200,
                                               context)
            time.sleep(float(gap))
        if context.get_request_header(0, "x-stream-fail"):
            raise ValueError("failed after streaming began")
    return [{"params": {name: _show(value) for name, value in row.items()},
             "headers": context.get_all_request_header(idx),
             "request_id": context.get_request_id(idx),
             "batch_size": len(data),
             "version": context.manifest["model"]["modelVersion"]}
            for idx, row in enumerate(data)]
'''


def build_probe(out: Path, work: Path) -> Path:
    """probe.mar: the PROBE handler archived by the real torch-model-archiver."""
    return archive_source(PROBE, "probe", out, work)


@pytest.fixture(scope="module")
def daemon(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One daemon per module; each test registers what it needs under its own name."""
    workdir = tmp_path_factory.mktemp("inference")
    store = copy_store(archive_dir, workdir / "store")
    build_probe(store, workdir / "probe-src")
    d = Daemon(workdir, store, {"max_request_size": MAX_REQUEST})
    d.start()
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def probe(daemon: Daemon):
    r = daemon.register("probe.mar", initial_workers=1)
    assert r.status_code == 200, r.text
    yield "probe"
    daemon.unregister("probe")


def _error(response: requests.Response) -> dict:
    assert response.headers["content-type"] == "application/json"
    return response.json()
