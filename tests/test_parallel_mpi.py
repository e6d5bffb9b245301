"""The MPI engine: K ranks give the bits of one process, and no failure hangs.

The MPI tests run ``tests/mpi_programs/train.py`` under ``mpiexec -launcher fork
-n K`` (the ``mpich`` wheel's hydra, next to the venv's python) as a subprocess
with a timeout, in its own session so that a stuck job is killed whole. The
program trains the least-squares model of ``tests/mpi_programs/lsq.py`` and
every rank writes a JSON report; the reference is one process running the
thread Coordinator with one worker on the same batches. They are skipped, with
the reason, when mpi4py or mpiexec is missing (the ``mpi`` extra).

The other tests need no MPI: the digest, the constructor's checks, and the
one-rank path through a stand-in communicator.
"""

from __future__ import annotations

import hashlib
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

import numpy as np
import pytest

from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    LifecycleError,
    ReplicaMismatchError,
    ShapeError,
    Unsupported,
)
from cllm_spec.parallel import Coordinator, State, allocate_groups, split_rows
from cllm_spec.parallel.mpi import MPIEngine, weights_digest
from cllm_spec.registry import get_backend
from tests.mpi_programs.lsq import Sgd, initial_weights, lsq_terms, make_data

BACKEND = get_backend("numpy")
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


def reference(steps: int, rows: int, accum: int) -> tuple[Sgd, list[Any]]:
    """One process, the thread Coordinator with one worker, the same batches."""
    model = Sgd()
    with Coordinator(
        1, model.grad_fn, model.optimizer_step, backend=BACKEND, timeout=60.0
    ) as coord:
        results = [
            coord.run_accumulated(list(mbs)) for mbs in make_data(7, steps, rows, accum)
        ]
    return model, results


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


# ============================================ one rank, no MPI library ====
class _Complete:
    def Test(self) -> bool:  # mpi4py's name
        return True


