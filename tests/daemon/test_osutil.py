"""usable_cpus (daemon/osutil.py): the affinity mask capped by a cgroup quota, v1 or v2, on this
process's cgroup or any above it; fake cgroup trees under tmp_path. send_queue on a real
loopback connection. exit_description: the words for how a process ended. keep_from_cleaners:
the lock systemd-tmpfiles respects."""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

import pytest

from daemon.osutil import (cgroup_cpu_quota, exit_description, keep_from_cleaners, send_queue,
                           usable_cpus)
from tests.support.waiting import wait_until


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


def test_send_queue_is_what_the_peer_has_not_taken():
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # a small window
        client.connect(server.getsockname())
        peer, _ = server.accept()
        with client, peer:
            assert send_queue(peer.fileno()) == 0
            peer.setblocking(False)
            sent = 0
            with contextlib.suppress(BlockingIOError):   # until the kernel takes no more
                while sent < 1 << 24:
                    sent += peer.send(b"y" * 65536)
            assert 0 < send_queue(peer.fileno()) <= sent
            taken = 0
            while taken < sent:
                taken += len(client.recv(1 << 20))
            wait_until(lambda: send_queue(peer.fileno()) == 0, what="all of it acknowledged")
    with open(os.devnull) as not_a_socket:
        assert send_queue(not_a_socket.fileno()) == 0   # the system says nothing


def test_exit_description_names_the_signal_or_the_code():
    assert exit_description(-9) == "killed by SIGKILL"
    assert exit_description(-15) == "killed by SIGTERM"
    assert exit_description(-200) == "killed by signal 200"
    assert exit_description(0) == "exited with code 0"
    assert exit_description(3) == "exited with code 3"
    assert exit_description(None) == "exit status not reported"


def test_keep_from_cleaners_holds_a_shared_lock_until_closed(tmp_path):
    fd = keep_from_cleaners(tmp_path)
    probe = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BlockingIOError):    # what systemd-tmpfiles tries: it skips the dir
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second = keep_from_cleaners(tmp_path)   # shared: another holder is no conflict
        os.close(second)
        os.close(fd)
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)
