"""Build a tiny causal language model offline: a byte-level BPE tokenizer trained on a few
sentences and a 2-layer Llama with random (seeded) weights, saved as a Hugging Face model
directory (``save_pretrained``). It generates nonsense, deterministically: tests and the LLM
benchmark serve it with the ``text_generation`` handler, no model hub needed.

    .venv/bin/python examples/tiny_llm.py /tmp/tiny-llm
    .venv/bin/torchd llm --model-dir /tmp/tiny-llm

Needs the ``llm`` extra (``pip install torchd[llm]``: transformers, tokenizers).
"""
from __future__ import annotations

import argparse
from pathlib import Path

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, this is torchd serving a tiny model",
    "language models generate text one token at a time",
    "a server answers requests from its clients as soon as it can",
    "continuous batching lets new sequences join between decode steps",
    "every stream gets the same tokens it would get alone",
    "the daemon pays for each step, never for each token of each request",
]
# Role headers in a plain-text template: enough to check that chat requests go through it.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def build_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # Only the sentences' own characters and their merges, not all 256 bytes: every token is
    # whole characters, so each token a random model picks decodes to text of its own (a byte
    # token that starts a character would hold its text back until the character ends).
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=["<unk>", "<s>", "</s>"])
    tokenizer.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", pad_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(directory: Path, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """Write the tokenizer and the model into ``directory``; returns it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                         intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    print(build(args.directory, args.layers, args.hidden))


if __name__ == "__main__":
    main()
