"""The ``word`` tokenizer, the seed's: ``text.lower().split()``.

Words are maximal runs of non-whitespace after lower-casing; punctuation stays
attached (``"Mr."``, ``"wife."``). Whitespace and case follow Python's
``str.split()`` and ``str.lower()``, which extend the seed's ASCII rules (space,
tab, LF, CR; ``tolower``) to Unicode. A word spelled like a special
(``"<unk>"``) maps to that special's id, as in the seed, whose lookup included
the specials.

Training (:meth:`WordTokenizer.train`) counts every word and keeps the words with
``count >= min_count`` sorted by count descending, then by token ascending (code
point order), so the vocabulary is a pure function of the text; the seed's
first-seen order depended on document order. ``max_vocab`` bounds ``V``
including the five specials (the seed's ``max_vocab_size`` did too); the rarest
words are cut. Unknown words encode to ``<unk>`` (1). ``decode`` joins words with
single spaces, so ``decode(encode(t)) == " ".join(t.lower().split())`` when
every word is in the vocabulary.

The vocabulary's file form, ``vocab.txt``, is in
:mod:`cllm_spec.data.tokenizers.vocab_file`.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from cllm_spec.checks import expect_positive_int
from cllm_spec.data.pieces import regroup
from cllm_spec.data.tokenizers.common import (
    CONTROL_IDS,
    FORMAT_VERSION,
    NUM_SPECIAL,
    SPECIAL_TOKENS,
    UNK_ID,
    _decode_ids,
    _expect_dict,
    _expect_text,
)
from cllm_spec.errors import ConfigError, EmptyInputError

VOCAB_HINT = (
    "each line is token<TAB>count; the first five lines are "
    "<pad> <unk> <bos> <eos> <mask>"
)


class WordTokenizer:
    """Lower-case whitespace words; see the module docstring for the rules."""

    kind: ClassVar[str] = "word"

    def __init__(self, tokens: Sequence[str], counts: Sequence[int]) -> None:
        """``tokens[i]`` is the token of id ``i`` (the specials first)."""
        tokens = list(tokens)
        counts = list(counts)
        if len(tokens) != len(counts):
            raise ConfigError(
                f"word tokenizer: {len(tokens)} tokens but {len(counts)} counts"
            )
        problem = _word_vocab_problem(tokens, counts)
        if problem is not None:
            raise ConfigError(f"word tokenizer: {problem}", hint=VOCAB_HINT)
        self._tokens = tokens
        self._counts = [int(c) for c in counts]
        self._index = {tok: i for i, tok in enumerate(tokens)}

    @classmethod
    def train(
        cls, text: str, max_vocab: int | None = None, min_count: int = 1
    ) -> WordTokenizer:
        """Vocabulary of ``text``: specials, then words by count desc, token asc."""
        return cls.train_from_pieces([_expect_text(text)], max_vocab, min_count)

    @classmethod
    def train_from_pieces(
        cls, pieces: Iterable[str], max_vocab: int | None = None, min_count: int = 1
    ) -> WordTokenizer:
        """:meth:`train` on the concatenation of ``pieces`` (cut anywhere), which
        are counted one at a time, so the text is never held whole."""
        counter = WordCounter(max_vocab, min_count)
        for text in regroup(cls.kind, pieces):
            counter.add(text)
        return counter.tokenizer()[0]

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> tuple[str, ...]:
        """Token of each id, in id order."""
        return tuple(self._tokens)

    @property
    def counts(self) -> tuple[int, ...]:
        """Training count of each id (0 for the specials)."""
        return tuple(self._counts)

    def token_to_id(self, token: str) -> int:
        """Id of ``token``, or ``UNK_ID``."""
        return self._index.get(token, UNK_ID)

    def encode(self, text: str) -> np.ndarray:
        words = _expect_text(text).lower().split()
        # map() with a second iterable calls get(w, UNK_ID) without a Python
        # frame per word: the hot loop of data preparation.
        ids = map(self._index.get, words, itertools.repeat(UNK_ID))
        return np.fromiter(ids, dtype=np.int32, count=len(words))

    def decode(self, ids: np.ndarray | Sequence[int]) -> str:
        arr = _decode_ids(ids, self.vocab_size)
        return " ".join(self._tokens[i] for i in arr.tolist() if i not in CONTROL_IDS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": FORMAT_VERSION,
            "tokens": list(self._tokens),
            "counts": list(self._counts),
        }

    @classmethod
    def from_dict(cls, d: object) -> WordTokenizer:
        d = _expect_dict(d, cls.kind, ("tokens", "counts"))
        tokens, counts = d["tokens"], d["counts"]
        if not isinstance(tokens, list) or not isinstance(counts, list):
            raise ConfigError("tokenizer word: tokens and counts must be lists")
        return cls(tokens, counts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WordTokenizer):
            return NotImplemented
        return self._tokens == other._tokens and self._counts == other._counts

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


class _FirstSeen(dict[str, int]):
    """word -> its number in order of first appearance: 0, 1, 2, ..."""

    def __missing__(self, word: str) -> int:
        number = self[word] = len(self)
        return number


class WordCounter:
    """The word tokenizer's training, one piece of text at a time.

    ``add(text) -> numbers: (n,) uint32`` counts the words of ``text`` (pieces
    must end at safe cuts, see :func:`cllm_spec.data.pieces.regroup`) and
    returns each word's number, in order of first appearance over all pieces.
    ``tokenizer() -> (tok, remap: (W,) uint32)`` is :meth:`WordTokenizer.train`
    of all the text added, and ``remap[number]`` the id of that word in it
    (``<unk>`` for words cut from the vocabulary), so
    ``remap[add(text)] == tok.encode(text)``: a corpus is counted and encoded in
    one pass over its text, the numbers kept until the vocabulary is known.
    The options are checked at construction, before any text is read.
    """

    def __init__(self, max_vocab: int | None = None, min_count: int = 1) -> None:
        if max_vocab is not None:
            max_vocab = expect_positive_int("max_vocab", max_vocab)
            if max_vocab <= NUM_SPECIAL:
                raise ConfigError(
                    f"max_vocab: expected > {NUM_SPECIAL} (the specials plus at "
                    f"least one word), got {max_vocab}"
                )
        self._max_vocab = max_vocab
        self._min_count = expect_positive_int("min_count", min_count)
        self._numbers = _FirstSeen()
        self._counts = np.zeros(0, dtype=np.int64)  # (W,) by number

    def add(self, text: str) -> np.ndarray:
        words = _expect_text(text).lower().split()
        # __getitem__ runs in C; __missing__ (Python) only for a new word.
        numbers = map(self._numbers.__getitem__, words)
        ids = np.fromiter(numbers, dtype=np.uint32, count=len(words))
        seen = np.bincount(ids)
        if seen.size > self._counts.size:
            grown = np.zeros(len(self._numbers), dtype=np.int64)
            grown[: self._counts.size] = self._counts
            self._counts = grown
        self._counts[: seen.size] += seen
        return ids

    def tokenizer(self) -> tuple[WordTokenizer, np.ndarray]:
        if not self._numbers:
            raise EmptyInputError(
                "word tokenizer: the text has no words to build a vocabulary from",
                hint="train on a non-empty corpus (see read_corpus)",
            )
        words = list(self._numbers)  # in number order: dicts keep insertion order
        ranked = sorted(
            (
                (w, c)
                for w, c in zip(words, self._counts.tolist(), strict=True)
                if c >= self._min_count and w not in SPECIAL_TOKENS
            ),
            key=lambda wc: (-wc[1], wc[0]),
        )
        if self._max_vocab is not None:
            ranked = ranked[: self._max_vocab - NUM_SPECIAL]
        tokens = [*SPECIAL_TOKENS, *(w for w, _ in ranked)]
        tok = WordTokenizer(tokens, [0] * NUM_SPECIAL + [c for _, c in ranked])
        remap = np.fromiter(
            map(tok.token_to_id, words), dtype=np.uint32, count=len(words)
        )
        return tok, remap


def _word_vocab_problem(tokens: list[Any], counts: list[Any]) -> str | None:
    """First reason ``tokens``/``counts`` is not a valid word vocabulary, or None."""
    if tuple(tokens[:NUM_SPECIAL]) != SPECIAL_TOKENS:
        return f"ids 0-4 must be {list(SPECIAL_TOKENS)}, got {tokens[:NUM_SPECIAL]}"
    for i, (tok, count) in enumerate(zip(tokens, counts, strict=True)):
        problem = _token_problem(tok) or _count_problem(count)
        if problem is not None:
            return f"id {i}: {problem}"
    if len(set(tokens)) != len(tokens):
        dup = next(t for t, c in Counter(tokens).items() if c > 1)
        return f"duplicate token {dup!r}"
    return None


def _token_problem(tok: object) -> str | None:
    if not isinstance(tok, str) or not tok:
        return f"token must be a non-empty str, got {tok!r}"
    if len(tok.split()) != 1 or tok.split()[0] != tok:
        return f"token {tok!r} contains whitespace"
    if tok.lower() != tok:
        return f"token {tok!r} is not lower-case (encode could never produce it)"
    return None


def _count_problem(count: object) -> str | None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return f"count must be an int >= 0, got {count!r}"
    return None
