"""A key file mounted the way Kubernetes mounts a Secret (a symlink into ..data/, mode 0440 so
the pod's group reads it, read-only) is used as it is, with a warning, not narrowed or refused;
its keys cannot be rotated through /token (that would need writing the Secret)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.integration.test_ops_security import bearer, exposed_daemon

pytestmark = pytest.mark.timeout(120)
GIVEN = {kind: f"{kind.lower()}-key-from-the-secret" for kind in ("management", "inference",
                                                                   "API")}


def secret_volume(directory: Path, mode: int) -> Path:
    """key_file.json -> ..data/key_file.json, as the kubelet lays out a Secret volume."""
    data = directory / "..2026_11_30_00_00_00.000000000"
    data.mkdir(parents=True)
    target = data / "key_file.json"
    target.write_text(json.dumps({kind: {"key": key} for kind, key in GIVEN.items()}))
    target.chmod(mode)
    os.symlink(data.name, directory / "..data")
    os.symlink("..data/key_file.json", directory / "key_file.json")
    return directory / "key_file.json"


def test_a_read_only_group_readable_secret_is_used_with_a_warning(archive_dir, tmp_path):
    key_file = secret_volume(tmp_path / "secret", 0o440)
    d = exposed_daemon(archive_dir, tmp_path / "daemon", "inference", key_file=str(key_file))
    try:
        d.start()
        assert d.infer("GET", "/ping").status_code == 401
        # what a kubelet probe or a load balancer asks needs no token: it cannot send one
        assert d.infer("GET", "/v2/health/ready").json() == {"ready": True}
        assert d.infer("GET", "/v2/health/live/").json() == {"live": True}
        assert d.infer("GET", "/v2").status_code == 401
        assert d.infer("GET", "/ping", headers=bearer(GIVEN["inference"])).status_code == 200
        refused = d.mgmt("GET", "/token", params={"type": "inference"},
                         headers=bearer(GIVEN["API"]))
        assert refused.status_code == 400 and "read-only file" in refused.json()["message"]
        assert d.infer("GET", "/ping", headers=bearer(GIVEN["inference"])).status_code == 200
        assert "is readable by its group (mode 440) and it is read-only" in d.log()
    finally:
        d.cleanup()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o440
    assert json.loads(key_file.read_text())["inference"]["key"] == GIVEN["inference"]
