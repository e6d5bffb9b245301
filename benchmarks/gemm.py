"""GFLOP/s of the C backend's GEMM on the model's shapes, as a fraction of peak.

Every linear layer of training is three products on M = B*T tokens:

    forward   Y  = X W^T     (M, OUT, IN)      cllm_sgemm(0, 1, ...)
    backward  dX = dY W      (M, IN, OUT)      cllm_sgemm(0, 0, ...)
    backward  dW = dY^T X    (OUT, IN, M)      cllm_sgemm(1, 0, ...)

for each layer shape (IN, OUT) of the three configs (production, small and
the default ``cllm train`` model). The GEMM is called directly (no Python
validation in the timed call), with 1 and 2 threads, and the table reports the
median and best GFLOP/s of ``--repeat`` calls and the best as a percentage of
the FMA peak (one core's; two threads are compared with twice that).

The peak moves with the clock the shared CPU grants (210-245 GFLOP/s here on
one core, from minute to minute), so the script measures it itself, with
``benchmarks/fma_peak.c`` compiled by gcc, before every shape and uses the
highest value it saw: the percentages are then conservative. ``--peak``
overrides the measurement.

``--clock thread`` times one-thread calls with the calling thread's CPU time
instead of wall time: on a loaded machine it leaves out the time the thread
waited for a core (not the cache misses other processes cause).

``--baseline lib.so`` times a second build of the backend in the same process,
alternating with the installed one, call by call: build it from another
checkout with

    cd backends/c/cllm_c/csrc && gcc -std=c99 -O3 -fno-math-errno -pthread \\
        -fPIC -shared -Wl,-Bsymbolic *.c -o /tmp/base.so -lm

    python benchmarks/gemm.py --repeat 7 --baseline /tmp/base.so
    python benchmarks/gemm.py --threads 1 --clock thread --configs small
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cffi import FFI
from cllm_c._ffi import ffi as new_ffi
from cllm_c._ffi import lib as new_lib
from cllm_c._lib import empty

CONFIGS = {
    # name: (M tokens, C, F, V)
    "production": (4096, 384, 1536, 30000),
    "small": (1024, 128, 512, 4096),
    "default": (3072, 128, 512, 256),
}

CDEF = """
int cllm_init(void);
int cllm_set_num_threads(int n);
int cllm_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
               const float *a, int64_t lda, const float *b, int64_t ldb,
               float *c, int64_t ldc, int accumulate, const float *bias);
