"""Tokenizers: ``word`` (the seed's), ``byte`` and ``bpe`` (optional extra).

Every tokenizer turns text into ids and back::

    encode(text: str) -> ids: (N,) int32        N >= 0; "" gives an empty array
    decode(ids: (N,) int) -> str
    vocab_size: int                              V; every id lies in [0, V)
    kind: str                                    "word", "byte" or "bpe"
    to_dict() -> dict / from_dict(d)             JSON-ready, exact round trip

A corpus too large to hold whole is trained on and encoded in pieces:
``make_tokenizer_from_pieces(kind, pieces)`` (and each class's
``train_from_pieces``) gives exactly the tokenizer of the concatenated text, and
:func:`cllm_spec.data.pieces.encode_pieces` exactly its ids, wherever the pieces
end (they are regrouped at cuts where the tokens cannot change).

Special ids
===========

Ids 0-4 are the same five special tokens in every tokenizer (the seed's order)::

    0 <pad>   1 <unk>   2 <bos>   3 <eos>   4 <mask>

``encode`` never adds ``<bos>`` or ``<eos>`` (the seed's ``encode`` did not
either). ``decode`` drops ``<pad>``, ``<bos>``, ``<eos>`` and ``<mask>`` (control
tokens, as the seed's decode did) and renders ``<unk>`` as ``"<unk>"`` (word,
bpe) or U+FFFD (byte, where it stands for an unknown character). ``decode``
accepts any 1-D integer array or sequence of ints; an id outside ``[0, V)`` is an
``IdRangeError``, a non-integer array a ``DTypeError``, rank != 1 a ``ShapeError``.
``encode`` of a non-``str`` is a ``DTypeError``.

word
====

The seed's tokenizer: ``text.lower().split()``. Words are maximal runs of
non-whitespace after lower-casing; punctuation stays attached (``"Mr."``,
``"wife."``). Whitespace and case follow Python's ``str.split()`` and
``str.lower()``, which extend the seed's ASCII rules (space, tab, LF, CR;
``tolower``) to Unicode. A word spelled like a special (``"<unk>"``) maps to that
special's id, as in the seed, whose lookup included the specials.

Training (:meth:`WordTokenizer.train`) counts every word and keeps the words with
``count >= min_count`` sorted by count descending, then by token ascending (code
point order), so the vocabulary is a pure function of the text; the seed's
first-seen order depended on document order. ``max_vocab`` bounds ``V``
including the five specials (the seed's ``max_vocab_size`` did too); the rarest
words are cut. Unknown words encode to ``<unk>`` (1). ``decode`` joins words with
single spaces, so ``decode(encode(t)) == " ".join(t.lower().split())`` when
every word is in the vocabulary.

``vocab.txt`` (:func:`write_vocab`, :func:`read_vocab`): UTF-8, one line per id in
id order, ``token<TAB>count<LF>``; ids are implied by line order. The five
specials are the first five lines, written lower-case with their stored count
(0 after training, as the seed wrote them). The reader also accepts the seed's
upper-case spellings ``<PAD>`` ... ``<MASK>`` (and CRLF line ends), and rejects
with a ``ConfigError`` naming the line number: a line without exactly one TAB,
an empty token, a token containing whitespace or upper-case letters (it could
never be produced by ``encode``), a count that is not a non-negative decimal
integer, a duplicate token, a missing special, or bytes that are not UTF-8. An
empty file is an ``EmptyInputError``.

byte
====

UTF-8 bytes: byte ``b`` gets id ``5 + b``, so ``V = 261``. Lossless:
``decode(encode(t)) == t`` for every string. ``decode`` decodes the byte ids
with ``errors="replace"``, so ids that do not form valid UTF-8 (a sequence cut
inside a character, say) give U+FFFD instead of an error.

bpe
===

Byte-level BPE from the ``tokenizers`` library (install ``cllm[bpe]``), trained
on the corpus with a target ``vocab_size`` (>= 261: the five specials first, so
their ids are 0-4, then the 256 byte symbols, then merges; the result may be
smaller than asked when the corpus runs out of pairs). The pre-tokenizer is
GPT-2's byte-level split without a prefix space, so ``decode(encode(t)) == t``.
Special-token spellings in the text are encoded as ordinary text, never as the
special ids, so raw text cannot inject control tokens. ``to_dict`` stores the
library's tokenizer JSON verbatim. ``tokenizers`` is imported only when a BPE
tokenizer is trained or loaded; without it an ``Unsupported`` error tells how to
install it.

Stored form
===========

``to_dict()`` returns plain JSON types, for a checkpoint's metadata::

    {"kind": "word", "version": 1, "tokens": [...], "counts": [...]}
    {"kind": "byte", "version": 1}
    {"kind": "bpe", "version": 1, "tokenizer_json": "..."}

``tokenizer_from_dict(d)`` rebuilds the tokenizer, and ``from_dict(d).to_dict()``
equals ``d`` exactly. A dict of the wrong kind, version or shape is a
``ConfigError``.
"""

