"""The peer benchmark's subprocess figures: ``cllm train`` end to end, and the
peak RSS of one training step in a fresh process per contestant."""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from peers_models import CONFIGS, Bench, make_trainer, set_threads

WARM_STEPS = 3  # metrics rows left out of the e2e rate: first-touch, caches


def run_train(
    bench: Bench, backend: str, threads: int, steps: int
) -> tuple[float, float]:
    """``cllm train`` for ``steps`` steps of ``bench``'s model on ``backend``.

    Returns ``(tokens, seconds)`` summed over the steps after the first
    WARM_STEPS, from the per-step rows of its ``metrics.jsonl``.
    """
    with tempfile.TemporaryDirectory(prefix="cllm-peers-") as tmp:
        out_dir = Path(tmp) / "run"
        sets = [
            f"train.backend={backend}",
            f"train.steps={steps}",
            "schedule.warmup_steps=1",  # below train.steps; speed does not care
            "train.eval_every=0",
            "train.sample_every=0",
            "train.checkpoint_every=0",
            # the run ends with an evaluation of every validation window; a
            # small validation tail keeps that short (training is unchanged)
            "data.val_fraction=0.002",
            # what the default (0) picks on a machine of `threads` cores: one
            # worker per core, each on one C thread or one BLAS thread
            f"parallel.workers={threads}",
            f"train.out_dir={out_dir}",
            *bench.train_overrides(),
        ]
        cmd = [sys.executable, "-m", "cllm_spec.cli", "train"]
        for item in sets:
            cmd += ["--set", item]
        env = {**os.environ, "CLLM_NUM_THREADS": str(threads)}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"cllm train failed:\n{done.stdout}\n{done.stderr}")
        rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").open()]
    rates = [r["tokens_per_s"] for r in rows if r["kind"] == "train"][WARM_STEPS:]
    # each row's rate is the step's tokens over the step's seconds
    return float(bench.tokens * len(rates)), sum(bench.tokens / r for r in rates)


# ------------------------------------------------------------------- rss ----
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset the high-water mark of RSS to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_child(config: str, name: str, threads: int) -> int:
    """In a fresh process: build ``name``'s model of ``config``, run two steps.

    Prints JSON with MiB: ``base`` (after imports), ``ready`` (model, optimizer
    and batch built, before the first step), ``step1`` and ``step2`` (the peak
    RSS during each step: the first allocates optimizer moments and, for
    torch.compile, compiles; the second is the steady state).
    """
    if name.startswith("torch"):
        import peers_torch  # noqa: F401 (torch's libraries count in its base)
    bench = CONFIGS[config]
    base = _status_kib("VmRSS")
    set_threads(name, threads)
    trainer = make_trainer(name, bench, bench.params())  # the buffer is copied
    gc.collect()
    ready = _status_kib("VmRSS")
    peaks = []
    for _ in range(2):
        resettable = _reset_peak()
        trainer.step()
        peaks.append(_status_kib("VmHWM"))
    if not resettable:  # the whole process's peak, setup included
        peaks = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss] * 2
    row: dict[str, Any] = {
        "base": base / 1024,
        "ready": ready / 1024,
        "step1": peaks[0] / 1024,
        "step2": peaks[1] / 1024,
        "peak_reset": resettable,
    }
    print(json.dumps(row))
    return 0


def rss_of_step(config: str, name: str, threads: int) -> dict[str, Any]:
    """Run :func:`rss_child` in a new interpreter; its JSON row."""
    script = Path(__file__).with_name("peers.py")
    cmd = [sys.executable, str(script), "--rss-child", config, name]
    cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"rss child {name} failed:\n{done.stderr}")
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return row
