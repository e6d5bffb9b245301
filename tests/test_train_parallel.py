"""``cllm train`` with ``parallel.workers`` and ``parallel.engine``: the same bits
for every worker count and rank count, per-worker statistics, BLAS threads, and
failures that end the run promptly with the failing worker's (or rank's) error.

The runs are subprocesses on a tiny config of the numpy backend (named
explicitly: the bitwise claims are for a deterministic backend). ``B = 14``
rows cut into 12 groups (groups 0 and 1 hold 2 rows, the others one) and
``grad_accum = 2``, so every step reduces 24 group gradients in the fixed
order. The MPI tests run ``mpiexec -launcher fork`` (the ``mpich`` wheel's,
next to the venv's python) in their own session, killed whole if they hang;
they are skipped, with the reason, when the ``mpi`` extra is missing.

Failures are injected through a backend module written for the test: the
numpy backend, except that ``layernorm_forward`` misbehaves on its N-th call
(optionally only on one MPI rank, by ``PMI_RANK``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from cllm_spec import checkpoint
from cllm_spec.data import read_dataset_bin, read_default_corpus
from cllm_spec.errors import ConfigError
from cllm_spec.model import ModelConfig, init_params
from cllm_spec.parallel import allocate_groups
from cllm_spec.registry import get_backend
from cllm_spec.train.config import load_config
from cllm_spec.train.prepare import BatchStream
from cllm_spec.train.state import model_config
from cllm_spec.train.step import compute_step_gradients, group_step_gradients
from cllm_spec.train.trainer import train

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CLLM = [sys.executable, "-m", "cllm_spec.cli", "train"]
MPIEXEC = shutil.which(
    "mpiexec", path=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])
)
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
JOB_LIMIT = 120.0  # seconds: a run still going then is killed and the test fails
QUICK = 20.0  # seconds: a failure must end the run well before that

needs_mpi = pytest.mark.skipif(
    not HAVE_MPI4PY or MPIEXEC is None,
    reason="the mpi extra is not installed (needs mpi4py and an mpiexec, e.g. "
    "pip install 'cllm[mpi]')",
)

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
    (14 batches of 14 windows of 17 bytes fit 1.03 times: an epoch ends at
    micro-batch 15, so step 8 of the resume test crosses it)."""
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


# ===================================================== the same bits ====
def test_the_group_split_is_not_the_unsplit_step_bitwise():
    # Without this, the trajectory tests could not tell the group-split step
    # from one unsplit forward/backward per micro-batch: they differ in bits,
    # while agreeing up to float32 rounding (same tokens, other sum orders).
    cfg = ModelConfig(vocab_size=11, n_embd=8, n_layer=1, n_head=2, block_size=8)
    tokens = np.random.default_rng(1).integers(0, 11, 600).astype(np.uint32)
    batches = BatchStream(tokens, 14, 8, seed=5).take(2)
    backend = get_backend("numpy")
    params = init_params(cfg, np.random.default_rng(0), np.float32)
    loss_s, grad_s = group_step_gradients(backend, cfg, params, batches)
    loss_u, grad_u = compute_step_gradients(backend, cfg, params, batches)
    assert grad_s.tobytes() != grad_u.tobytes()
    assert grad_s.dtype == np.float32
    np.testing.assert_allclose(grad_s, grad_u, rtol=1e-4, atol=1e-6)
    assert loss_s == pytest.approx(loss_u, rel=1e-6)
    assert np.abs(grad_u).max() > 1e-3  # a real gradient


@pytest.mark.parametrize("workers", [2, 3, 12])
def test_worker_counts_give_the_bits_of_one_worker(
    tmp_path, corpus, reference, workers
):
    run = ok(run_tiny(tmp_path / "run", corpus, "--set", f"parallel.workers={workers}"))
    assert len(run.trajectory()) == STEPS  # one optimizer step per global step
    assert run.trajectory() == reference.trajectory()  # floats: equal = same bits
    assert run.rows("eval") == reference.rows("eval")
    assert_same_tensors(run.tensors(), reference.tensors())


@pytest.mark.parametrize("workers", [2, 12])
def test_groups_in_one_pass_give_the_bits_of_one_group_at_a_time(
    tmp_path, corpus, workers
):
    """The C backend runs a worker's groups of a micro-batch in one pass
    (cllm_spec.model_groups): one worker computes all 12 at once, 12 workers
    one each, the way every group ran before; the runs agree bit for bit."""
    pytest.importorskip("cllm_c", reason="the C extension is not built")
    # 24 rows: 2 per group, 32 token rows each, enough to run together
    c = ("--set", "train.backend=c", "--set", "train.batch_size=24")
    one = ok(run_tiny(tmp_path / "one", corpus, *c, "--set", "parallel.workers=1"))
    many = ok(
        run_tiny(tmp_path / "many", corpus, *c, "--set", f"parallel.workers={workers}")
    )
    assert len(one.trajectory()) == STEPS
    assert many.trajectory() == one.trajectory()
    assert_same_tensors(many.tensors(), one.tensors())


