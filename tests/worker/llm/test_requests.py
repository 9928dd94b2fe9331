"""OpenAI request bodies -> GenerationRequest: what is accepted, and the 400 (naming the
parameter) for what is not."""
from __future__ import annotations

import pytest

from worker.llm.requests import (CHAT, COMPLETIONS, DEFAULT_COMPLETION_TOKENS, BadRequest,
                                 parse_body, parse_request)


def test_completion_defaults() -> None:
    request = parse_request(COMPLETIONS, {"model": "m", "prompt": "hi"}, "default")
    assert (request.model, request.prompt, request.stream) == ("m", "hi", False)
    assert request.params.max_tokens == DEFAULT_COMPLETION_TOKENS
    assert request.params.temperature == 1.0 and not request.params.greedy


def test_chat_without_max_tokens_takes_the_rest_of_the_context() -> None:
    request = parse_request(CHAT, {"messages": [{"role": "user", "content": "hi"}]}, "d")
    assert request.model == "d" and request.params.max_tokens is None
    assert request.messages == [{"role": "user", "content": "hi"}]


def test_chat_content_parts_and_max_completion_tokens() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                       {"type": "text", "text": "b"}]}],
            "max_completion_tokens": 7, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 0, "seed": 5,
            "stop": "x", "top_k": 3, "top_p": 0.5}
    request = parse_request(CHAT, body, "d")
    assert request.messages == [{"role": "user", "content": "ab"}]
    params = request.params
    assert (params.max_tokens, params.greedy, params.seed, params.stop, params.top_k,
            params.top_p) == (7, True, 5, ["x"], 3, 0.5)
    assert request.stream and request.include_usage


@pytest.mark.parametrize("prompt, text, ids", [
    ("a", "a", None), (["a"], "a", None), ([1, 2], None, [1, 2]), ([[3]], None, [3])])
def test_prompt_forms(prompt, text, ids) -> None:
    request = parse_request(COMPLETIONS, {"prompt": prompt}, "d")
    assert (request.prompt, request.prompt_ids) == (text, ids)


@pytest.mark.parametrize("kind, body, param", [
    (COMPLETIONS, {"prompt": "a", "max_tokens": 0}, "max_tokens"),
    (COMPLETIONS, {"prompt": "a", "max_tokens": "5"}, "max_tokens"),
    (COMPLETIONS, {"prompt": "a", "temperature": 3}, "temperature"),
    (COMPLETIONS, {"prompt": "a", "temperature": True}, "temperature"),
    (COMPLETIONS, {"prompt": "a", "top_p": 0}, "top_p"),
    (COMPLETIONS, {"prompt": "a", "top_k": -2}, "top_k"),
    (COMPLETIONS, {"prompt": "a", "seed": 1.5}, "seed"),
    (COMPLETIONS, {"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    (COMPLETIONS, {"prompt": "a", "stop": [""]}, "stop"),
    (COMPLETIONS, {"prompt": "a", "stream": "yes"}, "stream"),
    (COMPLETIONS, {"prompt": "a", "n": 17}, "n"),
    (COMPLETIONS, {"prompt": "a", "n": 0}, "n"),
    (COMPLETIONS, {"prompt": "a", "n": "2"}, "n"),
    (COMPLETIONS, {"prompt": "a", "best_of": 2}, "best_of"),
    (COMPLETIONS, {"prompt": "a", "logprobs": 21}, "logprobs"),
    (COMPLETIONS, {"prompt": "a", "logprobs": True}, "logprobs"),
    (COMPLETIONS, {"prompt": "a", "logprobs": -1}, "logprobs"),
    (COMPLETIONS, {"prompt": "a", "top_logprobs": 2}, "top_logprobs"),
    (COMPLETIONS, {"prompt": "a", "max_tokens": 0}, "max_tokens"),
    (COMPLETIONS, {"prompt": "a", "echo": "yes"}, "echo"),
    (CHAT, {"messages": [{"role": "user", "content": "a"}], "echo": True}, "echo"),
    (CHAT, {"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2},
     "top_logprobs"),
    (CHAT, {"messages": [{"role": "user", "content": "a"}], "logprobs": True,
            "top_logprobs": 21}, "top_logprobs"),
    (CHAT, {"messages": [{"role": "user", "content": "a"}], "logprobs": 1}, "logprobs"),
    (COMPLETIONS, {"prompt": ["a", "b"]}, "prompt"),
    (COMPLETIONS, {"prompt": 5}, "prompt"),
    (COMPLETIONS, {}, "prompt"),
    (COMPLETIONS, {"prompt": "a", "model": 3}, "model"),
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {"messages": [{"content": "no role"}]}, "messages"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
])
def test_bad_parameters_name_themselves(kind, body, param) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request(kind, body, "d")
    assert caught.value.param == param and caught.value.status == 400


@pytest.mark.parametrize("top_p", [0, -0.5, 1.5, float("nan")])
def test_top_p_names_one_interval_whatever_the_value(top_p) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request(COMPLETIONS, {"prompt": "a", "top_p": top_p}, "d")
    assert str(caught.value).startswith("top_p must be in (0, 1], got ")


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", "\"text\"", b"[" * 100000])
def test_bodies_that_are_not_objects(body) -> None:
    with pytest.raises(BadRequest):
        parse_body(body)


def test_a_decoded_body_is_taken_as_is() -> None:
    assert parse_body({"prompt": "a"}) == {"prompt": "a"}


@pytest.mark.parametrize("kind, asked, count", [
    (COMPLETIONS, {}, None), (COMPLETIONS, {"logprobs": None}, None),
    (COMPLETIONS, {"logprobs": False}, None), (COMPLETIONS, {"logprobs": 0}, 0),
    (COMPLETIONS, {"logprobs": 5}, 5), (COMPLETIONS, {"logprobs": 20}, 20),
    (CHAT, {}, None), (CHAT, {"logprobs": False}, None), (CHAT, {"logprobs": True}, 0),
    (CHAT, {"logprobs": True, "top_logprobs": 3}, 3),
    (CHAT, {"logprobs": True, "top_logprobs": None}, 0)])
def test_logprobs_as_each_api_asks_for_them(kind, asked, count) -> None:
    """v1/completions: ``logprobs`` is how many likeliest tokens to list; chat: ``logprobs``
    says whether, ``top_logprobs`` how many."""
    body = {"prompt": "a"} if kind == COMPLETIONS else \
        {"messages": [{"role": "user", "content": "a"}]}
    assert parse_request(kind, {**body, **asked}, "d").params.logprobs == count


def test_echo_and_max_tokens_0_score_a_prompt() -> None:
    """How evaluation harnesses ask for a text's log-likelihood: the prompt echoed with its
    logprobs, nothing generated."""
    request = parse_request(COMPLETIONS, {"prompt": "a b", "echo": True, "logprobs": 1,
                                          "max_tokens": 0}, "d")
    assert request.echo and request.params.max_tokens == 0 and request.params.logprobs == 1
    assert not parse_request(COMPLETIONS, {"prompt": "a"}, "d").echo


def test_n_choices_and_a_best_of_that_chooses_nothing() -> None:
    assert parse_request(COMPLETIONS, {"prompt": "a"}, "d").n == 1
    assert parse_request(COMPLETIONS, {"prompt": "a", "n": 3, "best_of": 3}, "d").n == 3
    assert parse_request(CHAT, {"messages": [{"role": "user", "content": "a"}], "n": 16},
                         "d").n == 16
