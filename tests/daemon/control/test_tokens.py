"""TokenStore's key file rules (daemon/control/tokens.py) on real files: a file readable by others
is narrowed to 0600; a read-only one readable by its group only (a mounted Secret) is used as
it is; one on a read-only filesystem is used when others cannot read it, refused when they can.
The read-only filesystem is a real one: a tmpfs mounted read-only in a user namespace."""
from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from daemon.control.tokens import TokenStore
from tests.support.daemon import REPO

KEYS = {"management": "m", "inference": "i", "API": "a"}


def key_file(path: Path, mode: int) -> Path:
    path.write_text(json.dumps({kind: {"key": key} for kind, key in KEYS.items()}))
    path.chmod(mode)
    return path


def test_a_file_readable_by_others_is_narrowed(tmp_path):
    path = key_file(tmp_path / "k.json", 0o644)
    store = TokenStore(path, enabled=True)
    assert store.keys == KEYS and not store.read_only
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_read_only_group_readable_file_is_kept_with_a_warning(tmp_path, caplog):
    path = key_file(tmp_path / "k.json", 0o440)
    store = TokenStore(path, enabled=True)
    assert store.keys == KEYS and store.read_only
    assert stat.S_IMODE(path.stat().st_mode) == 0o440
    assert "readable by its group (mode 440) and it is read-only" in caplog.text


ON_READ_ONLY_FS = textwrap.dedent("""
    import json, os, subprocess, sys
    from pathlib import Path
    from daemon.control.tokens import TokenStore
    where = Path(sys.argv[1])
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(where)], check=True)
    path = where / "k.json"
    path.write_text(json.dumps({k: {"key": k[0]} for k in ("management", "inference", "API")}))
    path.chmod(int(sys.argv[2], 8))
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    try:
        store = TokenStore(path, enabled=True)
        print(json.dumps({"read_only": store.read_only, "keys": store.keys}))
    except OSError as exc:
        print(json.dumps({"error": str(exc)}))
""")


