"""The harness shared by the ``cllm train`` parallel test modules.

The runs are subprocesses on a tiny config of the numpy backend (named
explicitly: the bitwise claims are for a deterministic backend). ``B = 14``
rows cut into 12 groups (groups 0 and 1 hold 2 rows, the others one) and
``grad_accum = 2``, so every step reduces 24 group gradients in the fixed
order. An MPI job runs ``mpiexec -launcher fork`` (the ``mpich`` wheel's,
next to the venv's python) in its own session, killed whole if it hangs.

Failures are injected through a backend module written for the test: the
numpy backend, except that ``layernorm_forward`` misbehaves on its N-th call
(optionally only on one MPI rank, by ``PMI_RANK``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cllm_spec import checkpoint
from cllm_spec.data import read_default_corpus

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CLLM = [sys.executable, "-m", "cllm_spec.cli", "train"]
MPIEXEC = shutil.which(
    "mpiexec", path=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])
)
JOB_LIMIT = 120.0  # seconds: a run still going then is killed and the test fails
QUICK = 20.0  # seconds: a failure must end the run well before that


B, K, T, STEPS = 14, 2, 16, 5
TINY = {
    "train.backend": "numpy",
    "data.tokenizer": "byte",
    "model.n_embd": 16,
    "model.n_layer": 1,
    "model.n_head": 2,
    "model.block_size": T,
    "train.seq_len": T,
    "train.batch_size": B,
    "train.grad_accum": K,
    "train.steps": STEPS,
    "schedule.warmup_steps": 2,
    "train.eval_every": 0,
    "train.eval_batches": 2,
    "train.sample_every": 0,
    "train.checkpoint_every": 0,
}

FAULTY_BACKEND = '''"""The numpy backend; layernorm_forward fails at a call."""
import os
import threading
import time

import cllm_numpy
from cllm_spec.errors import ShapeError

MODE = os.environ.get("CLLM_FAULT_MODE", "none")
AT = int(os.environ.get("CLLM_FAULT_AT", "0"))
RANK = os.environ.get("CLLM_FAULT_RANK")  # None: every process
_lock = threading.Lock()
_calls = 0


def __getattr__(name):
    return getattr(cllm_numpy, name)


def layernorm_forward(*args, **kwargs):
    global _calls
    with _lock:
        _calls += 1
        n = _calls
    if n == AT and (RANK is None or os.environ.get("PMI_RANK") == RANK):
        if MODE == "raise":
            raise RuntimeError("injected kernel failure")
        if MODE == "typed":
            raise ShapeError("injected kernel failure")
        if MODE == "hang":
            time.sleep(120)
        if MODE == "exit":
            os._exit(1)
    return cllm_numpy.layernorm_forward(*args, **kwargs)
'''


# ============================================================== harness ====
class Run:
    """One ``cllm train`` process (or mpiexec job) and its run directory."""

    def __init__(self, out: Path, rc: int, stdout: str, stderr: str, s: float):
        self.out, self.rc, self.stdout, self.stderr = out, rc, stdout, stderr
        self.seconds = s

    def rows(self, kind: str) -> list[dict[str, Any]]:
        lines = (self.out / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["kind"] == kind]

    def trajectory(self) -> list[tuple[float, float, float, int]]:
        return [
            (r["loss"], r["grad_norm"], r["lr"], r["epoch"]) for r in self.rows("train")
        ]

    def tensors(self, step: int | None = None) -> dict[str, np.ndarray]:
        path = (
            checkpoint.latest(self.out)
            if step is None
            else checkpoint.checkpoint_path(self.out, step)
        )
        assert path is not None, f"no checkpoint in {self.out}"
        return checkpoint.load(path)[0]


def sets(**fields: object) -> list[str]:
    """``--set`` arguments for TINY updated with ``fields`` (``a__b`` = ``a.b``)."""
    merged = {**TINY, **{k.replace("__", "."): v for k, v in fields.items()}}
    return [arg for k, v in merged.items() for arg in ("--set", f"{k}={v}")]


def launch(
    out: Path,
    args: list[str],
    *,
    ranks: int | None = None,
    env: dict[str, str] | None = None,
    pythonpath: Path | None = None,
) -> subprocess.Popen[str]:
    cmd = [*CLLM, *args]
    if ranks is not None:
        assert MPIEXEC is not None
        cmd = [MPIEXEC, "-launcher", "fork", "-n", str(ranks), *cmd]
    full = dict(os.environ)
    full["PATH"] = os.pathsep.join([str(VENV_BIN), full.get("PATH", "")])
    paths = [str(ROOT), *([str(pythonpath)] if pythonpath else [])]
    full["PYTHONPATH"] = os.pathsep.join([*paths, full.get("PYTHONPATH", "")])
    full.pop("CLLM_BACKEND", None)
    full.update(env or {})
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
        start_new_session=True,  # its own process group: killed whole on timeout
    )


def finish(proc: subprocess.Popen[str], out: Path, start: float) -> Run:
    try:
        stdout, stderr = proc.communicate(timeout=JOB_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the run hung for {JOB_LIMIT} s\n{stderr[-3000:]}")
    return Run(out, proc.returncode, stdout, stderr, time.monotonic() - start)


def cllm_train(out: Path, *extra: str, **kwargs: Any) -> Run:
    start = time.monotonic()
    return finish(launch(out, list(extra), **kwargs), out, start)


def run_tiny(out: Path, corpus: Path, *extra: str, **kwargs: Any) -> Run:
    fields = {"data__corpus": corpus, "train__out_dir": out}
    return cllm_train(out, *sets(**fields), *extra, **kwargs)


def ok(run: Run) -> Run:
    assert run.rc == 0, run.stdout + run.stderr
    return run


def assert_same_tensors(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].tobytes() == b[name].tobytes(), name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """4000 characters of the bundled corpus: 3600 train + 400 validation bytes
    (windows of 17 bytes, 14 to a batch: an epoch ends at micro-batch 15,
    past the 10 of a five-step run)."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(read_default_corpus()[:4000])
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> Run:
    """One worker: the run every other worker and rank count must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    return ok(run_tiny(out, corpus, "--set", "parallel.workers=1"))


@pytest.fixture
def faulty(tmp_path) -> Path:
    """A directory holding the module ``faulty_backend`` (put it on PYTHONPATH)."""
    where = tmp_path / "faulty"
    where.mkdir()
    (where / "faulty_backend.py").write_text(FAULTY_BACKEND)
    return where
