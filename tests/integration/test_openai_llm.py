"""``torchd llm --model-dir DIR`` serving examples/tiny_llm.py's model, and the real ``openai``
client against it, unchanged: sync and async, streamed and whole, completions and chat, the
model list and errors. One ``torchd llm`` for the module, with its own model store (none is
configured); the last test stops it and checks what it leaves behind. One more serves a
ts.llm_launcher command line; what ``torchd llm`` refuses exits before serving."""
from __future__ import annotations

import asyncio
import fcntl
import importlib.util
import os
import subprocess
import tempfile
from pathlib import Path

import openai
import pytest

from tests.support.daemon import REPO, TORCHD, Daemon
from tests.support.ops import scrape

pytestmark = pytest.mark.timeout(180)

MODEL = "tiny"
PROMPT = "the quick brown fox"
GREEDY = {"max_tokens": 12, "temperature": 0, "extra_body": {"ignore_eos": True}}
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory, tiny_llm: Path):
    work = tmp_path_factory.mktemp("torchd-llm")
    d = Daemon(work, work / "no-store")
    del d.settings["model_store"]   # torchd llm makes a store of its own
    try:
        d.start("--model-dir", str(tiny_llm), "--model-name", MODEL, "--batch-size", "8",
                command="llm", ncs=False, timeout=120)
        d.wait_workers(MODEL, 1, timeout=120)
        yield d
    finally:
        d.cleanup()


def own_stores(d: Daemon) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"torchd-run-{d.pid}-llm-*"))


def assert_locked(directory: Path) -> None:
    probe = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)


def client(d: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=d.url("inference", "/v1"), api_key="unused", max_retries=0,
                         timeout=60)


def test_it_serves_the_directory_as_a_continuous_batching_model(llm: Daemon,
                                                                tiny_llm: Path) -> None:
    (described,) = llm.describe(MODEL)
    assert (described["modelUrl"], described["batchSize"], described["maxBatchDelay"],
            described["minWorkers"], described["maxWorkers"]) == (MODEL, 8, 5, 1, 1)
    (store,) = own_stores(llm)
    assert sorted(p.name for p in (store / MODEL).iterdir()) == ["MAR-INF",
                                                                 "model-config.yaml"]
    assert not (tiny_llm / "MAR-INF").exists()   # the model's own directory is only read
    assert_locked(store)   # kept from /tmp cleaners (systemd-tmpfiles) while torchd llm runs
    labels = frozenset({"model_name": MODEL, "model_version": "1.0"}.items())
    samples = scrape(llm)
    assert ("llm_num_requests_running", labels) in samples
    assert ("llm_num_requests_waiting", labels) in samples


def test_the_sync_client_streamed_and_whole(llm: Daemon) -> None:
    openai_client = client(llm)
    assert [m.id for m in openai_client.models.list()] == [MODEL]
    whole = openai_client.completions.create(model=MODEL, prompt=PROMPT, **GREEDY)
    assert whole.usage is not None and whole.usage.completion_tokens == 12
    stream = openai_client.completions.create(model=MODEL, prompt=PROMPT, stream=True,
                                              **GREEDY)
    assert "".join(c.choices[0].text for c in stream) == whole.choices[0].text
    chat = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, **GREEDY)
    assert chat.choices[0].message.role == "assistant"
    chunks = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True,
                                                   **GREEDY)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) \
        == chat.choices[0].message.content


def test_the_async_client_streamed_and_whole(llm: Daemon) -> None:
    async def ask() -> tuple[str, str, str, str]:
        async with openai.AsyncOpenAI(base_url=llm.url("inference", "/v1"), api_key="unused",
                                      max_retries=0, timeout=60) as aclient:
            whole = await aclient.completions.create(model=MODEL, prompt=PROMPT, **GREEDY)
            stream = await aclient.completions.create(model=MODEL, prompt=PROMPT,
                                                      stream=True, **GREEDY)
            streamed = "".join([c.choices[0].text async for c in stream])
            chat = await aclient.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                         **GREEDY)
            chunks = await aclient.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                           stream=True, **GREEDY)
            chatted = "".join([c.choices[0].delta.content or "" async for c in chunks])
            return (whole.choices[0].text, streamed, chat.choices[0].message.content or "",
                    chatted)

    whole, streamed, chat, chatted = asyncio.run(ask())
    assert whole and streamed == whole
    assert chat and chatted == chat
    # the sync client's greedy answer is the same
    assert client(llm).completions.create(model=MODEL, prompt=PROMPT, **GREEDY) \
        .choices[0].text == whole


def test_logprobs_through_the_client_streamed_and_whole(llm: Daemon) -> None:
    """Each token's log probability and the likeliest at its step, in both APIs' shapes as
    the client parses them: greedy tokens head their own lists, the tokens spell the text,
    and a stream's chunks carry the same tokens as the whole answer."""
    openai_client = client(llm)
    whole = openai_client.completions.create(model=MODEL, prompt=PROMPT, logprobs=2, **GREEDY)
    scores = whole.choices[0].logprobs
    assert scores is not None and scores.tokens and scores.token_logprobs \
        and scores.top_logprobs and scores.text_offset is not None
    assert "".join(scores.tokens) == whole.choices[0].text and len(scores.tokens) == 12
    for token, logprob, top in zip(scores.tokens, scores.token_logprobs, scores.top_logprobs):
        assert top[token] == logprob == max(top.values()) and len(top) <= 3
    assert scores.text_offset[0] == 0 and scores.text_offset == sorted(scores.text_offset)
    streamed = [token for chunk in openai_client.completions.create(
                    model=MODEL, prompt=PROMPT, logprobs=2, stream=True, **GREEDY)
                if chunk.choices[0].logprobs for token in chunk.choices[0].logprobs.tokens]
    assert streamed == scores.tokens

    chat = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                 logprobs=True, top_logprobs=2, **GREEDY)
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    for entry in content:
        assert [alt.token for alt in entry.top_logprobs][0] == entry.token
        assert len(entry.top_logprobs) == 2 and entry.bytes == list(entry.token.encode())
    chunks = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                   logprobs=True, stream=True, **GREEDY)
    assert [t.token for c in chunks if c.choices[0].logprobs
            for t in c.choices[0].logprobs.content] == [t.token for t in content]
    plain = openai_client.completions.create(model=MODEL, prompt=PROMPT, **GREEDY)
    assert plain.choices[0].logprobs is None and plain.choices[0].text == whole.choices[0].text


