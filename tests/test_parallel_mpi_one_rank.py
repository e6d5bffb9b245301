"""The MPI engine on one rank, without an MPI library, and its constructor.

Through a stand-in one-rank communicator that refuses to send, the engine must
reproduce the thread Coordinator bit for bit (with ``grad_fn`` or
``grad_many``), raise a step's error with notes naming the rank and groups and
without aborting, keep its lifecycle (no step before ``start`` or after
``stop``), and reject bad calls with typed errors. The constructor rejects bad
arguments with ``ConfigError``, and without mpi4py it says what to install.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    LifecycleError,
    ShapeError,
    Unsupported,
)
from cllm_spec.parallel import State
from cllm_spec.parallel.mpi import MPIEngine, weights_digest
from tests.mpi_programs.lsq import Sgd, make_data
from tests.parallel_mpi_helpers import BACKEND, reference


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
