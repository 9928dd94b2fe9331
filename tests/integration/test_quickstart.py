"""The README's quickstart, line by line, as written, against `make run`'s model.

`make run` serves examples/model_store/mlp.mar with `torchd serve --models mlp=mlp.mar --ncs` on
the default ports; here the same archive (built by examples/build.py) is served on free ports,
and each `curl` command of the quickstart's code blocks runs through bash with only the ports
rewritten. curl gets --fail-with-body, so a 4xx or 5xx answer fails the command.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.waiting import wait_until
from tests.worker.harness import PYTHON

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PORTS = {"8080": "inference", "8081": "management", "8082": "metrics"}
# every command sees this curl: errors fail it, and progress meters stay out of the output
CURL = 'curl() { command curl --fail-with-body -sS --max-time 60 "$@"; }\n'


def quickstart_blocks(readme: str) -> list[str]:
    """The ```sh blocks of the README's "Quickstart with curl" section."""
    start = readme.index("## Quickstart with curl")
    end = readme.index("\n## ", start + 1)
    return re.findall(r"```sh\n(.*?)```", readme[start:end], flags=re.S)


def commands(block: str) -> tuple[list[str], list[str]]:
    """(shell assignments, commands): continuation lines joined, comment lines dropped."""
    joined = re.sub(r"\\\n\s*", "", block)
    lines = [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]
    assignments = [line for line in lines if re.match(r"^[A-Z_]+=", line)]
    return assignments, [line for line in lines if line not in assignments]


def test_quickstart_blocks_are_found_and_every_command_is_curl() -> None:
    blocks = quickstart_blocks((REPO / "README.md").read_text())
    assert len(blocks) == 2
    for block in blocks:
        _, found = commands(block)
        assert found and all(line.startswith("curl ") for line in found)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("quickstart-store")
    subprocess.run([PYTHON, str(REPO / "examples" / "build.py"), "--model-store", str(store)],
                   check=True, capture_output=True, timeout=180)
    daemon = Daemon(tmp_path_factory.mktemp("quickstart"), store)
    try:
        daemon.start("--models", "mlp=mlp.mar")
        # as many workers as CPUs, as `make run` starts: healthy once they are all READY
        wait_until(lambda: daemon.infer("GET", "/ping").status_code == 200, 90, 0.2,
                   "the example model's workers READY")
        yield daemon
    finally:
        daemon.cleanup()


def run_line(daemon: Daemon, assignments: list[str], line: str) -> str:
    for port, api in DEFAULT_PORTS.items():
        line = line.replace(f"127.0.0.1:{port}", f"127.0.0.1:{daemon.ports[api]}")
    script = CURL + "".join(f"{a}\n" for a in assignments) + line + "\n"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=90,
                          cwd=daemon.workdir)
    assert done.returncode == 0, f"{line}\n-> exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def test_every_quickstart_command_works_as_written(served: Daemon) -> None:
    outputs: dict[str, str] = {}
    for block in quickstart_blocks((REPO / "README.md").read_text()):
        assignments, found = commands(block)
        for line in found:
            outputs[line] = run_line(served, assignments, line)
    by_route = {line.split("#")[0].strip(): out for line, out in outputs.items()}

    def answer(fragment: str) -> object:
        matches = [out for line, out in by_route.items() if fragment in line]
        assert len(matches) == 1, fragment
        return json.loads(matches[0])

    assert answer("/ping") == {"status": "Healthy"}
    # TorchServe's layout, to the byte: scripts grep its lines ('"status": "READY"', ...)
    assert by_route["curl http://127.0.0.1:8080/ping"] == '{\n  "status": "Healthy"\n}\n'
    described = by_route["curl http://127.0.0.1:8081/models/mlp"]
    ready = [w for w in json.loads(described)[0]["workers"] if w["status"] == "READY"]
    assert ready and described.count('\n        "status": "READY",\n') == len(ready)
    probabilities = answer("/predictions/mlp")
    assert len(probabilities[0]) == 3 and sum(probabilities[0]) == pytest.approx(1.0)
    assert answer("invocations?model_name=mlp") == probabilities
    assert answer("X-Amzn-SageMaker-Target-Model") == probabilities[0]
    assert answer("/models/mlp/invoke") == probabilities[0]
    assert answer("mlp:predict") == probabilities
    oip = answer("/v2/models/mlp/infer")
    assert oip["outputs"][0]["shape"] == [1, 3]
    assert oip["outputs"][0]["data"] == pytest.approx(probabilities[0])
    assert json.loads(by_route["curl http://127.0.0.1:8080/v1/models/mlp"])["ready"] is True
    assert "ts_inference_requests_total" in by_route["curl http://127.0.0.1:8082/metrics"]
