"""This machine's physical bounds, measured for the peer benchmark (``peers.py``).

Two small C loops, compiled with the system's C compiler at benchmark time and
loaded with ctypes, each run on 1 or more pthreads:

* FMA peak: every thread keeps 16 independent chains of vector FMAs
  ``a = a * m + c`` in registers (AVX-512 when the CPU has it, else AVX2+FMA),
  enough to cover the FMA latency on both FMA ports. One FMA on W float32
  lanes counts 2 W FLOP. No memory is touched, so this is the arithmetic
  roof of a float32 matrix product.
* streaming-read bandwidth: every thread sums its contiguous share of a large
  float32 array (``--bw-mib``, 1 GiB by default, far beyond the caches) with
  four vector accumulators; bytes read / seconds. This is the roof of batch-1
  decoding, which must read every weight once per token.

Both report the best of many short runs: a bound is what the machine can
reach, and on a shared machine most runs are slowed by other people's work
(short runs are likelier to find the cores and the memory bus quiet).
"""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

_SOURCE = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>

typedef struct { int64_t iters; const float *x; int64_t n; double out; } job_t;

__attribute__((target("avx512f")))
static void *fma512(void *arg) {
    job_t *j = (job_t *)arg;
    const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-6f);
    __m512 a[16];
    for (int k = 0; k < 16; k++) a[k] = _mm512_set1_ps((float)k);
    for (int64_t i = 0; i < j->iters; i++) {
#pragma GCC unroll 16
        for (int k = 0; k < 16; k++) a[k] = _mm512_fmadd_ps(a[k], m, c);
    }
    __m512 s = a[0];
    for (int k = 1; k < 16; k++) s = _mm512_add_ps(s, a[k]);
    j->out = _mm512_reduce_add_ps(s);
    return 0;
}

__attribute__((target("avx2,fma")))
static void *fma256(void *arg) {
    job_t *j = (job_t *)arg;
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
    __m256 a[16];
    for (int k = 0; k < 16; k++) a[k] = _mm256_set1_ps((float)k);
    for (int64_t i = 0; i < j->iters; i++) {
#pragma GCC unroll 16
        for (int k = 0; k < 16; k++) a[k] = _mm256_fmadd_ps(a[k], m, c);
    }
    float t[8];
    __m256 s = a[0];
    for (int k = 1; k < 16; k++) s = _mm256_add_ps(s, a[k]);
    _mm256_storeu_ps(t, s);
    j->out = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
    return 0;
}

__attribute__((target("avx512f")))
static void *sum512(void *arg) {
    job_t *j = (job_t *)arg;
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 64 <= j->n; i += 64) {
        s0 = _mm512_add_ps(s0, _mm512_loadu_ps(j->x + i));
        s1 = _mm512_add_ps(s1, _mm512_loadu_ps(j->x + i + 16));
        s2 = _mm512_add_ps(s2, _mm512_loadu_ps(j->x + i + 32));
        s3 = _mm512_add_ps(s3, _mm512_loadu_ps(j->x + i + 48));
    }
    double r = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1),
                                                  _mm512_add_ps(s2, s3)));
    for (; i < j->n; i++) r += j->x[i];
    j->out = r;
    return 0;
}

__attribute__((target("avx2")))
static void *sum256(void *arg) {
    job_t *j = (job_t *)arg;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= j->n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(j->x + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(j->x + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(j->x + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(j->x + i + 24));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    double r = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
    for (; i < j->n; i++) r += j->x[i];
    j->out = r;
    return 0;
}

int vector_lanes(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 16;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 8;
    return 0;
}

/* Runs fn on nt threads (nt <= 64): FMA chains when x is NULL, else sums. */
double run(int nt, int64_t iters, const float *x, int64_t n) {
    job_t jobs[64];
    pthread_t tid[64];
    int wide = vector_lanes() == 16;
    void *(*fn)(void *) = x ? (wide ? sum512 : sum256) : (wide ? fma512 : fma256);
    int64_t share = n / nt;
    for (int t = 0; t < nt; t++) {
        jobs[t].iters = iters;
        jobs[t].x = x ? x + t * share : 0;
        jobs[t].n = t == nt - 1 ? n - t * share : share;
        pthread_create(&tid[t], 0, fn, &jobs[t]);
    }
    double total = 0;
    for (int t = 0; t < nt; t++) {
        pthread_join(tid[t], 0);
        total += jobs[t].out;
    }
    return total;
}
"""

_CHAINS = 16


def _load() -> ctypes.CDLL:
    """Compile the loops into a temporary shared library and load it."""
    tmp = Path(tempfile.mkdtemp(prefix="cllm-peers-"))
    src, lib = tmp / "bounds.c", tmp / "bounds.so"
    src.write_text(_SOURCE)
    cmd = ["cc", "-O2", "-shared", "-fPIC", "-pthread", str(src), "-o", str(lib)]
    subprocess.run(cmd, check=True, capture_output=True)
    dll = ctypes.CDLL(str(lib))
    dll.run.restype = ctypes.c_double
    dll.run.argtypes = [
        ctypes.c_int,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int64,
    ]
    dll.vector_lanes.restype = ctypes.c_int
    return dll


class Machine:
    """Measured FMA peak (GFLOP/s) and streaming-read bandwidth (GB/s)."""

    def __init__(self) -> None:
        self._lib = _load()
        self.lanes = int(self._lib.vector_lanes())
        if self.lanes == 0:
            raise RuntimeError("the bounds need a CPU with AVX2+FMA or AVX-512")

    @property
    def isa(self) -> str:
        return "avx512" if self.lanes == 16 else "avx2+fma"

    def fma_gflops(self, threads: int, seconds: float = 0.05, runs: int = 20) -> float:
        """Best FLOP rate of ``threads`` threads, each running FMA chains."""
        flop_per_iter = 2 * self.lanes * _CHAINS
        iters = 1_000_000
        start = time.perf_counter()
        self._lib.run(threads, iters, None, 0)
        per_iter = (time.perf_counter() - start) / iters
        iters = max(int(seconds / per_iter), 1000)
        best = 0.0
        for _ in range(runs):
            start = time.perf_counter()
            self._lib.run(threads, iters, None, 0)
            elapsed = time.perf_counter() - start
            best = max(best, threads * iters * flop_per_iter / elapsed / 1e9)
        return best

    def read_gbs(self, threads: int, mib: int = 1024, runs: int = 10) -> float:
        """Best rate at which ``threads`` threads read a ``mib`` MiB array."""
        x = np.ones(mib * (1 << 20) // 4, dtype=np.float32)  # faulted in here
        ptr = x.ctypes.data
        self._lib.run(threads, 0, ptr, x.size)  # warm the page tables
        best = 0.0
        for _ in range(runs):
            start = time.perf_counter()
            total = self._lib.run(threads, 0, ptr, x.size)
            elapsed = time.perf_counter() - start
            if abs(total - x.size) > 1e-3 * x.size:  # it really read every element
                raise RuntimeError(f"read loop summed {total}, expected {x.size}")
            best = max(best, x.nbytes / elapsed / 1e9)
        return best