def test_one_worker_runs_the_group_split_math(reference):
    """The logged loss of step 1 is the group-split mean of its two micro-batches
    under the initial parameters, recomputed here in this process."""
    info = json.loads((reference.out / "dataset.json").read_text())
    ids = read_dataset_bin(reference.out / "dataset.bin")[: info["n_train"]]
    cfg = load_config(None, sets()[1::2])
    batches = BatchStream(ids, B, T, seed=cfg.train.seed).take(K)
    mcfg = model_config(cfg, 261)  # the byte tokenizer's V
    params = init_params(mcfg, np.random.default_rng(cfg.train.seed), np.float32)
    loss, _ = group_step_gradients(get_backend("numpy"), mcfg, params, batches)
    assert reference.rows("train")[0]["loss"] == loss


def test_resume_with_another_worker_count_is_bitwise(tmp_path, corpus, reference):
    first = ok(
        run_tiny(
            tmp_path / "first",
            corpus,
            "--set",
            "train.steps=3",
            "--set",
            "parallel.workers=2",
        )
    )
    second = ok(
        cllm_train(
            tmp_path / "second",
            "--resume",
            str(checkpoint.checkpoint_path(first.out, 3)),
            "--set",
            f"train.steps={STEPS}",
            "--set",
            f"train.out_dir={tmp_path / 'second'}",
            "--set",
            "parallel.workers=3",
            # the first run planned 3 steps; the reference planned them all
            "--set",
            "schedule.on_resume=replan",
        )
    )
    assert first.trajectory() + second.trajectory() == reference.trajectory()
    assert_same_tensors(second.tensors(), reference.tensors())


# ================================================= statistics, output ====
def test_per_worker_table_and_parallel_row(tmp_path, corpus):
    run = ok(run_tiny(tmp_path / "run", corpus, "--set", "parallel.workers=5"))
    (row,) = run.rows("parallel")
    assert (row["engine"], row["workers"], row["step"]) == ("threads", 5, STEPS)
    per = row["per_worker"]
    assert [w["worker"] for w in per] == [0, 1, 2, 3, 4]
    # Worker t owns groups t and t + 5 (and t + 10 for t < 2); B = 14 gives
    # groups 0 and 1 two rows and the others one, T tokens per row.
    rows_of = [2, 2] + [1] * 10
    for t, w in enumerate(per):
        owned = allocate_groups(5).groups_of(t)
        assert w["batches"] == STEPS * K * len(owned)
        assert w["tokens"] == STEPS * K * T * sum(rows_of[g] for g in owned)
        assert w["busy_s"] > 0 and w["idle_s"] >= 0
    assert sum(w["tokens"] for w in per) == STEPS * K * B * T
    assert row["tokens_per_s"] > 0 and row["seconds"] > 0
    assert all(r["tokens_per_s"] > 0 for r in run.rows("train"))
    table = run.stdout[run.stdout.index("worker   groups") :].splitlines()
    assert re.fullmatch(r"worker\s+groups\s+tokens\s+busy %\s+idle %", table[0])
    for t, line in enumerate(table[1:6]):
        n, groups, tokens, busy, idle = line.split()
        assert (int(n), int(groups), int(tokens.replace(",", ""))) == (
            t,
            per[t]["batches"],
            per[t]["tokens"],
        )
        assert float(busy) + float(idle) == pytest.approx(100.0, abs=0.11)


def test_one_worker_prints_no_table(reference):
    assert "worker   groups" not in reference.stdout
    assert "parallel: 1 worker thread (threads engine); BLAS threads: 1" in (
        reference.stdout
    )
    (row,) = reference.rows("parallel")
    assert row["workers"] == 1 and row["per_worker"][0]["tokens"] == STEPS * K * B * T


def _blas_threads() -> set[int]:
    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


