"""``text_generation``: torchd's built-in handler for Hugging Face ``transformers`` causal LMs,
answering OpenAI's completions and chat completions.

model-config.yaml names the model directory (``save_pretrained``'s: config, weights, tokenizer)
and, optionally, its dtype::

    continuousBatching: true     # sequences join and leave between decode steps
    batchSize: 32                # at most this many requests in the running batch
    handler:
      model_path: /models/llama  # absolute, or relative to the archive
      dtype: bfloat16            # float32 (default), float16 or bfloat16

The request's ``url_path`` picks the API (``v1/completions``, ``v1/chat/completions``,
``v1/models``; none: completions), as TorchServe's LLM launcher routes them. With continuous
batching each call of ``handle`` is one step: new requests are prefilled, running ones decode one
token together, a streamed request sends the text of that token as server-sent events and a whole
one waits (``NO_PART``) for its answer. Without it, ``handle`` generates its batch to the end,
streaming through ``send_intermediate_predict_response``.

torch-model-archiver only knows its own built-in names, so an archive names a handler file
holding a two-line subclass::

    from ts.torch_handler.text_generation import TextGenerationHandler
    class Handler(TextGenerationHandler): pass

Metrics (handler metrics, per model): ``llm_time_to_first_token_seconds`` (from the step the
request joined; time queued in the daemon is ``ts_queue_latency_microseconds``) and
``llm_time_per_output_token_seconds`` (per request) histograms, ``llm_prompt_tokens_total`` and
``llm_generation_tokens_total`` counters.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from worker.llm import answers
from worker.llm.engine import Engine, Sequence
from worker.llm.requests import (CHAT, COMPLETIONS, MODELS, BadRequest, parse_body,
                                 parse_request)
from worker.responses import NO_PART
from worker.runtime.metric_type_enum import MetricTypes
from worker.runtime.streaming import send_intermediate_predict_response
from worker.ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COUNTS_EVERY_S = 0.25
API_PATHS = {"": COMPLETIONS, COMPLETIONS: COMPLETIONS, CHAT: CHAT, MODELS: MODELS}


def content_type(sequence: Sequence) -> str:
    return answers.EVENT_STREAM if sequence.request.stream else answers.JSON


class ModelsListed(Exception):
    """``v1/models``: answered at once, no generation."""

    def __init__(self, body: bytes) -> None:
        super().__init__("v1/models")
        self.body = body


class TextGenerationHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        self.context = context
        config = context.model_yaml_config or {}
        settings = config.get("handler") or {}
        model_dir = context.system_properties.get("model_dir") or "."
        path = settings.get("model_path")
        if not path:
            raise ValueError("text_generation needs handler.model_path in model-config.yaml: "
                             "the directory of a transformers causal LM")
        path = os.path.join(model_dir, str(path))   # an absolute path stays as it is
        dtype_name = str(settings.get("dtype", "float32")).lower()
        if dtype_name not in DTYPES:
            raise ValueError(f"handler.dtype must be one of {sorted(DTYPES)}, got {dtype_name}")
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ImportError("the text_generation handler needs transformers: "
                              "pip install 'torchd[llm]'") from exc
        self.device = self._select_device(context.system_properties.get("gpu_id"))
        tokenizer = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype_name])
        self.model = model.to(self.device).eval()
        self.engine = Engine(self.model, tokenizer, self.device)
        # each request's choices (n of them; the first's sequence id is the request's)
        self.requests: dict[str, list[Sequence]] = {}
        self.continuous = bool(config.get("continuousBatching"))
        self.counted, self.counted_at = [0, 0], time.monotonic()   # prompt, generated tokens
        self.created = int(time.time())
        self.initialized = True
        logger.info("text_generation: %s (%s, %s) on %s, context of %d tokens",
                    type(model).__name__, os.path.basename(path.rstrip("/")), dtype_name,
                    self.device, self.engine.max_length)

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        if self.continuous:
            return self.step(data, context)
        return self.generate_batch(data, context)

    # ---- continuous batching: one call, one step --------------------------------------------

    def step(self, data: list[Any], context: Any) -> list[Any]:
        ids = [context.get_request_id(idx) for idx in range(len(data))]
        engine = self.engine
        self._keep_only(set(ids))           # a client that hung up: its choices leave now
        decoded = len(engine.decode())
        # new requests (their parameters come only in their first step) join: prefilled
        # together, each with its first token; a bad one is answered at once
        answered = self._join(data, ids, context)
        joined = [sequence for idx, item in enumerate(data) if item and idx not in answered
                  for sequence in self.requests[ids[idx]]]
        values, done = [], []
        for idx, item in enumerate(data):
            if idx in answered:
                values.append(answered[idx])
                done.append(True)
                continue
            choices = self.requests[ids[idx]]
            # each step's context is new: its first part may come steps after it joined
            context.set_response_content_type(idx, content_type(choices[0]))
            values.append(self._value(choices, first=bool(item)))
            finished = all(sequence.done for sequence in choices)
            done.append(finished)
            if finished:
                self._finished(ids[idx], context)
        context.stopping_criteria = [lambda _value, d=d: d for d in done]
        self._count(context, joined, decoded + sum(1 for s in joined if s.generated))
        return values

    def _keep_only(self, request_ids: set[str]) -> None:
        """Requests not in ``request_ids`` leave, with every choice of theirs."""
        for gone in [i for i in self.requests if i not in request_ids]:
            del self.requests[gone]
        self.engine.keep_only({sequence.id for choices in self.requests.values()
                               for sequence in choices})

    def _join(self, data: list[Any], ids: list[str], context: Any) -> dict[int, Any]:
        """Admit the new requests of ``data`` (prefilled, first token taken); the answers of
        those that end at once (a bad request, v1/models), by index."""
        answered: dict[int, Any] = {}
        joining = []
        for idx, item in enumerate(data):
            if not item:
                continue
            try:
                choices = self._choices(idx, ids[idx], item, context)
            except BadRequest as exc:
                context.set_response_status(exc.status, "", idx)
                context.set_response_content_type(idx, answers.JSON)
                answered[idx] = answers.error_body(exc)
            except ModelsListed as listed:
                context.set_response_content_type(idx, answers.JSON)
                answered[idx] = listed.body
            else:
                self.requests[ids[idx]] = choices
                joining.extend(choices)
        self.engine.admit(joining)
        return answered

    def _choices(self, idx: int, request_id: str, item: dict[str, Any],
                 context: Any) -> list[Sequence]:
        """The request's sequences: one per choice (``n``), the first under its own id."""
        path = (context.get_request_header(idx, "url_path") or "").strip("/")
        api = API_PATHS.get(path)
        if api is None:
            raise BadRequest(f"Unknown path {path!r}: this model serves v1/completions, "
                             f"v1/chat/completions and v1/models", status=404)
        if api == MODELS:
            raise ModelsListed(answers.models_list(context.model_name, self.created))
        body = item.get("body", item.get("data"))
        request = parse_request(api, parse_body(body), context.model_name)
        arrival = time.monotonic()
        choices = [self.engine.new_sequence(request_id if index == 0
                                            else f"{request_id}#{index}", request, arrival,
                                            index)
                   for index in range(request.n)]
        context.set_response_content_type(idx, content_type(choices[0]))
        return choices

    def _value(self, choices: list[Sequence], first: bool) -> Any:
        done = all(sequence.done for sequence in choices)
        if choices[0].request.stream:
            part = answers.stream_part(choices, first)
            return part if part or done else NO_PART
        return answers.whole(choices) if done else NO_PART

    def _finished(self, request_id: str, context: Any) -> None:
        for sequence in self.requests.pop(request_id, ()):
            self.engine.forget(sequence.id)
            count = len(sequence.generated)
            if count > 1 and sequence.first_token_at and sequence.last_token_at:
                per_token = (sequence.last_token_at - sequence.first_token_at) / (count - 1)
                context.metrics.add_metric("llm_time_per_output_token_seconds", per_token,
                                           "s", metric_type=MetricTypes.HISTOGRAM)

    def _count(self, context: Any, joined: list[Sequence], generated: int) -> None:
        metrics = context.metrics
        joined = [sequence for sequence in joined if sequence.index == 0]   # once a request
        for sequence in joined:
            if sequence.first_token_at is not None:
                metrics.add_metric("llm_time_to_first_token_seconds",
                                   sequence.first_token_at - sequence.arrival, "s",
                                   metric_type=MetricTypes.HISTOGRAM)
        # the token counters go out summed, at most every COUNTS_EVERY_S while sequences run
        # (every step's records would be most of the daemon's per-step work), and at once
        # when none is left
        self.counted[0] += sum(len(s.prompt_ids) for s in joined)
        self.counted[1] += generated
        now = time.monotonic()
        if now - self.counted_at < COUNTS_EVERY_S and self.engine.sequences:
            return
        prompt, generated = self.counted
        if prompt:
            metrics.add_counter("llm_prompt_tokens_total", prompt)
        if generated:
            metrics.add_counter("llm_generation_tokens_total", generated)
        self.counted, self.counted_at = [0, 0], now

    # ---- without continuous batching: the batch to its end ----------------------------------

    def generate_batch(self, data: list[Any], context: Any) -> list[Any]:
        """Every request of the batch generated to its end in this call; streamed ones send
        each step's text as a part, all end with their last value."""
        ids = [context.get_request_id(idx) for idx in range(len(data))]
        self._keep_only(set())
        finals = self._join([item or {"body": b""} for item in data], ids, context)
        requests = {idx: self.requests[ids[idx]] for idx in range(len(data))
                    if idx not in finals}
        joined = [sequence for choices in requests.values() for sequence in choices]
        self._count(context, joined, sum(1 for s in joined if s.generated))
        first = set(requests)
        while True:
            self._send_parts(requests, finals, first, ids, context)
            first.clear()
            if len(finals) == len(data):
                self._count(context, [], 0)   # none left: the counters go out
                return [finals[idx] for idx in range(len(data))]
            self._count(context, [], len(self.engine.decode()))

    def _send_parts(self, requests: dict[int, list[Sequence]], finals: dict[int, Any],
                    first: set[int], ids: list[str], context: Any) -> None:
        parts = {}
        for idx, choices in requests.items():
            if idx in finals:
                continue
            if all(sequence.done for sequence in choices):
                finals[idx] = self._value(choices, idx in first)
                self._finished(ids[idx], context)
            elif choices[0].request.stream:
                part = answers.stream_part(choices, idx in first)
                if part:
                    parts[idx] = part
        if parts:
            send_intermediate_predict_response(parts, {idx: ids[idx] for idx in parts}, "OK",
                                               200, context)
