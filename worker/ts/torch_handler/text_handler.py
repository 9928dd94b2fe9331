"""``TextHandler``: the base of the text handlers: the source vocabulary and text clean-up.

The vocabulary is the archive's ``source_vocab.pt`` (or the manifest's ``sourceVocab``): a
``{token: index}`` dict saved with ``torch.save``, read with ``weights_only=True``. A pickled
torchtext ``Vocab`` (what TorchServe's example saves) is refused: reading it would mean
unpickling archive code, which torchd never does, and torchtext does not install here.
"""
from __future__ import annotations

import os
import re
import string
import unicodedata
from typing import Any

import torch

from worker.ts.handler_utils.text_utils import get_tokenizer
from worker.ts.torch_handler.base_handler import BaseHandler
from worker.ts.torch_handler.contractions import CONTRACTION_MAP

SOURCE_VOCAB_FILE = "source_vocab.pt"
UNKNOWN_TOKEN = "<unk>"
# HTML tags and character entities (&amp; &#39; &#x27;).
_MARKUP = re.compile(r"<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")
# Whole words only ("outlet's" is no "let's"), longest first.
_CONTRACTIONS = re.compile(
    r"\b(?:" + "|".join(re.escape(key) for key in sorted(CONTRACTION_MAP, key=len, reverse=True))
    + r")(?![\w'])", flags=re.IGNORECASE)
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


class TextHandler(BaseHandler):
    """Loads the source vocabulary; offers the clean-up steps TorchServe's text handlers use."""

    def __init__(self) -> None:
        super().__init__()
        self.source_vocab: dict[str, int] | None = None
        self.tokenizer = get_tokenizer("basic_english")
        self.input_text: Any = None
        self.lig: Any = None

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.initialized = False
        model_info = (self.manifest or {}).get("model", {})
        path = model_info.get("sourceVocab") or self.get_source_vocab_path(context)
        model_dir = context.system_properties.get("model_dir") or os.getcwd()
        self.source_vocab = load_source_vocab(os.path.join(model_dir, path))
        self.initialized = True

    def get_source_vocab_path(self, ctx: Any) -> str:
        model_dir = ctx.system_properties.get("model_dir") or os.getcwd()
        path = os.path.join(model_dir, SOURCE_VOCAB_FILE)
        if not os.path.isfile(path):
            raise RuntimeError(f"missing {SOURCE_VOCAB_FILE}: text handlers need the source "
                               f"vocabulary in the archive (--extra-files)")
        return path

    def _expand_contractions(self, text: str) -> str:
        def expand(match: re.Match) -> str:
            found = match.group(0)
            expanded = CONTRACTION_MAP[found.lower()]
            return found[0] + expanded[1:]
        return _CONTRACTIONS.sub(expand, text).replace("'", "")

    def _remove_accented_characters(self, text: str) -> str:
        return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")

    def _remove_html_tags(self, text: str) -> str:
        return _MARKUP.sub("", text)

    def _remove_punctuation(self, text: str) -> str:
        return text.translate(_NO_PUNCTUATION)

    def _remove_puncutation(self, text: str) -> str:
        """TorchServe's original spelling, kept for handlers that call it."""
        return self._remove_punctuation(text)

    def _tokenize(self, text: str) -> list[str]:
        return self.tokenizer(text)

    def get_word_token(self, input_tokens: list[str]) -> list[str]:
        """Tokens without the BPE space marker (``Ġ``)."""
        return [token.replace("\u0120", "") for token in input_tokens]

    def token_ids(self, tokens: Any) -> list[int]:
        """Vocabulary indices; unknown tokens take ``<unk>``'s index, else 0."""
        vocab = self.source_vocab or {}
        unknown = vocab.get(UNKNOWN_TOKEN, 0)
        return [vocab.get(token, unknown) for token in tokens]


def load_source_vocab(path: str) -> dict[str, int]:
    try:
        vocab = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # weights_only refuses anything but plain tensors and containers
        raise RuntimeError(f"{path} is not a {{token: index}} dict saved with torch.save (a "
                           f"pickled torchtext Vocab cannot be loaded without unpickling): "
                           f"{exc}") from exc
    if not isinstance(vocab, dict):
        raise RuntimeError(f"{path} holds a {type(vocab).__name__}, not a {{token: index}} dict")
    return {str(token): int(index) for token, index in vocab.items()}