@pytest.mark.parametrize(("setting", "inside"), [(1, 1), (0, 2), (2, 2)])
def test_blas_threads_are_set_for_the_run(tmp_path, corpus, setting, inside):
    if not _blas_threads():
        pytest.skip("numpy reports no BLAS thread pool to limit")
    seen: list[set[int]] = []

    def say(message: str) -> None:  # called during the run, inside the limit
        seen.append(_blas_threads())

    fields = {"data__corpus": corpus, "train__out_dir": tmp_path / "r"}
    overrides = [*sets(**fields)[1::2], f"train.blas_threads={setting}"]
    with threadpool_limits(limits=2, user_api="blas"):  # outside: 2 (0 keeps it)
        train(None, overrides, say=say)
        after = _blas_threads()
    assert seen and all(s == {inside} for s in seen), seen
    assert after == {2}  # restored


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["parallel.engine=mpi", "parallel.workers=2"], "parallel.workers"),
        (["parallel.engine=gpu"], "parallel.engine"),
        (["parallel.check_every=-1"], "parallel.check_every"),
        (["parallel.timeout=0"], "parallel.timeout"),
        (["parallel.timeout=inf"], "parallel.timeout"),
        (["train.blas_threads=-1"], "train.blas_threads"),
    ],
)
def test_bad_parallel_settings_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert info.value.message.startswith(field + ":")


# ============================================================ failures ====
@pytest.mark.parametrize(
    ("mode", "rc", "needles"),
    [
        (
            "raise",
            1,
            ["RuntimeError: injected kernel failure", "raised by worker "],
        ),
        (
            "typed",
            2,
            ["cllm train: error: injected kernel failure", "  raised by worker "],
        ),
    ],
)
def test_a_failing_worker_stops_the_run_with_its_error(
    tmp_path, corpus, faulty, mode, rc, needles
):
    # Call 100 of layernorm_forward falls in step 2: a group's forward calls it
    # 3 times (ln_1, ln_2, ln_f), and a step computes 24 groups (B = 14 fills
    # all 12, K = 2), so step 1 makes calls 1-72 and goes through.
    run = run_tiny(
        tmp_path / "run",
        corpus,
        "--set",
        "parallel.workers=3",
        "--set",
        "train.backend=faulty_backend",
        "--set",
        "train.checkpoint_every=1",
        env={"CLLM_FAULT_MODE": mode, "CLLM_FAULT_AT": "100"},
        pythonpath=faulty,
    )
    assert run.rc == rc, run.stdout + run.stderr
    assert run.seconds < QUICK
    for needle in needles:
        assert needle in run.stderr, run.stderr
    worker = int(re.search(r"raised by worker (\d)", run.stderr).group(1))
    assert 0 <= worker < 3
    assert [r["step"] for r in run.rows("train")] == [1]
    assert [s for s, _ in checkpoint.list_checkpoints(run.out)] == [1]


def test_a_hung_worker_ends_the_run_at_the_timeout(tmp_path, corpus, faulty):
    run = run_tiny(
        tmp_path / "run",
        corpus,
        "--set",
        "parallel.workers=2",
        "--set",
        "parallel.timeout=1",
        "--set",
        "train.backend=faulty_backend",
        env={"CLLM_FAULT_MODE": "hang", "CLLM_FAULT_AT": "100"},
        pythonpath=faulty,
    )
    assert run.rc == 2, run.stdout + run.stderr
    assert run.seconds < QUICK
    assert re.search(
        r"cllm train: error: step 1: no result within 1\.0 s for .*\(worker [01]\)",
        run.stderr,
    ), run.stderr


# ================================================================= MPI ====
def mpi_tiny(out: Path, corpus: Path, ranks: int, *extra: str, **kw: Any) -> Run:
    return run_tiny(
        out, corpus, "--set", "parallel.engine=mpi", *extra, ranks=ranks, **kw
    )


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_mpiexec_equals_one_process(tmp_path, corpus, reference, ranks):
    run = ok(mpi_tiny(tmp_path / "run", corpus, ranks))
    assert "ended abnormally" not in run.stderr
    assert run.trajectory() == reference.trajectory()
    assert run.rows("eval") == reference.rows("eval")
    assert_same_tensors(run.tensors(), reference.tensors())
    # Only rank 0 prints, logs and writes.
    assert run.stdout.count("trained 5 steps") == 1, run.stdout
    assert run.stdout.count("final validation loss") == 1
    assert f"parallel: {ranks} MPI ranks" in run.stdout
    assert "weights compared after every step" in run.stdout
    (row,) = run.rows("parallel")
    assert (row["engine"], row["workers"]) == ("mpi", ranks)
    for r, w in enumerate(row["per_worker"]):
        owned = allocate_groups(ranks).groups_of(r)
        assert w["batches"] == STEPS * K * len(owned)
    assert sum(w["tokens"] for w in row["per_worker"]) == STEPS * K * B * T
    assert "    rank   groups" in run.stdout


@needs_mpi
def test_mpi_engine_without_mpiexec_is_one_rank(tmp_path, corpus, reference):
    run = ok(run_tiny(tmp_path / "run", corpus, "--set", "parallel.engine=mpi"))
    assert "parallel: 1 MPI rank " in run.stdout
    assert run.trajectory() == reference.trajectory()
    assert_same_tensors(run.tensors(), reference.tensors())


