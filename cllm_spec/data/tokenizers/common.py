"""What every tokenizer shares: the special ids, the :class:`Tokenizer`
interface, and the checks of encode's text, decode's ids and a stored dict."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cllm_spec.checks import expect_ids
from cllm_spec.errors import ConfigError, DTypeError, ShapeError

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
