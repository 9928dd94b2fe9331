"""Downloads against real servers on loopback: an http.server that records every request, and
moto's S3 server. SPEC 1.1 errors 5 (nothing fetched), 6 (name taken), 7 (download fails)."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from daemon.config.declarations import DEFAULT_ALLOWED_URLS
from daemon.models.archives import prepare_archive, remove_prepared
from daemon.models.downloads import archive_file_name, parse_s3_https_url
from daemon.errors import (
    DownloadArchiveError,
    InternalServerError,
    InvalidModel,
    ModelNotFound,
    TorchdError,
)
from tests.support.waiting import wait_until

LOCAL = [r"http://127\.0\.0\.1:\d+/.*"]
Route = Callable[[BaseHTTPRequestHandler], None]


class RecordingServer(ThreadingHTTPServer):
    """Serves routes (path -> callable) and records (path, headers) of every request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.release = threading.Event()   # stalled routes wait on it

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


class _Handler(BaseHTTPRequestHandler):
    server: RecordingServer

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers.items())))
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
        else:
            route(self)

    def log_message(self, *args) -> None:
        pass


def body(data: bytes, declared: int | None = None, stall_after: int | None = None) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(declared if declared is not None else len(data)))
        h.end_headers()
        h.wfile.write(data[:stall_after] if stall_after is not None else data)
        h.wfile.flush()
        if stall_after is not None:
            h.server.release.wait(10)
        h.close_connection = True
    return route


def redirect(location: str) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return route


def stall_then(inner: Route) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.server.release.wait(10)
        inner(h)
    return route


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    srv = RecordingServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def mar_bytes(basic_archives: dict[str, Path]) -> bytes:
    return basic_archives["default"].read_bytes()


def fetch(url: str, store: Path, extract_root: Path, **kwargs):
    kwargs.setdefault("allowed_urls", LOCAL)
    return prepare_archive(url, model_store=store, extract_root=extract_root, **kwargs)


def failure(url: str, store: Path, extract_root: Path, **kwargs) -> TorchdError:
    with pytest.raises(TorchdError) as info:
        fetch(url, store, extract_root, **kwargs)
    return info.value


def assert_download_failed(err: TorchdError, url: str, store: Path) -> None:
    assert isinstance(err, DownloadArchiveError) and err.status == 400
    assert err.message == f"Failed to download archive from: {url}"
    assert os.listdir(store) == [], "no partial or temporary file may be left"


# ----------------------------------------------------------------------------------- http

def test_http_download_prepares_and_unregister_deletes(server, mar_bytes, model_store,
                                                       extract_root):
    server.routes["/models/basic.mar"] = body(mar_bytes)
    prepared = fetch(server.url("/models/basic.mar"), model_store, extract_root)
    assert prepared.downloaded and prepared.source == model_store / "basic.mar"
    assert os.listdir(model_store) == ["basic.mar"]
    assert prepared.source.read_bytes() == mar_bytes
    assert prepared.manifest["model"]["modelName"] == "basic"
    assert (prepared.model_dir / "handler.py").is_file()
    remove_prepared(prepared)
    assert os.listdir(model_store) == [] and os.listdir(extract_root) == []


def test_http_404_leaves_nothing(server, model_store, extract_root):
    url = server.url("/missing.mar")
    assert_download_failed(failure(url, model_store, extract_root), url, model_store)
    assert server.paths == ["/missing.mar"]


def test_existing_file_is_a_500_before_any_request(server, mar_bytes, model_store,
                                                   extract_root):
    server.routes["/basic.mar"] = body(mar_bytes)
    (model_store / "basic.mar").write_bytes(b"already here")
    err = failure(server.url("/basic.mar"), model_store, extract_root)
    assert isinstance(err, InternalServerError) and err.status == 500
    assert err.message == "Model file already exists basic.mar"
    assert server.requests == []
    assert (model_store / "basic.mar").read_bytes() == b"already here"


@pytest.mark.parametrize("allowed", [None, ["https://.*"], [r"http://127\.0\.0\.1:1/.*"], []])
def test_not_allowed_url_is_never_fetched(allowed, server, mar_bytes, model_store,
                                          extract_root):
    server.routes["/basic.mar"] = body(mar_bytes)
    url = server.url("/basic.mar")
    err = failure(url, model_store, extract_root,
                  allowed_urls=list(DEFAULT_ALLOWED_URLS) if allowed is None else allowed)
    assert isinstance(err, ModelNotFound) and err.status == 404
    assert err.message == f"Given URL {url} does not match any allowed URL(s)"
    assert server.requests == [], "a URL outside allowed_urls must cause zero requests"
    assert os.listdir(model_store) == []


