"""``TextClassifier`` (``--handler text_classifier``): the class probabilities of a text.

Text in (a request's "data" or "body", bytes as UTF-8), cleaned as TorchServe cleans it (HTML
tags and entities removed, lower case, contractions expanded, accents and punctuation dropped),
split by the basic_english tokenizer, looked up with its bigrams in the source vocabulary. The
model is called as ``model(token_ids, offsets)`` (an EmbeddingBag text model); each text answers
a {label: probability} dict over every class, labelled through ``index_to_name.json``.

TorchServe's handler classifies only the first text of a batch; this one classifies each of
them, one EmbeddingBag bag per request.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from worker.ts.handler_utils.text_utils import ngrams_iterator
from worker.ts.torch_handler.text_handler import TextHandler
from worker.ts.utils.util import PredictionException, map_class_to_label


class TextClassifier(TextHandler):
    ngrams = 2

    def __init__(self) -> None:
        super().__init__()
        self._offsets: list[int] = [0]   # where each request's tokens start in the batch

    def preprocess(  # type: ignore[override]  # TorchServe's text handlers return a pair
            self, data: list[Any]) -> tuple[torch.Tensor, list[str]]:
        """(token ids of every request, concatenated; the first request's words)."""
        ids: list[int] = []
        first_words: list[str] = []
        self._offsets = []
        for idx, row in enumerate(data):
            words = self._tokenize(self.clean_text(request_text(idx, row)))
            self._offsets.append(len(ids))
            ids.extend(self.token_ids(ngrams_iterator(words, self.ngrams)))
            first_words = first_words if idx else words
        return torch.as_tensor(ids, dtype=torch.long, device=self.device), first_words

    def clean_text(self, text: str) -> str:
        text = self._remove_html_tags(text).lower()
        text = self._expand_contractions(text)
        text = self._remove_accented_characters(text)
        return self._remove_punctuation(text)

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        text_tensor, _ = data
        offsets = torch.as_tensor(self._offsets or [0], dtype=torch.long, device=self.device)
        return super().inference(text_tensor, offsets)

    def postprocess(self, data: torch.Tensor) -> list[dict[str, float]]:
        # softmax over classes: dim 1 of a batch of logits, dim 0 of a single row
        probabilities = F.softmax(data, dim=1 if data.dim() == 2 else 0)
        rows = probabilities.tolist()
        return map_class_to_label(rows if data.dim() == 2 else [rows], self.mapping)

    def get_insights(self, text_preprocess: Any, _: Any, target: Any = 0) -> list[Any]:
        raise PredictionException("torchd's text_classifier does not compute explanations "
                                  "(TorchServe's uses captum)", 501)


def request_text(idx: int, row: Any) -> str:
    """A request's text: its "data" or "body" value (a bare value from an envelope as is)."""
    value = (row.get("data") or row.get("body")) if isinstance(row, dict) else row
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PredictionException(f"input of request {idx} is not UTF-8 text", 400) from exc
    if not isinstance(value, str):
        raise PredictionException(f"input of request {idx} is not text "
                                  f"(got {type(value).__name__})", 400)
    return value
