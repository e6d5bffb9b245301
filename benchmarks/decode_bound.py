"""Batch-1 decoding of the C backend against this machine's streaming-read
bound, measured in alternation: where a decoded token's time goes.

A decoding step must read every weight once (``peers_models.
decode_bytes_per_token``), so its roof is the rate at which one or two cores
read memory. On a machine shared with other people's jobs that rate moves
from minute to minute (24-52 GB/s on two cores of the AMD EPYC of
RESULTS.md), and ``peers.py`` divides each decoding median by the best rate
seen at the start or the end of its run. Here every round measures, back to
back:

* bound: the read rate now (``peers_machine``: the best of a few sums over
  a 1 GiB array, by ``--threads`` threads);
* step: ``cllm_model_decode``, the C call that runs the whole model for one
  token (timed around each call);
* token: ``cllm_spec.generate.generate`` per token (greedy; 16-token prompt,
  128 new tokens, as ``peers.py`` decodes), the C call plus the sampling, the
  Python around them and the call's one check of the params for NaN and inf
  (a scan of every weight: ~40 us a token on production, counted here with
  Python's share).

Each is reported as weight bytes per token x tokens/s, and as a share of the
same round's bound; the table gives medians over the rounds. The gap between
"step" and the bound is the C code's (the matrix-vector stream, attention over
the cache, the small kernels); the gap between "token" and "step" is
Python's.

    python benchmarks/decode_bound.py              # production, 1 and 2 threads
    python benchmarks/decode_bound.py --configs default small --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cllm_c.decode  # noqa: E402
from peers_machine import Machine  # noqa: E402
from peers_models import (  # noqa: E402
    CONFIGS,
    DECODE_NEW,
    DECODE_PROMPT,
    decode_bytes_per_token,
    decode_config,
    make_decoder,
)
from profile_step import Clock, TimedLib  # noqa: E402

from cllm_spec.registry import get_backend  # noqa: E402


def one_round(decoder: Any, prompt: np.ndarray, clock: Clock) -> tuple[float, float]:
    """(seconds inside cllm_model_decode, seconds of the whole call) of one
    generation of DECODE_NEW tokens, prefill included."""
    clock.seconds.clear()
    start = time.perf_counter()
    decoder.generate(prompt, DECODE_NEW)
    return clock.seconds["c", "cllm_model_decode"], time.perf_counter() - start


def measure(
    config: str, threads: int, rounds: int, machine: Machine, bw_mib: int = 1024
) -> dict[str, Any]:
    """Medians over ``rounds`` of the bound, the step and the token (GB/s), the
    bound read from a ``bw_mib`` MiB array."""
    get_backend("c").set_num_threads(threads)
    bench = CONFIGS[config]
    cfg = decode_config(bench)
    decoder = make_decoder("c", cfg, bench.params(cfg))
    prompt = np.random.default_rng(7).integers(0, cfg.vocab_size, DECODE_PROMPT)
    weight_bytes = decode_bytes_per_token(cfg)
    clock = Clock()
    real = cllm_c.decode.lib
    cllm_c.decode.lib = TimedLib(real, clock)
    try:
        decoder.generate(prompt, DECODE_NEW)  # warm: mappings, huge pages
        rows = []
        for _ in range(rounds):
            bound = machine.read_gbs(threads, bw_mib, runs=3)
            c_s, call_s = one_round(decoder, prompt, clock)
            # the prefill's call reads the weights once too: DECODE_NEW calls
            step = weight_bytes * DECODE_NEW / c_s / 1e9
            token = weight_bytes * DECODE_NEW / call_s / 1e9
            python_us = (call_s - c_s) / DECODE_NEW * 1e6
            rows.append((bound, step, token, step / bound, token / bound, python_us))
    finally:
        cllm_c.decode.lib = real
    cols = ("bound", "step", "token", "step_share", "token_share", "python_us")
    med = {k: statistics.median(r[i] for r in rows) for i, k in enumerate(cols)}
    return {"config": config, "threads": threads, "mb": weight_bytes / 1e6, **med}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="*", default=["production"], choices=CONFIGS)
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bw-mib", type=int, default=1024, help="bandwidth array size")
    args = parser.parse_args()
    machine = Machine()
    load0 = os.getloadavg()[0]
    print(
        "| config | threads | weights MB | bound GB/s | step GB/s | step share "
        "| token GB/s | token share | Python us/token |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for config in args.configs:
        for threads in args.threads:
            r = measure(config, threads, args.rounds, machine, args.bw_mib)
            print(
                f"| {config} | {threads} | {r['mb']:.1f} | {r['bound']:.1f} "
                f"| {r['step']:.1f} | {r['step_share']:.0%} | {r['token']:.1f} "
                f"| {r['token_share']:.0%} | {r['python_us']:.0f} |",
                flush=True,
            )
    print(f"\n1-minute load {load0:.2f} -> {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
