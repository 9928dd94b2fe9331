"""``torchd llm``'s own options, in torchd's spellings and in TorchServe 0.12 ``ts.llm_launcher``'s.

A launcher command line works with ``python -m ts.llm_launcher`` replaced by ``torchd llm``:
``--model_id`` (a local directory only: torchd downloads nothing), ``--model_name``,
``--model_store``, ``--disable_token_auth``, ``--vllm_engine.max_num_seqs`` (torchd's
``--batch-size``), ``--vllm_engine.max_model_len`` and ``--vllm_engine.download_dir`` (with
``--engine vllm``), ``--startup_timeout``, ``--dtype`` and ``--engine``. What torchd cannot do
(TensorRT-LLM) parses, so that daemon/ops/llm.py can refuse it with a reason.

Unlike the launcher, whose default engine is vLLM, the default is torchd's own
``text_generation`` handler, which runs on CPUs too.
"""
from __future__ import annotations

import argparse
from pathlib import Path

TEXT_GENERATION = "text_generation"
VLLM = "vllm"
TRT_LLM = "trt_llm"
ENGINES = (TEXT_GENERATION, VLLM, TRT_LLM)
# Running-batch limits when no --batch-size is given: torchd's for its handler, and the
# launcher's --vllm_engine.max_num_seqs for vLLM.
DEFAULT_BATCH_SIZES = {TEXT_GENERATION: 32, VLLM: 256}
# ts.llm_launcher's responseTimeout and startupTimeout: loading a large model, or a step that
# prefills long prompts on CPUs, may take minutes.
TIMEOUT_S = 1200
# The launcher's spellings of `torchd serve` settings (daemon/ops/options.py), for this command
# only: TorchServe's own `torchserve` command does not take them either.
LAUNCHER_SETTING_ALIASES = {"model_store": ("--model_store",),
                            "disable_token_authorization": ("--disable_token_auth",)}
# vLLM engine arguments the launcher takes, and the LlmModel fields they set.
VLLM_ONLY_OPTIONS = {"--vllm_engine.max_model_len": "max_model_len",
                     "--vllm_engine.download_dir": "download_dir"}
TRT_LLM_OPTIONS = {"--trt_llm_engine.max_batch_size": "trt_llm_max_batch_size",
                   "--trt_llm_engine.kv_cache_free_gpu_memory_fraction":
                       "trt_llm_kv_cache_free_gpu_memory_fraction"}


def add_llm_options(parser: argparse.ArgumentParser) -> None:
    """The "language model" options of ``torchd llm`` (serve's are on ``parser`` already)."""
    group = parser.add_argument_group(
        "language model", "TorchServe's ts.llm_launcher spellings (--model_id, --model_name, "
        "--model_store, --disable_token_auth, --vllm_engine.*, --startup_timeout) work too")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path, metavar="DIR",
                        help="the model's directory (config.json, weights, tokenizer), as "
                             "save_pretrained writes it; only read")
    source.add_argument("--model_id", metavar="DIR",
                        help="ts.llm_launcher's spelling of --model-dir: a local directory "
                             "(torchd fetches nothing from a model hub)")
    group.add_argument("--model-name", "--model_name", dest="model_name", metavar="NAME",
                       help="the model's name (OpenAI's `model`); default: the directory's "
                            "name, in the characters a model name may have")
    group.add_argument("--engine", choices=ENGINES, default=TEXT_GENERATION,
                       help=f"what runs the model: torchd's built-in {TEXT_GENERATION} handler "
                            f"(the default here; ts.llm_launcher's is vllm), or {VLLM} "
                            f"(vllm_handler: needs vLLM installed, GPU machines); {TRT_LLM} is "
                            "refused (TensorRT-LLM is not supported)")
    group.add_argument("--batch-size", "--vllm_engine.max_num_seqs", dest="batch_size",
                       type=int, metavar="N",
                       help=f"most sequences in the running batch (default "
                            f"{DEFAULT_BATCH_SIZES[TEXT_GENERATION]}; {VLLM}: its max_num_seqs, "
                            f"default {DEFAULT_BATCH_SIZES[VLLM]})")
    group.add_argument("--dtype", metavar="DTYPE",
                       help="the weights' dtype on the worker's device (handler.dtype, e.g. "
                            "bf16 or fp16; vllm: vllm_engine_config.dtype); default: the "
                            "engine's")
    group.add_argument("--startup-timeout", "--startup_timeout", dest="startup_timeout",
                       type=int, default=TIMEOUT_S, metavar="SECONDS",
                       help=f"how long the worker may take to load the model (the model "
                            f"config's startupTimeout; default {TIMEOUT_S})")
    group.add_argument("--vllm_engine.max_model_len", dest="max_model_len", type=int,
                       metavar="TOKENS", help=f"{VLLM} only: the context length vLLM allows")
    group.add_argument("--vllm_engine.download_dir", dest="download_dir", type=Path,
                       metavar="DIR", help=f"{VLLM} only: vLLM's download and cache directory")
    for option, dest in TRT_LLM_OPTIONS.items():   # refused, with the reason, once parsed
        group.add_argument(option, dest=dest, metavar="VALUE", help=argparse.SUPPRESS)
