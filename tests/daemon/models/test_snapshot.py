"""Snapshots: the schema both ways (a Registry captured, entries turned back into
registrations), atomic writes, ordering, pruning, and loud failure on a corrupt newest file."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from daemon.models import snapshots
from daemon.models.requests import RegisterRequest
from daemon.models.registry import Registry
from daemon.models.snapshots import (
    SavedModel,
    SnapshotError,
    SnapshotStore,
    capture,
    list_snapshots,
    load_latest_snapshot,
    register_request,
    save_snapshot,
    saved_models,
)
from tests.daemon.models.test_registry import version


def state(n: int = 0, models: int = 1) -> dict:
    return {"models": {f"m{i}": {"defaultVersion": "1.0", "versions": {"1.0": {
        "url": f"m{i}.mar", "minWorkers": n, "maxWorkers": n}}} for i in range(models)}}


# ---- the schema ------------------------------------------------------------------------------

def test_capture_holds_every_version_and_the_default() -> None:
    registry = Registry()
    registry.add(version("m", "1.0", downloaded=True))
    registry.add(version("m", "2.0"))
    state = capture(registry)["models"]
    assert list(state) == ["m"] and state["m"]["defaultVersion"] == "1.0"
    assert set(state["m"]["versions"]) == {"1.0", "2.0"}
    v1 = state["m"]["versions"]["1.0"]
    assert v1 == {"url": "m.mar", "handler": "handler", "runtime": "python",
                  "minWorkers": 1, "maxWorkers": 2, "batchSize": 1, "maxBatchDelay": 100,
                  "responseTimeout": 120, "startupTimeout": 120, "jobQueueSize": 100,
                  "loadedAtStartup": False, "downloaded": True, "source": "/store/m.mar"}
    assert state["m"]["versions"]["2.0"]["downloaded"] is False


def test_a_captured_version_restores_with_every_setting() -> None:
    registry = Registry()
    registry.add(version("m"))
    entry = capture(registry)["models"]["m"]["versions"]["1.0"]
    assert register_request("m", entry) == RegisterRequest(
        url="m.mar", model_name="m", handler="handler", runtime="python", batch_size=1,
        max_batch_delay=100, initial_workers=1, max_workers=2, synchronous=False,
        response_timeout=120, startup_timeout=120, job_queue_size=100,
        loaded_at_startup=False, downloaded_copy=None)


def test_a_download_restores_from_its_copy_keeping_its_url() -> None:
    entry = {"url": "https://example.com/models/dl.mar", "downloaded": True,
             "source": "/var/store/dl.mar", "minWorkers": 1, "loadedAtStartup": True}
    req = register_request("dl", entry)
    assert req.url == "https://example.com/models/dl.mar"   # still what modelUrl shows
    assert req.downloaded_copy == "dl.mar"                   # a name in today's model store
    assert req.loaded_at_startup is True and req.synchronous is False


@pytest.mark.parametrize("entry, error", [
    ({"handler": "h"}, KeyError),
    (["m.mar"], TypeError),
    ({"url": "https://example.com/dl.mar", "downloaded": True}, ValueError),
    ({"url": "https://example.com/dl.mar", "downloaded": True, "source": 7}, ValueError),
])
def test_an_entry_that_cannot_be_restored_raises(entry, error) -> None:
    with pytest.raises(error):
        register_request("m", entry)


def test_saved_models_name_their_default_and_entries() -> None:
    models = saved_models({"models": {"a": {"defaultVersion": "2.0", "versions": {"1.0": {},
                                                                                "2.0": {}}},
                                      "b": {}}})
    assert models == [SavedModel("a", "2.0", {"1.0": {}, "2.0": {}}), SavedModel("b", None, {})]


def test_store_saves_the_registry_and_loads_it_back(tmp_path) -> None:
    registry = Registry()
    registry.add(version("m"))
    store = SnapshotStore(tmp_path / "config", keep=2)
    assert store.load() is None
    paths = [asyncio.run(store.save(registry)) for _ in range(3)]
    assert list_snapshots(tmp_path / "config") == paths[1:]
    path, state = store.load()
    assert path == paths[-1] and state["models"] == capture(registry)["models"]


def test_store_never_lets_an_older_state_land_last(tmp_path, monkeypatch) -> None:
    write = snapshots.save_snapshot

    def slower_when_older(directory, state, **options):
        time.sleep(0.05 * (5 - len(state["models"])))   # unserialised, the oldest lands last
        return write(directory, state, **options)

    monkeypatch.setattr(snapshots, "save_snapshot", slower_when_older)
    store = SnapshotStore(tmp_path, keep=0)
    registry = Registry()

    async def change_and_save_at_once() -> None:
        saves = []
        for i in range(5):
            registry.add(version(f"m{i}"))
            saves.append(asyncio.ensure_future(store.save(registry)))
            await asyncio.sleep(0)   # that save has begun before the next change
        await asyncio.gather(*saves)

    asyncio.run(change_and_save_at_once())
    assert set(store.load()[1]["models"]) == {f"m{i}" for i in range(5)}


# ---- the files -------------------------------------------------------------------------------

def test_missing_or_empty_directory_has_no_snapshot(tmp_path):
    assert load_latest_snapshot(tmp_path / "absent") is None
    assert load_latest_snapshot(tmp_path) is None


def test_round_trip_adds_version_and_created(tmp_path):
    path = save_snapshot(tmp_path / "config", state(3))
    assert path.parent == tmp_path / "config"
    loaded_path, loaded = load_latest_snapshot(tmp_path / "config")
    assert loaded_path == path
    assert loaded["version"] == 1
    assert loaded["created"].endswith("Z") and loaded["created"][:4].isdigit()
    assert loaded["models"] == state(3)["models"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_names_sort_in_write_order_even_within_one_microsecond(tmp_path):
    paths = [save_snapshot(tmp_path, state(i), keep=0) for i in range(50)]
    assert list_snapshots(tmp_path) == paths
    assert len(set(paths)) == 50
    assert load_latest_snapshot(tmp_path)[1]["models"]["m0"]["versions"]["1.0"][
        "minWorkers"] == 49


def test_threads_saving_at_once_never_collide(tmp_path):
    def save_many(k: int) -> list:
        return [save_snapshot(tmp_path, state(k), keep=0) for _ in range(25)]

    with ThreadPoolExecutor(4) as pool:
        paths = [p for batch in pool.map(save_many, range(4)) for p in batch]
    assert len(set(paths)) == 100 == len(list_snapshots(tmp_path))


def test_a_new_name_sorts_after_a_newer_looking_one(tmp_path):
    # The clock stepped back (or another host wrote a later stamp): still written last.
    future = tmp_path / "29991231235959999999-000004-snapshot.cfg"
    future.write_text(json.dumps(state(1)))
    path = save_snapshot(tmp_path, state(2))
    assert path.name == "29991231235959999999-000005-snapshot.cfg"
    assert load_latest_snapshot(tmp_path)[0] == path


def test_kind_is_part_of_the_name(tmp_path):
    assert save_snapshot(tmp_path, state(), kind="shutdown").name.endswith("-shutdown.cfg")
    with pytest.raises(ValueError):
        save_snapshot(tmp_path, state(), kind="../x")


def test_pruning_keeps_the_newest(tmp_path):
    paths = [save_snapshot(tmp_path, state(i), keep=3) for i in range(7)]
    assert list_snapshots(tmp_path) == paths[-3:]


def test_no_temp_file_is_left(tmp_path):
    for i in range(5):
        save_snapshot(tmp_path, state(i))
    assert all(p.name.endswith("-snapshot.cfg") for p in tmp_path.iterdir())


def test_failed_write_leaves_no_temp_and_no_snapshot(tmp_path):
    with pytest.raises(TypeError):
        save_snapshot(tmp_path, {"models": {"m": {"versions": {"1": {"x": object()}}}}})
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_of_a_dead_writer_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True, timeout=30)
    stale = tmp_path / f".snapshot-tmp-{dead.stdout.strip()}-abc"
    stale.write_text("{half")
    live = tmp_path / f".snapshot-tmp-{os.getpid()}-def"  # a live writer's: keep
    live.write_text("{")
    save_snapshot(tmp_path, state())
    assert not stale.exists() and live.exists()


def test_malformed_state_is_refused(tmp_path):
    with pytest.raises(SnapshotError, match='"models"'):
        save_snapshot(tmp_path, {"models": []})
    with pytest.raises(SnapshotError, match="model 'm'"):
        save_snapshot(tmp_path, {"models": {"m": {"versions": [1]}}})
    assert list_snapshots(tmp_path) == []


@pytest.mark.parametrize("content, reason", [
    (b'{"models": {"m": ', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[]", "expected a JSON object"),
    (b'{"version": 1}', '"models"'),
    (b'{"version": 99, "models": {}}', "unsupported snapshot version 99"),
])
def test_corrupt_newest_snapshot_raises_naming_the_file(tmp_path, content, reason):
    save_snapshot(tmp_path, state(1))
    newest = tmp_path / "29990101000000000000-000000-snapshot.cfg"
    newest.write_bytes(content)
    with pytest.raises(SnapshotError) as info:
        load_latest_snapshot(tmp_path)
    assert str(newest) in str(info.value) and reason in str(info.value)
    assert info.value.path == newest


def test_other_files_are_ignored(tmp_path):
    (tmp_path / "20201010101010101-snapshot.cfg").write_text("TorchServe's own format")
    (tmp_path / "notes.txt").write_text("x")
    path = save_snapshot(tmp_path, state(1))
    assert load_latest_snapshot(tmp_path)[0] == path


READER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from daemon.models.snapshots import load_latest_snapshot
    directory, stop = Path(sys.argv[1]), Path(sys.argv[2])
    reads = 0
    deadline = time.monotonic() + 60
    while not stop.exists() and time.monotonic() < deadline:
        found = load_latest_snapshot(directory)  # raises on a partial file
        if found is None:
            continue
        models = found[1]["models"]
        seqs = {m["versions"]["1.0"]["minWorkers"] for m in models.values()}
        assert len(models) == 1000 and len(seqs) == 1, "mixed or partial state"
        reads += 1
        if reads == 1:
            (directory.parent / "first-read").touch()
    print(reads)
""")


