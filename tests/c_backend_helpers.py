"""Fixtures and helpers shared by the C backend's test modules.

Importing this module skips the importing test module when the extension is
not built.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_c import _lib  # noqa: E402

F32 = np.float32


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


@pytest.fixture
def threads() -> Iterator[None]:
    """Restore the thread count and SIMD level a test changes."""
    saved_threads, saved_simd = _lib.num_threads(), _lib.simd_level()
    yield
    _lib.set_num_threads(saved_threads)
    _lib.set_simd(saved_simd)


def _normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(F32)


def _flatten(result: Any) -> list[np.ndarray]:
    """Every array in a (possibly nested) result, in order."""
    if isinstance(result, np.ndarray):
        return [result]
    if isinstance(result, tuple | list):
        return [a for item in result for a in _flatten(item)]
    if isinstance(result, float | int):
        return [np.asarray(result)]
    return []
