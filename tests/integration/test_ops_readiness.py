"""/v2/health/ready is what a Kubernetes readiness probe and a load balancer ask: every model's
default version has its minWorkers READY and every declared startup model is registered; /ping
keeps TorchServe's meaning (the registered models are healthy)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(120)


def health(d) -> tuple[int, int]:
    return d.infer("GET", "/v2/health/ready").status_code, d.infer("GET", "/ping").status_code


def test_a_declared_model_that_failed_to_load_keeps_readiness_false(make_daemon) -> None:
    d = make_daemon({"default_workers_per_model": 1}, start=False)
    d.start("--models", "good=noop.mar", "absent=absent.mar", "gone.mar")
    assert [m["modelName"] for m in d.mgmt("GET", "/models").json()["models"]] == ["good"]
    assert health(d) == (503, 200)
    assert "not ready until absent, gone registered" in d.log()
    assert d.register("noop.mar", model_name="absent", initial_workers=1).status_code == 200
    assert health(d) == (503, 200)           # gone.mar is still missing
    assert d.register("echo.mar", model_name="gone", initial_workers=1).status_code == 200
    assert health(d) == (200, 200)


def test_readiness_follows_min_workers_of_every_default_version(make_daemon) -> None:
    d = make_daemon()
    assert health(d) == (200, 200)           # nothing declared, nothing registered
    assert d.register("noop.mar", model_name="zero").status_code == 200   # minWorkers 0
    assert health(d) == (200, 200)
    assert d.register("fail_load.mar", model_name="broken", initial_workers=1,
                      synchronous="false").status_code == 202
    d.wait_workers("broken", 1, status="FAILED")
    assert health(d) == (503, 500)
    assert d.unregister("broken").status_code == 200
    assert health(d) == (200, 200)