from __future__ import annotations

import importlib
import itertools
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from cllm_spec.checks import expect_choice, expect_ids, expect_positive_int
from cllm_spec.data.pieces import regroup
from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    ShapeError,
    Unsupported,
)
from cllm_spec.files import open_regular

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
MASK_ID = 4
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<mask>")
NUM_SPECIAL = len(SPECIAL_TOKENS)
# Dropped by decode: they carry structure, not text.
CONTROL_IDS = (PAD_ID, BOS_ID, EOS_ID, MASK_ID)
FORMAT_VERSION = 1
TOKENIZER_KINDS = ("word", "byte", "bpe")
BPE_INSTALL_HINT = "pip install cllm[bpe]  (installs the `tokenizers` package)"
VOCAB_HINT = (
    "each line is token<TAB>count; the first five lines are "
    "<pad> <unk> <bos> <eos> <mask>"
)


@runtime_checkable
class Tokenizer(Protocol):
    """What the trainer, the generator and the checkpoint need from a tokenizer."""

    @property
    def kind(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: np.ndarray | Sequence[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


def _expect_text(text: object) -> str:
    if not isinstance(text, str):
        raise DTypeError(f"text: expected a str, got {type(text).__name__}")
    return text


def _decode_ids(ids: object, vocab_size: int) -> np.ndarray:
    """Validate ids for decode: a 1-D integer array-like inside [0, V)."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DTypeError(f"ids: expected integers, got {arr.dtype}")
    if arr.ndim != 1:
        raise ShapeError(f"ids: expected rank 1, got shape {arr.shape}")
    expect_ids("ids", arr, vocab_size)
    return arr.astype(np.int64)


def _expect_dict(d: object, kind: str, keys: Iterable[str]) -> dict[str, Any]:
    """``d`` is a stored tokenizer of ``kind`` with exactly ``keys``."""
    if not isinstance(d, dict):
        raise ConfigError(f"tokenizer: expected a dict, got {type(d).__name__}")
    if d.get("kind") != kind:
        raise ConfigError(f"tokenizer: expected kind {kind!r}, got {d.get('kind')!r}")
    version = d.get("version")
    if type(version) is not int or version != FORMAT_VERSION:  # not True, not 1.0
        raise ConfigError(
            f"tokenizer {kind}: unsupported version {version!r}",
            hint=f"this release reads version {FORMAT_VERSION}",
        )
    want = {"kind", "version", *keys}
    if set(d) != want:
        raise ConfigError(
            f"tokenizer {kind}: expected keys {sorted(want)}, got {sorted(d)}"
        )
    return d


# --------------------------------------------------------------------------- word


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


def write_vocab(path: str | os.PathLike[str], tokenizer: WordTokenizer) -> None:
    """Write ``vocab.txt``: ``token<TAB>count`` per id, in id order, UTF-8, LF."""
    if not isinstance(tokenizer, WordTokenizer):
        raise DTypeError(
            f"tokenizer: expected a WordTokenizer, got {type(tokenizer).__name__}"
        )
    lines = (
        f"{t}\t{c}\n" for t, c in zip(tokenizer.tokens, tokenizer.counts, strict=True)
    )
    Path(path).write_text("".join(lines), encoding="utf-8", newline="\n")


def read_vocab(path: str | os.PathLike[str]) -> WordTokenizer:
    """Read ``vocab.txt`` (ours or the seed's); errors name the line number."""
    handle, _ = open_regular(path, "vocab.txt", ConfigError)  # no FIFO, no device
    with handle:
        raw = handle.read()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{bad_line}: not valid UTF-8", hint=VOCAB_HINT
        ) from exc
    lines = content.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final LF ends the last line; it does not start a new one
    if not lines:
        raise EmptyInputError(f"{path}: empty vocabulary file", hint=VOCAB_HINT)
    tokens: list[str] = []
    counts: list[int] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        token, count = _parse_vocab_line(path, lineno, line.removesuffix("\r"))
        if token in first_line:
            raise ConfigError(
                f"{path}:{lineno}: duplicate token {token!r} "
                f"(first on line {first_line[token]})",
                hint=VOCAB_HINT,
            )
        first_line[token] = lineno
        tokens.append(token)
        counts.append(count)
    if len(tokens) < NUM_SPECIAL:
        raise ConfigError(
            f"{path}: {len(tokens)} line(s), but the five specials alone need 5",
            hint=VOCAB_HINT,
        )
    return WordTokenizer(tokens, counts)


def _parse_vocab_line(
    path: str | os.PathLike[str], lineno: int, line: str
) -> tuple[str, int]:
    fields = line.split("\t")
    if len(fields) != 2:
        raise ConfigError(
            f"{path}:{lineno}: expected token<TAB>count, got {line!r}", hint=VOCAB_HINT
        )
    token, count_text = fields
    if lineno <= NUM_SPECIAL:
        token = _expect_special(path, lineno, token)
    else:
        problem = _token_problem(token)
        if problem is not None:
            raise ConfigError(f"{path}:{lineno}: {problem}", hint=VOCAB_HINT)
    if not (count_text.isascii() and count_text.isdigit()):
        raise ConfigError(
            f"{path}:{lineno}: count must be a non-negative integer, got "
            f"{count_text!r}",
            hint=VOCAB_HINT,
        )
    return token, int(count_text)


def _expect_special(path: str | os.PathLike[str], lineno: int, token: str) -> str:
    """The special of this line, in our spelling or the seed's upper-case one."""
    want = SPECIAL_TOKENS[lineno - 1]
    if token not in (want, want.upper()):
        raise ConfigError(
            f"{path}:{lineno}: expected the special {want!r}, got {token!r}",
            hint=VOCAB_HINT,
        )
    return want


# --------------------------------------------------------------------------- byte


class ByteTokenizer:
    """UTF-8 bytes: byte ``b`` is id ``5 + b``; ``V = 261``."""

    kind: ClassVar[str] = "byte"
    OFFSET: ClassVar[int] = NUM_SPECIAL

    @property
    def vocab_size(self) -> int:
        return self.OFFSET + 256

    def encode(self, text: str) -> np.ndarray:
        data = _expect_text(text).encode("utf-8")
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
        ids += self.OFFSET  # in place: one (N,) int32 array, not two
        return ids

    def decode(self, ids: np.ndarray | Sequence[int]) -> str:
        arr = _decode_ids(ids, self.vocab_size)
        arr = arr[~np.isin(arr, CONTROL_IDS)]
        # Each <unk> splits the byte stream, so a character is never glued
        # together across it.
        pieces = np.split(arr, np.flatnonzero(arr == UNK_ID))
        texts = [
            (p[p != UNK_ID] - self.OFFSET).astype(np.uint8).tobytes() for p in pieces
        ]
        return "\ufffd".join(t.decode("utf-8", errors="replace") for t in texts)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": FORMAT_VERSION}

    @classmethod
    def from_dict(cls, d: object) -> ByteTokenizer:
        _expect_dict(d, cls.kind, ())
        return cls()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ByteTokenizer):
            return NotImplemented
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "ByteTokenizer()"


# --------------------------------------------------------------------------- bpe


def _import_tokenizers() -> Any:
    """The ``tokenizers`` module, imported on first use (it is an optional extra)."""
    try:
        return importlib.import_module("tokenizers")
    except ImportError as exc:
        raise Unsupported(
            "the bpe tokenizer needs the optional package `tokenizers`, which is "
            "not installed",
            hint=BPE_INSTALL_HINT,
        ) from exc


class BpeTokenizer:
    """Byte-level BPE through the ``tokenizers`` library (optional extra)."""

    kind: ClassVar[str] = "bpe"
    MIN_VOCAB: ClassVar[int] = NUM_SPECIAL + 256

    def __init__(self, tokenizer_json: str) -> None:
        """Load the library's JSON; the specials must hold ids 0-4."""
        lib = _import_tokenizers()
        if not isinstance(tokenizer_json, str):
            raise ConfigError("tokenizer bpe: tokenizer_json must be a str")
        try:
            tok = lib.Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # the library raises its own exception types
            raise ConfigError(
                f"tokenizer bpe: unreadable tokenizer JSON: {exc}"
            ) from exc
        for i, name in enumerate(SPECIAL_TOKENS):
            if tok.token_to_id(name) != i:
                raise ConfigError(
                    f"tokenizer bpe: special {name!r} must have id {i}, "
                    f"has {tok.token_to_id(name)}"
                )
        # Text that spells "<pad>" stays text: raw input cannot inject control ids.
        tok.encode_special_tokens = True
        self._tok = tok
        self._json = tokenizer_json

    @classmethod
    def train(
        cls, text: str, vocab_size: int = 1024, min_frequency: int = 2
    ) -> BpeTokenizer:
        """Learn merges on ``text`` until ``vocab_size`` ids (specials included)."""
        return cls.train_from_pieces([_expect_text(text)], vocab_size, min_frequency)

    @classmethod
    def train_from_pieces(
        cls, pieces: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2
    ) -> BpeTokenizer:
        """:meth:`train` on the concatenation of ``pieces`` (cut anywhere); the
        library counts its pre-tokens one regrouped piece at a time."""
        vocab_size = expect_positive_int("vocab_size", vocab_size)
        min_frequency = expect_positive_int("min_frequency", min_frequency)
        if vocab_size < cls.MIN_VOCAB:
            raise ConfigError(
                f"vocab_size: expected >= {cls.MIN_VOCAB} (5 specials + 256 bytes), "
                f"got {vocab_size}"
            )
        lib = _import_tokenizers()
        tok = lib.Tokenizer(lib.models.BPE())
        tok.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = lib.decoders.ByteLevel()
        trainer = lib.trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=lib.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        seen = _TextSeen(regroup(cls.kind, pieces))
        tok.train_from_iterator(seen, trainer)
        if not seen.any_text:
            raise EmptyInputError(
                "bpe tokenizer: the text is empty",
                hint="train on a non-empty corpus (see read_corpus)",
            )
        return cls(tok.to_str())

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> np.ndarray:
        ids = self._tok.encode(_expect_text(text), add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int32).reshape(-1)

    def decode(self, ids: np.ndarray | Sequence[int]) -> str:
        arr = _decode_ids(ids, self.vocab_size)
        keep = arr[~np.isin(arr, CONTROL_IDS)].tolist()
        return str(self._tok.decode(keep, skip_special_tokens=False))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": FORMAT_VERSION,
            "tokenizer_json": self._json,
        }

    @classmethod
    def from_dict(cls, d: object) -> BpeTokenizer:
        d = _expect_dict(d, cls.kind, ("tokenizer_json",))
        return cls(d["tokenizer_json"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BpeTokenizer):
            return NotImplemented
        return self._json == other._json

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"BpeTokenizer(vocab_size={self.vocab_size})"


class _TextSeen:
    """Passes str pieces on and notes whether any had a non-whitespace character."""

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self.any_text = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        text = _expect_text(next(self._pieces))
        if not self.any_text and text and not text.isspace():
            self.any_text = True
        return text


# --------------------------------------------------------------------------- factory

_TRAIN_OPTIONS = {
    "word": ("max_vocab", "min_count"),
    "byte": (),
    "bpe": ("vocab_size", "min_frequency"),
}


def make_tokenizer(kind: str, text: str, **opts: Any) -> Tokenizer:
    """A tokenizer of ``kind`` trained on ``text`` (``byte`` needs no training).

    Options: word ``max_vocab``, ``min_count``; bpe ``vocab_size``,
    ``min_frequency``; byte none. An unknown kind or option is a ``ConfigError``.
    """
    _expect_kind_and_options(kind, opts)
    return make_tokenizer_from_pieces(kind, [_expect_text(text)], **opts)


def make_tokenizer_from_pieces(
    kind: str, pieces: Iterable[str], **opts: Any
) -> Tokenizer:
    """:func:`make_tokenizer` on the concatenation of ``pieces`` (cut anywhere),
    read one piece at a time (``byte`` reads none)."""
    _expect_kind_and_options(kind, opts)
    if kind == "word":
        return WordTokenizer.train_from_pieces(pieces, **opts)
    if kind == "bpe":
        return BpeTokenizer.train_from_pieces(pieces, **opts)
    return ByteTokenizer()


def _expect_kind_and_options(kind: str, opts: dict[str, Any]) -> None:
    kind = expect_choice("kind", kind, TOKENIZER_KINDS)
    unknown = sorted(set(opts) - set(_TRAIN_OPTIONS[kind]))
    if unknown:
        raise ConfigError(
            f"tokenizer {kind}: unknown option(s) {unknown}; "
            f"accepted: {list(_TRAIN_OPTIONS[kind])}"
        )


def tokenizer_from_dict(d: object) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`to_dict` output (dispatch on ``kind``)."""
    if not isinstance(d, dict):
        raise ConfigError(f"tokenizer: expected a dict, got {type(d).__name__}")
    kind = expect_choice("tokenizer kind", d.get("kind"), TOKENIZER_KINDS)
    classes: dict[str, Any] = {
        "word": WordTokenizer,
        "byte": ByteTokenizer,
        "bpe": BpeTokenizer,
    }
    tokenizer: Tokenizer = classes[kind].from_dict(d)
    return tokenizer