class OneRankComm:
    """Stands in for a one-rank communicator; the engine must not send."""

    def __init__(self) -> None:
        self.aborts: list[int] = []

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    def Idup(self) -> tuple[OneRankComm, _Complete]:
        return self, _Complete()

    def Isend(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a one-rank engine has nobody to send to")

    Irecv = Isend

    def Abort(self, code: int) -> None:
        self.aborts.append(code)


def one_rank_engine(model: Sgd, **kwargs: Any) -> MPIEngine:
    kwargs.setdefault("state_fn", lambda: model.w)
    return MPIEngine(
        model.grad_fn,
        model.optimizer_step,
        backend=BACKEND,
        comm=OneRankComm(),
        **kwargs,
    )


def test_one_rank_reproduces_the_coordinator():
    model = Sgd()
    with one_rank_engine(model) as engine:
        assert (engine.rank, engine.size, engine.is_root) == (0, 1, True)
        assert engine.my_groups == tuple(range(12))
        results = [engine.run_accumulated(list(m)) for m in make_data(7, 4, 13, 2)]
        assert engine.check_replicas() == weights_digest(model.w)
        assert engine.broadcast_object({"a": 1}) == {"a": 1}
        assert engine.any_rank(True) and not engine.any_rank(False)
        engine.barrier()
    ref, ref_results = reference(4, 13, 2)
    assert model.losses == ref.losses
    assert model.grads == ref.grads
    assert model.w.tobytes() == ref.w.tobytes()
    assert [(r.loss, r.tokens, r.groups) for r in results] == [
        (r.loss, r.tokens, r.groups) for r in ref_results
    ]
    assert engine.last_digest == weights_digest(ref.w)
    assert engine.state is State.STOPPED


def test_one_rank_error_is_raised_with_the_rank_not_aborted():
    model = Sgd()

    def broken(group: int, mb: tuple) -> tuple:
        raise KeyError("boom")

    comm = OneRankComm()
    engine = MPIEngine(
        broken, model.optimizer_step, backend=BACKEND, comm=comm, check_every=0
    )
    engine.start()
    with pytest.raises(KeyError, match="boom") as info:
        engine.run_step(make_data(7, 1, 16, 1)[0][0])
    assert info.value.__notes__ == [
        "raised by grad_fn on group 0 of micro-batch 0",
        "on MPI rank 0 of 1, in step 0",
    ]
    assert comm.aborts == []  # one rank: nobody to release, so no abort
    assert engine.state is State.STOPPED  # a failed engine takes no more steps
    with pytest.raises(LifecycleError):
        engine.run_step(make_data(7, 1, 16, 1)[0][0])


def test_one_rank_grad_many_reproduces_the_coordinator():
    """One grad_many call per micro-batch with the rank's groups; the bits of
    grad_fn one group at a time."""
    model = Sgd()
    calls: list[tuple[int, ...]] = []

    def grad_many(groups: list[int], mbs: list[tuple]) -> list[tuple]:
        calls.append(tuple(groups))
        return [model.grad_fn(g, mb) for g, mb in zip(groups, mbs, strict=True)]

    with one_rank_engine(model, grad_many=grad_many) as engine:
        for m in make_data(7, 4, 13, 2):
            engine.run_accumulated(list(m))
    ref, _ = reference(4, 13, 2)
    assert model.losses == ref.losses and model.grads == ref.grads
    assert model.w.tobytes() == ref.w.tobytes()
    assert calls == [tuple(range(12))] * 8  # 4 steps of 2 micro-batches


def test_one_rank_grad_many_error_names_its_groups():
    model = Sgd()

    def grad_many(groups: list[int], mbs: list[tuple]) -> list[tuple]:
        raise KeyError("boom")

    engine = one_rank_engine(model, grad_many=grad_many, check_every=0)
    engine.start()
    with pytest.raises(KeyError, match="boom") as info:
        engine.run_step(make_data(7, 1, 16, 1)[0][0])
    groups = ", ".join(map(str, range(12)))
    assert info.value.__notes__ == [
        f"raised by grad_many on groups {groups} of micro-batch 0",
        "on MPI rank 0 of 1, in step 0",
    ]
    engine.stop()
    short = one_rank_engine(Sgd(), grad_many=lambda g, b: [], check_every=0)
    with short, pytest.raises(ShapeError, match="grad_many: 0 results for 12"):
        short.run_step(make_data(7, 1, 16, 1)[0][0])


def test_lifecycle():
    model = Sgd()
    engine = one_rank_engine(model)
    batch = make_data(7, 1, 16, 1)[0][0]
    with pytest.raises(LifecycleError):
        engine.run_step(batch)  # before start
    engine.start()
    with pytest.raises(LifecycleError):
        engine.start()
    assert engine.stop() and engine.stop()  # idempotent
    for call in (lambda: engine.run_step(batch), engine.barrier, engine.check_replicas):
        with pytest.raises(LifecycleError):
            call()
    assert model.losses == []


def test_bad_calls_are_typed_errors():
    model = Sgd()
    with one_rank_engine(model) as engine:
        with pytest.raises(DTypeError):
            engine.run_accumulated(make_data(7, 1, 16, 1)[0][0])  # a tuple
    with one_rank_engine(model) as engine, pytest.raises(EmptyInputError):
        engine.run_accumulated([])
    with one_rank_engine(model) as engine, pytest.raises(ConfigError):
        engine.broadcast_object(1, root=1)
    with one_rank_engine(model) as engine, pytest.raises(ConfigError):
        engine.any_rank(1)
    assert model.losses == []


# ======================================================= constructor ====
def _ok(*_: Any) -> None:
    return None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"grad_fn": None},
        {"optimizer_step": 3},
        {"split_fn": "rows"},
        {"check_every": -1},
        {"check_every": 1.0},
        {"check_every": True},
        {"check_every": 1, "state_fn": None},
        {"state_fn": "w"},
        {"timeout": 0.0},
        {"timeout": -1.0},
        {"timeout": float("inf")},
        {"timeout": None},
        {"verify_batches": 1},
        {"abort_on_error": "yes"},
        {"comm": object()},
    ],
    # ids must not contain object addresses: xdist workers compare them
    ids=lambda kw: (
        ",".join(f"{k}={type(v).__name__}:{v!r:.20}" for k, v in kw.items())
        if "comm" not in kw
        else "comm=object"
    ),
)
def test_constructor_rejects(kwargs):
    args: dict[str, Any] = {
        "grad_fn": _ok,
        "optimizer_step": _ok,
        "backend": BACKEND,
        "comm": OneRankComm(),
        "state_fn": lambda: np.zeros(2),
    }
    args.update(kwargs)
    with pytest.raises(ConfigError):
        MPIEngine(args.pop("grad_fn"), args.pop("optimizer_step"), **args)


