"""The ``byte`` tokenizer: UTF-8 bytes, lossless, no training.

Byte ``b`` gets id ``5 + b``, so ``V = 261``. Lossless: ``decode(encode(t)) ==
t`` for every string. ``decode`` decodes the byte ids with ``errors="replace"``,
so ids that do not form valid UTF-8 (a sequence cut inside a character, say)
give U+FFFD instead of an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from cllm_spec.data.tokenizers.common import (
    CONTROL_IDS,
    FORMAT_VERSION,
    NUM_SPECIAL,
    UNK_ID,
    _decode_ids,
    _expect_dict,
    _expect_text,
)


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