def on_read_only_fs(tmp_path: Path, mode: int) -> dict:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: no read-only filesystem to mount")
    where = tmp_path / "secret"
    where.mkdir()
    done = subprocess.run(["unshare", "-rm", sys.executable, "-c", ON_READ_ONLY_FS, str(where),
                           oct(mode)[2:]], cwd=REPO, capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "mount" in done.stderr:
        pytest.skip(f"cannot mount a read-only tmpfs in a user namespace: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_on_a_read_only_filesystem_a_group_readable_file_is_used(tmp_path):
    result = on_read_only_fs(tmp_path, 0o640)   # a write bit, but chmod fails: EROFS
    assert result == {"read_only": True, "keys": {"management": "m", "inference": "i",
                                                  "API": "A"}}


def test_on_a_read_only_filesystem_a_world_readable_file_is_refused(tmp_path):
    result = on_read_only_fs(tmp_path, 0o644)
    assert "readable by others (mode 644) and cannot be narrowed" in result["error"]
    assert "0440" in result["error"]


ROTATE_ON_A_DISK_TURNED_READ_ONLY = textwrap.dedent("""
    import json, subprocess, sys
    from pathlib import Path
    from daemon.control.tokens import TokenStore
    from daemon.errors import TorchdError
    where = Path(sys.argv[1])
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(where)], check=True)
    store = TokenStore(where / "k.json", enabled=True)
    before = dict(store.keys), (where / "k.json").read_text()
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    try:
        store.rotate("inference")
        print(json.dumps({"rotated": True}))
    except TorchdError as exc:
        print(json.dumps({"status": exc.status, "message": exc.message,
                          "kept": store.keys == before[0],
                          "file": (where / "k.json").read_text() == before[1],
                          "allowed": store.check_values(
                              "inference", [f"Bearer {before[0]['inference']}".encode()]) is None,
                          "left": sorted(p.name for p in where.iterdir())}))
""")


def test_a_key_that_cannot_be_saved_is_not_rotated(tmp_path):
    """/token on a disk that takes no more (a tmpfs remounted read-only): a 500 that says why,
    and the old key goes on working, as the file and a restart have it."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: no read-only filesystem to mount")
    where = tmp_path / "keys"
    where.mkdir()
    done = subprocess.run(["unshare", "-rm", sys.executable, "-c",
                           ROTATE_ON_A_DISK_TURNED_READ_ONLY, str(where)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "mount" in done.stderr:
        pytest.skip(f"cannot mount a tmpfs in a user namespace: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "status": 500, "kept": True, "file": True, "allowed": True, "left": ["k.json"],
        "message": f"cannot write the key file {where / 'k.json'} (key_file): Read-only file "
                   "system: the inference key stays as it was"}


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bearer(store: TokenStore, kind: str) -> list[bytes]:
    return [f"Bearer {store.keys[kind]}".encode()]


def test_made_keys_expire_as_torchserves_and_rotation_renews_them(tmp_path):
    clock = Clock()
    store = TokenStore(tmp_path / "k.json", enabled=True, lifetime_minutes=30, clock=clock)
    written = json.loads((tmp_path / "k.json").read_text())
    # TorchServe's key file: an expiration time per management and inference key
    assert written["management"]["expiration time"] == "2023-11-14T22:43:20.000000Z"
    assert set(written["API"]) == {"key"}
    assert store.check_values("inference", bearer(store, "inference")) is None
    clock.now += 30 * 60 - 1
    assert store.check_values("management", bearer(store, "management")) is None
    clock.now += 1
    refused = store.check_values("management", bearer(store, "management"))
    assert refused is not None and refused.status == 401
    assert store.check_api(f"Bearer {store.keys['API']}")   # the API key never expires
    store.rotate("management")
    assert store.check_values("management", bearer(store, "management")) is None
    assert store.check_values("inference", bearer(store, "inference")) is not None


def test_a_files_keys_follow_its_expiration_times(tmp_path):
    path = tmp_path / "k.json"
    nine_digits = "2023-11-14T22:13:20.123456789Z"   # java.time.Instant's text can have nine
    path.write_text(json.dumps({"management": {"key": "m"}, "API": {"key": "a"},
                                "inference": {"key": "i", "expiration time": nine_digits}}))
    path.chmod(0o600)
    clock = Clock()
    store = TokenStore(path, enabled=True, clock=clock)
    assert store.keys == KEYS   # nothing expired yet: kept as they are
    clock.now += 10 ** 6
    assert store.check_values("management", [b"Bearer m"]) is None   # none: never expires
    assert store.check_values("inference", [b"Bearer i"]) is not None
    # at the next start, an expired key of a writable file is made anew (TorchServe makes all)
    again = TokenStore(path, enabled=True, clock=clock)
    assert again.keys["inference"] != "i" and again.keys["management"] == "m"
    assert again.check_values("inference", bearer(again, "inference")) is None
    assert "expiration time" in json.loads(path.read_text())["inference"]


def test_an_expired_key_of_a_read_only_file_is_refused(tmp_path, caplog):
    path = tmp_path / "k.json"
    past = {"key": "i", "expiration time": "2020-01-01T00:00:00Z"}
    path.write_text(json.dumps({**{k: {"key": v} for k, v in KEYS.items()}, "inference": past}))
    path.chmod(0o440)
    store = TokenStore(path, enabled=True, clock=Clock())
    assert store.keys == KEYS and store.check_values("inference", [b"Bearer i"]) is not None
    assert "have expired and the file is read-only" in caplog.text


def test_a_shorter_lifetime_applies_to_the_files_keys_at_the_next_start(tmp_path):
    clock = Clock()
    TokenStore(tmp_path / "k.json", enabled=True, lifetime_minutes=60, clock=clock)
    first = json.loads((tmp_path / "k.json").read_text())
    store = TokenStore(tmp_path / "k.json", enabled=True, lifetime_minutes=1, clock=clock)
    assert store.keys["management"] == first["management"]["key"]   # kept, expiring sooner
    assert json.loads((tmp_path / "k.json").read_text())["management"]["expiration time"] \
        == "2023-11-14T22:14:20.000000Z"
    clock.now += 60
    assert store.check_values("management", bearer(store, "management")) is not None
