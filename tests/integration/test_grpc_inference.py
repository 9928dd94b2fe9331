"""TorchServe's InferenceAPIsService over gRPC (issue 16) through the real daemon, with stubs
generated in the test from torchd's .proto files: Ping, Predictions and its errors as REST
answers them, StreamPredictions (parts, a cancel mid-stream, a cancel that drops a queued
request), StreamPredictions2 (a sequence stays on one worker, in order; an idle one ends),
malformed and oversized messages, token auth on and off."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase)

from tests.support.archives import build_archive, copy_store
from tests.support.daemon import Daemon
from tests.support.grpc_stubs import bearer, channel, generate_stubs
from tests.support.waiting import wait_until

C = grpc.StatusCode
LIMIT = 1024 * 1024   # max_request_size of this module's daemon
SERVICE = "/org.pytorch.serve.grpc.inference.InferenceAPIsService"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory):
    return generate_stubs(tmp_path_factory.mktemp("stubs"))


@pytest.fixture(scope="module")
def daemon(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("grpc-inference")
    store = copy_store(archive_dir, workdir / "store")
    build_archive("recorder", store, config_file="config.yaml")
    build_archive("recorder", store, name="recorder_seq", config_file="sequences.yaml")
    d = Daemon(workdir, store, {"max_request_size": LIMIT,
                                "models": '{"recq": {"1.0": {"jobQueueSize": 1}}}'})
    d.start()
    for name, workers in (("rec", 1), ("rec2", 2), ("recq", 1), ("fail_plain", 1), ("oom", 1),
                          ("idle", 0)):
        url = {"idle": "noop.mar", "rec2": "recorder_seq.mar"}.get(
            name, "recorder.mar" if "rec" in name else f"{name}.mar")
        r = d.register(url, model_name=name, initial_workers=workers)
        assert r.status_code == 200, r.text
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def infer(daemon: Daemon, stubs: Any):
    with channel(daemon.ports["grpc_inference"]) as ch:
        yield stubs.inference_pb2_grpc.InferenceAPIsServiceStub(ch)


def request(stubs: Any, model: str, version: str = "", **body: Any) -> Any:
    return stubs.inference_pb2.PredictionsRequest(
        model_name=model, model_version=version, input={"data": json.dumps(body).encode()})


def error_of(call: Any) -> tuple[Any, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def logged(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    return [(int(pid), tag) for pid, tag in
            (line.split() for line in path.read_text().splitlines())]


# ---- Ping, Predictions, errors --------------------------------------------------------------

def test_ping_and_predictions(daemon, infer, stubs) -> None:
    health = infer.Ping(empty_pb2.Empty(), timeout=30).health
    assert json.loads(health) == daemon.infer("GET", "/ping").json() == {"status": "Healthy"}
    assert health + "\n" == daemon.infer("GET", "/ping").text   # TorchServe's layout, no newline
    for version in ("", "1.0"):
        r = infer.Predictions(request(stubs, "rec", version, tag="p1"), timeout=60,
                              metadata=(("x-test", "from metadata"),))
        answer = json.loads(r.prediction)
        assert (answer["tag"], answer["header"]) == ("p1", "from metadata")
    noop = stubs.inference_pb2.PredictionsRequest(model_name="idle", input={"data": b"x"})
    assert daemon.register("noop.mar", model_name="np", initial_workers=1).status_code == 200
    assert json.loads(infer.Predictions(stubs.inference_pb2.PredictionsRequest(
        model_name="np", input={"data": b"x"}), timeout=60).prediction) == {"ok": 1}
    assert daemon.unregister("np").status_code == 200
    assert error_of(lambda: infer.Predictions(noop, timeout=60)) == (
        C.UNAVAILABLE, 'Model "idle" has no worker to serve inference request. Please use '
                       'scale workers API to add workers.')


def test_errors_carry_the_rest_message(daemon, infer, stubs) -> None:
    cases = [("ghost", "", C.NOT_FOUND), ("rec", "9.9", C.NOT_FOUND),
             ("fail_plain", "", C.UNAVAILABLE), ("oom", "", C.RESOURCE_EXHAUSTED)]
    for model, version, code in cases:
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        rest = daemon.infer("POST", path, data=b"{}")
        assert error_of(lambda: infer.Predictions(request(stubs, model, version),
                                                  timeout=60)) == (code, rest.json()["message"])
    assert error_of(lambda: list(infer.StreamPredictions(request(stubs, "ghost"),
                                                         timeout=60))) == (
        C.NOT_FOUND, "Model not found: ghost")


def test_a_full_queue_is_unavailable_with_retry_after(daemon, infer, stubs, tmp_path) -> None:
    log = tmp_path / "log"
    busy = infer.Predictions.future(request(stubs, "recq", tag="busy", log=str(log), sleep=2),
                                    timeout=60)
    wait_until(lambda: logged(log), 30, what="the first request running")
    queued = infer.Predictions.future(request(stubs, "recq", tag="queued"), timeout=60)
    wait_until(lambda: daemon.describe("recq")[0]["jobQueueStatus"]["pendingRequests"] == 1, 10,
               what="the second request queued (capacity 1)")
    with pytest.raises(grpc.RpcError) as info:
        infer.Predictions(request(stubs, "recq", tag="refused"), timeout=60)
    assert (info.value.code(), info.value.details()) == (
        C.UNAVAILABLE, 'Model "recq" job queue is full')
    assert ("retry-after", "1") in info.value.trailing_metadata()
    assert json.loads(busy.result().prediction)["tag"] == "busy"
    assert json.loads(queued.result().prediction)["tag"] == "queued"


# ---- StreamPredictions ----------------------------------------------------------------------

def test_stream_predictions_sends_each_part_then_the_result(infer, stubs) -> None:
    parts = [r.prediction for r in infer.StreamPredictions(
        request(stubs, "rec", tag="s1", parts=3), timeout=60)]
    assert parts[:3] == [b"part 0", b"part 1", b"part 2"]
    assert json.loads(parts[3])["tag"] == "s1" and len(parts) == 4
    # a unary call of a streaming handler answers its result
    answer = infer.Predictions(request(stubs, "rec", tag="s2", parts=2), timeout=60)
    assert json.loads(answer.prediction)["tag"] == "s2"


def test_cancel_in_the_middle_of_a_stream(daemon, infer, stubs, tmp_path) -> None:
    log = tmp_path / "log"
    stream = infer.StreamPredictions(request(stubs, "rec", tag="c1", log=str(log), parts=3,
                                             part_sleep=0.5), timeout=60)
    assert next(stream).prediction == b"part 0"
    stream.cancel()
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == C.CANCELLED
    answer = infer.Predictions(request(stubs, "rec", tag="c2", log=str(log)), timeout=60)
    assert json.loads(answer.prediction)["tag"] == "c2"
    assert [tag for _, tag in logged(log)] == ["c1", "c2"]


def test_cancel_drops_a_queued_request(daemon, infer, stubs, tmp_path) -> None:
    log = tmp_path / "log"
    busy = infer.Predictions.future(request(stubs, "rec", tag="busy", log=str(log), sleep=2),
                                    timeout=60)
    wait_until(lambda: logged(log), 30, what="the first request running")
    queued = infer.StreamPredictions(request(stubs, "rec", tag="dropped", log=str(log)),
                                     timeout=60)
    wait_until(lambda: daemon.describe("rec")[0]["jobQueueStatus"]["pendingRequests"] == 1, 10,
               what="the second request queued")
    queued.cancel()
    wait_until(lambda: daemon.describe("rec")[0]["jobQueueStatus"]["pendingRequests"] == 0, 10,
               what="the cancelled request leaving the queue")
    assert json.loads(busy.result().prediction)["tag"] == "busy"
    after = infer.Predictions(request(stubs, "rec", tag="after", log=str(log)), timeout=60)
    assert json.loads(after.prediction)["tag"] == "after"
    assert [tag for _, tag in logged(log)] == ["busy", "after"]


# ---- StreamPredictions2: sequences ----------------------------------------------------------

def run_sequence(infer: Any, stubs: Any, sequence: str | None, tags: list[str], log: Path,
                 out: dict) -> None:
    def requests():
        for tag in tags:
            r = request(stubs, "rec2", tag=tag, log=str(log), sleep=0.2)
            if sequence is not None:
                r.sequence_id = sequence
            yield r
    out[sequence] = list(infer.StreamPredictions2(requests(), timeout=60))


def test_a_sequence_runs_on_one_worker_in_order(daemon, infer, stubs, tmp_path) -> None:
    log, out = tmp_path / "log", {}
    sequences = {"seq-a": ["a1", "a2", "a3"], "seq-b": ["b1", "b2", "b3"]}
    threads = [threading.Thread(target=run_sequence, args=(infer, stubs, s, tags, log, out))
               for s, tags in sequences.items()]
    for thread in threads:
        thread.start()
    # meanwhile, plain requests keep both workers in use
    for i in range(4):
        infer.Predictions(request(stubs, "rec2", tag=f"plain{i}", sleep=0.1), timeout=60)
    for thread in threads:
        thread.join(60)
    lines = logged(log)
    for sequence, tags in sequences.items():
        answers = [json.loads(r.prediction) for r in out[sequence]]
        assert [a["tag"] for a in answers] == tags
        assert {r.sequence_id for r in out[sequence]} == {sequence}
        assert len({a["pid"] for a in answers}) == 1, answers           # one worker
        assert [t for _, t in lines if t in tags] == tags                # in order
        assert {p for p, t in lines if t in tags} == {answers[0]["pid"]}


def test_a_sequence_without_an_id_gets_one_and_errors_do_not_end_it(infer, stubs,
                                                                    tmp_path) -> None:
    def requests():
        yield request(stubs, "rec2", tag="n1")
        yield request(stubs, "ghost", tag="n2")
        yield request(stubs, "rec2", tag="n3")
    responses = list(infer.StreamPredictions2(requests(), timeout=60))
    ids = {r.sequence_id for r in responses}
    assert len(ids) == 1 and ids != {""}
    assert json.loads(responses[0].prediction)["tag"] == "n1"
    assert responses[1].HasField("status")
    assert (responses[1].status.code, responses[1].status.message) == (
        C.NOT_FOUND.value[0], "Model not found: ghost")
    assert json.loads(responses[2].prediction)["tag"] == "n3"
    assert json.loads(responses[0].prediction)["pid"] == json.loads(
        responses[2].prediction)["pid"]


def test_an_idle_sequence_ends(infer, stubs) -> None:
    release = threading.Event()

    def requests():
        yield request(stubs, "rec2", tag="i1")
        release.wait(30)   # longer than sequenceMaxIdleMSec (1500 ms)

    responses = infer.StreamPredictions2(requests(), timeout=60)
    started = time.monotonic()
    assert json.loads(next(responses).prediction)["tag"] == "i1"
    with pytest.raises(grpc.RpcError) as info:
        next(responses)
    release.set()
    assert info.value.code() == C.DEADLINE_EXCEEDED
    assert info.value.details().endswith("ended: no request for 1500 ms (sequenceMaxIdleMSec)")
    assert 1.4 < time.monotonic() - started < 20


# ---- bad messages ---------------------------------------------------------------------------

def test_malformed_and_oversized_messages(daemon, infer, stubs) -> None:
    ch = channel(daemon.ports["grpc_inference"])
    raw = ch.unary_unary(f"{SERVICE}/Predictions")
    code, details = error_of(lambda: raw(b"\x0a\xff\xff\xff", timeout=30))
    assert (code, details) == (C.INVALID_ARGUMENT, "The request is not a valid "
                               "org.pytorch.serve.grpc.inference.PredictionsRequest message")
    raw_stream = ch.stream_stream(f"{SERVICE}/StreamPredictions2")
    assert error_of(lambda: list(raw_stream(iter([b"\x0a\xff"]), timeout=30)))[0] == \
        C.INVALID_ARGUMENT
    big = stubs.inference_pb2.PredictionsRequest(model_name="rec",
                                                 input={"data": b"x" * (LIMIT + 1)})
    code, details = error_of(lambda: infer.Predictions(big, timeout=30))
    assert code == C.RESOURCE_EXHAUSTED, details
    ch.close()
    assert json.loads(infer.Predictions(request(stubs, "rec", tag="still"),
                                        timeout=60).prediction)["tag"] == "still"
    assert json.loads(infer.Ping(empty_pb2.Empty(), timeout=30).health)["status"] == "Healthy"


# ---- token auth -----------------------------------------------------------------------------

def test_token_auth_on(archive_dir: Path, tmp_path: Path, stubs: Any) -> None:
    d = Daemon(tmp_path, copy_store(archive_dir, tmp_path / "store"),
               {"disable_token_authorization": "false", "enable_model_api": "false"})
    try:
        d.start()
        keys = json.loads((tmp_path / "key_file.json").read_text())
        management, inference = keys["management"]["key"], keys["inference"]["key"]
        refused = (C.UNAUTHENTICATED, "Token Authorization failed. Token either incorrect, "
                                      "expired, or not provided correctly")
        with channel(d.ports["grpc_inference"]) as ich, \
                channel(d.ports["grpc_management"]) as mch:
            infer = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(ich)
            mgmt = stubs.management_pb2_grpc.ManagementAPIsServiceStub(mch)
            ping, listing = empty_pb2.Empty(), stubs.management_pb2.ListModelsRequest()
            assert error_of(lambda: infer.Ping(ping, timeout=30)) == refused
            assert error_of(lambda: infer.Ping(ping, timeout=30,
                                               metadata=bearer(management))) == refused
            assert error_of(lambda: list(infer.StreamPredictions(
                request(stubs, "rec"), timeout=30))) == refused
            assert error_of(lambda: mgmt.ListModels(listing, timeout=30)) == refused
            assert error_of(lambda: mgmt.ListModels(listing, timeout=30,
                                                    metadata=bearer(inference))) == refused
            assert "Healthy" in infer.Ping(ping, timeout=30, metadata=bearer(inference)).health
            assert json.loads(mgmt.ListModels(listing, timeout=30,
                                              metadata=bearer(management)).msg) == {"models": []}
            # the model API is off: REST's 405; gRPC's PERMISSION_DENIED in TorchServe's words
            rest = d.mgmt("POST", "/models", params={"url": "noop.mar"},
                          headers={"Authorization": f"Bearer {management}"})
            assert rest.status_code == 405
            register = stubs.management_pb2.RegisterModelRequest(url="noop.mar")
            assert error_of(lambda: mgmt.RegisterModel(register, timeout=30,
                                                       metadata=bearer(management))) == (
                C.PERMISSION_DENIED,
                "Model API disabled\norg.pytorch.serve.archive.model.ModelException")
    finally:
        d.cleanup()


def test_token_auth_off_needs_no_metadata(daemon, infer) -> None:
    assert not (Path(daemon.workdir) / "key_file.json").exists()
    assert "Healthy" in infer.Ping(empty_pb2.Empty(), timeout=30).health


def test_server_reflection_serves_each_ports_services(daemon: Daemon) -> None:
    """What grpcurl does without the .proto files: list a port's services through reflection,
    fetch their descriptors, and call one with messages built from them alone."""
    inference = {"org.pytorch.serve.grpc.inference.InferenceAPIsService",
                 "inference.GRPCInferenceService"}
    management = {"org.pytorch.serve.grpc.management.ManagementAPIsService"}
    common = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    for port, services in ((daemon.ports["grpc_inference"], inference),
                           (daemon.ports["grpc_management"], management)):
        with channel(port) as ch:
            database = ProtoReflectionDescriptorDatabase(ch)
            assert set(database.get_services()) == services | common
            pool = DescriptorPool(database)
            for name in services:
                assert pool.FindServiceByName(name).methods   # its file came through
    with channel(daemon.ports["grpc_inference"]) as ch:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(ch))
        ping = pool.FindServiceByName(SERVICE[1:]).methods_by_name["Ping"]
        request_type = GetMessageClass(ping.input_type)
        response_type = GetMessageClass(ping.output_type)
        call = ch.unary_unary(f"{SERVICE}/Ping", request_serializer=request_type.SerializeToString,
                              response_deserializer=response_type.FromString)
        assert json.loads(call(request_type(), timeout=30).health) == {"status": "Healthy"}
