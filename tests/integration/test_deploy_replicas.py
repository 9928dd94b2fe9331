"""Three torchd replicas on 127.0.0.2-4 behind a real HAProxy with active health checks on
/v2/health/ready, one shared read-only model store and one shared config.properties naming the
models (as a ConfigMap is shared by a Deployment's pods), under
closed-loop load: a rolling restart (SIGTERM with shutdown_delay, start again) of each replica
in turn loses no request; a SIGKILL of one loses at most the requests in flight on it; every
replica serves the same models. scripts/replicas runs the same for a user."""
from __future__ import annotations

import shutil
import stat
import sys
import time
from pathlib import Path

import pytest

from tests.support.daemon import REPO

sys.path.insert(0, str(REPO / "scripts"))
from replicalib import ClosedLoopLoad, replica_set, rolling_restart  # noqa: E402

pytestmark = pytest.mark.timeout(300)
CLIENTS = 6
BODY = {"sleep": 0.02}   # long enough that requests are in flight at every signal


@pytest.fixture(scope="module")
def shared_store(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model directory every replica reads, with no write bits."""
    store = tmp_path_factory.mktemp("replicas") / "store"
    store.mkdir()
    shutil.copy2(archive_dir / "sleep.mar", store / "sleep.mar")
    shutil.copy2(archive_dir / "noop.mar", store / "noop.mar")
    for path in (store / "sleep.mar", store / "noop.mar", store):
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield store
    store.chmod(0o755)


@pytest.fixture(scope="module")
def replicas(shared_store: Path):
    """One replica set for the module: each test leaves every replica serving again."""
    if shutil.which("haproxy") is None and shutil.which("haproxy", path="/usr/sbin") is None:
        pytest.skip("haproxy is not installed (.ci/run installs it: apt-get install haproxy)")
    with replica_set(shared_store.parent / "replicas", shared_store,
                     ["sleeper=sleep.mar", "noop=noop.mar"]) as (members, proxy):
        yield members, proxy


def test_every_replica_serves_the_declared_models(replicas) -> None:
    members, _ = replicas
    assert [r.model_names() for r in members] == [["noop", "sleeper"]] * len(members)


def test_a_rolling_restart_under_load_loses_no_request(replicas) -> None:
    """Even through a balancer that never retries (as a Kubernetes Service): readiness turns
    503 at SIGTERM, HAProxy stops sending within a check interval, the replica serves on for
    shutdown_delay, then drains. (Without shutdown_delay that balancer's clients get 503s.)"""
    members, proxies = replicas
    no_retry = ClosedLoopLoad(f"{proxies.no_retry.url}/predictions/sleeper", CLIENTS, BODY)
    retrying = ClosedLoopLoad(f"{proxies.retrying.url}/predictions/sleeper", 2, BODY)
    with no_retry, retrying:
        time.sleep(1.0)
        for replica in members:
            assert rolling_restart(replica, proxies) == 0, replica.log()[-3000:]
            assert "serving 2 s more (shutdown_delay)" in replica.log()
        time.sleep(1.0)
    print(f"rolling restart of {len(members)} replicas under load: no retry "
          f"{dict(no_retry.snapshot())}, retrying {dict(retrying.snapshot())}")
    assert no_retry.snapshot()["200"] > 100 and retrying.snapshot()["200"] > 30
    assert (no_retry.failures, retrying.failures) == (0, 0)
    assert all(r.model_names() == ["noop", "sleeper"] for r in members)


def test_a_killed_replica_loses_at_most_its_requests_in_flight(replicas) -> None:
    members, proxies = replicas
    victim = members[0]
    with ClosedLoopLoad(f"{proxies.retrying.url}/predictions/sleeper", CLIENTS, BODY) as load:
        time.sleep(1.0)
        victim.kill()
        proxies.wait_state(victim.name, "DOWN", timeout=10)
        lost = load.failures
        after_kill = load.snapshot()
        time.sleep(1.0)                                # the others carry the load alone
        assert load.failures == lost, load.snapshot()
        victim.start()
        proxies.wait_state(victim.name, "UP")
        time.sleep(0.5)
    print(f"SIGKILL of one replica under load: {lost} lost, {dict(load.snapshot())}")
    # each closed-loop client has one request in flight at most, so CLIENTS bounds what the
    # killed replica held; HAProxy retries refused connections, never a request sent
    assert lost <= CLIENTS, after_kill
    assert load.failures == lost and load.snapshot()["200"] > 100, load.snapshot()
