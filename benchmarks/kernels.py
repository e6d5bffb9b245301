"""Per-kernel speed of the C backend against the NumPy reference, side by side.

Both backends run in this one process on the same float32 inputs, shaped like
the production model (B*T = 4096 tokens, C = 384, F = 1536, V = 30000, NH = 12,
T = 128; AdamW over the model's 33.7M parameters). Each kernel is timed as the
public backend function (validation included), alternating c and numpy, and
the table reports the median of the repetitions as GFLOP/s (matrix products)
or GB/s (memory-bound kernels: bytes that must move at least once) and the
c/numpy speed ratio.

    python benchmarks/kernels.py                    # every kernel, 2 threads
    python benchmarks/kernels.py --threads 1 --repeat 7
    python benchmarks/kernels.py --only linear attention --markdown

``--threads`` sets both sides: the C backend's thread count and NumPy's BLAS
threads (through threadpoolctl when it is installed; NumPy's elementwise code
is single-threaded whatever this says).
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cllm_spec.protocols import AdamState, LinearCache
from cllm_spec.registry import get_backend

TOKENS, C, F, V, NH, T = 4096, 384, 1536, 30000, 12, 128
PARAMS = 33_736_704  # the production model's parameter count
F32 = np.float32


@dataclass
class Case:
    """One kernel: ``run(backend)`` and the work it does per call."""

    name: str
    group: str
    run: Callable[[Any], Any]
    amount: float  # FLOP or bytes per call
    unit: str  # "GFLOP/s" or "GB/s"


def _normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape, dtype=np.float32)).astype(F32)


def _linear_cases(rng: np.random.Generator) -> Iterator[Case]:
    shapes = {
        "qkv": (C, 3 * C),
        "attn proj": (C, C),
        "fc1": (C, F),
        "fc2": (F, C),
        "lm head": (C, V),
    }
    for label, (fan_in, fan_out) in shapes.items():
        x = _normal(rng, TOKENS, fan_in)
        w = _normal(rng, fan_out, fan_in, scale=fan_in**-0.5)
        b = None if label == "lm head" else _normal(rng, fan_out)
        dy = _normal(rng, TOKENS, fan_out)
        flop = 2.0 * TOKENS * fan_in * fan_out
        yield Case(
            f"linear fwd {label}",
            "linear",
            lambda be, x=x, w=w, b=b: be.linear_forward(x, w, b),
            flop,
            "GFLOP/s",
        )

        def backward(be: Any, x=x, w=w, b=b, dy=dy) -> Any:
            return be.linear_backward(dy, LinearCache(x, w, b is not None))

        yield Case(f"linear bwd {label}", "linear", backward, 2 * flop, "GFLOP/s")


def _attention_cases(rng: np.random.Generator) -> Iterator[Case]:
    b, hs = TOKENS // T, C // NH
    q, k, v = (_normal(rng, b, NH, T, hs) for _ in range(3))
    dout = _normal(rng, b, NH, T, hs)
    flop = 4.0 * b * NH * T * T * hs  # two (T x T x HS) products
    yield Case(
        "attention fwd",
        "attention",
        lambda be: be.attention_forward(q, k, v, causal=True),
        flop,
        "GFLOP/s",
    )
    caches: dict[str, Any] = {}

    def backward(be: Any) -> Any:
        if be.name not in caches:
            caches[be.name] = be.attention_forward(q, k, v, causal=True)[1]
        return be.attention_backward(dout, caches[be.name])

    yield Case("attention bwd", "attention", backward, 2 * flop, "GFLOP/s")


def _elementwise_cases(rng: np.random.Generator) -> Iterator[Case]:
    x = _normal(rng, TOKENS, C)
    weight, bias = _normal(rng, C), _normal(rng, C)
    dy = _normal(rng, TOKENS, C)
    row = 4.0 * TOKENS * C
    yield Case(
        "layernorm fwd",
        "layernorm",
        lambda be: be.layernorm_forward(x, weight, bias),
        3 * row,  # read x; write y and x_hat
        "GB/s",
    )
    ln: dict[str, Any] = {}

    def ln_backward(be: Any) -> Any:
        if be.name not in ln:
            ln[be.name] = be.layernorm_forward(x, weight, bias)[1]
        return be.layernorm_backward(dy, ln[be.name])

    yield Case("layernorm bwd", "layernorm", ln_backward, 3 * row, "GB/s")
    h = _normal(rng, TOKENS, F)
    dh = _normal(rng, TOKENS, F)
    act = 4.0 * TOKENS * F
    yield Case(
        "gelu fwd",
        "gelu",
        lambda be: be.activation_forward(h, "gelu"),
        2 * act,
        "GB/s",
    )
    acts: dict[str, Any] = {}

    def gelu_backward(be: Any) -> Any:
        if be.name not in acts:
            acts[be.name] = be.activation_forward(h, "gelu")[1]
        return be.activation_backward(dh, acts[be.name])

    yield Case("gelu bwd", "gelu", gelu_backward, 3 * act, "GB/s")


def _cross_entropy_cases(rng: np.random.Generator) -> Iterator[Case]:
    logits = _normal(rng, TOKENS, V, scale=2.0)
    targets = rng.integers(0, V, TOKENS).astype(np.int32)
    big = 4.0 * TOKENS * V
    yield Case(
        "softmax+CE fwd",
        "cross_entropy",
        lambda be: be.cross_entropy_forward(logits, targets),
        2 * big,  # read logits, write probs
        "GB/s",
    )
    caches: dict[str, Any] = {}
    dloss = np.array(1.0, F32)

    def backward(be: Any) -> Any:
        if be.name not in caches:
            caches[be.name] = be.cross_entropy_forward(logits, targets)[1]
        return be.cross_entropy_backward(dloss, caches[be.name])

    yield Case("softmax+CE bwd", "cross_entropy", backward, 2 * big, "GB/s")


def _adamw_cases(rng: np.random.Generator) -> Iterator[Case]:
    p = _normal(rng, PARAMS, scale=0.02)
    g = _normal(rng, PARAMS, scale=1e-3)
    m = _normal(rng, PARAMS, scale=1e-4)
    v = np.abs(_normal(rng, PARAMS, scale=1e-6))
    state = AdamState(m, v, np.zeros_like(v), 10)
    yield Case(
        "AdamW step",
        "adamw",
        lambda be: be.adamw_step(p, g, state, lr=3e-4, weight_decay=0.1),
        9 * 4.0 * PARAMS,  # read p g m v vmax, write p m v vmax
        "GB/s",
    )


CASES = {
    "linear": _linear_cases,
    "attention": _attention_cases,
    "elementwise": _elementwise_cases,
    "cross_entropy": _cross_entropy_cases,
    "adamw": _adamw_cases,
}


def _time(run: Callable[[Any], Any], backend: Any, pause: float) -> float:
    gc.collect()
    # Let the other side's idle threads settle first: OpenBLAS's workers
    # busy-wait for a while after a call (as this backend's pool does, more
    # briefly), and a spinning thread would steal a core from the next call.
    time.sleep(pause)
    start = time.perf_counter()
    result = run(backend)
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def measure(
    case: Case, backends: list[Any], repeat: int, pause: float
) -> dict[str, float]:
    """Median seconds per backend; calls alternate so drift hits both alike."""
    for be in backends:
        _time(case.run, be, 0.0)  # warm-up: page faults, caches built on first use
    times: dict[str, list[float]] = {be.name: [] for be in backends}
    for _ in range(repeat):
        for be in backends:
            times[be.name].append(_time(case.run, be, pause))
    return {name: statistics.median(ts) for name, ts in times.items()}


def _limit_blas(threads: int) -> Any:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(threads, user_api="blas")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--pause", type=float, default=0.2, help="seconds of idle before each call"
    )
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), default=None)
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    parser.add_argument(
        "--backend", default="c", help="the C backend's name or module (default: c)"
    )
    args = parser.parse_args(argv)
    c, ref = get_backend(args.backend), get_backend("numpy")
    c.set_num_threads(args.threads)
    limiter = _limit_blas(args.threads)
    rng = np.random.default_rng(0)
    info = c.build_info()
    print(
        f"# {platform.processor() or platform.machine()}, c: {info['simd']}, "
        f"{info['threads']} threads; numpy {np.__version__} "
        f"(BLAS threads {args.threads if limiter else 'default'}); "
        f"median of {args.repeat}"
    )
    header = ("kernel", "unit", "c", "numpy", "c/numpy")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|---|---|---:|---:|---:|")
    else:
        name, unit, *cols = header
        print(f"{name:<22} {unit:>8} " + " ".join(f"{h:>9}" for h in cols))
    for group in args.only or list(CASES):
        for case in CASES[group](rng):
            secs = measure(case, [c, ref], args.repeat, args.pause)
            rate = {name: case.amount / s / 1e9 for name, s in secs.items()}
            ratio = secs["numpy"] / secs["c"]
            row = (case.name, case.unit, rate["c"], rate["numpy"], ratio)
            rates = f"{row[2]:.1f} | {row[3]:.1f} | {row[4]:.2f}"
            if args.markdown:
                print(f"| {row[0]} | {row[1]} | {rates} |")
            else:
                cells = f"{row[2]:9.1f} {row[3]:9.1f} {row[4]:9.2f}"
                print(f"{row[0]:<22} {row[1]:>8} {cells}")
            del case
            gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
