"""``cllm train`` with ``parallel.engine = mpi``: a job of any rank count under
``mpiexec`` (and one process without it) gives the bits of one worker, resumes
included, and only rank 0 prints, logs and writes. Ctrl-C saves on rank 0 and
every rank exits 130; ``mpiexec`` without the MPI engine is refused; a refusal
or failure on one rank ends every rank promptly with that rank's error. The
tests are skipped, with the reason, when the ``mpi`` extra is missing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from cllm_spec import checkpoint
from cllm_spec.parallel import allocate_groups
from tests import train_parallel_helpers
from tests.train_parallel_helpers import (
    MPIEXEC,
    QUICK,
    STEPS,
    B,
    K,
    Run,
    T,
    assert_same_tensors,
    cllm_train,
    finish,
    launch,
    ok,
    run_tiny,
    sets,
)

# pytest finds a test's fixtures among its module's names
corpus = train_parallel_helpers.corpus
reference = train_parallel_helpers.reference
faulty = train_parallel_helpers.faulty

HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None

needs_mpi = pytest.mark.skipif(
    not HAVE_MPI4PY or MPIEXEC is None,
    reason="the mpi extra is not installed (needs mpi4py and an mpiexec, e.g. "
    "pip install 'cllm[mpi]')",
)


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
