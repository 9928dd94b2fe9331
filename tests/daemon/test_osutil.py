"""usable_cpus (daemon/osutil.py): the affinity mask capped by a cgroup quota, v1 or v2, on this
process's cgroup or any above it; fake cgroup trees under tmp_path."""
from __future__ import annotations

import os
from pathlib import Path

from daemon.osutil import cgroup_cpu_quota, usable_cpus


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_on_the_process_cgroup_or_an_ancestor(tmp_path):
    root, me = tmp_path / "cg", tmp_path / "self"
    write(me, "0::/kubepods/pod1/c1\n")
    write(root / "kubepods/pod1/c1/cpu.max", "max 100000\n")
    write(root / "kubepods/pod1/cpu.max", "150000 100000\n")     # 1.5 CPUs on the pod
    write(root / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(root, me) == 1.5
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(root, me) == min(affinity, 2)              # rounded up, never 0


def test_cgroup_v1_quota_and_no_quota_at_all(tmp_path):
    root, me = tmp_path / "cg", tmp_path / "self"
    write(me, "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n0::/\n")
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "100000\n")
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(root, me) == 1.0 and usable_cpus(root, me) == 1
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n")   # unlimited
    assert cgroup_cpu_quota(root, me) is None
    assert usable_cpus(root, me) == len(os.sched_getaffinity(0))


def test_unreadable_cgroups_fall_back_to_the_affinity_mask(tmp_path):
    assert usable_cpus(tmp_path / "none", tmp_path / "none") == len(os.sched_getaffinity(0))
