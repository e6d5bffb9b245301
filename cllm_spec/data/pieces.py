"""Tokenizing text that arrives in pieces: where a tokenizer may cut its input.

A corpus is read in pieces that end anywhere (:meth:`cllm_spec.data.corpus.Corpus.
pieces`), and encoding each piece alone could split a word in two.
``regroup(kind, pieces)`` yields the same text in pieces that end at cuts that
are *safe* for the tokenizer ``kind``: a text ``a`` ends at a safe cut when::

    tokens(a + b) == tokens(a) + tokens(b)          for every text b

so the concatenated tokens of the regrouped pieces are the tokens of the whole
text, and a tokenizer trained on them counts exactly what it would count in the
whole text.

- byte: every cut is safe (a ``str`` never ends inside a character).
- word: after a whitespace character (``str.isspace``, the rule of
  ``str.split``). ``str.lower`` does not see across it either: its one context
  rule (capital sigma at the end of a word) looks across case-ignorable
  characters only, and no whitespace character is case-ignorable.
- bpe: before a space or LF that follows a non-whitespace character. The
  byte-level pre-tokenizer splits with GPT-2's pattern, whose alternatives
  (``'s ... | ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``) either
  hold whitespace only or no whitespace after their first character: the match
  holding the character before the cut ends there, and the matches from the cut
  on depend only on the text from the cut on (no look-behind). BPE then works
  inside each pre-token. ``str.isspace`` covers every Unicode White_Space
  character, so "not whitespace" here is not whitespace for the library either.

A run of text with no safe cut (a "word" longer than a piece) is carried into
the next piece until a cut comes, so memory is bounded by the longest such run.
``encode_pieces(tokenizer, pieces)`` yields the ids of each regrouped piece.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cllm_spec.data.tokenizers import Tokenizer

# A space or LF with a non-whitespace character before it (Python's \S is
# "not str.isspace()").
_BPE_CUT = re.compile(r"(?<=\S)[ \n]")
_BPE_WINDOW = 4096  # characters searched first, from the end, for a bpe cut


def safe_cut(kind: str, text: str) -> int:
    """The largest ``i`` such that ``text[:i]`` ends at a safe cut (0: none)."""
    if kind == "byte":
        return len(text)
    if kind == "word":
        if not text or text[-1].isspace():
            return len(text)
        # rsplit finds the last word from the end; whatever precedes it ends
        # with whitespace (or is empty).
        return len(text) - len(text.rsplit(None, 1)[-1])
    if kind == "bpe":
        return _bpe_cut(text)
    raise ValueError(f"safe_cut: unknown tokenizer kind {kind!r}")


def _bpe_cut(text: str) -> int:
    """Start of the last space or LF that follows a non-whitespace character."""
    window = _BPE_WINDOW
    while True:
        start = max(0, len(text) - window)
        last = None
        for last in _BPE_CUT.finditer(text, start):  # noqa: B007 (we want the last)
            pass
        if last is not None:
            return last.start()
        if start == 0:
            return 0
        window *= 4  # geometric: linear in the text even when cuts are rare


def regroup(kind: str, pieces: Iterable[str]) -> Iterator[str]:
    """The text of ``pieces`` again, in pieces that end at safe cuts for ``kind``."""
    carry = ""
    for piece in pieces:
        text = carry + piece if carry else piece
        cut = safe_cut(kind, text)
        if cut:
            yield text if cut == len(text) else text[:cut]
        carry = text[cut:]
    if carry:
        yield carry


def encode_pieces(tokenizer: Tokenizer, pieces: Iterable[str]) -> Iterator[np.ndarray]:
    """The ids of the text of ``pieces``, one array per regrouped piece."""
    for text in regroup(tokenizer.kind, pieces):
        yield tokenizer.encode(text)


__all__ = ["encode_pieces", "regroup", "safe_cut"]