"""


@dataclass
class Shape:
    config: str
    name: str
    trans_a: int
    trans_b: int
    m: int
    n: int
    k: int

    @property
    def flop(self) -> float:
        return 2.0 * self.m * self.n * self.k


def shapes(configs: list[str]) -> list[Shape]:
    out = []
    for config in configs:
        tokens, c, f, v = CONFIGS[config]
        layers = {
            "qkv": (c, 3 * c),
            "proj": (c, c),
            "fc1": (c, f),
            "fc2": (f, c),
            "lm": (c, v),
        }
        for layer, (fan_in, fan_out) in layers.items():
            out.append(Shape(config, f"{layer} fwd", 0, 1, tokens, fan_out, fan_in))
            out.append(Shape(config, f"{layer} dX", 0, 0, tokens, fan_in, fan_out))
            out.append(Shape(config, f"{layer} dW", 1, 0, fan_out, fan_in, tokens))
    return out


class Contestant:
    """One build of the backend's GEMM, called through cffi."""

    def __init__(self, name: str, ffi: Any, lib: Any, clock: str) -> None:
        self.name, self.ffi, self.lib = name, ffi, lib
        self.clock = time.thread_time if clock == "thread" else time.perf_counter

    def operands(self, s: Shape, rng: np.random.Generator) -> tuple[Any, ...]:
        a = rng.standard_normal(
            (s.k, s.m) if s.trans_a else (s.m, s.k), dtype=np.float32
        )
        b = rng.standard_normal(
            (s.n, s.k) if s.trans_b else (s.k, s.n), dtype=np.float32
        )
        c = empty((s.m, s.n), np.float32)  # allocated as linear_forward's output
        return a, b, c

    def call(self, s: Shape, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
        f = self.ffi

        def p(x: np.ndarray) -> Any:
            return f.cast("float *", x.ctypes.data)

        t0 = self.clock()
        status = self.lib.cllm_sgemm(
            s.trans_a,
            s.trans_b,
            s.m,
            s.n,
            s.k,
            p(a),
            a.shape[1],
            p(b),
            b.shape[1],
            p(c),
            s.n,
            0,
            f.NULL,
        )
        elapsed = self.clock() - t0
        if status != 0:
            raise RuntimeError(f"{self.name}: cllm_sgemm returned {status}")
        return elapsed


class Peak:
    """One core's float32 FMA peak, measured with fma_peak.c; the best seen."""

    def __init__(self, fixed: float) -> None:
        self.best, self.fixed, self.binary = fixed, fixed > 0, ""
        if not self.fixed:
            source = Path(__file__).with_name("fma_peak.c")
            self.binary = os.path.join(tempfile.mkdtemp(), "fma_peak")
            flags = ["-O2", "-mavx512f", "-mfma"]
            subprocess.run(["gcc", *flags, str(source), "-o", self.binary], check=True)

    def measure(self) -> float:
        if not self.fixed:
            out = subprocess.run([self.binary], capture_output=True, text=True).stdout
            found = re.search(r"([0-9.]+) GFLOP/s", out)
            if found:
                self.best = max(self.best, float(found.group(1)))
        return self.best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs", nargs="*", choices=sorted(CONFIGS), default=list(CONFIGS)
    )
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--peak", type=float, default=0.0, help="fix the peak instead")
    parser.add_argument("--clock", choices=["wall", "thread"], default="wall")
    parser.add_argument("--baseline", help="a second build (.so) to compare with")
    parser.add_argument("--only", nargs="*", default=None, help="e.g. 'lm fwd'")
    args = parser.parse_args()
    if args.clock == "thread" and args.threads != [1]:
        parser.error("--clock thread times one thread only: use --threads 1")

    contestants = [Contestant("new", new_ffi, new_lib, args.clock)]
    if args.baseline:
        ffi = FFI()
        ffi.cdef(CDEF)
        lib = ffi.dlopen(os.path.abspath(args.baseline))
        lib.cllm_init()
        contestants.append(Contestant("base", ffi, lib, args.clock))
    peak = Peak(args.peak)
    rng = np.random.default_rng(0)
    loads = [os.getloadavg()[0]]
    rows: list[tuple[Shape, int, dict[str, list[float]]]] = []
    for s in shapes(args.configs):
        if args.only and s.name not in args.only:
            continue
        ops = contestants[0].operands(s, rng)
        for nt in args.threads:
            peak.measure()
            times: dict[str, list[float]] = {con.name: [] for con in contestants}
            for con in contestants:
                con.lib.cllm_set_num_threads(nt)
                con.call(s, *ops)  # warm up: packing buffers, pages, pool threads
            for _ in range(args.repeat):
                for con in contestants:
                    con.lib.cllm_set_num_threads(nt)
                    times[con.name].append(con.call(s, *ops))
            rows.append((s, nt, times))
            best = {k: f"{s.flop / min(v) / 1e9:.1f}" for k, v in times.items()}
            print(f"{s.config} {s.name} x{nt}: {best}", flush=True)
    loads.append(os.getloadavg()[0])
    top = peak.measure()
    print(
        f"\nclock {args.clock}; FMA peak, one core: {top:.1f} GFLOP/s (best seen); "
        f"1-minute load {loads[0]:.2f} -> {loads[1]:.2f}\n"
    )
    head = "| config | shape | M | N | K | thr |"
    for con in contestants:
        head += f" {con.name} median | {con.name} best | {con.name} % peak |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for s, nt, times in rows:
        row = f"| {s.config} | {s.name} | {s.m} | {s.n} | {s.k} | {nt} |"
        for con in contestants:
            ts = times[con.name]
            best = s.flop / min(ts) / 1e9
            row += f" {s.flop / statistics.median(ts) / 1e9:.1f} | {best:.1f} |"
            row += f" {100 * best / (top * nt):.0f}% |"
        print(row)


if __name__ == "__main__":
    main()
