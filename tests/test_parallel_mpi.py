"""The MPI engine: K ranks give the bits of one process, and no failure hangs.

The MPI tests run ``tests/mpi_programs/train.py`` under ``mpiexec -launcher fork
-n K`` (the ``mpich`` wheel's hydra, next to the venv's python) as a subprocess
with a timeout, in its own session so that a stuck job is killed whole. The
program trains the least-squares model of ``tests/mpi_programs/lsq.py`` and
every rank writes a JSON report; the reference is one process running the
thread Coordinator with one worker on the same batches. They are skipped, with
the reason, when mpi4py or mpiexec is missing (the ``mpi`` extra).

The data test shows the batches make float32 sums order-sensitive, so that a
reduction in the wrong order cannot pass the bitwise tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cllm_spec.parallel import allocate_groups, split_rows
from cllm_spec.parallel.mpi import weights_digest
from tests.mpi_programs.lsq import initial_weights, lsq_terms, make_data
from tests.parallel_mpi_helpers import BACKEND, reference

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "tests" / "mpi_programs" / "train.py"
VENV_BIN = Path(sys.executable).parent
MPIEXEC = shutil.which(
    "mpiexec", path=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])
)
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
JOB_LIMIT = 90.0  # seconds: a job still running then is killed and the test fails
QUICK = 20.0  # seconds: an abort must end the job well before the 60 s watchdog

needs_mpi = pytest.mark.skipif(
    not HAVE_MPI4PY or MPIEXEC is None,
    reason="the mpi extra is not installed (needs mpi4py and an mpiexec, e.g. "
    "pip install 'cllm[mpi]')",
)


# ============================================================== harness ====
class Job:
    """The outcome of one mpiexec run."""

    def __init__(self, rc: int, stderr: str, seconds: float, out: Path) -> None:
        self.rc, self.stderr, self.seconds, self.out = rc, stderr, seconds, out

    def went_on(self) -> list[str]:
        """Ranks that ran on after their engine aborted the job (must be none)."""
        return sorted(p.name for p in self.out.glob("went_on_rank*"))

    def reports(self) -> list[dict[str, Any]]:
        files = sorted(self.out.glob("rank*.json"))
        reports = [json.loads(f.read_text()) for f in files]
        return sorted(reports, key=lambda r: r["rank"])


def run_job(
    tmp_path: Path, n: int | None, *args: str, launcher: tuple[str, ...] = ()
) -> Job:
    """``mpiexec -launcher fork -n n python train.py --out ... args`` (``n`` None:
    the program alone, a singleton world)."""
    out = tmp_path / "out"
    program = [sys.executable, str(PROGRAM), "--out", str(out), *args]
    cmd = program
    if n is not None:
        assert MPIEXEC is not None
        cmd = [MPIEXEC, "-launcher", "fork", *launcher, "-n", str(n), *program]
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: killed whole on timeout
    )
    try:
        _, stderr = proc.communicate(timeout=JOB_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"the job hung for {JOB_LIMIT} s: {cmd}\n{stderr[-3000:]}")
    return Job(proc.returncode, stderr, time.monotonic() - start, out)


def expected_groups(n: int, rank: int, rows: int) -> list[int]:
    """The groups ``rank`` of ``n`` must compute: its own, where not empty."""
    non_empty = min(rows, 12)
    return [g for g in allocate_groups(n).groups_of(rank) if g < non_empty]


# ============================================================ the data ====
def test_the_data_is_order_sensitive():
    # Without this, the bitwise tests could pass with a reduction in rank order
    # (groups 0, 2, 4, ... then 1, 3, 5, ...) or with per-rank partial sums.
    mb = make_data(7, 1, 16, 1)[0][0]
    w = initial_weights()
    grads = [lsq_terms(w, part)[0] for part in split_rows(mb, 12)]
    in_order = BACKEND.grad_tree_reduce(grads).tobytes()
    for n in (2, 3):
        owned = allocate_groups(n).groups
        rank_order = [grads[g] for own in owned for g in own]
        assert BACKEND.grad_tree_reduce(rank_order).tobytes() != in_order
        partials = [BACKEND.grad_tree_reduce([grads[g] for g in own]) for own in owned]
        assert BACKEND.grad_tree_reduce(partials).tobytes() != in_order


# ======================================================== mpiexec runs ====
@needs_mpi
@pytest.mark.parametrize(
    ("n", "rows", "accum"),
    [(1, 16, 1), (2, 16, 1), (2, 13, 3), (3, 5, 1), (3, 2, 2)],
    ids=["n1", "n2", "n2-accum3-B13", "n3-B5", "n3-B2-idle-rank"],
)
def test_mpiexec_reproduces_one_process_bitwise(tmp_path, n, rows, accum):
    steps = 10 if (rows, accum) == (16, 1) else 4
    job = run_job(
        tmp_path, n, "--steps", str(steps), "--rows", str(rows), "--accum", str(accum)
    )
    assert job.rc == 0, job.stderr
    ref, ref_results = reference(steps, rows, accum)
    ref_digests = [weights_digest(initial_weights()), *ref.digests]
    reports = job.reports()
    assert [r["rank"] for r in reports] == list(range(n))
    for rep in reports:
        assert rep["size"] == n
        assert rep["results"].pop() == {"any_rank": [True, False]}
        assert rep["losses"] == [x.hex() for x in ref.losses], rep["rank"]
        assert rep["grads"] == ref.grads, rep["rank"]
        assert rep["w"] == ref.w.tobytes().hex(), rep["rank"]
        assert rep["w_digest"] == weights_digest(ref.w)
        # check_every = 1: every rank agreed on the digest after every step.
        assert [s["digest"] for s in rep["results"]] == ref_digests[1:]
        assert [s["loss"] for s in rep["results"]] == [
            r.loss.hex() for r in ref_results
        ]
        assert [s["norm"] for s in rep["results"]] == [
            r.optimizer_result.hex() for r in ref_results
        ]
        assert [
            (s["step"], s["tokens"], s["micro_batches"], s["groups"])
            for s in rep["results"]
        ] == [(r.step, r.tokens, r.micro_batches, r.groups) for r in ref_results]
        # Each rank computed exactly its own non-empty groups, no others.
        assert rep["my_groups"] == list(allocate_groups(n).groups_of(rep["rank"]))
        assert rep["computed"] == expected_groups(n, rep["rank"], rows)


@needs_mpi
def test_singleton_without_mpiexec(tmp_path):
    job = run_job(tmp_path, None, "--steps", "3")
    assert job.rc == 0, job.stderr
    (rep,) = job.reports()
    ref, _ = reference(3, 16, 1)
    assert rep["size"] == 1
    assert rep["losses"] == [x.hex() for x in ref.losses]
    assert rep["w"] == ref.w.tobytes().hex()


@needs_mpi
def test_check_every_spaces_the_digest_checks(tmp_path):
    job = run_job(tmp_path, 2, "--steps", "7", "--check-every", "3")
    assert job.rc == 0, job.stderr
    ref, _ = reference(7, 16, 1)
    ref_digests = [weights_digest(initial_weights()), *ref.digests]
    for rep in job.reports():
        rep["results"].pop()  # any_rank
        # The last agreed digest is the one after step 0, 3 or 6.
        want = [ref_digests[(k + 1) // 3 * 3] for k in range(7)]
        assert [s["digest"] for s in rep["results"]] == want


# ============================================================ failures ====
@needs_mpi
@pytest.mark.parametrize(
    ("mode", "needles"),
    [
        (
            "raise",
            [
                "cllm mpi: rank 1 of 2 failed in step 2",
                "RuntimeError: injected failure in grad_fn at step 2",
                "raised by grad_fn on group 1 of micro-batch 0",
                "on MPI rank 1 of 2, in step 2",
            ],
        ),
        (
            "raise_in_with",
            [
                "cllm mpi: rank 1 of 2 failed in the with-block",
                "RuntimeError: injected failure in the trainer at step 2",
            ],
        ),
        (
            "raise_outside",
            [
                "RuntimeError: injected failure in the trainer at step 2",
                "cllm mpi: rank 1 of 2: uncaught RuntimeError",
            ],
        ),
        (
            "diverge",
            [
                "ReplicaMismatchError: the weights differ between ranks after 3 steps",
                "(rank 0: ",
                "; rank 1: ",
            ],
        ),
        (
            "batch",
            ["ReplicaMismatchError: step 2: the batches differ", "; rank 1: "],
        ),
        (
            "desync",
            [
                "ReplicaMismatchError: the ranks are in different calls",
                "rank 0 in 'step 2' (call #6); rank 1 in 'barrier' (call #6)",
            ],
        ),
    ],
)
def test_an_error_on_one_rank_aborts_the_job(tmp_path, mode, needles):
    # The watchdog is 60 s: ending within QUICK proves the abort did it.
    job = run_job(tmp_path, 2, "--fail", mode, "--timeout", "60")
    assert job.rc != 0
    assert job.seconds < QUICK, job.stderr
    for needle in needles:
        assert needle in job.stderr, job.stderr
    assert job.reports() == []  # no rank got past the failure
    assert job.went_on() == []


@needs_mpi
def test_diverging_weights_are_caught_at_the_next_check(tmp_path):
    job = run_job(
        tmp_path, 2, "--fail", "diverge", "--fail-step", "3", "--check-every", "3"
    )
    assert job.rc != 0
    assert "the weights differ between ranks after 6 steps" in job.stderr, job.stderr


@needs_mpi
def test_a_dead_rank_ends_the_job(tmp_path):
    job = run_job(tmp_path, 2, "--fail", "exit", "--timeout", "60")
    assert job.rc != 0
    # hydra, not the 60 s watchdog, must end it; the stderr says which did
    assert job.seconds < QUICK, job.stderr
    assert job.reports() == []
    assert job.went_on() == []


@needs_mpi
def test_a_dead_rank_without_launcher_cleanup_hits_the_watchdog(tmp_path):
    # Hydra usually kills the job when a rank dies; without that the survivor's
    # watchdog must end it, naming the silent rank.
    job = run_job(
        tmp_path,
        2,
        "--fail",
        "exit",
        "--timeout",
        "2",
        launcher=("-disable-auto-cleanup",),
    )
    assert job.rc != 0
    assert job.seconds < QUICK
    assert job.went_on() == []
    assert "QueueTimeoutError: step 2 (call #6): nothing from rank 1 within 2.0 s" in (
        job.stderr
    ), job.stderr
    assert "cllm mpi: rank 0 of 2 failed in step 2" in job.stderr


@needs_mpi
def test_a_hung_rank_hits_the_watchdog(tmp_path):
    job = run_job(tmp_path, 2, "--fail", "hang", "--timeout", "2")
    assert job.rc != 0
    assert 2.0 <= job.seconds < QUICK
    assert "nothing from rank 1 within 2.0 s (waiting on rank 0 of 2)" in job.stderr
    assert job.reports() == []
    assert job.went_on() == []
