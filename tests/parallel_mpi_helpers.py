"""The reference run that the MPI engine's tests compare against.

``reference`` trains the least-squares model of ``tests/mpi_programs/lsq.py``
in one process with the thread Coordinator and one worker, on the batches the
MPI program uses; an MPI job of any size, or the engine on one rank, must
reproduce its losses, gradients and weights bit for bit.
"""

from __future__ import annotations

from typing import Any

from cllm_spec.parallel import Coordinator
from cllm_spec.registry import get_backend
from tests.mpi_programs.lsq import Sgd, make_data

BACKEND = get_backend("numpy")


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