@needs_mpi
def test_mpi_resume_is_bitwise(tmp_path, corpus, reference):
    first = ok(mpi_tiny(tmp_path / "first", corpus, 2, "--set", "train.steps=3"))
    second = ok(
        cllm_train(
            tmp_path / "first",
            "--resume",
            str(first.out),
            "--set",
            f"train.steps={STEPS}",
            "--set",
            "parallel.check_every=2",
            # the first run planned 3 steps; the reference planned them all
            "--set",
            "schedule.on_resume=replan",
            ranks=2,
        )
    )
    assert "weights compared every 2 steps" in second.stdout
    assert first.trajectory() == reference.trajectory()  # rows 1-5, appended
    assert_same_tensors(second.tensors(), reference.tensors())
    assert [s for s, _ in checkpoint.list_checkpoints(first.out)] == [3, STEPS]


@needs_mpi
def test_mpi_ctrl_c_saves_on_rank_0_and_every_rank_exits_130(tmp_path, corpus):
    out = tmp_path / "run"
    fields = {"data__corpus": corpus, "train__out_dir": out, "train__steps": 10**6}
    start = time.monotonic()
    proc = launch(out, [*sets(**fields), "--set", "parallel.engine=mpi"], ranks=2)
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        if time.monotonic() - start > 60 or proc.poll() is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no progress: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # mpiexec forwards it to every rank
    run = finish(proc, out, start)
    assert run.rc == 130, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert "ended abnormally" not in run.stderr  # rank 0 told its watcher
    step = int(re.search(r"interrupted at step (\d+)", run.stdout).group(1))
    assert run.stdout.count("interrupted at step") == 1
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [step]
    assert run.rows("train")[-1]["step"] == step
    ok(cllm_train(out, "--resume", str(out), "--set", f"train.steps={step + 1}"))
    assert [r["step"] for r in run.rows("train")][-2:] == [step, step + 1]


@needs_mpi
def test_mpiexec_without_the_mpi_engine_is_refused(tmp_path, corpus):
    run = run_tiny(tmp_path / "run", corpus, ranks=2)
    assert run.rc == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    line = "cllm train: error: parallel.engine: this is one of 2 processes started"
    assert run.stderr.count(line) == 2  # every process says why it stopped
    assert "hint: add --set parallel.engine=mpi" in run.stderr
    assert not run.out.exists()


@needs_mpi
def test_rank_0_refusing_the_run_ends_every_rank_at_once(tmp_path, corpus):
    # Only rank 0 checks the run directory; the others must not wait for it
    # until parallel.timeout.
    out = tmp_path / "run"
    ok(run_tiny(out, corpus, "--set", "train.steps=3"))
    run = mpi_tiny(out, corpus, 2, "--set", "parallel.timeout=60")
    assert run.rc == 2, run.stdout + run.stderr
    assert run.seconds < QUICK
    assert "cllm train: error: train.out_dir: " in run.stderr
    assert "already holds a run" in run.stderr
    assert "MPI rank 1 of 2: rank 0 could not prepare the run" in run.stderr
    assert "Traceback" not in run.stderr


@needs_mpi
@pytest.mark.parametrize(
    ("mode", "needles"),
    [
        (
            "raise",
            [
                "cllm mpi: rank 1 of 2 failed in step 1",
                "RuntimeError: injected kernel failure",
                "on MPI rank 1 of 2, in step 1",
            ],
        ),
        ("exit", []),
    ],
)
def test_a_failing_rank_ends_the_job(tmp_path, corpus, faulty, mode, needles):
    # Rank 1 of 2 computes 12 groups a step (6 of 12, K = 2): 36 calls, so its
    # call 50 falls in step 2.
    run = mpi_tiny(
        tmp_path / "run",
        corpus,
        2,
        "--set",
        "train.backend=faulty_backend",
        "--set",
        "parallel.timeout=60",
        env={"CLLM_FAULT_MODE": mode, "CLLM_FAULT_AT": "50", "CLLM_FAULT_RANK": "1"},
        pythonpath=faulty,
    )
    assert run.rc != 0
    assert run.seconds < QUICK, run.stderr
    for needle in needles:
        assert needle in run.stderr, run.stderr
    assert [r["step"] for r in run.rows("train")] == [1]
    assert checkpoint.list_checkpoints(run.out) == []
    # mpiexec killed rank 0 without a word: its watcher says what happened, once.
    lost = "cllm train: error: the MPI job of 2 ranks ended abnormally"
    assert run.stderr.count(lost) == 1, run.stderr
    assert "hint: no checkpoint was written yet" in run.stderr
