"""The pure parts of scripts/bench's LLM round (no server, no sockets): the token-stream reader
fed from memory (SSE as the text_generation handler streams it, TorchServe's chunked parts),
a run's figures, the requests each server gets, the round's rows and goals, the archives'
model-config.yaml; and TorchServe's own streaming handler (benchlib/ts_llm_handler.py: taken from
a TorchServe source tree, edited) driven as TorchServe 0.12 drives it, against the tiny model.

The round itself (real daemons, real load) runs with scripts/bench --llm.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from benchlib import environment, llm  # noqa: E402
from benchlib import token_answers as ta  # noqa: E402
from benchlib import token_streams as ts  # noqa: E402
from benchlib.report import medians, metrics_for, table_rows  # noqa: E402
from benchlib.environment import DEFAULT_TS_SOURCE  # noqa: E402
from benchlib.ts_llm_handler import HANDLER, torchserve_handler  # noqa: E402


# ---------------------------------------------------------------- SSE payloads and chunks

def _chunk(text: str | None, finish: str | None = None, usage: int | None = None) -> bytes:
    choices = [] if text is None else [{"index": 0, "text": text, "finish_reason": finish}]
    chunk: dict[str, Any] = {"id": "cmpl-1", "object": "text_completion", "choices": choices}
    if usage is not None:
        chunk["usage"] = {"prompt_tokens": 3, "completion_tokens": usage,
                          "total_tokens": 3 + usage}
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def test_sse_payloads_joins_data_lines_and_skips_comments() -> None:
    assert ta.sse_payloads(b"data: {}") == b"{}"
    assert ta.sse_payloads(b"data:[DONE]") == b"[DONE]"
    assert ta.sse_payloads(b"event: x\ndata: a\ndata: b") == b"a\nb"
    assert ta.sse_payloads(b": keep-alive") is None


def test_chunk_text_and_tokens_for_completion_chat_usage_and_finish_chunks() -> None:
    assert ta.chunk_text({"choices": [{"text": "ab"}]}) == "ab"
    assert ta.chunk_text({"choices": [{"delta": {"content": "c"}}]}) == "c"
    assert ta.chunk_text({"choices": [{"delta": {"role": "assistant"}}]}) == ""
    assert ta.chunk_text({"choices": [{"text": "", "finish_reason": "length"}]}) == ""
    assert ta.chunk_text({"choices": [], "usage": {"completion_tokens": 4}}) == ""
    assert ta.chunk_tokens({"choices": [], "usage": {"completion_tokens": 4}}) == 4
    assert ta.chunk_tokens({"choices": [{"text": "a"}], "usage": None}) is None
    assert ta.parse_chunk(b"[1]") is None and ta.parse_chunk(b"nope") is None


# ---------------------------------------------------------------- the answer reader

def _chunked(*parts: bytes, close: bool = False, status: str = "200 OK") -> bytes:
    head = f"HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n".encode()
    head += b"Connection: close\r\n" if close else b""
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return head + b"\r\n" + body + b"0\r\n\r\n"


def _read(answer: bytes, fmt: str, pieces: int = 1) -> ta.AnswerReader:
    """Feed ``answer`` in ``pieces`` about equal pieces, the i-th at time i."""
    reader = ta.AnswerReader(fmt)
    size = max(1, -(-len(answer) // pieces))
    for i, at in enumerate(range(0, len(answer), size)):
        reader.feed(answer[at:at + size], float(i))
    return reader


def _handler_stream(tokens: int = 4) -> list[bytes]:
    """Parts as text_generation streams them: one step's part each; the second token ends
    mid-character (no text until the third); the last part has the finish chunk, the usage
    chunk and [DONE] after the last token's text."""
    parts = [_chunk("a"), b"", _chunk("\u00e9")]
    parts += [_chunk("b") for _ in range(tokens - 3)]
    parts[-1] += _chunk("", "length") + _chunk(None, usage=tokens) + b"data: [DONE]\n\n"
    return [p for p in parts if p]


def test_reader_counts_token_events_and_takes_the_count_from_usage() -> None:
    reader = _read(_chunked(*_handler_stream(5)), "sse")
    assert reader.done and reader.status == 200 and reader.saw_done_event
    assert len(reader.token_times) == 4          # a, é, b, b: the held-back token has no event
    assert reader.tokens == 5 and reader.reusable
    assert ta.verdict(reader, 5) == ""
    assert ta.verdict(reader, 64) == "5 tokens, expected 64"


