"""The text_generation handler in this process with a real Context: what model-config.yaml's
``handler`` section loads (path relative to the model dir, dtype), what it refuses, and one
continuous step after another as the worker's step loop calls them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from worker.responses import NO_PART
from worker.runtime.context import Context
from worker.ts.torch_handler.text_generation import TextGenerationHandler

pytestmark = pytest.mark.timeout(120)


def context_for(model_dir: Path, handler: dict, continuous: bool = True) -> Context:
    return Context("tiny", str(model_dir), {}, 8, None, "test",
                   model_yaml_config={"handler": handler, "continuousBatching": continuous})


def loaded(model_dir: Path, handler: dict, continuous: bool = True) -> TextGenerationHandler:
    h = TextGenerationHandler()
    h.initialize(context_for(model_dir, handler, continuous))
    return h


def test_model_path_relative_to_the_model_dir_and_dtype(tiny_llm: Path) -> None:
    h = loaded(tiny_llm.parent, {"model_path": tiny_llm.name, "dtype": "bfloat16"})
    assert next(h.model.parameters()).dtype == torch.bfloat16
    assert h.device == torch.device("cpu") and h.continuous


@pytest.mark.parametrize("handler, message", [
    ({}, "handler.model_path"),
    ({"model_path": ".", "dtype": "int8"}, "handler.dtype"),
])
def test_bad_handler_sections_say_what_is_wrong(tiny_llm: Path, handler: dict,
                                                message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loaded(tiny_llm, handler)


def step(h: TextGenerationHandler, context: Context, requests: dict[str, dict | None]) -> list:
    """One step as worker/stepping.py runs it: ids, headers, data ({} for a continuing one)."""
    ids = list(requests)
    context.begin_batch(ids, [{"url_path": "v1/completions"} for _ in ids])
    return h.handle([requests[i] or {} for i in ids], context)


def test_steps_stream_one_request_and_hold_a_whole_one_back(tiny_llm: Path) -> None:
    h = loaded(tiny_llm, {"model_path": "."})
    context = h.context
    body = {"prompt": "hello", "max_tokens": 3, "temperature": 0, "ignore_eos": True}
    first = step(h, context, {"s": {"body": json.dumps({**body, "stream": True})},
                              "w": {"body": json.dumps(body)}})
    assert first[1] is NO_PART
    assert [c(v) for c, v in zip(context.stopping_criteria, first)] == [False, False]
    step(h, context, {"s": None, "w": None})
    last = step(h, context, {"s": None, "w": None})
    assert [c(v) for c, v in zip(context.stopping_criteria, last)] == [True, True]
    assert last[0].endswith(b"data: [DONE]\n\n")
    assert json.loads(last[1])["usage"]["completion_tokens"] == 3
    assert h.engine.sequences == {} and len(h.engine.batch) == 0


def test_a_request_no_longer_in_the_step_leaves(tiny_llm: Path) -> None:
    h = loaded(tiny_llm, {"model_path": "."})
    # greedy and past EOS: a sampled EOS (whatever earlier tests left in torch's generator)
    # would end b in its first step
    body = json.dumps({"prompt": "hello", "max_tokens": 50, "stream": True, "temperature": 0,
                       "ignore_eos": True})
    step(h, h.context, {"a": {"body": body}, "b": {"body": body}})
    step(h, h.context, {"b": None})   # a's client hung up
    assert set(h.engine.sequences) == {"b"} and h.engine.batch.ids == ["b"]


def test_n_choices_stream_side_by_side_and_end_once_each(tiny_llm: Path) -> None:
    """Three choices of one request are three sequences of the running batch: each streams
    under its index and ends once, [DONE] and the usage come once all have; with a seed each
    choice repeats (the whole answer has the streamed texts), and they differ."""
    h = loaded(tiny_llm, {"model_path": "."})
    body = {"prompt": "hello", "temperature": 1.0, "seed": 3, "n": 3, "max_tokens": 6,
            "ignore_eos": True, "stream_options": {"include_usage": True}}

    def parts(request_id: str, stream: bool) -> list[bytes]:
        values, data = [], {request_id: {"body": json.dumps({**body, "stream": stream})}}
        while True:
            [value] = step(h, h.context, data)
            data = {request_id: None}
            if value is not NO_PART:
                values.append(value)
            if h.context.stopping_criteria[0](value):
                return values

    lines = [line[len(b"data: "):] for part in parts("r1", stream=True)
             for line in part.split(b"\n\n") if line]
    assert lines[-1] == b"[DONE]"
    events = [json.loads(line) for line in lines[:-1]]
    texts = {i: "".join(e["choices"][0]["text"] for e in events
                        if e["choices"] and e["choices"][0]["index"] == i) for i in range(3)}
    ends = [e["choices"][0]["index"] for e in events
            if e["choices"] and e["choices"][0]["finish_reason"] == "length"]
    assert sorted(ends) == [0, 1, 2]
    assert events[-1]["usage"]["completion_tokens"] == 18 and events[-1]["choices"] == []
    assert len(set(texts.values())) > 1              # seeds 3, 4, 5: different choices
    [whole] = parts("r2", stream=False)
    answer = json.loads(whole)
    assert {c["index"]: c["text"] for c in answer["choices"]} == texts
    assert answer["usage"] == {"prompt_tokens": events[-1]["usage"]["prompt_tokens"],
                               "completion_tokens": 18,
                               "total_tokens": events[-1]["usage"]["total_tokens"]}
    assert h.requests == {} and h.engine.sequences == {} and len(h.engine.batch) == 0
