"""An OpenAI-style request body -> what to generate (``GenerationRequest``), checked as OpenAI's
API checks it. A bad value raises ``BadRequest``, which the handler answers as OpenAI's 400 error
JSON; unknown keys are ignored (clients send more than any one server reads)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

COMPLETIONS = "v1/completions"
CHAT = "v1/chat/completions"
MODELS = "v1/models"
MAX_STOP_STRINGS = 4          # OpenAI's limit
MAX_LOGPROBS = 20             # OpenAI's limit for top_logprobs (vLLM's default max_logprobs)
MAX_CHOICES = 16              # n: each choice is a sequence of its own in the running batch
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions


class BadRequest(Exception):
    """The client's error: a 400 whose message names the parameter."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


@dataclass
class SamplingParams:
    max_tokens: int | None = None     # None: the rest of the model's context
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                    # 0 (or -1): no top-k cut
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False          # vLLM's: generate max_tokens whatever comes
    logprobs: int | None = None       # None: none; N: each token's, and the N likeliest

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class GenerationRequest:
    kind: str                         # COMPLETIONS or CHAT
    model: str
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False       # stream_options.include_usage
    prompt: str | None = None         # a completion's text prompt
    prompt_ids: list[int] | None = None   # a completion's prompt as token ids
    messages: list[dict[str, str]] | None = None  # a chat's
    echo: bool = False                # a completion's: the prompt (and its logprobs) first
    n: int = 1                        # choices: as many sequences, generated side by side


def parse_body(body: Any) -> dict[str, Any]:
    """The request's JSON object (the worker hands a JSON body over decoded already)."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise BadRequest("The request body is not valid JSON") from None
    elif isinstance(body, str):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequest("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    return body


def parse_request(kind: str, body: dict[str, Any], default_model: str) -> GenerationRequest:
    model = body.get("model", default_model)
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string", "model")
    request = GenerationRequest(kind, model or default_model, sampling_params(kind, body),
                                stream=_bool(body, "stream", False), n=choice_count(body))
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise BadRequest("'stream_options' must be an object", "stream_options")
        request.include_usage = _bool(options, "include_usage", False)
    if kind == CHAT:
        request.messages = chat_messages(body.get("messages"))
    else:
        request.prompt, request.prompt_ids = completion_prompt(body.get("prompt"))
        request.echo = _bool(body, "echo", False)
    _refuse_unsupported(kind, body)
    return request


def sampling_params(kind: str, body: dict[str, Any]) -> SamplingParams:
    max_tokens = body.get("max_tokens")
    if kind == CHAT and body.get("max_completion_tokens") is not None:
        max_tokens = body["max_completion_tokens"]
    if max_tokens is None and kind == COMPLETIONS:
        max_tokens = DEFAULT_COMPLETION_TOKENS
    # 0 with echo: the prompt scored, nothing generated (how evaluation harnesses ask)
    least = 0 if kind == COMPLETIONS and body.get("echo") is True else 1
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < least):
        raise BadRequest(f"max_tokens must be at least {least}, got {max_tokens!r}",
                         "max_tokens")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, open_low=True)
    top_k = body.get("top_k", 0)
    if top_k is None:
        top_k = 0
    if not _is_int(top_k) or top_k < -1:
        raise BadRequest(f"top_k must be -1 or 0 (off) or at least 1, got {top_k!r}", "top_k")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise BadRequest(f"seed must be an integer, got {seed!r}", "seed")
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                          top_k=max(top_k, 0), seed=seed, stop=stop_strings(body.get("stop")),
                          ignore_eos=_bool(body, "ignore_eos", False),
                          logprobs=chat_logprobs(body) if kind == CHAT
                          else completion_logprobs(body))


def completion_logprobs(body: dict[str, Any]) -> int | None:
    """v1/completions: ``logprobs``, how many of the likeliest tokens to list (0: the chosen
    one's alone)."""
    if body.get("top_logprobs") is not None:
        raise BadRequest("'top_logprobs' is for v1/chat/completions: v1/completions takes "
                         "'logprobs', a number of tokens", "top_logprobs")
    return _logprob_count(body, "logprobs")


def chat_logprobs(body: dict[str, Any]) -> int | None:
    """v1/chat/completions: ``logprobs`` (true: the chosen tokens') and ``top_logprobs``, how
    many of the likeliest to list with each, which needs ``logprobs``."""
    wanted = _bool(body, "logprobs", False)
    top = _logprob_count(body, "top_logprobs")
    if top is not None and not wanted:
        raise BadRequest("'top_logprobs' needs 'logprobs' to be true", "top_logprobs")
    return (top or 0) if wanted else None


def _logprob_count(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None or value is False:   # false: as clients that mean "none" send it
        return None
    if not _is_int(value) or not 0 <= value <= MAX_LOGPROBS:
        raise BadRequest(f"{name} must be an integer in [0, {MAX_LOGPROBS}], got {value!r}",
                         name)
    return int(value)


def stop_strings(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)
            or len(stop) > MAX_STOP_STRINGS):
        raise BadRequest(f"'stop' must be a non-empty string or a list of up to "
                         f"{MAX_STOP_STRINGS} of them", "stop")
    return stop


def completion_prompt(prompt: Any) -> tuple[str | None, list[int] | None]:
    """A string, a list of one string, or token ids (a list of integers, or a list of one)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt, None
    if isinstance(prompt, list) and prompt and all(_is_int(t) and t >= 0 for t in prompt):
        return None, list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise BadRequest("Only one prompt per request is supported", "prompt")
    raise BadRequest("'prompt' must be a string or a list of token ids", "prompt")


def chat_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    out = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest("each message must be an object with a 'role'", "messages")
        out.append({"role": message["role"], "content": message_text(message.get("content"))})
    return out


def message_text(content: Any) -> str:
    """A message's content: a string, or a list of text parts (other kinds are refused)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise BadRequest("only text content parts are supported", "messages")
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequest("a message's 'content' must be a string or a list of parts", "messages")


def choice_count(body: dict[str, Any]) -> int:
    """``n``: how many choices; ``best_of`` (generate more, answer the likeliest) only as many
    as ``n``, which is no choosing at all."""
    n = body.get("n")
    if n is None:
        n = 1
    if not _is_int(n) or not 1 <= n <= MAX_CHOICES:
        raise BadRequest(f"n must be an integer in [1, {MAX_CHOICES}], got {n!r}", "n")
    best_of = body.get("best_of")
    if best_of is not None and best_of not in (1, n):
        raise BadRequest("best_of other than n is not supported", "best_of")
    return int(n)


def _refuse_unsupported(kind: str, body: dict[str, Any]) -> None:
    """Parameters that would change what the client gets, which this server cannot honour:
    refused rather than silently ignored."""
    for name in ("suffix", "tools", "logit_bias", *(("echo",) if kind == CHAT else ())):
        value = body.get(name)
        if value not in (None, False, [], {}, ""):
            raise BadRequest(f"'{name}' is not supported", name)


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean", name)
    return value


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float,
            open_low: bool = False) -> float:
    """``body[name]`` in [low, high] (``(low, high]`` when ``open_low``), else BadRequest."""
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not low <= value <= high or (open_low and value == low):
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise BadRequest(f"{name} must be in {interval}, got {value!r}", name)
    return float(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
