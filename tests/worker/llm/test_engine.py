"""The engine on examples/tiny_llm.py's model, in this process: a sequence decoded in a batch
(left-padded rows joining and leaving) gets exactly the tokens it gets alone; sampling with a
seed repeats; stop strings, EOS, max_tokens and the context end a sequence."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.llm.engine import Engine
from worker.llm.requests import BadRequest, GenerationRequest, SamplingParams

pytestmark = pytest.mark.timeout(120)
PROMPTS = ["the quick brown fox", "hello", "a server answers requests from its clients",
           "tiny model", "continuous batching lets new sequences join"]


@pytest.fixture(scope="module")
def engine(tiny_llm: Path) -> Engine:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llm).eval()
    return Engine(model, AutoTokenizer.from_pretrained(tiny_llm), torch.device("cpu"))


def completion(prompt: str, **params) -> GenerationRequest:
    params.setdefault("temperature", 0.0)
    return GenerationRequest("v1/completions", "m", SamplingParams(**params), prompt=prompt)


def run_alone(engine: Engine, request: GenerationRequest, rid: str = "alone") -> list[int]:
    engine.keep_only(set())
    sequence = engine.new_sequence(rid, request, 0.0)
    engine.admit([sequence])
    while not sequence.done:
        engine.decode()
    engine.keep_only(set())
    return sequence.generated


def test_batched_rows_get_the_tokens_they_get_alone(engine: Engine) -> None:
    requests = [completion(p, max_tokens=8 + 5 * i, ignore_eos=True)
                for i, p in enumerate(PROMPTS)]
    alone = [run_alone(engine, r) for r in requests]
    # staggered: a sequence joins every other step while earlier ones run and finish
    sequences, step = [], 0
    while len(sequences) < len(requests) or any(not s.done for s in sequences):
        if step % 2 == 0 and len(sequences) < len(requests):
            s = engine.new_sequence(f"r{len(sequences)}", requests[len(sequences)], 0.0)
            engine.admit([s])
            sequences.append(s)
        engine.decode()
        step += 1
    assert [s.generated for s in sequences] == alone
    assert [len(s.generated) for s in sequences] == [8 + 5 * i for i in range(len(PROMPTS))]
    assert len(engine.batch) == 0 and engine.batch.mask is None   # every row left
    engine.keep_only(set())


def test_a_sequence_that_leaves_early_frees_its_row_and_the_rest_go_on(engine: Engine) -> None:
    long = completion(PROMPTS[2], max_tokens=30, ignore_eos=True)
    short = completion(PROMPTS[1], max_tokens=30, ignore_eos=True)
    expected = run_alone(engine, short)
    a, b = engine.new_sequence("a", long, 0.0), engine.new_sequence("b", short, 0.0)
    engine.admit([a, b])   # prefilled together: b's shorter prompt padded
    for _ in range(3):
        engine.decode()
    engine.keep_only({"b"})                  # a's client hung up
    assert engine.batch.ids == ["b"] and set(engine.sequences) == {"b"}
    # the columns only a's longer prompt used are cut
    assert engine.batch.length == len(b.prompt_ids) + len(b.generated) - 1
    while not b.done:
        engine.decode()
    assert b.generated == expected
    engine.keep_only(set())


def test_seeded_sampling_repeats_and_top_k_1_is_greedy(engine: Engine) -> None:
    sampled = completion(PROMPTS[0], max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    assert run_alone(engine, sampled) == run_alone(engine, sampled)
    top1 = completion(PROMPTS[0], max_tokens=12, temperature=1.0, top_k=1, ignore_eos=True)
    greedy = completion(PROMPTS[0], max_tokens=12, ignore_eos=True)
    assert run_alone(engine, top1) == run_alone(engine, greedy)


def test_eos_ends_a_sequence_unless_ignored(engine: Engine) -> None:
    eos = next(iter(engine.eos_ids))
    engine.keep_only(set())
    s = engine.new_sequence("e", completion("x", max_tokens=5), 0.0)
    engine.sequences[s.id] = s
    engine._take(s, eos, 0.0)
    assert s.finish_reason == "stop" and s.text == ""
    ignoring = engine.new_sequence("i", completion("x", max_tokens=5, ignore_eos=True), 0.0)
    engine._take(ignoring, eos, 0.0)
    assert ignoring.finish_reason is None
    engine.keep_only(set())


def test_a_stop_string_cuts_the_text_and_is_held_back_while_it_may_come(engine: Engine) -> None:
    text = engine.tokenizer.decode(run_alone(engine, completion(PROMPTS[0], max_tokens=20,
                                                                ignore_eos=True)))
    stop = text[5:8]
    assert stop and stop not in text[:7]
    s = engine.new_sequence("s", completion(PROMPTS[0], max_tokens=20, stop=[stop],
                                            ignore_eos=True), 0.0)
    engine.admit([s])
    sent = s.unsent()
    while not s.done:
        engine.decode()
        assert stop not in s.text
        sent += s.unsent()
    assert s.finish_reason == "stop" and s.text == text[:text.index(stop)] == sent
    engine.keep_only(set())


def test_the_context_bounds_max_tokens(engine: Engine) -> None:
    with pytest.raises(BadRequest, match="maximum context length is 1024"):
        engine.new_sequence("c", completion("hello", max_tokens=1024), 0.0)
    unbounded = engine.new_sequence("u", completion("hello", max_tokens=None), 0.0)
    assert unbounded.max_tokens == 1024 - len(unbounded.prompt_ids)
    with pytest.raises(BadRequest, match="vocabulary"):
        engine.new_sequence("v", GenerationRequest("v1/completions", "m", SamplingParams(),
                                                   prompt_ids=[10 ** 6]), 0.0)


def test_prompts_prefilled_together_get_the_tokens_they_get_alone(engine: Engine) -> None:
    requests = [completion(p, max_tokens=12, ignore_eos=True) for p in PROMPTS]
    alone = [run_alone(engine, r) for r in requests]
    together = [engine.new_sequence(f"t{i}", r, 0.0) for i, r in enumerate(requests)]
    engine.admit(together)
    while not all(s.done for s in together):
        engine.decode()
    assert [s.generated for s in together] == alone
    engine.keep_only(set())


def test_a_chat_the_template_cannot_render_is_the_clients_error(engine: Engine) -> None:
    chat = GenerationRequest("v1/chat/completions", "m", SamplingParams(max_tokens=2),
                             messages=[{"role": "user", "content": "hi"}])
    assert engine.prompt_ids(chat)   # the tiny model's template renders it
    template, engine.tokenizer.chat_template = engine.tokenizer.chat_template, None
    try:
        with pytest.raises(BadRequest, match="chat template") as caught:
            engine.new_sequence("c", chat, 0.0)
        assert caught.value.param == "messages"
    finally:
        engine.tokenizer.chat_template = template


def test_logprobs_of_greedy_tokens_are_the_likeliest(engine: Engine) -> None:
    """Each generated token's log probability under the model, with the N likeliest: greedy
    picks the likeliest, so it heads its own list; the entries cover the text token by
    token, and the same sequence decoded in a batch scores the same."""
    request = completion(PROMPTS[2], max_tokens=10, ignore_eos=True, logprobs=3)
    engine.keep_only(set())
    alone = engine.new_sequence("lp", request, 0.0)
    engine.admit([alone])
    while not alone.done:
        engine.decode()
    assert len(alone.logprobs) == 10
    offset = 0
    for entry in alone.logprobs:
        assert len(entry.top) == 3 and entry.top[0] == (entry.text, entry.logprob)
        assert [v for _, v in entry.top] == sorted((v for _, v in entry.top), reverse=True)
        assert -9999.0 <= entry.logprob <= 0.0 and entry.offset == offset
        offset += len(entry.text)
    assert "".join(e.text for e in alone.logprobs) == alone.text
    engine.keep_only(set())
    # beside another that asks for none, in one batch: the same scores
    batched = engine.new_sequence("lp2", request, 0.0)
    other = engine.new_sequence("none", completion(PROMPTS[0], max_tokens=10,
                                                   ignore_eos=True), 0.0)
    engine.admit([batched, other])
    while not batched.done:
        engine.decode()
    assert other.logprobs == []
    assert [(e.text, [t for t, _ in e.top]) for e in batched.logprobs] == \
        [(e.text, [t for t, _ in e.top]) for e in alone.logprobs]
    for got, want in zip(batched.logprobs, alone.logprobs):   # padded rows: float noise
        assert [got.logprob, *(v for _, v in got.top)] == \
            pytest.approx([want.logprob, *(v for _, v in want.top)], abs=1e-4)
    engine.keep_only(set())


def test_an_eos_token_ends_the_text_and_has_no_logprob(engine: Engine) -> None:
    eos = next(iter(engine.eos_ids))
    engine.keep_only(set())
    s = engine.new_sequence("e", completion("x", max_tokens=5, logprobs=1), 0.0)
    engine._score(torch.zeros(1, len(engine.tokenizer)), [s], [eos])
    engine._take(s, eos, 0.0)
    assert s.finish_reason == "stop" and s.logprobs == [] and s._scored is None
    engine.keep_only(set())


def test_an_echoed_prompt_is_scored_as_the_model_scores_it_alone(engine: Engine) -> None:
    """Echo with logprobs: each prompt token's log probability given the tokens before it, as
    one unpadded forward pass gives it, whatever shares the prefill (rows are left-padded);
    the first has none. With max_tokens 0 nothing is generated."""
    prompt = PROMPTS[2]
    request = completion(prompt, max_tokens=0, logprobs=2)
    request.echo = True
    engine.keep_only(set())
    scored = engine.new_sequence("echo", request, 0.0)
    longer = engine.new_sequence("other", completion(PROMPTS[4] + " " + PROMPTS[4],
                                                     max_tokens=3), 0.0)
    engine.admit([scored, longer])
    assert scored.done and scored.finish_reason == "length" and scored.generated == []
    assert scored.echo_text == prompt and scored.id not in engine.batch.ids
    entries = scored.prompt_logprobs
    assert len(entries) == len(scored.prompt_ids) and entries[0].logprob is None
    ids = torch.tensor([scored.prompt_ids])
    with torch.inference_mode():
        alone = torch.log_softmax(engine.model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    want = alone.gather(1, ids[0, 1:, None])[:, 0].tolist()
    assert [e.logprob for e in entries[1:]] == pytest.approx(want, abs=1e-4)
    assert all(len(e.top) == 2 and e.top[0][1] >= e.logprob - 1e-4 for e in entries[1:])
    assert entries[1].offset == len(entries[0].text)
    engine.keep_only(set())
