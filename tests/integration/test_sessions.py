"""Sessions and continuous batching through the real daemon, real workers and archives built by
torch-model-archiver, with TorchServe-style handlers (tests/models/running_sum, steps,
stateful_stream, async_sleep): stateful sequences over REST and gRPC, sequence limits and
expiry, a worker dying mid-sequence, continuous batching (joins, hang-ups), async workers.
One daemon serves them all."""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from tests.integration.test_inference import read_chunked
from tests.support.archives import build_archive, copy_store
from tests.support.daemon import Daemon
from tests.support.grpc_stubs import generate_stubs
from tests.support.waiting import wait_until

SEQ, START = "ts_request_sequence_id", "ts_request_sequence_start"
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def daemon(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("sessions")
    store = copy_store(archive_dir, workdir / "store")
    for name in ("running_sum", "steps", "stateful_stream", "async_sleep"):
        build_archive(name, store, config_file="model-config.yaml")
    build_archive("running_sum", store, name="sum_short", config_file="short.yaml")
    d = Daemon(workdir, store)
    d.start()
    for name, workers in (("running_sum", 2), ("steps", 1), ("stateful_stream", 2),
                          ("async_sleep", 1), ("sum_short", 1)):
        r = d.register(f"{name}.mar", initial_workers=workers, synchronous="true")
        assert r.status_code == 200, r.text
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return generate_stubs(tmp_path_factory.mktemp("stubs"))


def add(daemon: Daemon, model: str, value: int, sequence: str | None = None,
        start: bool = False) -> requests.Response:
    """One request of a sequence, as TorchServe's example sends it (curl -T: a PUT)."""
    headers = {SEQ: sequence} if sequence else {}
    if start:
        headers[START] = "true"
    return daemon.infer("PUT", f"/predictions/{model}", data=str(value).encode(),
                        headers=headers, timeout=60)


def run_sequence(daemon: Daemon, model: str, sequence: str, values: list[int],
                 ) -> list[tuple[int, str]]:
    answers = []
    for value in values:
        r = add(daemon, model, value, sequence)
        assert r.status_code == 200, r.text
        answers.append((int(r.text), r.headers["x-worker-pid"]))
    return answers


# ---- sequences over REST ---------------------------------------------------------------------

def test_two_clients_get_their_running_sums(daemon: Daemon) -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        odd = pool.submit(run_sequence, daemon, "running_sum", "seq_0", [1, 3, 5, 7, 9])
        even = pool.submit(run_sequence, daemon, "running_sum", "seq_1", [2, 4, 6, 8, 10])
        odd_answers, even_answers = odd.result(), even.result()
    assert [s for s, _ in odd_answers] == [1, 4, 9, 16, 25]
    assert [s for s, _ in even_answers] == [2, 6, 12, 20, 30]
    assert len({pid for _, pid in odd_answers}) == 1 and len({p for _, p in even_answers}) == 1


def test_32_concurrent_sequences_each_on_one_worker(daemon: Daemon) -> None:
    values = {f"many-{i}": [i, i + 1, i + 2, i + 3, i + 4] for i in range(32)}
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        futures = {s: pool.submit(run_sequence, daemon, "running_sum", s, v)
                   for s, v in values.items()}
        results = {s: f.result() for s, f in futures.items()}
    pids = set()
    for sequence, answers in results.items():
        sums = [sum(values[sequence][:n + 1]) for n in range(5)]
        assert [s for s, _ in answers] == sums, sequence
        assert len({pid for _, pid in answers}) == 1, answers
        pids.add(answers[0][1])
    assert len(pids) == 2   # the sequences spread over both workers


def test_a_request_without_an_id_opens_a_sequence_and_learns_its_id(daemon: Daemon) -> None:
    first = add(daemon, "running_sum", 5)
    sequence = first.headers[SEQ]
    assert first.status_code == 200 and first.text == "5" and sequence.startswith("ts-seq-")
    again = add(daemon, "running_sum", 6, sequence)
    assert (again.status_code, again.text, again.headers[SEQ]) == (200, "11", sequence)


def test_a_dead_workers_sequence_is_refused_never_moved(daemon: Daemon) -> None:
    answers = run_sequence(daemon, "running_sum", "doomed", [1, 2])
    pid = int(answers[0][1])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: all(w["pid"] != pid and w["status"] == "READY"
                           for w in daemon.workers("running_sum")) and
               len(daemon.workers("running_sum")) == 2, 60, what="the worker replaced")
    refused = add(daemon, "running_sum", 3, "doomed")
    assert refused.status_code == 503, refused.text
    assert "sequence doomed lost its state: its worker stopped" in refused.json()["message"]
    reopened = add(daemon, "running_sum", 3, "doomed", start=True)   # the client starts over
    assert (reopened.status_code, reopened.text) == (200, "3")


