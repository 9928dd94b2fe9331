"""Continuous batching of token generation: sequences join between decode steps (each prefilled
alone), every step decodes one token for all running sequences in one forward pass over the
batch's KV cache (kv_batch.py), and a sequence leaves when it is done or its client has gone.

The engine is the handler's; it keeps what it needs across steps (the sequences and their cache
rows) keyed by request id. It never sees HTTP: the handler turns its sequences into answers.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.llm.kv_batch import KVBatch
from worker.llm.requests import BadRequest, GenerationRequest
from worker.llm.sampling import new_generator, next_tokens

# Tokens decoded again with each new one: enough context for a tokenizer to join a word's
# pieces (and for bytes of one character split over tokens) without decoding the whole text.
DETOKENIZE_WINDOW = 6
# The floor of a reported log probability: -inf (a token masked out) is not JSON (vLLM's too).
LOGPROB_FLOOR = -9999.0


@dataclass
class TokenLogprob:
    """A generated token as ``logprobs`` reports it: its text, its log probability under the
    model (before temperature, top-k and top-p), and the likeliest tokens at that step."""

    text: str
    logprob: float | None          # None: an echoed prompt's first token (nothing before it)
    top: list[tuple[str, float]]   # best first
    offset: int                    # where its text starts in the completion's tokens' text


@dataclass
class Sequence:
    """One request being generated."""

    id: str
    request: GenerationRequest
    prompt_ids: list[int]
    max_tokens: int
    arrival: float                       # time.monotonic() when the server received it
    created: int = field(default_factory=lambda: int(time.time()))
    generator: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)
    text: str = ""                       # the completion's text so far (stop strings cut)
    sent: int = 0                        # characters of ``text`` the client has been sent
    finish_reason: str | None = None     # "stop" or "length" once done
    index: int = 0                       # its choice among its request's (n)
    ended: bool = False                  # a stream: its finish event has been sent
    logprobs: list[TokenLogprob] = field(default_factory=list)   # when the request asks
    echo_text: str = ""                  # the prompt, when the request echoes it
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)   # echo and logprobs
    logprobs_sent: int = 0               # of ``logprobs``, those the client has been sent
    first_token_at: float | None = None
    last_token_at: float | None = None
    _prefix: int = 0                     # incremental detokenization offsets
    _read: int = 0
    _scored: TokenLogprob | None = None  # the step's token's, until _take keeps it

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def unsent(self) -> str:
        """Text the client may be sent now: all of it once done; else what no stop string
        could still claim (the last characters may be the start of one)."""
        end = len(self.text)
        if not self.done and self.request.params.stop:
            end -= max(len(s) for s in self.request.params.stop) - 1
        if end <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent:end], end
        return piece

    def unsent_logprobs(self) -> list[TokenLogprob]:
        entries = self.logprobs[self.logprobs_sent:]
        self.logprobs_sent = len(self.logprobs)
        return entries


class Engine:
    def __init__(self, model: Any, tokenizer: Any, device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_length = model_context_length(model)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.sequences: dict[str, Sequence] = {}
        self.batch = KVBatch(device)
        # transformers 5.x renamed the forward's past_key_values to cache (the old name warns)
        parameters = inspect.signature(model.forward).parameters
        self.cache_keyword = "cache" if "cache" in parameters else "past_key_values"

    # ---- joining --------------------------------------------------------------------------

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            try:
                text = self.tokenizer.apply_chat_template(request.messages, tokenize=False,
                                                          add_generation_prompt=True)
            except Exception as exc:   # no template, or one that refuses these messages
                raise BadRequest(f"The model's chat template cannot render these messages: "
                                 f"{exc}", "messages") from None
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        elif request.prompt_ids is not None:
            ids = request.prompt_ids
            vocab = len(self.tokenizer)
            if any(token >= vocab for token in ids):
                raise BadRequest(f"token ids must be below the vocabulary size {vocab}",
                                 "prompt")
        else:
            ids = self.tokenizer(request.prompt or "")["input_ids"]
        if not ids and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id]
        if not ids:
            raise BadRequest("The prompt is empty", "prompt")
        return list(ids)

    def new_sequence(self, sequence_id: str, request: GenerationRequest, arrival: float,
                     index: int = 0) -> Sequence:
        """The request (its choice ``index``) as a sequence, or BadRequest when it does not
        fit the context."""
        ids = self.prompt_ids(request)
        room = self.max_length - len(ids)
        wanted = request.params.max_tokens
        least = 0 if wanted == 0 else 1   # 0: an echoed prompt scored, nothing generated
        if room < least or (wanted is not None and wanted > room):
            asked = len(ids) + (least if wanted is None else wanted)
            raise BadRequest(f"This model's maximum context length is {self.max_length} tokens. "
                             f"However, you requested {asked} tokens ({len(ids)} in the "
                             f"prompt, {asked - len(ids)} in the completion). Please reduce the "
                             f"prompt or the completion's length.", "max_tokens")
        sequence = Sequence(sequence_id, request, ids, room if wanted is None else wanted,
                            arrival, index=index,
                            generator=new_generator(request.params, self.device, index))
        if request.echo:
            sequence.echo_text = request.prompt if request.prompt is not None \
                else self.tokenizer.decode(ids)
        return sequence

    @torch.inference_mode()
    def admit(self, joining: list[Sequence]) -> None:
        """Prefill the ``joining`` sequences together (prompts left-padded to the longest) and
        take each one's first token; those it did not end join the running batch."""
        from transformers import DynamicCache

        if not joining:
            return
        width = max(len(s.prompt_ids) for s in joining)
        ids = torch.zeros(len(joining), width, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(joining), width, dtype=torch.long, device=self.device)
        for row, sequence in enumerate(joining):
            length = len(sequence.prompt_ids)
            ids[row, width - length:] = torch.tensor(sequence.prompt_ids)
            mask[row, width - length:] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache()
        # an echoed prompt's logprobs need the logits at every position, not just the last
        scoring = any(s.request.echo and s.request.params.logprobs is not None
                      for s in joining)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         use_cache=True, logits_to_keep=0 if scoring else 1,
                         **{self.cache_keyword: cache})
        if scoring:
            self._score_prompts(out.logits, joining)
        logits = out.logits[:, -1]
        tokens = next_tokens(logits, [s.request.params for s in joining],
                             [s.generator for s in joining])
        self._score(logits, joining, tokens)
        now = time.monotonic()
        for sequence, token in zip(joining, tokens):
            self.sequences[sequence.id] = sequence
            if sequence.max_tokens == 0:   # the prompt alone (echo): nothing generated
                sequence._scored, sequence.finish_reason = None, "length"
                continue
            self._take(sequence, token, now)
        self.batch.add([s.id for s in joining], cache, mask)
        self.batch.keep({i for i in self.batch.ids if not self.sequences[i].done})

    # ---- stepping -------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(self) -> list[Sequence]:
        """One token for every sequence in the batch; the sequences that ran."""
        if not len(self.batch):
            return []
        running = [self.sequences[i] for i in self.batch.ids]
        mask, positions = self.batch.step_inputs()
        last = torch.tensor([[s.generated[-1]] for s in running], device=self.device)
        out = self.model(input_ids=last, attention_mask=mask, position_ids=positions,
                         use_cache=True, **{self.cache_keyword: self.batch.cache})
        logits = out.logits[:, -1]
        tokens = next_tokens(logits, [s.request.params for s in running],
                             [s.generator for s in running])
        self._score(logits, running, tokens)
        now = time.monotonic()
        for sequence, token in zip(running, tokens):
            self._take(sequence, token, now)
        if any(s.done for s in running):
            self.batch.keep({s.id for s in running if not s.done})
        return running

    def keep_only(self, wanted: set[str]) -> None:
        """Sequences not in ``wanted`` leave (their clients hung up, or they were answered)."""
        for gone in [i for i in self.sequences if i not in wanted]:
            del self.sequences[gone]
        self.batch.keep(wanted)

    def forget(self, sequence_id: str) -> None:
        self.sequences.pop(sequence_id, None)

    def _score(self, logits: torch.Tensor, sequences: list[Sequence],
               tokens: list[int]) -> None:
        """The log probabilities of this step's tokens, for the sequences that asked (one
        log_softmax over their rows): recorded by ``_take`` unless the token ends the text."""
        rows = [row for row, s in enumerate(sequences) if s.request.params.logprobs is not None]
        if not rows:
            return
        scores = _log_probs(logits[rows])
        widest = min(scores.shape[-1],
                     max(sequences[row].request.params.logprobs or 0 for row in rows))
        top_scores: list[list[float]] = [[] for _ in rows]
        top_ids: list[list[int]] = [[] for _ in rows]
        if widest:
            best = scores.topk(widest, dim=-1)
            top_scores, top_ids = best.values.tolist(), best.indices.tolist()
        text = self._token_text
        for at, row in enumerate(rows):
            sequence, chosen = sequences[row], tokens[row]
            wanted = sequence.request.params.logprobs or 0
            top = [(text(i), v) for i, v in zip(top_ids[at][:wanted], top_scores[at][:wanted])]
            sequence._scored = TokenLogprob(text(chosen), float(scores[at, chosen]), top, 0)

    def _score_prompts(self, logits: torch.Tensor, joining: list[Sequence]) -> None:
        """The logprobs of the prompt's tokens of each joining sequence that echoes it with
        logprobs: each token's under the positions before it (rows are left-padded); the
        first has none."""
        width, text = logits.shape[1], self._token_text
        for row, sequence in enumerate(joining):
            wanted = sequence.request.params.logprobs
            if not sequence.request.echo or wanted is None:
                continue
            ids = sequence.prompt_ids
            before = logits[row, width - len(ids):width - 1]   # predicts ids[1:]
            scores = _log_probs(before)
            chosen = scores.gather(1, torch.tensor(ids[1:], device=scores.device)[:, None])
            best = scores.topk(min(wanted, scores.shape[-1]), dim=-1) if wanted else None
            entries = [TokenLogprob(text(ids[0]), None, [], 0)]
            for at, token in enumerate(ids[1:]):
                top = [] if best is None else [
                    (text(i), v) for i, v in zip(best.indices[at].tolist(),
                                                 best.values[at].tolist())]
                previous = entries[-1]
                entries.append(TokenLogprob(text(token), float(chosen[at, 0]), top,
                                            previous.offset + len(previous.text)))
            sequence.prompt_logprobs = entries

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def _take(self, sequence: Sequence, token: int, now: float) -> None:
        if sequence.first_token_at is None:
            sequence.first_token_at = now
        sequence.last_token_at = now
        sequence.generated.append(token)
        params = sequence.request.params
        scored, sequence._scored = sequence._scored, None
        if token in self.eos_ids and not params.ignore_eos:
            sequence.finish_reason = "stop"
            return
        if scored is not None:   # the token is text: its log probability counts
            previous = sequence.logprobs[-1] if sequence.logprobs else None
            scored.offset = previous.offset + len(previous.text) if previous else 0
            sequence.logprobs.append(scored)
        self._detokenize(sequence)
        if params.stop and self._cut_at_stop(sequence):
            sequence.finish_reason = "stop"
        elif (len(sequence.generated) >= sequence.max_tokens
              or len(sequence.prompt_ids) + len(sequence.generated) >= self.max_length):
            sequence.finish_reason = "length"

    def _detokenize(self, sequence: Sequence) -> None:
        """Append the text the new token completes (none while it ends mid-character)."""
        tokens, decode = sequence.generated, self.tokenizer.decode
        before = decode(tokens[sequence._prefix:sequence._read], skip_special_tokens=True)
        after = decode(tokens[sequence._prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            sequence.text += after[len(before):]
            sequence._read = len(tokens)
            sequence._prefix = max(0, sequence._read - DETOKENIZE_WINDOW)

    @staticmethod
    def _cut_at_stop(sequence: Sequence) -> bool:
        longest = max(len(s) for s in sequence.request.params.stop)
        start = max(0, sequence.sent - longest)
        found = [at for at in (sequence.text.find(s, start)
                               for s in sequence.request.params.stop) if at >= 0]
        if not found:
            return False
        sequence.text = sequence.text[:min(found)]
        return True


def model_context_length(model: Any) -> int:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    generation = getattr(model, "generation_config", None)
    for value in (getattr(generation, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Each row's log probabilities, in float32, floored (-inf is not JSON)."""
    return torch.log_softmax(logits.float(), dim=-1).clamp(min=LOGPROB_FLOOR)
