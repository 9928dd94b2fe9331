"""A startup model's default worker count follows the CPUs torchd may really use (a pod's CPU
limit is a cgroup quota; taskset and cpusets are the affinity mask), never the host's count:
a 1-CPU pod on a 64-core node must not start 64 workers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


def started_workers(make_daemon, preexec_fn) -> int:
    d = make_daemon(start=False)
    d.start("--models", "cpus=noop.mar", preexec_fn=preexec_fn)
    return len(d.workers("cpus"))


def test_one_allowed_cpu_means_one_worker(make_daemon) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs to tell one from all")
    first = min(os.sched_getaffinity(0))
    assert started_workers(make_daemon, lambda: os.sched_setaffinity(0, {first})) == 1


@pytest.fixture
def one_cpu_cgroup(tmp_path):
    """A cgroup v1 cpu group with a quota of one CPU (a pod's CPU limit of 1)."""
    group = CGROUP_V1_CPU / f"torchd-test-{os.getpid()}-{tmp_path.name}"
    try:
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("100000")
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup v1 cpu group here: {exc}")
    yield group
    # every process in it was killed by pid by the daemon's cleanup; the group empties then
    wait_until(lambda: not (group / "cgroup.procs").read_text().strip(), 10, 0.1,
               "the test cgroup empty")
    group.rmdir()


def test_a_cgroup_cpu_quota_of_one_means_one_worker(one_cpu_cgroup, make_daemon) -> None:
    # one_cpu_cgroup first: set up before the daemon, removed after it is gone
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs to tell one from all")
    procs = one_cpu_cgroup / "cgroup.procs"
    assert started_workers(make_daemon, lambda: procs.write_text(str(os.getpid()))) == 1