def test_relative_url_is_never_fetched(server, model_store, extract_root):
    url = server.url("/a/../basic.mar")
    err = failure(url, model_store, extract_root)
    assert err.message == f"Relative path is not allowed in url: {url}"
    assert server.requests == []


def test_url_naming_no_file_is_not_fetched(server, model_store, extract_root):
    url = server.url("/models/")
    assert_download_failed(failure(url, model_store, extract_root), url, model_store)
    assert server.requests == []


def test_truncated_body_leaves_nothing(server, mar_bytes, model_store, extract_root):
    server.routes["/short.mar"] = body(mar_bytes[:100], declared=len(mar_bytes))
    url = server.url("/short.mar")
    assert_download_failed(failure(url, model_store, extract_root), url, model_store)


@pytest.mark.parametrize("where", ["before headers", "mid-body"])
def test_stalled_server_times_out(where, server, mar_bytes, model_store, extract_root):
    server.routes["/slow.mar"] = (stall_then(body(mar_bytes)) if where == "before headers"
                                  else body(mar_bytes, stall_after=50))
    url = server.url("/slow.mar")
    started = time.monotonic()
    err = failure(url, model_store, extract_root, download_timeout=0.5)
    assert time.monotonic() - started < 5
    assert_download_failed(err, url, model_store)


def test_redirects_are_followed_only_to_allowed_urls(server, mar_bytes, model_store,
                                                     extract_root):
    server.routes["/real/basic.mar"] = body(mar_bytes)
    server.routes["/basic.mar"] = redirect("/real/basic.mar")
    prepared = fetch(server.url("/basic.mar"), model_store, extract_root)
    assert prepared.source == model_store / "basic.mar"
    assert server.paths == ["/basic.mar", "/real/basic.mar"]

    server.requests.clear()
    server.routes["/other.mar"] = redirect(server.url("/forbidden/other.mar"))
    url = server.url("/other.mar")
    err = failure(url, model_store, extract_root,
                  allowed_urls=[r"http://127\.0\.0\.1:\d+/other\.mar"])
    assert isinstance(err, DownloadArchiveError)
    assert server.paths == ["/other.mar"], "the redirect target must not be requested"
    assert os.listdir(model_store) == ["basic.mar"]


def test_downloaded_garbage_is_deleted(server, model_store, extract_root):
    server.routes["/junk.mar"] = body(b"this is not a zip file")
    err = failure(server.url("/junk.mar"), model_store, extract_root)
    assert isinstance(err, InvalidModel) and err.status == 400
    assert os.listdir(model_store) == [], "an unusable download would block the next attempt"
    assert not extract_root.exists() or os.listdir(extract_root) == []


def test_concurrent_downloads_of_one_name(server, mar_bytes, model_store, extract_root):
    server.routes["/basic.mar"] = stall_then(body(mar_bytes))
    results: list[object] = []

    def register() -> None:
        try:
            results.append(fetch(server.url("/basic.mar"), model_store, extract_root))
        except TorchdError as exc:
            results.append(exc)

    threads = [threading.Thread(target=register) for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: len(server.requests) >= 2, 5, 0.01, "both downloads in flight together")
    assert len(server.requests) == 2
    server.release.set()
    for t in threads:
        t.join(10)
    errors = [r for r in results if isinstance(r, TorchdError)]
    assert len(results) == 2 and len(errors) == 1
    assert errors[0].message == "Model file already exists basic.mar"
    assert os.listdir(model_store) == ["basic.mar"]
    assert (model_store / "basic.mar").read_bytes() == mar_bytes


# ------------------------------------------------------------------------------------- S3

@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials for moto, and no config from this machine's ~/.aws or instance metadata."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    yield f"http://{host}:{port}"
    moto.stop()


@pytest.fixture
def bucket(moto_endpoint: str, aws_env: None, monkeypatch: pytest.MonkeyPatch,
           mar_bytes: bytes, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on moto holding model.mar and junk.mar; AWS_ENDPOINT_URL points at it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    name = "t-" + request.node.name.lower().replace("_", "-").strip("[]")[:40] + "-" \
        + os.urandom(3).hex()
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    s3 = boto3.session.Session().client("s3")
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="dir/model.mar", Body=mar_bytes)
    return name


