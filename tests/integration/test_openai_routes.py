"""OpenAI's routes through the real daemon (daemon/http/openai_api.py): ``POST /v1/completions``
and ``/v1/chat/completions`` reach the handler named by the body's ``model`` as
``/predictions/{model}/v1/...`` would (``url_path``, the JSON body), on both of the inference
listener's paths (the direct path, and the ASGI app that ``Expect: 100-continue`` takes);
every error is OpenAI's error document; ``GET /v1/models`` lists the models; a
continuous-batching model has vLLM's running and waiting gauges. One daemon for the module,
with a handler that echoes what it was given (tests/models/openai_echo); the real language
model is test_openai_llm.py's."""
from __future__ import annotations

import json
import socket
import time

import openai
import pytest
import requests

from tests.support.archives import build_archive
from tests.support.daemon import Daemon
from tests.support.ops import scrape
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

VIAS = ["direct", "asgi"]
ECHO = "echo-llm"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("openai-routes")
    store = workdir / "store"
    build_archive("openai_echo", store)
    build_archive("steps", store, config_file="model-config.yaml")
    d = Daemon(workdir, store)
    try:
        d.start()
        assert d.register("openai_echo.mar", model_name=ECHO, initial_workers=1).ok
        assert d.register("openai_echo.mar", model_name="idle", initial_workers=0).ok
        # one request at a time in the running batch: a second one waits in the queue
        assert d.register("steps.mar", initial_workers=1, batch_size=1).ok
        yield d
    finally:
        d.cleanup()


def post(d: Daemon, path: str, via: str, body: object = None, raw: bytes | None = None,
         content_type: str = "application/json", **kwargs) -> requests.Response:
    """A POST on ``path`` taking ``via``'s way through the listener."""
    headers = {"Content-Type": content_type}
    if via == "asgi":
        headers["Expect"] = "100-continue"   # the direct path leaves these to the ASGI app
    data = raw if raw is not None else json.dumps(body).encode()
    return d.infer("POST", path, data=data, headers=headers, **kwargs)


