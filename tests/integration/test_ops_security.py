"""Secure defaults through the real daemon (SPEC 5.3): token auth and the model API follow the
bind address, explicit settings win, keys live in a 0600 key_file.json and rotate via /token,
and nothing is fetched for a URL outside allowed_urls."""
from __future__ import annotations

import http.server
import json
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from tests.support.daemon import Daemon
from tests.support.ops import make_store, run_health
from tests.support.tls import self_signed
from tests.support.waiting import wait_until

INVALID_KEY = {"code": 401, "type": "InvalidKeyException"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def keys(d: Daemon) -> dict[str, str]:
    data = json.loads((d.workdir / "key_file.json").read_text())
    return {kind: entry["key"] for kind, entry in data.items()}


def error_kind(response: requests.Response) -> dict:
    body = response.json()
    return {"code": body["code"], "type": body["type"]}


def exposed_daemon(archive_dir: Path, workdir: Path, api: str, **settings) -> Daemon:
    """A daemon whose ``api`` listener binds 0.0.0.0 (still reached via 127.0.0.1 here)."""
    d = Daemon(workdir, make_store(archive_dir, workdir / "store", ["noop"]),
               {"worker_spawn": "exec", **settings})
    # the port chosen with the daemon's others (ports chosen apart can come back equal)
    d.settings[f"{api}_address"] = f"http://0.0.0.0:{d.ports[api]}"
    return d


@pytest.fixture(scope="module")
def tokened(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Inference on 0.0.0.0: token auth on by default; management loopback: model API on.
    The operator's own key_file.json is there already, world-readable."""
    workdir = tmp_path_factory.mktemp("ops-tokens")
    given = {kind: f"{kind.lower()}-key-given-by-the-operator" for kind in
             ("management", "inference", "API")}
    (workdir / "key_file.json").write_text(json.dumps({k: {"key": v} for k, v in given.items()}))
    (workdir / "key_file.json").chmod(0o644)
    d = exposed_daemon(archive_dir, workdir, "inference")
    try:
        d.start()
        yield SimpleNamespace(daemon=d, keys=keys(d), given=given)
    finally:
        d.cleanup()


def test_an_existing_key_file_is_used_and_made_private(tokened):
    path = tokened.daemon.workdir / "key_file.json"
    assert tokened.keys == tokened.given
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "narrowing it to 0600" in tokened.daemon.log()


def test_requests_without_the_key_get_401(tokened):
    d, k = tokened.daemon, tokened.keys
    for response in (d.infer("POST", "/predictions/noop", data=b"x"),
                     d.infer("GET", "/ping"),
                     d.infer("POST", "/predictions/noop", headers=bearer("wrong")),
                     d.infer("POST", "/predictions/noop", headers=bearer(k["management"])),
                     d.mgmt("GET", "/models"),
                     d.mgmt("GET", "/models", headers=bearer(k["inference"])),
                     # a model's API description is no probe: it keeps its port's key
                     d.infer("OPTIONS", "/predictions/noop"),
                     d.mgmt("OPTIONS", "/models/noop")):
        assert response.status_code == 401, response.text
        assert error_kind(response) == INVALID_KEY
        assert "x-request-id" in response.headers


def test_the_keys_from_key_file_pass(tokened):
    d, k = tokened.daemon, tokened.keys
    registered = d.mgmt("POST", "/models", headers=bearer(k["management"]),
                        params={"url": "noop.mar", "model_name": "tok", "initial_workers": 1,
                                "synchronous": "true"})
    assert registered.status_code == 200, registered.text
    predicted = d.infer("POST", "/predictions/tok", data=b"x", headers=bearer(k["inference"]))
    assert predicted.status_code == 200 and predicted.json() == {"ok": 1}
    for response in (d.infer("OPTIONS", "/predictions/tok", headers=bearer(k["inference"])),
                     d.mgmt("OPTIONS", "/models/tok", headers=bearer(k["management"]))):
        assert response.status_code == 200 and "/models/tok" in str(response.json()["paths"])
    # The metrics port is not token-protected (TorchServe's too): scrapers carry no keys.
    assert requests.get(d.url("metrics", "/metrics"), timeout=10).status_code == 200


def test_health_script_reads_the_management_key(tokened):
    d = tokened.daemon
    url = d.url("management", "")
    ok = run_health("--management-url", url, "--key-file", str(d.workdir / "key_file.json"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = run_health("--management-url", url)
    assert refused.returncode == 2
    assert "401 InvalidKeyException" in refused.stdout


def test_token_api_rotates_the_inference_key(tokened):
    d, k = tokened.daemon, tokened.keys
    assert d.mgmt("GET", "/token", params={"type": "inference"},
                  headers=bearer(k["management"])).status_code == 401
    rotated = d.mgmt("GET", "/token", params={"type": "inference"}, headers=bearer(k["API"]))
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["inference"]["key"]
    assert new != k["inference"]
    old_key = d.infer("GET", "/ping", headers=bearer(k["inference"]))
    assert old_key.status_code == 401 and error_kind(old_key) == INVALID_KEY
    assert d.infer("GET", "/ping", headers=bearer(new)).status_code == 200
    on_disk = keys(d)
    assert on_disk["inference"] == new and on_disk["management"] == k["management"]
    assert stat.S_IMODE((d.workdir / "key_file.json").stat().st_mode) == 0o600
    tokened.keys = on_disk


def test_made_keys_expire_and_a_rotated_one_serves_again(archive_dir, tmp_path):
    """TorchServe's token_expiration_min: the keys torchd makes are refused once it passes."""
    d = exposed_daemon(archive_dir, tmp_path / "d", "inference", token_expiration_min=0.05)
    try:
        d.start()
        made = json.loads((d.workdir / "key_file.json").read_text())
        assert set(made["inference"]) == {"key", "expiration time"}
        k = keys(d)
        assert d.infer("GET", "/ping", headers=bearer(k["inference"])).status_code == 200
        wait_until(lambda: d.infer("GET", "/ping", headers=bearer(k["inference"])).status_code
                   == 401, 30, 0.2, "the made inference key refused once expired")
        rotated = d.mgmt("GET", "/token", params={"type": "inference"},
                         headers=bearer(k["API"]))
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["inference"]["key"]
        assert d.infer("GET", "/ping", headers=bearer(new)).status_code == 200
    finally:
        d.cleanup()


class CountingServer(http.server.ThreadingHTTPServer):
    """Records every accepted connection, whether or not a request follows."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        self.connections: list = []

    def verify_request(self, request, client_address) -> bool:
        self.connections.append(client_address)
        return False


def test_url_outside_allowed_urls_is_refused_without_a_connection(tokened):
    d, k = tokened.daemon, tokened.keys
    server = CountingServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/noop.mar"   # default: https only
        refused = d.mgmt("POST", "/models", params={"url": url},
                         headers=bearer(k["management"]))
        assert refused.status_code == 404, refused.text
        assert refused.json()["message"] == f"Given URL {url} does not match any allowed URL(s)"
        assert server.connections == []
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_model_api_off_when_management_is_exposed(archive_dir, tmp_path):
    d = exposed_daemon(archive_dir, tmp_path / "d", "management")
    try:
        d.start()
        # Token auth is on too (not every listener is loopback), with keys made for it.
        generated = keys(d)
        assert set(generated) == {"management", "inference", "API"}
        assert len(set(generated.values())) == 3
        assert stat.S_IMODE((d.workdir / "key_file.json").stat().st_mode) == 0o600
        key = bearer(generated["management"])
        assert d.mgmt("GET", "/models").status_code == 401
        registered = d.mgmt("POST", "/models", params={"url": "noop.mar"}, headers=key)
        assert registered.status_code == 405, registered.text
        # TorchServe's document, which its own tests compare whole
        assert registered.json() == {
            "code": 405, "type": "MethodNotAllowedException",
            "message": "Requested method is not allowed, please refer to API document."}
        assert d.mgmt("DELETE", "/models/noop", headers=key).status_code == 405
        assert "the model API is off (enable_model_api=true turns it on)" in d.log()
        assert d.mgmt("GET", "/models", headers=key).json() == {"models": []}
    finally:
        d.cleanup()


def test_explicit_settings_win_over_the_bind_address(archive_dir, tmp_path):
    d = exposed_daemon(archive_dir, tmp_path / "d", "management", enable_model_api="true",
                       disable_token_authorization="true")
    try:
        d.start()
        assert not (d.workdir / "key_file.json").exists()
        registered = d.register("noop.mar", model_name="open", initial_workers=1)
        assert registered.status_code == 200, registered.text
        assert d.infer("POST", "/predictions/open", data=b"x").json() == {"ok": 1}
        assert d.unregister("open").status_code == 200
    finally:
        d.cleanup()


def tls_predict(url: str, cert: Path) -> tuple[int, object]:
    with requests.Session() as session:
        answer = session.post(url, data=b"x", verify=str(cert), timeout=30)
        return answer.status_code, answer.json()


def test_a_key_that_is_not_the_certificates_fails_the_start_before_any_model(archive_dir,
                                                                           tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    d = Daemon(tmp_path / "d", make_store(archive_dir, tmp_path / "d" / "store", ["noop"]),
               {"worker_spawn": "exec", "certificate_file": str(cert),
                "private_key_file": str(other_key)})
    d.settings["inference_address"] = f"https://127.0.0.1:{d.ports['inference']}"
    log = d.failed_start_log("--models", "noop=noop.mar")
    assert (f"cannot start: certificate_file {cert} and private_key_file {other_key} cannot "
            "serve TLS: [X509: KEY_VALUES_MISMATCH]") in log, log
    assert "starting worker" not in log and "Traceback" not in log


def test_tls_on_one_listener(archive_dir, tmp_path):
    cert, key = self_signed(tmp_path)
    kept = requests.Session()
    d = Daemon(tmp_path / "d", make_store(archive_dir, tmp_path / "d" / "store", ["noop"]),
               {"worker_spawn": "exec", "certificate_file": str(cert),
                "private_key_file": str(key)})
    port = d.ports["inference"]
    d.settings["inference_address"] = f"https://127.0.0.1:{port}"
    try:
        d.start()
        assert d.register("noop.mar", model_name="tls", initial_workers=1).status_code == 200
        assert tls_predict(f"https://127.0.0.1:{port}/predictions/tls", cert) == (200, {"ok": 1})
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/ping", timeout=5)   # no plain HTTP there
        # A client (a load balancer) keeps its TLS connection open and idle: closing it would
        # wait for a close_notify it never sends, for the loop's 30 s TLS timeout; the
        # listener aborts it instead.
        kept.post(f"https://127.0.0.1:{port}/predictions/tls", data=b"x", verify=str(cert),
                  timeout=30).raise_for_status()
        stopping = time.monotonic()
        assert d.stop(timeout=60) == 0
        assert time.monotonic() - stopping < 10.0, "an idle TLS connection held the stop up"
    finally:
        kept.close()
        d.cleanup()


def test_tls_on_the_management_and_metrics_ports(archive_dir, tmp_path):
    """hypercorn's listeners over TLS answer, and refuse plain HTTP. (Killed at the end: a
    graceful stop waits up to 30 s for their TLS connections to close, README, Known
    limitations.)"""
    cert, key = self_signed(tmp_path)
    d = Daemon(tmp_path / "d", make_store(archive_dir, tmp_path / "d" / "store", ["noop"]),
               {"certificate_file": str(cert), "private_key_file": str(key)})
    ports = {api: d.ports[api] for api in ("management", "metrics")}
    d.settings.update({f"{api}_address": f"https://127.0.0.1:{port}"
                       for api, port in ports.items()})
    url = {api: f"https://127.0.0.1:{port}" for api, port in ports.items()}
    try:
        d.start(wait=False)
        wait_until(lambda: _tls_ok(f"{url['management']}/models", cert), 60,
                   what="management over TLS")
        with requests.Session() as session:
            listed = session.get(f"{url['management']}/models", verify=str(cert), timeout=30)
            assert (listed.status_code, listed.json()) == (200, {"models": []})
            scraped = session.get(f"{url['metrics']}/metrics", verify=str(cert), timeout=30)
            assert scraped.status_code == 200 and "ts_inference_requests_total" in scraped.text
        for port in ports.values():
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://127.0.0.1:{port}/", timeout=5)
    finally:
        d.track_descendants()   # the zygote, for cleanup to stop by pid
        if d.proc is not None and d.proc.poll() is None:
            d.kill()
        d.cleanup()


def _tls_ok(url: str, cert: Path) -> bool:
    try:
        return requests.get(url, verify=str(cert), timeout=5).status_code == 200
    except requests.RequestException:
        return False