def test_s3_url_downloads_and_prepares(bucket, model_store, extract_root):
    prepared = fetch(f"s3://{bucket}/dir/model.mar", model_store, extract_root,
                     allowed_urls=["s3://.*"])
    assert prepared.downloaded and prepared.source == model_store / "model.mar"
    assert prepared.manifest["model"]["modelName"] == "basic"
    assert (prepared.model_dir / "weights.bin").is_file()
    remove_prepared(prepared)
    assert os.listdir(model_store) == []


def test_s3_missing_key_leaves_nothing(bucket, model_store, extract_root):
    url = f"s3://{bucket}/dir/missing.mar"
    err = failure(url, model_store, extract_root, allowed_urls=["s3://.*"])
    assert_download_failed(err, url, model_store)


def test_s3_url_needs_allowed_urls(bucket, model_store, extract_root):
    url = f"s3://{bucket}/dir/model.mar"
    err = failure(url, model_store, extract_root, allowed_urls=list(DEFAULT_ALLOWED_URLS))
    assert err.message == f"Given URL {url} does not match any allowed URL(s)"


def test_endpoint_style_url_with_s3_sse_kms(bucket, moto_endpoint, model_store, extract_root):
    url = f"{moto_endpoint}/{bucket}/dir/model.mar"
    prepared = fetch(url, model_store, extract_root, s3_sse_kms=True)
    assert prepared.source == model_store / "model.mar"
    assert prepared.manifest["model"]["modelVersion"] == "2.5"


def test_s3_sse_kms_on_other_host_is_a_sigv4_signed_get(server, mar_bytes, aws_env,
                                                         monkeypatch, model_store, extract_root):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # some other host
    server.routes["/sse/basic.mar"] = body(mar_bytes)
    prepared = fetch(server.url("/sse/basic.mar"), model_store, extract_root, s3_sse_kms=True)
    assert prepared.manifest["model"]["modelName"] == "basic"
    (_, headers), = server.requests
    auth = headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert "/us-east-1/s3/aws4_request" in auth and "X-Amz-Date" in headers


def test_s3_sse_kms_without_credentials_fetches_nothing(server, aws_env, monkeypatch,
                                                        model_store, extract_root):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    url = server.url("/sse/basic.mar")
    assert_download_failed(failure(url, model_store, extract_root, s3_sse_kms=True),
                           url, model_store)
    assert server.requests == []


@pytest.mark.parametrize("url, endpoint, expected", [
    ("https://bucket.s3.us-west-2.amazonaws.com/dir/m.mar", None,
     ("bucket", "dir/m.mar", "us-west-2")),
    ("https://my.dotted.bucket.s3.eu-west-1.amazonaws.com/m.mar", None,
     ("my.dotted.bucket", "m.mar", "eu-west-1")),
    ("https://bucket.s3.amazonaws.com/m%20v1.mar", None, ("bucket", "m v1.mar", None)),
    ("https://bucket.s3-us-west-2.amazonaws.com/m.mar", None, ("bucket", "m.mar", "us-west-2")),
    ("https://s3.eu-central-1.amazonaws.com/bucket/dir/m.mar", None,
     ("bucket", "dir/m.mar", "eu-central-1")),
    ("https://s3.amazonaws.com/bucket/m.mar", None, ("bucket", "m.mar", None)),
    ("http://127.0.0.1:9000/bucket/m.mar", "http://127.0.0.1:9000", ("bucket", "m.mar", None)),
    ("http://127.0.0.1:9001/bucket/m.mar", "http://127.0.0.1:9000", None),
    ("https://torchserve.pytorch.org/sse-test/squeezenet1_1.mar", None, None),
    ("https://s3.amazonaws.com/bucket-only", None, None),
    ("https://bucket.s3.amazonaws.com/", None, None),
])
def test_parse_s3_https_url(url, endpoint, expected):
    assert parse_s3_https_url(url, endpoint) == expected


def test_archive_file_name_is_not_decoded():
    assert archive_file_name("https://h/a/b/model.mar?x=1") == "model.mar"
    assert archive_file_name("https://h/a/%2e%2e") == "%2e%2e"
    assert archive_file_name("s3://bucket/dir/m.tar.gz") == "m.tar.gz"
    assert archive_file_name("https://h") == ""
