"""Training throughput of ``cllm train`` with 1 and 2 worker threads and 1 and 2
MPI ranks, on the numpy backend.

Each configuration is one ``cllm train`` process (or ``mpiexec -launcher fork
-n K cllm train --set parallel.engine=mpi``) on the bundled corpus with the
default model (byte tokenizer, n_embd 128, 2 layers, 4 heads, T = 64) and
``B = 48`` sequences per step (4 rows in each of the 12 groups), for a fixed
number of steps with evaluation, samples and intermediate checkpoints off. The
throughput is the ``tokens_per_s`` of the run's ``"parallel"`` metrics row: the
tokens of every step over the training loop's wall time (data preparation,
start-up and the final evaluation excluded). Runs are interleaved (round r of
every configuration, then round r + 1) so that a change in the machine's load
hits all configurations alike; the table reports the median of the rounds and
each configuration's ratio to its 1-worker (1-rank) counterpart.

    python benchmarks/parallel.py                  # 3 rounds of 40 steps
    python benchmarks/parallel.py --rounds 5 --steps 60 --markdown

The load average is printed before and after: other work on the machine slows
the 2-worker runs most, since they need both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VENV_BIN = Path(sys.executable).parent
MPIEXEC = shutil.which(
    "mpiexec", path=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])
)
CLLM = [sys.executable, "-m", "cllm_spec.cli", "train"]


@dataclass(frozen=True)
class Setup:
    name: str
    engine: str  # threads | mpi
    n: int  # worker threads or ranks


SETUPS = (
    Setup("threads, 1 worker", "threads", 1),
    Setup("threads, 2 workers", "threads", 2),
    Setup("mpi, 1 rank", "mpi", 1),
    Setup("mpi, 2 ranks", "mpi", 2),
)


def overrides(steps: int, batch: int, out: Path, setup: Setup) -> list[str]:
    fields = {
        "train.backend": "numpy",
        "train.batch_size": batch,
        "train.steps": steps,
        "schedule.warmup_steps": 2,
        "train.eval_every": 0,
        "train.sample_every": 0,
        "train.checkpoint_every": 0,
        "train.out_dir": out,
        "parallel.engine": setup.engine,
        "parallel.workers": setup.n if setup.engine == "threads" else 1,
    }
    return [arg for k, v in fields.items() for arg in ("--set", f"{k}={v}")]


def run_once(setup: Setup, steps: int, batch: int) -> float:
    """tokens/s of one run (its "parallel" metrics row)."""
    with tempfile.TemporaryDirectory(prefix="cllm-bench-") as tmp:
        out = Path(tmp) / "run"
        cmd = [*CLLM, *overrides(steps, batch, out, setup)]
        if setup.engine == "mpi":
            if MPIEXEC is None:
                raise SystemExit("mpiexec not found: pip install 'cllm[mpi]'")
            cmd = [MPIEXEC, "-launcher", "fork", "-n", str(setup.n), *cmd]
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
        env.pop("CLLM_BACKEND", None)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        lines = (out / "metrics.jsonl").read_text().splitlines()
        (row,) = [r for r in map(json.loads, lines) if r["kind"] == "parallel"]
        return float(row["tokens_per_s"])


def blas_name() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown"
    libs = {
        f"{p['internal_api']} {p.get('version') or ''}".strip()
        for p in threadpool_info()
        if p["user_api"] == "blas"
    }
    return ", ".join(sorted(libs)) or "none found"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument(
        "--only", choices=("threads", "mpi"), help="only one engine's two setups"
    )
    args = ap.parse_args()
    setups = [s for s in SETUPS if args.only in (None, s.engine)]
    load_before = os.getloadavg()
    rates: dict[Setup, list[float]] = {s: [] for s in setups}
    started = time.monotonic()
    for r in range(args.rounds):
        for s in setups:
            rates[s].append(run_once(s, args.steps, args.batch))
            print(f"round {r + 1}: {s.name}: {rates[s][-1]:,.0f} tokens/s", flush=True)
    load_after = os.getloadavg()
    medians = {s: statistics.median(v) for s, v in rates.items()}
    base = {s.engine: medians[s] for s in setups if s.n == 1}
    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}; python "
        f"{platform.python_version()}, numpy {np.__version__} ({blas_name()})"
    )
    print(
        f"load average (1/5/15 min) before {load_before[0]:.2f}/"
        f"{load_before[1]:.2f}/{load_before[2]:.2f}, after {load_after[0]:.2f}/"
        f"{load_after[1]:.2f}/{load_after[2]:.2f}; "
        f"{time.monotonic() - started:.0f} s in all"
    )
    print(
        f"config: default model, B={args.batch}, T=64, {args.steps} steps, "
        f"float32, numpy backend, 1 BLAS thread; median of {args.rounds} rounds"
    )
    print()
    if args.markdown:
        print("| setup | tokens/s (median) | runs | vs 1 |")
        print("| --- | ---: | --- | ---: |")
    for s in setups:
        runs = ", ".join(f"{v:,.0f}" for v in rates[s])
        ratio = medians[s] / base[s.engine] if s.engine in base else float("nan")
        if args.markdown:
            print(f"| {s.name} | {medians[s]:,.0f} | {runs} | {ratio:.2f}x |")
        else:
            print(f"{s.name:>20}: {medians[s]:>9,.0f} tokens/s  ({runs})  {ratio:.2f}x")


if __name__ == "__main__":
    main()
