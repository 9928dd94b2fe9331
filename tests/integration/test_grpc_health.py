"""grpc.health.v1.Health on both gRPC listeners (daemon/rpc/health.py), as a Kubernetes grpc
probe asks it: readiness follows REST's /v2/health/ready, liveness stays SERVING, Watch sees the
change, draining turns readiness off, and no token is needed while every other call (reflection
too) needs one."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase)

from daemon.rpc.generated import management_pb2, management_pb2_grpc
from daemon.rpc.health import INFERENCE_SERVICES, MANAGEMENT_SERVICE
from tests.support.archives import copy_store
from tests.support.daemon import Daemon
from tests.support.grpc_stubs import channel
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(port: int, service: str) -> int:
    with channel(port) as ch:
        # wait_for_ready: the gRPC listeners start serving just after the REST ones
        return health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10,
            wait_for_ready=True).status


def test_health_follows_readiness_without_a_token(archive_dir: Path, tmp_path: Path) -> None:
    store = copy_store(archive_dir, tmp_path / "store")
    d = Daemon(tmp_path, store, {"disable_token_authorization": "false", "shutdown_delay": 5})
    try:
        # a startup model that fails to load: the daemon serves, not ready until it is there
        d.start("--models", "late=fail_load.mar")
        key = json.loads((tmp_path / "key_file.json").read_text())["management"]["key"]
        ports = (d.ports["grpc_inference"], d.ports["grpc_management"])
        for port in ports:
            assert [check(port, name) for name in ("", "readiness", *INFERENCE_SERVICES)] \
                == [NOT_SERVING] * 4
            assert check(port, "liveness") == check(port, MANAGEMENT_SERVICE) == SERVING
            with pytest.raises(grpc.RpcError) as unknown:
                check(port, "no.such.Service")
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        with channel(d.ports["grpc_management"]) as ch:   # every other call needs the key
            with pytest.raises(grpc.RpcError) as denied:
                management_pb2_grpc.ManagementAPIsServiceStub(ch).ListModels(
                    management_pb2.ListModelsRequest(), timeout=10)
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as listing:   # reflection wants the key too
                ProtoReflectionDescriptorDatabase(ch).get_services()
            assert listing.value.code() == grpc.StatusCode.UNAUTHENTICATED

        with channel(ports[0]) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=60)
            assert next(watch).status == NOT_SERVING
            registered = requests.post(
                d.url("management", "/models"), timeout=60,
                params={"url": "noop.mar", "model_name": "late", "initial_workers": 1},
                headers={"Authorization": f"Bearer {key}"})
            assert registered.status_code == 200, registered.text
            assert next(watch).status == SERVING   # within a refresh
            watch.cancel()
        assert check(ports[1], "") == SERVING

        d.signal(signal.SIGTERM)   # draining for shutdown_delay: out of rotation, still alive
        wait_until(lambda: check(ports[0], "") == NOT_SERVING, 20, 0.1,
                   "readiness NOT_SERVING while draining")
        assert check(ports[0], "liveness") == SERVING
        assert d.proc.wait(30) == 0
    finally:
        d.cleanup()