def openai_error(response: requests.Response, status: int, param: str | None = None,
                 code: str | None = None) -> str:
    """The error's message, once the response is OpenAI's error document for ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    kind = "invalid_request_error" if status < 500 else "server_error"
    assert (error["type"], error["param"], error["code"]) == (kind, param, code)
    return error["message"]


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("route", ["v1/completions", "v1/chat/completions"])
def test_a_route_reaches_the_named_model_as_its_url_path(daemon: Daemon, via: str,
                                                         route: str) -> None:
    body = {"model": ECHO, "prompt": "hello", "max_tokens": 3}
    r = post(daemon, f"/{route}", via, body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"object": "text_completion", "model": ECHO, "url_path": route,
                        "explain": "False", "content_type": "application/json", "body": body}
    # exactly what TorchServe's own path to the same handler gives
    same = post(daemon, f"/predictions/{ECHO}/1.0/{route}", via, body)
    assert same.json() == r.json()


@pytest.mark.parametrize("via", VIAS)
def test_a_body_of_any_content_type_reaches_the_handler_as_json(daemon: Daemon,
                                                                 via: str) -> None:
    # curl -d sends form-urlencoded: the body is still OpenAI's JSON, never a form
    body = {"model": ECHO, "messages": [{"role": "user", "content": "a=b&c"}]}
    r = post(daemon, "/v1/chat/completions", via, body,
             content_type="application/x-www-form-urlencoded")
    assert r.status_code == 200, r.text
    assert r.json()["body"] == body
    assert r.json()["content_type"] == "application/x-www-form-urlencoded"   # its header


@pytest.mark.parametrize("via", VIAS)
def test_a_version_is_named_as_name_slash_version(daemon: Daemon, via: str) -> None:
    r = post(daemon, "/v1/completions", via, {"model": f"{ECHO}/1.0"})
    assert r.status_code == 200 and r.json()["url_path"] == "v1/completions"
    for model in (f"{ECHO}/9.9", "nope", f"{ECHO}/", "/1.0"):
        message = openai_error(post(daemon, "/v1/completions", via, {"model": model}), 404,
                               "model", "model_not_found")
        assert message == f"The model `{model}` does not exist."


@pytest.mark.parametrize("via", VIAS)
def test_a_body_naming_no_model_is_a_400(daemon: Daemon, via: str) -> None:
    cases = [(b"{not json", None, "The request body is not valid JSON: "),
             (b"\xff\xfe", None, "The request body is not valid JSON: "),
             (b"", None, "The request body is not valid JSON: "),
             (b"[" * 100000 + b"]" * 100000, None, "The request body is not valid JSON"),
             (b'["m"]', None, "The request body must be a JSON object."),
             (b'{"prompt": "x"}', "model", "The request must name its model: `model` is "
                                           "missing."),
             (b'{"model": 5}', "model", "`model` must be a model's name"),
             (b'{"model": ""}', "model", "`model` must be a model's name")]
    for raw, param, start in cases:
        message = openai_error(post(daemon, "/v1/completions", via, raw=raw), 400, param)
        assert message.startswith(start), (raw[:20], message)


@pytest.mark.parametrize("via", VIAS)
def test_the_handlers_prediction_exception_is_openais_error(daemon: Daemon, via: str) -> None:
    r = post(daemon, "/v1/chat/completions", via, {"model": ECHO, "refuse": True})
    assert openai_error(r, 400) == "`refuse` is not a parameter this model takes"


@pytest.mark.parametrize("via", VIAS)
def test_the_daemons_own_refusal_is_openais_error(daemon: Daemon, via: str) -> None:
    r = post(daemon, "/v1/completions", via, {"model": "idle"})
    assert openai_error(r, 503) == (
        'Model "idle" has no worker to serve inference request. Please use scale workers API '
        'to add workers.')


@pytest.mark.parametrize("via", VIAS)
def test_streamed_parts_arrive_as_server_sent_events(daemon: Daemon, via: str) -> None:
    r = post(daemon, "/v1/completions", via, {"model": ECHO, "stream": True}, stream=True)
    with r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        assert r.headers["transfer-encoding"] == "chunked"
        text = b"".join(r.iter_content(chunk_size=None)).decode()
    events = [line for line in text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert [json.loads(e[len("data: "):])["choices"][0]["text"] for e in events[:-1]] \
        == ["0", "1", "2"]


def test_v1_models_lists_every_model_for_openai_and_kserve(daemon: Daemon) -> None:
    r = daemon.infer("GET", "/v1/models")
    assert r.status_code == 200
    listing = r.json()
    names = sorted([ECHO, "idle", "steps"])
    assert listing["object"] == "list" and listing["models"] == names
    assert [m["id"] for m in listing["data"]] == names
    for model in listing["data"]:
        assert model["object"] == "model" and model["owned_by"] == "torchd"
        assert isinstance(model["created"], int) and 0 < time.time() - model["created"] < 600


def test_the_openai_client_reads_the_answers_and_errors(daemon: Daemon) -> None:
    client = openai.OpenAI(base_url=daemon.url("inference", "/v1"), api_key="unused",
                           max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == sorted([ECHO, "idle", "steps"])
    with pytest.raises(openai.NotFoundError) as found:
        client.completions.create(model="nope", prompt="x")
    assert found.value.body["message"] == "The model `nope` does not exist."
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=ECHO, messages=[], extra_body={"refuse": True})
    assert refused.value.body["type"] == "invalid_request_error"
    assert found.value.code == "model_not_found"
    chunks = client.completions.create(model=ECHO, prompt="x", stream=True)
    assert [chunk.choices[0].text for chunk in chunks] == ["0", "1", "2"]


class RawStream:
    """A request sent over a raw socket: its answer is read when asked for, and closing the
    socket hangs up."""

    def __init__(self, port: int, path: str, body: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))

    def first_bytes(self) -> bytes:
        return self.sock.recv(1024)

    def close(self) -> None:
        self.sock.close()


def llm_gauges(d: Daemon, model: str) -> tuple[float | None, float | None]:
    samples = scrape(d)
    labels = frozenset({"model_name": model, "model_version": "1.0"}.items())
    return (samples.get(("llm_num_requests_running", labels)),
            samples.get(("llm_num_requests_waiting", labels)))


def test_a_continuous_batching_model_has_running_and_waiting_gauges(daemon: Daemon) -> None:
    assert llm_gauges(daemon, ECHO) == (None, None)   # not served with continuous batching
    body = json.dumps({"k": 10 ** 9, "tag": "long"}).encode()
    port = daemon.ports["inference"]
    running = RawStream(port, "/predictions/steps", body)
    waiting = None
    try:
        assert running.first_bytes().startswith(b"HTTP/1.1 200")
        waiting = RawStream(port, "/predictions/steps", body)
        wait_until(lambda: llm_gauges(daemon, "steps") == (1, 1), 30,
                   what=lambda: f"one running, one waiting: {llm_gauges(daemon, 'steps')}")
    finally:
        running.close()   # the first leaves the running batch; the second takes its place
    try:
        wait_until(lambda: llm_gauges(daemon, "steps") == (1, 0), 30,
                   what=lambda: f"the waiting one running: {llm_gauges(daemon, 'steps')}")
    finally:
        if waiting is not None:
            waiting.close()
    wait_until(lambda: llm_gauges(daemon, "steps") == (0, 0), 30,
               what=lambda: f"none left: {llm_gauges(daemon, 'steps')}")