def test_sequence_limits_and_idle_expiry(daemon: Daemon) -> None:
    # sum_short: maxNumSequence 2 (batchSize 1 x 1 worker), sequenceMaxIdleMSec 300
    assert add(daemon, "sum_short", 1, "a").text == "1"
    assert add(daemon, "sum_short", 1, "b").text == "1"
    refused = add(daemon, "sum_short", 1, "c")
    assert refused.status_code == 503
    message = refused.json()["message"]
    assert message.startswith('Model "sum_short" has no worker to serve inference request.')
    assert "sequence c not opened: 2 sequences are open (maxNumSequence)" in message
    wait_until(lambda: daemon.describe("sum_short")[0]["jobQueueStatus"]["openSequences"] == 0,
               30, what="both sequences idle past 300 ms")
    expired = add(daemon, "sum_short", 1, "a")
    assert expired.status_code == 503
    assert "sequence a expired: no request for 300 ms (sequenceMaxIdleMSec)" in \
        expired.json()["message"]
    assert add(daemon, "sum_short", 1, "c").text == "1"   # room again for a new one


# ---- sequences over gRPC ---------------------------------------------------------------------

def test_grpc_stream_gives_the_handler_its_sequence_id(daemon: Daemon, stubs: Any) -> None:
    assert add(daemon, "running_sum", 7, "other-1").status_code == 200
    assert add(daemon, "running_sum", 9, "other-2").status_code == 200
    channel = grpc.insecure_channel(f"127.0.0.1:{daemon.ports['grpc_inference']}")
    try:
        infer = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)

        def requests_of(sequence: str):
            for value in (1, 2, 3):
                yield stubs.inference_pb2.PredictionsRequest(
                    model_name="running_sum", input={"body": str(value).encode()},
                    sequence_id=sequence)

        answers = list(infer.StreamPredictions2(requests_of("grpc-new"), timeout=60))
    finally:
        channel.close()
    assert [int(a.prediction) for a in answers] == [1, 3, 6]
    assert {a.sequence_id for a in answers} == {"grpc-new"}


# ---- continuous batching ---------------------------------------------------------------------

def steps(daemon: Daemon, k: int, tag: str) -> tuple[int, dict[str, str], list[dict]]:
    status, head, chunks = read_chunked(daemon.ports["inference"], "/predictions/steps",
                                        json.dumps({"k": k, "tag": tag}).encode())
    return status, head, [json.loads(body) for _, body in chunks]


def test_a_request_streams_one_part_per_step(daemon: Daemon) -> None:
    status, head, parts = steps(daemon, 3, "solo")
    assert status == 200 and parts == [{"tag": "solo", "step": i} for i in (1, 2, 3)]
    assert "ts_stream_next" not in head