def test_a_concurrent_reader_never_sees_a_partial_file(tmp_path):
    stop = tmp_path / "stop"
    directory = tmp_path / "config"
    directory.mkdir()
    reader = subprocess.Popen([sys.executable, "-c", READER, str(directory), str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        big = state(0, models=1000)  # about 150 KB of JSON
        first_read = tmp_path / "first-read"
        start = time.monotonic()
        writes = 0
        # At least 60 writes or 4 s, and past the reader's first read; never over 30 s.
        while time.monotonic() - start < 30 and not (
                first_read.exists() and (writes >= 60 or time.monotonic() - start > 4)):
            for model in big["models"].values():
                model["versions"]["1.0"]["minWorkers"] = writes
            save_snapshot(directory, big, keep=3)
            writes += 1
        stop.touch()
        out, err = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert reader.returncode == 0, err
    assert int(out) > 0
    assert len(list_snapshots(directory)) == 3
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]


def test_torchserves_snapshot_files_are_read_for_their_model_snapshot(tmp_path) -> None:
    assert snapshots.newest_torchserve_snapshot(tmp_path / "none") is None
    (tmp_path / "20240101000000000-snapshot.cfg").write_text(
        'model_snapshot={"modelCount"\\: 1, "models"\\: {"m"\\: {"1.0"\\: {"marName"\\: '
        '"m.mar", "minWorkers"\\: 2}}}}\n')
    (tmp_path / "20991231000000000000-000000-snapshot.cfg").write_text("{}")   # torchd's: not read
    path, model_snapshot = snapshots.newest_torchserve_snapshot(tmp_path)
    assert path.name == "20240101000000000-snapshot.cfg"
    assert model_snapshot["models"]["m"]["1.0"]["minWorkers"] == 2
    for text, reason in (("inference_address=http://127.0.0.1:1\n", "no model_snapshot"),
                         ("model_snapshot={not json\n", "model_snapshot: invalid JSON")):
        (tmp_path / "20240102000000000-shutdown.cfg").write_text(text)
        with pytest.raises(snapshots.SnapshotError, match=reason):
            snapshots.newest_torchserve_snapshot(tmp_path)
