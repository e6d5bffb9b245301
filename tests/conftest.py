"""Fixtures shared by the project's own tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# Helper modules whose functions assert on a test's behalf: rewritten like a
# test module, so a failing assert there shows the values it compared.
pytest.register_assert_rewrite(
    "tests.c_backend_helpers",
    "tests.cli_train_helpers",
    "tests.parallel_coordinator_helpers",
    "tests.train_parallel_helpers",
)


@pytest.fixture
def simd_levels() -> Iterator[list[str]]:
    """The C backend's SIMD levels this CPU has, scalar included; restores the
    level and the thread count the test found."""
    cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")
    from cllm_c import _lib

    saved, threads = _lib.simd_level(), cllm_c.num_threads()
    yield [v for v in ("scalar", "avx2+fma", "avx512") if _lib.set_simd(v) == v]
    _lib.set_simd(saved)
    cllm_c.set_num_threads(threads)
