"""The gRPC listeners' life with the daemon's (issue 16): a busy gRPC port fails the start
before anything loads, each call writes an access line, on SIGTERM a call in flight finishes
while new calls are refused, then the daemon exits 0; TLS (enable_grpc_ssl) and unix sockets."""
from __future__ import annotations

import json
import shutil
import signal
import socket
import tempfile
from pathlib import Path

import grpc
import pytest

from tests.support.tls import self_signed
from tests.support.archives import build_archive, copy_store
from tests.support.daemon import Daemon
from tests.support.grpc_stubs import channel, generate_stubs
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory):
    return generate_stubs(tmp_path_factory.mktemp("stubs"))


def make(archive_dir: Path, workdir: Path) -> Daemon:
    store = copy_store(archive_dir, workdir / "store")
    build_archive("recorder", store, config_file="config.yaml")
    return Daemon(workdir, store)


def test_a_busy_grpc_port_fails_the_start(archive_dir: Path, tmp_path: Path) -> None:
    d = make(archive_dir, tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", d.ports["grpc_management"]))
        busy.listen()
        log = d.failed_start_log()
    assert (f"cannot start: gRPC management API cannot listen on "
            f"127.0.0.1:{d.ports['grpc_management']}") in log


def test_sigterm_lets_a_call_in_flight_finish(archive_dir: Path, tmp_path: Path,
                                              stubs) -> None:
    d = make(archive_dir, tmp_path)
    log = tmp_path / "requests.log"
    try:
        d.start()
        assert d.register("recorder.mar", model_name="rec", initial_workers=1).status_code == 200
        with channel(d.ports["grpc_inference"]) as ch:
            infer = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(ch)

            def request(**body):
                return stubs.inference_pb2.PredictionsRequest(
                    model_name="rec", input={"data": json.dumps(body).encode()})

            assert json.loads(infer.Predictions(request(tag="first"), timeout=60)
                              .prediction)["tag"] == "first"
            slow = infer.Predictions.future(request(tag="slow", log=str(log), sleep=2),
                                            timeout=60)
            wait_until(lambda: log.exists() and log.read_text(), 30, what="the call running")
            d.signal(signal.SIGTERM)
            assert json.loads(slow.result().prediction)["tag"] == "slow"
            with pytest.raises(grpc.RpcError) as info:
                infer.Predictions(request(tag="late"), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert d.proc.wait(60) == 0
        text = d.log()
        path = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
        assert f'grpc-inference "RPC {path}" OK' in text
        assert "late" not in (log.read_text())
    finally:
        d.cleanup()


def test_enable_grpc_ssl(archive_dir: Path, tmp_path: Path, stubs) -> None:
    cert, key = self_signed(tmp_path)
    d = Daemon(tmp_path / "d", copy_store(archive_dir, tmp_path / "d" / "store"),
               {"enable_grpc_ssl": "true", "certificate_file": str(cert),
                "private_key_file": str(key)})
    try:
        d.start()
        target = f"127.0.0.1:{d.ports['grpc_management']}"
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        listing = stubs.management_pb2.ListModelsRequest()
        with grpc.secure_channel(target, credentials) as ch:
            mgmt = stubs.management_pb2_grpc.ManagementAPIsServiceStub(ch)
            assert json.loads(mgmt.ListModels(listing, timeout=30).msg) == {"models": []}
        with grpc.insecure_channel(target) as ch:   # no plain gRPC there
            mgmt = stubs.management_pb2_grpc.ManagementAPIsServiceStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                mgmt.ListModels(listing, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert d.mgmt("GET", "/models").json() == {"models": []}   # REST stays plain
        assert d.stop(timeout=30) == 0
    finally:
        d.cleanup()


def test_unix_socket_listener(archive_dir: Path, tmp_path: Path, stubs) -> None:
    sockets = tempfile.mkdtemp(prefix="tdg-", dir="/tmp")   # short: AF_UNIX paths are short
    d = Daemon(tmp_path / "d", copy_store(archive_dir, tmp_path / "d" / "store"),
               {"grpc_management_address": f"unix:{sockets}/m.sock"})
    try:
        d.start()
        assert d.register("noop.mar", model_name="u", initial_workers=0).status_code == 200
        with grpc.insecure_channel(f"unix:{sockets}/m.sock") as ch:
            mgmt = stubs.management_pb2_grpc.ManagementAPIsServiceStub(ch)
            listed = mgmt.ListModels(stubs.management_pb2.ListModelsRequest(), timeout=30).msg
        assert json.loads(listed)["models"] == [{"modelName": "u", "modelUrl": "noop.mar"}]
    finally:
        d.cleanup()
        shutil.rmtree(sockets, ignore_errors=True)
