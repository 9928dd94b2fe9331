"""TorchServe 0.12.0's own continuous-batching streaming handler for the LLM round, taken from a
TorchServe source tree at bench time (torchd's repository holds none of TorchServe's code).

The handler is its source's ``test/pytest/test_data/streaming/stream_handler.py``: the only one
of that release that streams a transformers causal LM's tokens with continuous batching on a CPU
(the others need vLLM, TensorRT-LLM, Neuron or gpt-fast); its archive carries the source's
``fake_streaming_model.py`` as the model file BaseHandler wants. ``--ts-source`` names the tree
(``git clone --branch v0.12.0 https://github.com/pytorch/serve``); without one, TorchServe's
column of the round is left out and the report says why.

As released it cannot serve the round, so three edits are made to the copy written into the
bench's work dir, each found exactly once or the handler is refused as not 0.12.0's:
- an assertion that pins the running batch to the 2 requests of TorchServe's own test goes;
- transformers 5 keeps the KV cache in a ``DynamicCache`` whose layers carry more than (keys,
  values): the handler takes the first two, and hands ``generate`` a ``DynamicCache``;
- a bug: a sequence already padded in an earlier step is padded again by its unpadded length
  instead of its current one, and the next concatenation fails ("Sizes of tensors must
  match"), failing the whole running batch with 500s.
"""
from __future__ import annotations

from pathlib import Path

from . import BenchError

HANDLER = Path("test/pytest/test_data/streaming/stream_handler.py")
MODEL_FILE = Path("test/pytest/test_data/streaming/fake_streaming_model.py")

# (why, the line as released, the line served)
EDITS = [
    ("transformers 5's cache class",
     "from transformers import AutoModelForCausalLM, AutoTokenizer\n",
     "from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache\n"),
    ("a running batch of batchSize, not 2",
     "        assert len(self.context.request_ids.values()) <= 2\n", ""),
    ("a DynamicCache layer holds more than keys and values",
     "                k, v = layer_kv\n", "                k, v = layer_kv[:2]\n"),
    ("pad by the sequence's current width (the padding bug)",
     "                n = max_len - seq_len\n", "                n = max_len - padded_len\n"),
    ("generate takes a DynamicCache",
     '            "past_key_values": kv_cache,\n',
     '            "past_key_values": DynamicCache(kv_cache),\n'),
    ("a DynamicCache layer holds more than keys and values",
     "            tuple(kv[idx, ...].unsqueeze(0) for kv in layers)\n",
     "            tuple(kv[idx, ...].unsqueeze(0) for kv in tuple(layers)[:2])\n"),
]


def torchserve_handler(source: Path | None, dest: Path) -> tuple[Path, Path]:
    """(handler, model file) written into ``dest`` from TorchServe's source tree ``source``;
    BenchError saying why when there is none or it is not 0.12.0's."""
    if source is None or not (source / HANDLER).is_file():
        raise BenchError(f"no TorchServe 0.12.0 source tree with {HANDLER} (--ts-source "
                         f"{source}): TorchServe's LLM handler is not in torchd's repository")
    text = (source / HANDLER).read_text()
    for why, released, served in EDITS:
        if text.count(released) != 1:
            raise BenchError(f"{source / HANDLER} is not TorchServe 0.12.0's: the line to "
                             f"change for {why} is not there once: {released.strip()!r}")
        text = text.replace(released, served)
    dest.mkdir(parents=True, exist_ok=True)
    handler = dest / "ts_stream_handler.py"
    handler.write_text(text)
    model = dest / "ts_stream_model.py"
    model.write_text((source / MODEL_FILE).read_text())
    return handler, model
