"""Decoding's weights on transparent huge pages (csrc/cpu.c, cllm_huge_pages).

The call is advice: it must never change memory's contents or fail loudly,
whatever range it is given, and the decoding session must make it for large
weights (on 4 KiB pages a production decoding step ran ~40% slower)."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")

import cllm_c.decode as decode_module  # noqa: E402
from cllm_c._lib import ffi, lib  # noqa: E402

from cllm_spec.model import ModelConfig, init_kv_caches, init_params  # noqa: E402

MiB = 1 << 20


def _pointer(a: np.ndarray):  # type: ignore[no-untyped-def]
    return ffi.cast("char *", a.ctypes.data)


def _huge_kib_at(address: int) -> int:
    """AnonHugePages (KiB) of the mapping of this process that holds ``address``."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:  # a mapping's first line: lo-hi perms ...
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def _thp_possible() -> bool:
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return setting.exists() and "[never]" not in setting.read_text()


@pytest.mark.parametrize(
    "offset, size",
    [(0, 0), (0, 4096), (3, 2 * MiB), (1, 5 * MiB + 7), (0, 6 * MiB)],
)
def test_advice_never_changes_contents(offset, size):
    raw = np.random.default_rng(size).integers(0, 256, 8 * MiB, dtype=np.uint8)
    want = raw.copy()
    got = lib.cllm_huge_pages(_pointer(raw) + offset, size)
    assert got in (0, 1)
    if size < 2 * MiB + offset:  # no whole aligned 2 MiB page inside
        assert got == 0
    np.testing.assert_array_equal(raw, want)


def test_null_is_refused_quietly():
    assert lib.cllm_huge_pages(ffi.NULL, 64 * MiB) == 0


@pytest.mark.skipif(not _thp_possible(), reason="transparent huge pages are off here")
def test_collapse_puts_the_range_on_huge_pages():
    # private anonymous memory nobody asked huge pages for, touched on 4 KiB
    # pages where THP is "madvise" (the kernel may have used 2 MiB ones under
    # "always": then the collapse finds them and the check below holds too)
    area = mmap.mmap(-1, 64 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    a = np.frombuffer(area, dtype=np.float32)
    a[:] = 1.0
    if lib.cllm_huge_pages(_pointer(a), a.nbytes) == 0:
        pytest.skip("this kernel does not collapse (MADV_COLLAPSE is Linux 6.1+)")
    interior = (a.ctypes.data + 2 * MiB) // (2 * MiB) * (2 * MiB)
    assert _huge_kib_at(interior) >= 60 * 1024  # the aligned interior: >= 62 MiB
    assert float(a.sum()) == a.size
    del a
    area.close()


def test_decoding_session_asks_for_huge_pages_from_its_threshold(monkeypatch):
    calls: list[int] = []

    class Spy:
        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            real = getattr(lib, name)
            if name != "cllm_huge_pages":
                return real

            def spy(p, n):  # type: ignore[no-untyped-def]
                calls.append(n)
                return real(p, n)

            return spy

    monkeypatch.setattr(decode_module, "lib", Spy())
    small = ModelConfig(13, 8, 1, 1, 8)
    flat = init_params(small, np.random.default_rng(0), np.float32)
    caches = init_kv_caches(cllm_c, small, 1, np.float32)
    assert decode_module.decode_session(small, flat, caches) is not None
    assert calls == []  # a few pages: not worth a call
    monkeypatch.setattr(decode_module, "HUGE_PAGES_MIN_BYTES", flat.nbytes)
    decode_module.decode_session(small, flat, caches)
    assert calls == [flat.nbytes]