class Stream:
    """A streamed request read chunk by chunk over a raw socket."""

    def __init__(self, port: int, body: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.reader = self.sock.makefile("rb")
        self.sock.sendall(b"POST /predictions/steps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          b"Content-Type: application/json\r\nContent-Length: "
                          + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert int(self.reader.readline().split()[1]) == 200
        self.head = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            self.head[name.strip().lower()] = value.strip()

    def next_part(self) -> dict:
        size = int(self.reader.readline().split(b";")[0], 16)
        data = self.reader.read(size)
        self.reader.readline()
        return json.loads(data)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def test_requests_join_a_running_batch_and_a_hang_up_leaves_it(daemon: Daemon) -> None:
    long = Stream(daemon.ports["inference"], json.dumps({"k": 100000, "tag": "long"}).encode())
    try:
        assert long.next_part() == {"tag": "long", "step": 1}
        status, head, parts = steps(daemon, 3, "joiner")
        assert status == 200 and parts == [{"tag": "joiner", "step": i} for i in (1, 2, 3)]
        assert head["x-step-batch"] == "2"   # it joined the long request's running batch
        assert long.next_part()["step"] > 1
    finally:
        long.close()                         # the client hangs up mid-stream
    wait_until(lambda: steps(daemon, 2, "alone")[1]["x-step-batch"] == "1", 30,
               what="the hung-up request leaving the running batch")


@contextlib.contextmanager
def grpc_steps(daemon: Daemon, stubs: Any, k: int) -> Iterator[Any]:
    """A StreamPredictions call of ``k`` steps on the steps model; its channel closed after."""
    channel = grpc.insecure_channel(f"127.0.0.1:{daemon.ports['grpc_inference']}")
    try:
        infer = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        request = stubs.inference_pb2.PredictionsRequest(
            model_name="steps", input={"body": json.dumps({"k": k, "tag": "g"}).encode()})
        yield infer.StreamPredictions(request, timeout=60)
    finally:
        channel.close()


def test_continuous_batching_over_grpc_streams_parts(daemon: Daemon, stubs: Any) -> None:
    with grpc_steps(daemon, stubs, 4) as call:
        parts = [json.loads(r.prediction) for r in call]
    assert parts == [{"tag": "g", "step": i} for i in (1, 2, 3, 4)]


def test_a_cancelled_grpc_stream_leaves_the_running_batch(daemon: Daemon, stubs: Any) -> None:
    with grpc_steps(daemon, stubs, 100000) as call:
        assert json.loads(next(call).prediction) == {"tag": "g", "step": 1}
        call.cancel()                          # the client goes away mid-stream
    wait_until(lambda: steps(daemon, 2, "alone")[1]["x-step-batch"] == "1", 30,
               what="the cancelled gRPC request leaving the running batch")


def test_sequence_with_continuous_batching_streams_and_ends(daemon: Daemon) -> None:
    opened = add(daemon, "stateful_stream", 2, "cs", start=True)
    assert (opened.status_code, opened.text) == (200, "2"), opened.text
    even = add(daemon, "stateful_stream", 4, "cs")
    assert (even.status_code, even.text, even.headers[SEQ]) == (200, "6", "cs")
    status, head, chunks = read_chunked(daemon.ports["inference"], "/predictions/stateful_stream",
                                        b"3", {SEQ: "cs"})
    assert status == 200 and len(chunks) > 1 and int(chunks[-1][1]) == 9
    ended = add(daemon, "stateful_stream", 0, "cs")
    assert ended.status_code == 200 and "cs" in ended.headers.get("ts_request_sequence_end", "")
    after = add(daemon, "stateful_stream", 2, "cs")
    assert after.status_code == 503 and "sequence cs was ended" in after.json()["message"]


# ---- async workers ---------------------------------------------------------------------------

def test_eight_concurrent_calls_on_one_async_worker(daemon: Daemon) -> None:
    def call(i: int) -> requests.Response:
        return daemon.infer("POST", "/predictions/async_sleep", json={"sleep": 0.5},
                            headers={"x-tag": str(i)}, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        call(-1)   # warm: connections and the worker's loop
        started = time.monotonic()
        answers = list(pool.map(call, range(8)))
        elapsed = time.monotonic() - started
    assert [r.status_code for r in answers] == [200] * 8
    assert [r.headers["x-tag"] for r in answers] == [str(i) for i in range(8)]
    assert len({r.json()["id"] for r in answers}) == 8
    assert elapsed < 2.0, elapsed   # one after another: 4 s


def test_grpc_input_flags_start_and_end_a_sequence(daemon: Daemon, stubs: Any) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{daemon.ports['grpc_inference']}")
    try:
        infer = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)

        def requests_of(*steps: tuple[int, dict[str, bytes]]):
            for value, flags in steps:
                yield stubs.inference_pb2.PredictionsRequest(
                    model_name="running_sum", sequence_id="flags",
                    input={"body": str(value).encode(), **flags})

        ended = list(infer.StreamPredictions2(requests_of(
            (4, {}), (5, {"ts_request_sequence_end": b"true"}), (6, {})), timeout=60))
        reopened = list(infer.StreamPredictions2(requests_of(
            (7, {"ts_request_sequence_start": b"true"})), timeout=60))
    finally:
        channel.close()
    assert [int(a.prediction) for a in ended[:2]] == [4, 9]
    assert ended[2].HasField("status") and "sequence flags was ended" in ended[2].status.message
    # taken again (running_sum, as TorchServe's example, keeps sums by id whatever the start
    # header says: 7, or 16 where the worker still holds the old sum)
    assert not reopened[0].HasField("status") and int(reopened[0].prediction) in (7, 16)


def test_sequence_header_names_come_from_the_config(make_daemon, tmp_path: Path) -> None:
    d = make_daemon({"ts_header_key_sequence_id": "X-Session"}, start=False)
    build_archive("running_sum", d.model_store, config_file="model-config.yaml")
    d.start()
    assert d.register("running_sum.mar", initial_workers=1, synchronous="true").status_code == 200

    def send(value: int, headers: dict[str, str]) -> requests.Response:
        return d.infer("POST", "/predictions/running_sum", data=str(value).encode(),
                       headers=headers, timeout=60)

    assert send(2, {"x-session": "s"}).text == "2"
    again = send(3, {"x-session": "s"})
    assert (again.text, again.headers["x-session"]) == ("5", "s")
    own = send(4, {SEQ: "s"})   # TorchServe's default name is an ordinary header here
    assert own.text == "4" and own.headers["x-session"].startswith("ts-seq-")


def test_an_async_handler_streams_a_part_first(daemon: Daemon) -> None:
    status, head, chunks = read_chunked(daemon.ports["inference"], "/predictions/async_sleep",
                                        json.dumps({"sleep": 0.05, "part": True}).encode())
    bodies = [json.loads(body) for _, body in chunks]
    assert status == 200 and len(bodies) == 2 and "part" in bodies[0]
    assert bodies[1]["slept"] == 0.05 and bodies[1]["id"] == bodies[0]["part"]


def test_an_async_worker_killed_with_batches_in_flight_ends_them_and_is_replaced(
        daemon: Daemon) -> None:
    """Each of the 8 calls has streamed its first part (so it is in the worker and is not sent
    again): the kill ends every stream, a new worker answers, and the daemon's log holds no
    asyncio "Future exception was never retrieved" for the lost batches."""
    (worker,) = daemon.wait_workers("async_sleep", 1)
    in_worker = [threading.Event() for _ in range(8)]

    def call(i: int) -> str:
        with requests.post(daemon.url("inference", "/predictions/async_sleep"),
                           json={"sleep": 60, "part": True}, stream=True, timeout=60) as r:
            chunks = r.iter_content(None)
            next(chunks)
            in_worker[i].set()
            try:
                list(chunks)
            except requests.exceptions.ChunkedEncodingError:
                return "ended"
            return "finished"

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        calls = [pool.submit(call, i) for i in range(8)]
        wait_until(lambda: all(event.is_set() for event in in_worker), 30)
        os.kill(worker["pid"], signal.SIGKILL)
        assert [c.result(timeout=30) for c in calls] == ["ended"] * 8
    daemon.wait_workers("async_sleep", 1)
    r = daemon.infer("POST", "/predictions/async_sleep", json={"sleep": 0}, timeout=60)
    assert r.status_code == 200, r.text
    assert "never retrieved" not in daemon.log()