@pytest.mark.parametrize("pieces", [2, 7, 50, 10_000])
def test_reader_gives_the_same_answer_whatever_the_reads(pieces: int) -> None:
    whole = _read(_chunked(*_handler_stream(6)), "sse")
    split = _read(_chunked(*_handler_stream(6)), "sse", pieces)
    assert (split.tokens, len(split.token_times), split.saw_done_event) == \
        (whole.tokens, len(whole.token_times), whole.saw_done_event)
    assert split.token_times == sorted(split.token_times)


def test_reader_times_each_event_by_the_read_that_carried_it() -> None:
    answer = _chunked(*_handler_stream(4))
    head_end = answer.index(b"\r\n\r\n") + 4
    reader = ta.AnswerReader("sse")
    reader.feed(answer[:head_end], 0.0)
    reader.feed(answer[head_end:], 1.5)       # every event in one read: one time
    assert reader.token_times == [1.5, 1.5, 1.5]


def test_reader_takes_crlf_events_and_unchunked_bodies() -> None:
    body = (_chunk("x") + _chunk("y", "length") + b"data: [DONE]\n\n").replace(b"\n", b"\r\n")
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    reader = _read(answer, "sse", pieces=9)
    assert reader.done and len(reader.token_times) == 2 and reader.saw_done_event
    closing = b"HTTP/1.1 200 OK\r\n\r\n" + _chunk("x") + b"data: [DONE]"   # read to the close
    reader = _read(closing, "sse")
    assert not reader.done
    reader.eof(3.0)
    assert reader.done and len(reader.token_times) == 1 and reader.saw_done_event


def test_reader_reports_errors_statuses_and_truncation() -> None:
    error = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 9\r\n\r\n{\"x\": 1}\n"
    reader = _read(error, "sse")
    assert reader.done and not reader.token_times
    assert ta.verdict(reader, 4).startswith("HTTP 400: b'{\"x\": 1}")
    in_stream = _read(_chunked(_chunk("a") + b'data: {"error": {"message": "boom"}}\n\n'), "sse")
    assert ta.verdict(in_stream, None).startswith("error event: {\"error\"")
    no_done = _read(_chunked(_chunk("a")), "sse")
    assert ta.verdict(no_done, None) == "no data: [DONE]"
    cut = _read(_chunked(*_handler_stream(4))[:-30], "sse")
    assert not cut.done
    with pytest.raises(ta.BadAnswer, match="mid-answer"):
        cut.eof(1.0)
    with pytest.raises(ta.BadAnswer, match="status line"):
        _read(b"SPDY 200\r\n\r\n", "sse")


def test_reader_counts_torchserve_parts_one_per_chunk() -> None:
    parts = [json.dumps({"text": t, "ids": [i]}, indent=2).encode()
             for i, t in enumerate("abc")]
    reader = _read(_chunked(*parts, close=True), "parts", pieces=11)
    assert reader.done and reader.tokens == 3 and not reader.reusable
    assert ta.verdict(reader, None) == "" and ta.verdict(reader, 4) == "3 tokens, expected 4"
    whole = b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}'
    assert _read(whole, "parts").tokens == 1


# ---------------------------------------------------------------- a run's figures

def test_summarize_weights_events_counts_the_window_and_defines_tpot() -> None:
    out = ts.TokenOutcome
    outcomes = [
        # 4 tokens in 2 events (two each), sent at 0, events at 1 and 3, done within the window
        out(0.0, [1.0, 3.0], tokens=4, ok=True, done_at=3.0),
        # 3 tokens, 3 events; the last arrives after the window (10): 2 of its 3 count
        out(8.0, [8.5, 9.0, 10.5], tokens=3, ok=True, done_at=10.5),
        out(5.0, [], tokens=0, ok=False, error="HTTP 503: b''", done_at=5.0),
    ]
    stats = ts.summarize(outcomes, 0.0, 10.0, clients=2)
    assert stats["requests"] == 3 and stats["answered"] == 2 and stats["failed"] == 1
    assert stats["errors"] == ["HTTP 503: b''"]
    assert stats["tokens"] == 7 and stats["token_events"] == 5
    assert stats["tokens_in_window"] == pytest.approx(6.0)          # 4 + 2
    assert stats["tokens_per_s"] == pytest.approx(0.6)
    assert stats["answers_per_s"] == pytest.approx(0.1)
    assert stats["ttft_p50_ms"] == pytest.approx(750.0)             # 1000 and 500 ms
    # tpot: (3 - 1) / (4 - 1) s and (10.5 - 8.5) / (3 - 1) s
    assert stats["tpot_p50_ms"] == pytest.approx((2 / 3 * 1000 + 1000) / 2)
    assert stats["itl_p50_ms"] == pytest.approx(1500.0)             # gaps 2000, 500, 1500
    assert stats["mean_tokens"] == pytest.approx(3.5)


