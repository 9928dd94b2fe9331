"""What a sequence's client sees, as OpenAI's API shapes it: a whole ``text_completion`` or
``chat.completion`` with ``usage``, or server-sent events (``data: {chunk}`` lines, then
``data: [DONE]``), and OpenAI's error JSON for a bad request."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from worker.llm.engine import Sequence, TokenLogprob
from worker.llm.requests import CHAT, BadRequest

EVENT_STREAM = "text/event-stream"
JSON = "application/json"
DONE = b"data: [DONE]\n\n"


def error_body(exc: BadRequest) -> bytes:
    """OpenAI's error document."""
    return _json({"error": {"message": exc.message, "type": "invalid_request_error",
                            "param": exc.param, "code": None}})


def usage(sequence: Sequence) -> dict[str, int]:
    prompt, completion = len(sequence.prompt_ids), len(sequence.generated)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def logprobs(sequence: Sequence, entries: list[TokenLogprob]) -> dict[str, Any] | None:
    """``entries`` as the choice's ``logprobs`` (None where the request did not ask): OpenAI's
    chat shape (``content``: a token, its log probability, its UTF-8 bytes, the likeliest), or
    the legacy completions one (parallel lists, the likeliest as a token -> logprob map that
    holds the chosen token too)."""
    if sequence.request.params.logprobs is None:
        return None
    if sequence.request.kind == CHAT:   # a chat echoes nothing: every entry has its logprob
        return {"content": [{**_chat_token(e.text, e.logprob),
                             "top_logprobs": [_chat_token(t, v) for t, v in e.top]}
                            for e in entries], "refusal": None}
    return {"tokens": [e.text for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            # an echoed prompt's first token has none (null), as OpenAI's
            "top_logprobs": [None if e.logprob is None else {**dict(e.top), e.text: e.logprob}
                             for e in entries],
            "text_offset": [e.offset for e in entries]}


def _chat_token(text: str, logprob: float | None) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _echoed(sequence: Sequence, entries: list[TokenLogprob],
            first: bool) -> list[TokenLogprob]:
    """With ``echo``, the prompt's entries come first, and the completion's offsets count
    from the start of the prompt's text."""
    if not sequence.request.echo:
        return entries
    shift = len(sequence.echo_text)
    moved = [dataclasses.replace(e, offset=e.offset + shift) for e in entries]
    return (sequence.prompt_logprobs if first else []) + moved


def whole(sequence: Sequence) -> bytes:
    """The answer of a request that was not streamed (the sequence is done)."""
    text = sequence.echo_text + sequence.text
    scores = logprobs(sequence, _echoed(sequence, sequence.logprobs, first=True))
    if sequence.request.kind == CHAT:
        choice: dict[str, Any] = {"index": 0,
                                  "message": {"role": "assistant", "content": text},
                                  "logprobs": scores, "finish_reason": sequence.finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": scores,
                  "finish_reason": sequence.finish_reason}
    return _json({**_head(sequence, chunk=False), "choices": [choice],
                  "usage": usage(sequence)})


def stream_part(sequence: Sequence, first: bool) -> bytes:
    """The events this step adds to a streamed answer (empty: nothing to say yet): the new
    text, and once done the finish reason, the usage if asked for, and ``[DONE]``."""
    events = []
    chat = sequence.request.kind == CHAT
    if first and chat:
        events.append(_event(sequence, {"role": "assistant", "content": ""}, None, []))
    text = sequence.unsent()
    if first and sequence.request.echo:   # the echoed prompt goes with the first text
        text, echoed = sequence.echo_text + text, True
    else:
        echoed = False
    if text or (echoed and sequence.prompt_logprobs):
        # with the log probabilities of every token so far (stop strings hold text back)
        events.append(_event(sequence, {"content": text} if chat else text, None,
                             _echoed(sequence, sequence.unsent_logprobs(), first=echoed)))
    if sequence.done:
        events.append(_event(sequence, {} if chat else "", sequence.finish_reason,
                             _echoed(sequence, sequence.unsent_logprobs(), first=False)))
        if sequence.request.include_usage:
            events.append(b"data: " + _json({**_head(sequence, chunk=True), "choices": [],
                                             "usage": usage(sequence)}) + b"\n\n")
        events.append(DONE)
    return b"".join(events)


def _event(sequence: Sequence, delta: Any, finish_reason: str | None,
           entries: list[TokenLogprob]) -> bytes:
    # null where no token's log probability is due (the role's event, a last event after
    # every token's went with the text)
    scores = logprobs(sequence, entries) if entries else None
    if sequence.request.kind == CHAT:
        choice = {"index": 0, "delta": delta, "logprobs": scores,
                  "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": delta, "logprobs": scores, "finish_reason": finish_reason}
    chunk = {**_head(sequence, chunk=True), "choices": [choice]}
    if sequence.request.include_usage:
        chunk["usage"] = None   # OpenAI: null on every chunk but the last when asked for
    return b"data: " + _json(chunk) + b"\n\n"


def _head(sequence: Sequence, chunk: bool) -> dict[str, Any]:
    chat = sequence.request.kind == CHAT
    if chat:
        kind = "chat.completion.chunk" if chunk else "chat.completion"
    else:
        kind = "text_completion"
    return {"id": ("chatcmpl-" if chat else "cmpl-") + sequence.id, "object": kind,
            "created": sequence.created, "model": sequence.request.model}


def models_list(name: str, created: int) -> bytes:
    return _json({"object": "list", "data": [{"id": name, "object": "model",
                                              "created": created, "owned_by": "torchd"}]})


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
