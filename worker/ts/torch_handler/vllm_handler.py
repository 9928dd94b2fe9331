"""``vllm_handler``: TorchServe 0.12's vLLM handler surface (``VLLMHandler``) on vLLM's async
engine, for GPU machines where ``vllm`` is installed; elsewhere it fails to load, saying so.

model-config.yaml as TorchServe 0.12 reads it::

    asyncCommunication: true      # requests run concurrently in the engine, not one at a time
    handler:
      model_path: model           # relative to the archive (or a hub id), unless ...
      vllm_engine_config:         # ... vllm_engine_config.model names it; its other keys are
        max_num_seqs: 16          #     vLLM AsyncEngineArgs fields (unknown ones are ignored
        max_model_len: 512        #     with a warning)
      chat_template: "..."        # optional: the tokenizer's otherwise

Requests are routed on ``url_path`` (``v1/completions``, ``v1/chat/completions``,
``v1/models``) and checked by the same code as ``text_generation`` (OpenAI's parameters and
error JSON); vLLM runs continuous batching and paged attention itself, and its answers take the
same OpenAI shapes (worker/llm/answers.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from worker.llm import answers
from worker.llm.engine import Sequence
from worker.llm.requests import (CHAT, COMPLETIONS, MODELS, BadRequest, GenerationRequest,
                                 parse_body, parse_request)
from worker.runtime.streaming import send_intermediate_predict_response
from worker.ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)
API_PATHS = {"": COMPLETIONS, COMPLETIONS: COMPLETIONS, CHAT: CHAT, MODELS: MODELS}


def import_vllm() -> Any:
    try:
        import vllm  # type: ignore[import-not-found]  # GPU machines only
    except ImportError as exc:
        raise ImportError(f"the vllm_handler needs vLLM, which does not import here ({exc}); "
                          f"install it on a GPU machine (pip install vllm), or serve the model "
                          f"with torchd's text_generation handler") from exc
    return vllm


def engine_args(vllm: Any, handler: dict[str, Any], model_dir: str) -> Any:
    """vLLM's AsyncEngineArgs from ``handler.vllm_engine_config`` (its ``model``, else
    ``handler.model_path`` under the archive when that exists, else as given)."""
    config = dict(handler.get("vllm_engine_config") or {})
    model = config.pop("model", None)
    if not model:
        path = handler.get("model_path")
        if not path:
            raise ValueError("vllm_handler needs handler.vllm_engine_config.model or "
                             "handler.model_path in model-config.yaml")
        local = os.path.join(model_dir, str(path))
        model = local if os.path.exists(local) else str(path)
    args = vllm.AsyncEngineArgs(model=model)
    for key, value in config.items():
        if hasattr(args, key):
            setattr(args, key, value)
        else:
            logger.warning("vllm_engine_config.%s is not an AsyncEngineArgs field; ignored", key)
    return args


def refuse_unfollowed(request: GenerationRequest) -> None:
    """What text_generation answers and this handler does not pass to vLLM yet (``n``,
    ``logprobs``, ``echo``): refused, never silently dropped."""
    for name, asked in (("n", request.n > 1), ("logprobs", request.params.logprobs is not None),
                        ("echo", request.echo)):
        if asked:
            raise BadRequest(f"'{name}' is not supported by vllm_handler", name)


class VLLMHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        vllm = import_vllm()
        self.vllm = vllm
        handler = (context.model_yaml_config or {}).get("handler") or {}
        model_dir = context.system_properties.get("model_dir") or "."
        # vLLM's own workers must not fork this process (it may hold CUDA already)
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        args = engine_args(vllm, handler, model_dir)
        self.engine = vllm.AsyncLLMEngine.from_engine_args(args)
        self.chat_template = handler.get("chat_template")
        self.tokenizer: Any = None
        self.created = int(time.time())
        self.initialized = True
        logger.info("vLLM engine started for %s", args.model)

    async def handle(self, data: list[Any], context: Any) -> list[Any]:  # type: ignore[override]
        # a batch's requests generate concurrently: the engine batches them itself
        return list(await asyncio.gather(*(self._answer(idx, item, context)
                                           for idx, item in enumerate(data))))

    async def _answer(self, idx: int, item: dict[str, Any], context: Any) -> Any:
        path = (context.get_request_header(idx, "url_path") or "").strip("/")
        api = API_PATHS.get(path)
        try:
            if api is None:
                raise BadRequest(f"Unknown API endpoint: {path!r}", status=404)
            if api == MODELS:
                context.set_response_content_type(idx, answers.JSON)
                return answers.models_list(context.model_name, self.created)
            body = item.get("body", item.get("data"))
            request = parse_request(api, parse_body(body), context.model_name)
            refuse_unfollowed(request)
            prompt = await self._prompt(request)
        except BadRequest as exc:
            context.set_response_status(exc.status, "", idx)
            context.set_response_content_type(idx, answers.JSON)
            return answers.error_body(exc)
        sequence = Sequence(context.get_request_id(idx), request, [],
                            request.params.max_tokens or 0, time.monotonic())
        context.set_response_content_type(
            idx, answers.EVENT_STREAM if request.stream else answers.JSON)
        first = True
        async for output in self.engine.generate(prompt, self._sampling(request),
                                                 sequence.id):
            self._follow(sequence, output)
            if request.stream and not sequence.done:
                part = answers.stream_part([sequence], first)
                if part:
                    first = False
                    send_intermediate_predict_response({idx: part},
                                                       {idx: sequence.id}, "OK", 200, context)
        if sequence.finish_reason is None:
            sequence.finish_reason = "stop"
        return answers.stream_part([sequence], first) if request.stream \
            else answers.whole([sequence])

    async def _prompt(self, request: GenerationRequest) -> Any:
        if request.messages is None:
            if request.prompt_ids is not None:
                return {"prompt_token_ids": request.prompt_ids}
            return request.prompt or ""
        if self.tokenizer is None:
            self.tokenizer = await self.engine.get_tokenizer()
        return self.tokenizer.apply_chat_template(request.messages, tokenize=False,
                                                  add_generation_prompt=True,
                                                  chat_template=self.chat_template)

    def _sampling(self, request: GenerationRequest) -> Any:
        p = request.params
        return self.vllm.SamplingParams(n=1, temperature=p.temperature, top_p=p.top_p,
                                        top_k=p.top_k or -1, seed=p.seed, stop=p.stop or None,
                                        max_tokens=p.max_tokens, ignore_eos=p.ignore_eos)

    @staticmethod
    def _follow(sequence: Sequence, output: Any) -> None:
        """vLLM's cumulative output as the sequence the answers are made of."""
        completion = output.outputs[0]
        sequence.prompt_ids = list(output.prompt_token_ids or [])
        sequence.generated = list(completion.token_ids)
        sequence.text = completion.text
        if completion.finish_reason is not None:
            sequence.finish_reason = "length" if completion.finish_reason == "length" \
                else "stop"
