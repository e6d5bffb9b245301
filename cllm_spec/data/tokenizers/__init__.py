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

One module per kind, each with its rules:

- :mod:`~cllm_spec.data.tokenizers.word`: lower-case whitespace words, and
  :class:`WordCounter`, their training one piece at a time;
- :mod:`~cllm_spec.data.tokenizers.vocab_file`: the word vocabulary as
  ``vocab.txt`` (:func:`write_vocab`, :func:`read_vocab`);
- :mod:`~cllm_spec.data.tokenizers.byte`: UTF-8 bytes;
- :mod:`~cllm_spec.data.tokenizers.bpe`: byte-level BPE through ``tokenizers``;
- :mod:`~cllm_spec.data.tokenizers.common`: the special ids, the
  :class:`Tokenizer` interface and the checks all of them share.

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

from collections.abc import Iterable
from typing import Any

from cllm_spec.checks import expect_choice
from cllm_spec.data.tokenizers.bpe import BPE_INSTALL_HINT, BpeTokenizer
from cllm_spec.data.tokenizers.byte import ByteTokenizer
from cllm_spec.data.tokenizers.common import (
    BOS_ID,
    CONTROL_IDS,
    EOS_ID,
    FORMAT_VERSION,
    MASK_ID,
    NUM_SPECIAL,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    Tokenizer,
    _expect_text,
)
from cllm_spec.data.tokenizers.vocab_file import read_vocab, write_vocab
from cllm_spec.data.tokenizers.word import VOCAB_HINT, WordCounter, WordTokenizer
from cllm_spec.errors import ConfigError

TOKENIZER_KINDS = ("word", "byte", "bpe")
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


__all__ = [
    "BOS_ID",
    "BPE_INSTALL_HINT",
    "CONTROL_IDS",
    "EOS_ID",
    "FORMAT_VERSION",
    "MASK_ID",
    "NUM_SPECIAL",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "TOKENIZER_KINDS",
    "UNK_ID",
    "VOCAB_HINT",
    "BpeTokenizer",
    "ByteTokenizer",
    "Tokenizer",
    "WordCounter",
    "WordTokenizer",
    "make_tokenizer",
    "make_tokenizer_from_pieces",
    "read_vocab",
    "tokenizer_from_dict",
    "write_vocab",
]
