"""No thread oversubscription (the data-path issue): each worker's torch runs its share of the
CPUs torchd may use, set before the handler's first op; when workers come and go, running ones
are told the new intra-op share; describe shows each worker's threads; a global setting and a
per-model key pin the count. Exec-spawned workers: tests/integration/test_supervision_exec.py."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from daemon.osutil import usable_cpus
from tests.support.daemon import Daemon
from tests.support.waiting import wait_until

CPUS = usable_cpus()   # what the daemon sees too: same machine, same cgroup


def share(workers: int) -> int:
    return max(1, CPUS // workers)


def reports(d: Daemon, model: str, concurrent: int) -> dict[int, dict]:
    """Each worker's answer, from ``concurrent`` requests that each hold a worker a while."""
    def ask(_: int) -> dict:
        answer = d.infer("POST", f"/predictions/{model}", data=b"sleep0.3")
        assert answer.status_code == 200, answer.text
        return answer.json()

    with ThreadPoolExecutor(concurrent) as pool:
        return {r["pid"]: r for r in pool.map(ask, range(concurrent))}


def described_threads(d: Daemon, model: str) -> list[int]:
    return sorted(w["threads"] for w in d.workers(model))


def test_workers_split_the_cpus_and_running_ones_follow(make_daemon):
    d = make_daemon()
    assert d.register("threads.mar", initial_workers=1).status_code == 200
    (alone,) = reports(d, "threads", 1).values()
    assert (alone["intra"], alone["inter"]) == (share(1), share(1))
    assert described_threads(d, "threads") == [share(1)]

    scaled = d.mgmt("PUT", "/models/threads", params={"min_worker": 2, "synchronous": "true"})
    assert scaled.status_code == 200, scaled.text
    d.track_descendants()
    seen: dict[int, dict] = {}
    wait_until(lambda: len(seen.update(reports(d, "threads", 4)) or seen) == 2, 30, 0.1,
               "both workers answering")
    first = seen[alone["pid"]]
    newer = next(r for pid, r in seen.items() if pid != alone["pid"])
    assert (newer["intra"], newer["inter"]) == (share(2), share(2))
    # told, not restarted: the same process, its intra-op pool resized, inter-op as started
    assert (first["intra"], first["inter"]) == (share(2), share(1))
    assert described_threads(d, "threads") == [share(2), share(2)]


def test_the_global_setting_and_the_per_model_key_pin_the_count(make_daemon):
    models = {"threads": {"1.0": {"workerThreads": 3}}}
    d = make_daemon({"worker_threads": 2, "models": json.dumps(models)})
    assert d.register("threads.mar", initial_workers=1).status_code == 200
    assert d.register("noop.mar", initial_workers=1).status_code == 200
    (pinned,) = reports(d, "threads", 1).values()
    assert (pinned["intra"], pinned["inter"]) == (3, 3)       # the model's own key wins
    assert described_threads(d, "threads") == [3]
    assert described_threads(d, "noop") == [2]                # the global setting
