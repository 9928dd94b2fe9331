"""Snapshot files as TorchServe users handle them (its docs/snapshot.md): named
``<stamp>-startup.cfg``, ``-snapshot.cfg`` and ``-shutdown.cfg``; none at all with ``--ncs``
(``--no-config-snapshots``); ``--ts-config <a snapshot>`` restores that snapshot, not the
newest, with the settings of the config file its daemon read; and where TorchServe ran before,
its newest snapshot is restored until torchd has one of its own; a change that cannot be saved
is answered 500 and undone."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from daemon.models.snapshots import list_snapshots
from tests.support.archives import build_archive
from tests.support.daemon import Daemon
from tests.support.waiting import wait_until
from tests.support.workflows import build_war


def snapshot_files(d: Daemon) -> list[Path]:
    return list_snapshots(d.workdir / "logs" / "config")


def kinds(d: Daemon) -> list[str]:
    return [path.name.rsplit("-", 1)[1] for path in snapshot_files(d)]


def names(d: Daemon) -> list[str]:
    return [m["modelName"] for m in d.mgmt("GET", "/models").json()["models"]]


def test_ncs_writes_no_snapshot_and_the_others_are_named_as_torchserves(make_daemon) -> None:
    d = make_daemon(ncs=True)
    assert d.register("noop.mar", model_name="first").status_code == 200
    assert d.stop() == 0
    assert snapshot_files(d) == []   # TorchServe: "prevents the server from storing" them

    d.start(ncs=False)
    assert kinds(d) == ["startup.cfg"]
    assert d.register("noop.mar", model_name="first").status_code == 200
    assert d.stop() == 0
    assert kinds(d) == ["startup.cfg", "snapshot.cfg", "shutdown.cfg"]


def test_ts_config_naming_a_snapshot_restores_it_with_its_config(make_daemon) -> None:
    d = make_daemon({"default_response_timeout": 77}, ncs=False)
    assert d.register("noop.mar", model_name="first").status_code == 200
    known_good = snapshot_files(d)[-1]        # written before the 200 (SPEC 5.2)
    assert d.register("noop.mar", model_name="second").status_code == 200
    assert d.stop() == 0

    # The harness's own --ts-config comes first on the command line: the last one wins.
    # --ncs skips only the newest snapshot; one named as the config is what was asked for.
    d.start("--ts-config", str(known_good), ncs=True)
    assert names(d) == ["first"]
    assert f"config file {known_good} is a torchd snapshot: restoring it" in d.log()
    # The settings of the config file that daemon read: its ports (the harness reaches it),
    # and its default response timeout for a model registered now.
    assert d.register("noop.mar", model_name="third").status_code == 200
    assert d.describe("third")[0]["responseTimeout"] == 77
    assert d.stop() == 0


def torchserve_snapshot(kind_stamp: str, models: dict) -> tuple[str, str]:
    """A snapshot file as TorchServe writes it: properties, model_snapshot escaped."""
    document = json.dumps({"name": f"{kind_stamp}.cfg", "modelCount": len(models),
                           "created": 1707366892822, "models": models}, indent=2)
    escaped = document.replace(":", "\\:").replace("\n", "\\n")   # Java's properties
    text = ("#Saving snapshot\n#Thu Feb 08 04:34:52 UTC 2024\n"
            f"model_snapshot={escaped}\n"
            "tsConfigFile=logs/config/20240208043104864-startup.cfg\nversion=0.12.0\n")
    return f"{kind_stamp}.cfg", text


def test_torchserves_newest_snapshot_is_restored_until_torchd_has_its_own(make_daemon) -> None:
    d = make_daemon(start=False)
    config_dir = d.workdir / "logs" / "config"
    config_dir.mkdir(parents=True)
    entry = {"defaultVersion": True, "marName": "noop.mar", "minWorkers": 1, "maxWorkers": 1,
             "batchSize": 2, "maxBatchDelay": 50, "responseTimeout": 120}
    for stamp, models in (("20240208043104864-startup", {"old": {"1.0": entry}}),
                          ("20240208043452822-shutdown", {"migrated": {"1.0": entry}})):
        name, text = torchserve_snapshot(stamp, models)
        (config_dir / name).write_text(text)

    d.start(ncs=False)
    assert names(d) == ["migrated"]
    [doc] = d.describe("migrated")
    assert (doc["batchSize"], doc["maxBatchDelay"], doc["minWorkers"]) == (2, 50, 1)
    assert ("restoring the models of TorchServe's snapshot 20240208043452822-shutdown.cfg"
            in d.log())
    assert d.register("noop.mar", model_name="added").status_code == 200
    assert d.stop() == 0

    name, text = torchserve_snapshot("20991231235959999-shutdown", {"later": {"1.0": entry}})
    (config_dir / name).write_text(text)
    d.start(ncs=False)   # torchd's own snapshot now, not TorchServe's, however new
    assert names(d) == ["added", "migrated"]
    assert d.stop() == 0


def test_a_change_that_cannot_be_saved_is_undone_and_answered_500(make_daemon) -> None:
    """A disk that takes no snapshot (full or read-only; here a file stands where the snapshot
    directory was): each change is answered 500 naming the file and undone where it can be, so
    no 2xx promises what a restart would not keep; torchd serves on and saves again once it
    can. (Before, register answered 500 and kept the model, which a retry then found: 409.)"""
    d = make_daemon(ncs=False)
    build_archive("noop", d.model_store, name="noop_v2", version="2.0")
    build_war("wf", "models: {}\ndag:\n  step: []\n", d.model_store, d.workdir / "wf",
              "def step(data, context):\n    return None if data is None else [1 for _ in data]\n")
    for url, version in (("noop.mar", "1.0"), ("noop_v2.mar", "2.0")):
        answer = d.register(url, model_name="m", initial_workers=1, synchronous="true")
        assert answer.status_code == 200, answer.text
    config_dir = d.workdir / "logs" / "config"
    shutil.rmtree(config_dir)
    config_dir.write_text("not a directory")

    def refused(answer, message: str) -> None:
        assert answer.status_code == 500, answer.text
        body = answer.json()
        assert body["type"] == "InternalServerException"
        assert body["message"].startswith(f"{message}: snapshot {config_dir}: "), body

    refused(d.register("echo.mar", initial_workers=1, synchronous="true"),
            'Model "echo" Version: 1.0 not registered, as the change could not be saved')
    assert d.mgmt("GET", "/models/echo").status_code == 404
    # a workflow's nodes are saved as they register: the first one's failure rolls it back
    answer = d.mgmt("POST", "/workflows", params={"url": "wf.war"})
    assert (answer.status_code, answer.json()["type"]) == (500, "WorkflowException"), answer.text
    assert ('Model "wf__step" Version: 1.0 not registered, as the change could not be saved: '
            f"snapshot {config_dir}: ") in answer.json()["message"]
    assert d.mgmt("GET", "/workflows/wf").status_code == 404
    assert d.mgmt("GET", "/models/wf__step").status_code == 404   # its node went with it
    refused(d.mgmt("PUT", "/models/m?min_worker=2&synchronous=true"),
            "Workers not scaled for model: m, as the change could not be saved")
    wait_until(lambda: len(d.workers("m")) == 1, 30, what="the scale undone")
    assert (d.describe("m")[0]["minWorkers"], d.describe("m")[0]["maxWorkers"]) == (1, 1)
    refused(d.mgmt("PUT", "/models/m/2.0/set-default"),
            'Default version not updated for model "m", as the change could not be saved')
    assert d.describe("m")[0]["modelVersion"] == "1.0"
    refused(d.mgmt("DELETE", "/models/m/2.0"), 'Model "m" unregistered, but a restart would '
            "register it again, as the change could not be saved")
    assert d.mgmt("GET", "/models/m/2.0").status_code == 404   # its workers are gone: done
    assert d.infer("POST", "/predictions/m", data=b"x").status_code == 200

    config_dir.unlink()
    assert d.register("echo.mar", initial_workers=1, synchronous="true").status_code == 200
    assert d.mgmt("POST", "/workflows", params={"url": "wf.war"}).status_code == 200
    assert d.stop() == 0
    d.start(ncs=False)
    assert names(d) == ["echo", "m"]
