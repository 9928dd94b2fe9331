"""install_py_dep_per_model: an archive's requirements installed for its own workers alone."""
from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import psutil
import pytest

from tests.support.archives import build_archive
from tests.support.waiting import wait_until

WHEEL = "tinydep-0.1-py3-none-any.whl"


def write_wheel(path: Path) -> Path:
    """A real (tiny) wheel, so pip installs it from a file: no index, no network."""
    files = {
        "tinydep/__init__.py": "VALUE = 42\n",
        "tinydep-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinydep\nVersion: 0.1\n",
        "tinydep-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: torchd-tests\n"
                                       "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append("tinydep-0.1.dist-info/RECORD,,")
    files["tinydep-0.1.dist-info/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


@pytest.fixture
def deps_daemon(make_daemon, tmp_path):
    daemon = make_daemon({"install_py_dep_per_model": "true"}, start=False)
    src = tmp_path / "src"
    src.mkdir()
    write_wheel(src / WHEEL)
    (src / "requirements.txt").write_text(f"./{WHEEL}\n")
    (src / "bad_requirements.txt").write_text("./no-such-package-0.1-py3-none-any.whl\n")
    model = Path(__file__).resolve().parent.parent / "models" / "with_deps" / "handler.py"
    build_archive("with_deps", daemon.model_store, handler=str(model),
                  requirements_file=str(src / "requirements.txt"),
                  extra_files=[str(src / WHEEL)])
    build_archive("with_deps", daemon.model_store, name="bad_deps", handler=str(model),
                  requirements_file=str(src / "bad_requirements.txt"))
    return daemon.start()


def test_requirements_install_for_the_model_alone(deps_daemon):
    d = deps_daemon
    r = d.register("with_deps.mar", initial_workers=1)
    assert r.status_code == 200, r.text
    answer = d.infer("POST", "/predictions/with_deps").json()
    assert answer["value"] == 42
    (worker,) = d.workers("with_deps")
    deps = Path(answer["from"]).parent.parent      # <deps>/tinydep/__init__.py
    assert deps.name.startswith("with_deps-deps-")
    # exec-spawned (a fork of the zygote has already imported what a requirement may replace)
    assert psutil.Process(worker["pid"]).ppid() == d.pid
    assert d.unregister("with_deps").status_code == 200
    wait_until(lambda: not deps.exists(), 10, what="the model's packages removed")


def test_failed_install_is_a_400_naming_the_model(deps_daemon):
    r = deps_daemon.register("bad_deps.mar", initial_workers=1)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["type"] == "InvalidModelException"
    assert body["message"].startswith("Failed to install the requirements of model bad_deps")
    assert deps_daemon.mgmt("GET", "/models").json()["models"] == []