def test_without_mpi4py_the_engine_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # makes the import fail
    with pytest.raises(Unsupported, match="mpi4py") as info:
        MPIEngine(_ok, _ok, backend=BACKEND, check_every=0)
    assert "cllm[mpi]" in str(info.value)


# ============================================================== digest ====
def _by_hand(*named: tuple[str, np.ndarray]) -> str:
    """The documented digest: per array, length-prefixed name, dtype.str,
    repr(shape) and C-order bytes."""
    h = hashlib.sha256()
    for name, a in named:
        for f in (
            name.encode(),
            a.dtype.str.encode(),
            repr(a.shape).encode(),
            np.ascontiguousarray(a).tobytes(),
        ):
            h.update(len(f).to_bytes(8, "little") + f)
    return h.hexdigest()


def test_weights_digest_golden():
    w = np.array([1.0, -0.0], dtype=np.float32)
    m = np.eye(2)
    assert weights_digest(w) == _by_hand(("", w))
    assert weights_digest([w, m]) == _by_hand(("0", w), ("1", m))
    assert weights_digest({"w": w, "m": m}) == _by_hand(("w", w), ("m", m))
    # A fixed value, so the format itself cannot drift: sha256 over
    # len("")="", len("<f4")="<f4", len("(1,)")="(1,)", len(4)=00 00 80 3f.
    one = np.array([1.0], dtype=np.float32)
    assert (
        weights_digest(one)
        == hashlib.sha256(
            (0).to_bytes(8, "little")
            + (3).to_bytes(8, "little")
            + b"<f4"
            + (4).to_bytes(8, "little")
            + b"(1,)"
            + (4).to_bytes(8, "little")
            + b"\x00\x00\x80\x3f"
        ).hexdigest()
    )


def test_weights_digest_sees_every_bit():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(17).astype(np.float32)
    base = weights_digest(w)
    copy = w.copy()
    assert weights_digest(w) == base  # deterministic
    ulp = w.copy()
    ulp[5] = np.nextafter(ulp[5], np.float32(np.inf))
    variants = [
        ulp,
        w.astype(np.float64),
        w.view(np.int32),  # same bytes, another dtype
        w.reshape(17, 1),  # same bytes, another shape
        w.astype(">f4"),  # same values, other byte order
        [w],  # a name "0"
        {"w": w},
    ]
    digests = {weights_digest(v) for v in variants}
    assert base not in digests and len(digests) == len(variants)
    assert weights_digest(np.zeros(1)) != weights_digest(-np.zeros(1))
    assert weights_digest([w, ulp]) != weights_digest([ulp, w])
    wide = np.stack([w, w])  # (2, 17): a strided column view equals its copy
    assert weights_digest(wide[:, 3]) == weights_digest(wide[:, 3].copy())
    assert w.tobytes() == copy.tobytes()  # not mutated


@pytest.mark.parametrize(
    ("state", "error"),
    [
        ([], EmptyInputError),
        ({}, EmptyInputError),
        (3.0, DTypeError),
        ([np.zeros(2), [1.0]], DTypeError),
        ({"w": 1.0}, DTypeError),
    ],
)
def test_weights_digest_rejects(state, error):
    with pytest.raises(error):
        weights_digest(state)


def test_replica_mismatch_error_is_typed():
    err = ReplicaMismatchError("x")
    assert isinstance(err, RuntimeError) and "hint:" in str(err)