def test_requests_are_prebuilt_http_with_or_without_a_content_type() -> None:
    target = ts.StreamTarget("http://127.0.0.1:8080/predictions/m/1.0/v1/completions",
                             [b"{}", b'{"a": 1}'], "sse", 64)
    first, second = target.requests()
    assert first == (b"POST /predictions/m/1.0/v1/completions HTTP/1.1\r\nHost: 127.0.0.1:8080"
                     b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    assert second.endswith(b'Content-Length: 8\r\n\r\n{"a": 1}')
    bare = ts.StreamTarget("http://127.0.0.1:9/p", [b"{}"], "parts", None, content_type=None)
    assert b"Content-Type" not in bare.requests()[0]


# ---------------------------------------------------------------- what each server is asked

def test_torchd_gets_openai_streams_and_torchserve_its_handlers_body() -> None:
    torchd = SimpleNamespace(name="torchd", inference="http://127.0.0.1:1")
    target = llm.target(torchd, "llm_cb", 64)
    assert target.url == "http://127.0.0.1:1/predictions/llm_cb/1.0/v1/completions"
    assert target.fmt == "sse" and target.expected_tokens == 64
    body = json.loads(target.bodies[0])
    assert body["stream"] is True and body["max_tokens"] == 64 and body["ignore_eos"] is True
    assert body["temperature"] == 0 and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "llm_cb"
    assert {json.loads(b)["prompt"] for b in target.bodies} == set(llm.PROMPTS)
    torchserve = SimpleNamespace(name="torchserve", inference="http://127.0.0.1:2")
    target = llm.target(torchserve, "ts_llm_cb", 64)
    assert target.url == "http://127.0.0.1:2/predictions/ts_llm_cb"
    assert (target.fmt, target.expected_tokens, target.content_type) == ("parts", None, None)
    assert json.loads(target.bodies[1]) == {"prompt": llm.PROMPTS[1], "max_new_tokens": 64}


def test_archive_configs_name_the_model_dir_under_each_handlers_key(tmp_path: Path) -> None:
    configs = {name: yaml.safe_load(environment.llm_config(name, tmp_path))
               for name in environment.LLM_ARCHIVES}
    assert configs["llm_cb"]["continuousBatching"] is True
    assert configs["llm_cb"]["batchSize"] == 32
    assert configs["llm"]["continuousBatching"] is False and configs["llm"]["batchSize"] == 1
    assert configs["llm"]["handler"] == {"model_path": str(tmp_path)}
    assert configs["ts_llm_cb"]["handler"] == {"modelId": str(tmp_path)}
    assert all(c["minWorkers"] == c["maxWorkers"] == 1 for c in configs.values())
    assert not any("workerThreads" in c for c in configs.values())
    pinned = {name: yaml.safe_load(environment.llm_config(name, tmp_path, threads=1))
              for name in environment.LLM_ARCHIVES}
    assert pinned["llm_cb"]["workerThreads"] == pinned["llm"]["workerThreads"] == 1
    assert "workerThreads" not in pinned["ts_llm_cb"]    # TorchServe has no such key


# ---------------------------------------------------------------- the round's rows and goals

def _round(cont_tps: float, static_tps: float, cont_ttft: float, static_ttft: float,
           cpu: float) -> dict[str, Any]:
    c = llm.GOAL_CLIENTS
    result: dict[str, Any] = {llm.key("continuous", c, "tokens_per_s"): cont_tps,
                              llm.key("static", c, "tokens_per_s"): static_tps,
                              llm.key("continuous", c, "ttft_p99_ms"): cont_ttft,
                              llm.key("static", c, "ttft_p99_ms"): static_ttft,
                              llm.key("continuous", c, "frontend_us_per_token"): cpu,
                              llm.key("continuous", 1, "tokens_per_s"): 100.0,
                              "llm_failed": 0}
    result.update(llm.derived(result))
    return result


def test_ratios_are_per_round_and_goals_judged_on_their_medians() -> None:
    runs = {"torchd": [_round(3000, 500, 100, 1000, 15), _round(2000, 500, 100, 200, 25)],
            "torchserve": [{llm.key("continuous", llm.GOAL_CLIENTS, "tokens_per_s"): 1000}]}
    metrics = metrics_for("llm")
    assert {m.suite for m in metrics} == {"llm"}
    rows = {row["metric"]: row for row in table_rows(medians(runs, None, metrics), metrics)}
    assert rows["llm_speedup"]["torchd"] == pytest.approx(5.0)         # median of 6 and 4
    assert rows["llm_speedup"]["met"] is True                           # >= 4
    assert rows["llm_ttft_p99_ratio"]["torchd"] == pytest.approx(0.3)   # 0.1 and 0.5
    assert rows["llm_ttft_p99_ratio"]["met"] is False                   # <= 0.25
    cpu = llm.key("continuous", llm.GOAL_CLIENTS, "frontend_us_per_token")
    assert rows[cpu]["torchd"] == 20 and rows[cpu]["met"] is True       # <= 20 us
    tps = llm.key("continuous", llm.GOAL_CLIENTS, "tokens_per_s")
    assert rows[tps]["ratio"] == pytest.approx(2.5) and not rows[tps]["detail"]
    assert rows[llm.key("continuous", 1, "tokens_per_s")]["detail"]
    assert rows["llm_failed"]["met"] is True


def test_grid_has_a_row_per_point_and_variant_and_not_measured_says_why() -> None:
    med = {"torchd": {llm.key("continuous", 1, "tokens_per_s"): 123.4,
                      llm.key("static", 32, "ttft_p99_ms"): 4567.0},
           "torchserve": {}}
    grid = llm.grid(med).splitlines()
    assert len(grid) == 2 + len(llm.CLIENT_COUNTS) * 3
    assert grid[2].startswith("| 1 | torchd, continuous batching | 123 |")
    assert "| 32 | torchd, without continuous batching | – | – | 4567 | – | – | – |" in grid
    assert grid[-1].startswith("| 32 | TorchServe, continuous batching | – |")
    runs = {"torchserve": [{"llm_not_measured": {"continuous": "check failed"}}, {}]}
    assert llm.not_measured(runs) == [
        "torchserve LLM continuous batching: not measured in 1 of 2 rounds: check failed"]


# ---------------------------------------------------------------- TorchServe's handler

def test_torchserve_stream_handler_as_patched_gives_greedy_tokens(
        tiny_llm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TorchServe 0.12's loop over the patched handler: requests join a running batch at
    random steps (so earlier padding meets later joins: the case of the fix), each step's
    values are parts, a request leaves when its criterion says so. Every request gets the
    tokens a plain greedy generate gives it alone (or its prefix up to EOS)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from worker.runtime.context import Context
    from worker.ts_alias import install_ts_alias
    if not (DEFAULT_TS_SOURCE / HANDLER).is_file():
        pytest.skip(f"no TorchServe 0.12.0 source tree at {DEFAULT_TS_SOURCE}")
    install_ts_alias()
    models_dir = tmp_path / "ts-handler"
    torchserve_handler(DEFAULT_TS_SOURCE, models_dir)
    monkeypatch.syspath_prepend(str(models_dir))   # as a worker puts the archive's dir first
    from ts_stream_handler import StreamingHandler
    ctx = Context("ts_llm_cb", str(models_dir), {"model": {"modelFile": "ts_stream_model.py"}},
                  32, None, "test",
                  model_yaml_config={"handler": {"modelId": str(tiny_llm)},
                                     "continuousBatching": True})
    handler = StreamingHandler()
    handler.initialize(ctx)
    rng = random.Random(7)
    requests = {f"r{i}": {"prompt": llm.PROMPTS[i % len(llm.PROMPTS)],
                          "max_new_tokens": rng.randint(2, 12)} for i in range(8)}
    arrival = {r: rng.randint(0, 10) for r in requests}
    running: list[str] = []
    tokens: dict[str, list[int]] = {r: [] for r in requests}
    for step in range(60):
        running += [r for r in requests if arrival[r] == step]
        if not running:
            continue
        ctx.begin_batch(running, [{} for _ in running])
        data = [{"body": json.dumps(requests[r]).encode()} for r in running]
        values = handler.handle(data, ctx)
        finished = []
        for idx, request_id in enumerate(running):
            tokens[request_id].append(values[idx]["ids"][-1])
            if ctx.stopping_criteria[idx](values[idx]):
                finished.append(request_id)
        running = [r for r in running if r not in finished]
    assert not running
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llm)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llm).eval()
    for request_id, request in requests.items():
        encoded = tokenizer(request["prompt"], return_tensors="pt", return_token_type_ids=False)
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=request["max_new_tokens"],
                                 do_sample=False)
        alone = out[0, encoded["input_ids"].shape[1]:].tolist()
        assert tokens[request_id] == alone[:len(tokens[request_id])], request_id
        assert len(tokens[request_id]) == len(alone) or \
            tokens[request_id][-1] == tokenizer.eos_token_id