def test_echo_scores_a_prompt_as_evaluation_harnesses_ask(llm: Daemon) -> None:
    """``echo`` with ``logprobs`` and ``max_tokens`` 0: the prompt's own log-likelihood, token by
    token (the first has none); with tokens to generate, the prompt comes first, streamed or
    not."""
    openai_client = client(llm)
    scored = openai_client.completions.create(model=MODEL, prompt=PROMPT, echo=True,
                                              logprobs=1, max_tokens=0, temperature=0)
    choice = scored.choices[0]
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert scored.usage is not None and scored.usage.completion_tokens == 0
    scores = choice.logprobs
    assert len(scores.tokens) == scored.usage.prompt_tokens
    assert scores.token_logprobs[0] is None and scores.top_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in scores.token_logprobs[1:])
    plain = openai_client.completions.create(model=MODEL, prompt=PROMPT, **GREEDY)
    echoed = openai_client.completions.create(model=MODEL, prompt=PROMPT, echo=True, **GREEDY)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    streamed = "".join(c.choices[0].text for c in openai_client.completions.create(
        model=MODEL, prompt=PROMPT, echo=True, stream=True, **GREEDY))
    assert streamed == echoed.choices[0].text


def test_n_choices_through_the_client(llm: Daemon) -> None:
    """``n`` choices, streamed and whole, as the client reads them: seeded sampling gives the
    same text per choice both ways; greedy choices are all the one greedy answer."""
    openai_client = client(llm)
    sampled = {"max_tokens": 8, "temperature": 1.0, "seed": 11, "n": 3,
               "extra_body": {"ignore_eos": True}}
    whole = openai_client.completions.create(model=MODEL, prompt=PROMPT, **sampled)
    assert sorted(c.index for c in whole.choices) == [0, 1, 2]
    assert whole.usage is not None and whole.usage.completion_tokens == 24
    streamed = {0: "", 1: "", 2: ""}
    for chunk in openai_client.completions.create(model=MODEL, prompt=PROMPT, stream=True,
                                                  **sampled):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert streamed == {c.index: c.text for c in whole.choices}
    chat = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2,
                                                 **GREEDY)
    assert [c.index for c in chat.choices] == [0, 1]
    assert chat.choices[0].message.content == chat.choices[1].message.content


def test_errors_reach_the_client_as_openais(llm: Daemon) -> None:
    openai_client = client(llm)
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.completions.create(model="gpt-4o", prompt=PROMPT)
    assert (missing.value.code, missing.value.param) == ("model_not_found", "model")
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=0)
    assert refused.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model=MODEL, messages=[])


def test_a_ts_llm_launcher_command_line(tmp_path: Path, tiny_llm: Path) -> None:
    """`python -m ts.llm_launcher` replaced by `torchd llm`, the rest of the line as it was.
    Token authorization is on in config.properties: --disable_token_auth turns it off."""
    store = tmp_path / "store"
    store.mkdir()
    d = Daemon(tmp_path / "work", store, {"disable_token_authorization": "false"})
    del d.settings["model_store"]   # --model_store says it
    try:
        d.start("--model_id", str(tiny_llm), "--model_name", "launched", "--model_store",
                str(store), "--disable_token_auth", "--vllm_engine.max_num_seqs", "4",
                "--startup_timeout", "300", command="llm", ncs=False, timeout=120)
        d.wait_workers("launched", 1, timeout=120)
        (described,) = d.describe("launched")
        assert (described["batchSize"], described["startupTimeout"]) == (4, 300)
        assert sorted(p.name for p in (store / "launched").iterdir()) == [
            "MAR-INF", "model-config.yaml"]
        whole = client(d).completions.create(model="launched", prompt=PROMPT, **GREEDY)
        assert whole.usage is not None and whole.usage.completion_tokens == 12
    finally:
        d.cleanup()


@pytest.mark.parametrize(("argv", "says"), [
    (("--engine", "vllm"), "--engine vllm: vLLM is not installed in this Python"),
    (("--model_id", "meta-llama/Llama-3.2-1B"), "huggingface-cli download "
                                                "meta-llama/Llama-3.2-1B --local-dir DIR"),
])
def test_what_it_cannot_serve_exits_2_before_serving(tmp_path: Path, tiny_llm: Path,
                                                     argv: tuple[str, ...], says: str) -> None:
    if argv[0] == "--engine" and importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    source = () if "--model_id" in argv else ("--model_id", str(tiny_llm))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TS_CONFIG_FILE", None)
    run = subprocess.run([*TORCHD, "llm", *source, *argv], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env=env)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr.startswith("torchd llm: ") and says in run.stderr


def test_stopping_leaves_no_store_and_no_snapshot(llm: Daemon) -> None:
    """Last: it stops the module's torchd llm."""
    assert own_stores(llm)
    assert llm.stop() == 0
    assert own_stores(llm) == []
    snapshots = llm.workdir / "logs" / "config"
    assert not snapshots.exists() or list(snapshots.iterdir()) == []
