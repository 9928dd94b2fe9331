"""Tokenizing without torchtext: ``get_tokenizer`` and ``ngrams_iterator`` as TorchServe has them.

TorchServe's text handlers import these two names from ``ts.handler_utils.text_utils``; they behave
as torchtext's functions of the same names for the tokenizers listed in ``get_tokenizer``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

# Marks basic_english keeps as tokens of their own, and marks it drops.
_OWN_TOKEN_MARKS = ("'", ".", ",", "(", ")", "!", "?")
_DROPPED_MARKS = (";", ":")


def basic_english(line: str) -> list[str]:
    """Lower-case, split punctuation marks off as tokens, drop quotes, ``<br />``, ``;`` and
    ``:``, then split on whitespace."""
    line = line.lower().replace('"', "").replace("<br />", " ")
    for mark in _OWN_TOKEN_MARKS:
        line = line.replace(mark, f" {mark} ")
    for mark in _DROPPED_MARKS:
        line = line.replace(mark, " ")
    return line.split()


def get_tokenizer(tokenizer: str | None, language: str = "en") -> Callable[[str], list[str]]:
    """``None``: split on whitespace; ``"basic_english"``: :func:`basic_english`."""
    if tokenizer is None:
        return str.split
    if tokenizer == "basic_english":
        if language != "en":
            raise ValueError("basic_english only tokenizes English (language='en')")
        return basic_english
    raise ValueError(f"tokenizer {tokenizer!r} is not available without torchtext; "
                     f"use None or 'basic_english'")


def ngrams_iterator(token_list: Sequence[str], ngrams: int) -> Iterator[str]:
    """Every token, then every run of 2..ngrams neighbouring tokens joined by a space."""
    yield from token_list
    for n in range(2, ngrams + 1):
        for start in range(len(token_list) - n + 1):
            yield " ".join(token_list[start:start + n])
