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


def usage(choices: list[Sequence]) -> dict[str, int]:
    """The prompt once, the tokens of every choice."""
    prompt = len(choices[0].prompt_ids)
    completion = sum(len(sequence.generated) for sequence in choices)
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


def whole(choices: list[Sequence]) -> bytes:
    """The answer of a request that was not streamed (its choices are done)."""
    return _json({**_head(choices[0], chunk=False),
                  "choices": [_whole_choice(sequence) for sequence in choices],
                  "usage": usage(choices)})


def _whole_choice(sequence: Sequence) -> dict[str, Any]:
    text = sequence.echo_text + sequence.text
    scores = logprobs(sequence, _echoed(sequence, sequence.logprobs, first=True))
    if sequence.request.kind == CHAT:
        return {"index": sequence.index, "message": {"role": "assistant", "content": text},
                "logprobs": scores, "finish_reason": sequence.finish_reason}
    return {"index": sequence.index, "text": text, "logprobs": scores,
            "finish_reason": sequence.finish_reason}


def stream_part(choices: list[Sequence], first: bool) -> bytes:
    """The events this step adds to a streamed answer (empty: nothing to say yet): each
    choice's new text and, once it is done, its finish reason; once all are, the usage if
    asked for, and ``[DONE]``."""
    lead = choices[0]
    events = [event for sequence in choices for event in _choice_events(lead, sequence, first)]
    if all(sequence.done for sequence in choices):
        if lead.request.include_usage:
            events.append(b"data: " + _json({**_head(lead, chunk=True), "choices": [],
                                             "usage": usage(choices)}) + b"\n\n")
        events.append(DONE)
    return b"".join(events)


def _choice_events(lead: Sequence, sequence: Sequence, first: bool) -> list[bytes]:
    events = []
    chat = sequence.request.kind == CHAT
    if first and chat:
        events.append(_event(lead, sequence, {"role": "assistant", "content": ""}, None, []))
    text = sequence.unsent()
    if first and sequence.request.echo:   # the echoed prompt goes with the first text
        text, echoed = sequence.echo_text + text, True
    else:
        echoed = False
    if text or (echoed and sequence.prompt_logprobs):
        # with the log probabilities of every token so far (stop strings hold text back)
        events.append(_event(lead, sequence, {"content": text} if chat else text, None,
                             _echoed(sequence, sequence.unsent_logprobs(), first=echoed)))
    if sequence.done and not sequence.ended:   # a choice ends once, however long the others
        sequence.ended = True
        events.append(_event(lead, sequence, {} if chat else "", sequence.finish_reason,
                             _echoed(sequence, sequence.unsent_logprobs(), first=False)))
    return events


def _event(lead: Sequence, sequence: Sequence, delta: Any, finish_reason: str | None,
           entries: list[TokenLogprob]) -> bytes:
    # null where no token's log probability is due (the role's event, a last event after
    # every token's went with the text)
    scores = logprobs(sequence, entries) if entries else None
    if sequence.request.kind == CHAT:
        choice = {"index": sequence.index, "delta": delta, "logprobs": scores,
                  "finish_reason": finish_reason}
    else:
        choice = {"index": sequence.index, "text": delta, "logprobs": scores,
                  "finish_reason": finish_reason}
    chunk = {**_head(lead, chunk=True), "choices": [choice]}
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
