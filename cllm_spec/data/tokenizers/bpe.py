"""The ``bpe`` tokenizer: byte-level BPE from the ``tokenizers`` library.

Install it with ``cllm[bpe]``. Trained on the corpus with a target
``vocab_size`` (>= 261: the five specials first, so their ids are 0-4, then the
256 byte symbols, then merges; the result may be smaller than asked when the
corpus runs out of pairs). The pre-tokenizer is GPT-2's byte-level split without
a prefix space, so ``decode(encode(t)) == t``. Special-token spellings in the
text are encoded as ordinary text, never as the special ids, so raw text cannot
inject control tokens. ``to_dict`` stores the library's tokenizer JSON verbatim.
``tokenizers`` is imported only when a BPE tokenizer is trained or loaded;
without it an ``Unsupported`` error tells how to install it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from cllm_spec.checks import expect_positive_int
from cllm_spec.data.pieces import regroup
from cllm_spec.data.tokenizers.common import (
    CONTROL_IDS,
    FORMAT_VERSION,
    NUM_SPECIAL,
    SPECIAL_TOKENS,
    _decode_ids,
    _expect_dict,
    _expect_text,
)
from cllm_spec.errors import ConfigError, EmptyInputError, Unsupported

BPE_INSTALL_HINT = "pip install cllm[bpe]  (installs the `tokenizers` package)"


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
