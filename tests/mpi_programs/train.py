"""Train the least-squares model with MPIEngine; run under mpiexec by the tests.

Every rank writes ``<out>/rank<r>.json``: its loss trajectory, gradient bits,
step results, agreed digests and final weights. ``--fail MODE`` injects one
failure on ``--fail-rank`` at ``--fail-step``:

- ``raise``: grad_fn raises;          ``exit``: grad_fn calls os._exit(1);
- ``hang``: grad_fn sleeps for good;  ``diverge``: the optimizer step is off by
  one ulp on that rank;
- ``batch``: that rank reads another batch; ``desync``: that rank calls
  barrier() where the others step;
- ``raise_in_with``: trainer code raises inside ``with engine:``;
- ``raise_outside``: trainer code raises with the engine started by hand
  (no with-block), so only the chained sys.excepthook can end the job.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from lsq import P, Sgd, initial_weights, make_data

from cllm_spec.parallel.mpi import MPIEngine, weights_digest
from cllm_spec.registry import get_backend

MODES = (
    "none",
    "raise",
    "exit",
    "hang",
    "diverge",
    "batch",
    "desync",
    "raise_in_with",
    "raise_outside",
)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--check-every", type=int, default=1)
    ap.add_argument("--fail", choices=MODES, default="none")
    ap.add_argument("--fail-rank", type=int, default=1)
    ap.add_argument("--fail-step", type=int, default=2)
    return ap.parse_args()


class Model(Sgd):
    """Sgd whose grad_fn / optimizer_step can misbehave on one rank."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args
        self.rank = -1
        self.step = 0

    def armed(self, mode: str) -> bool:
        a = self.args
        return a.fail == mode and self.rank == a.fail_rank and self.step == a.fail_step

    def grad_fn(self, group: int, mb: tuple) -> tuple[np.ndarray, float, int]:
        if self.armed("raise"):
            raise RuntimeError(f"injected failure in grad_fn at step {self.step}")
        if self.armed("exit"):
            os._exit(1)
        if self.armed("hang"):
            time.sleep(3600)
        return super().grad_fn(group, mb)

    def optimizer_step(self, grad: np.ndarray, loss: float) -> float:
        out = super().optimizer_step(grad, loss)
        if self.armed("diverge"):
            self.w[0] = np.nextafter(self.w[0], np.float32(np.inf))
        return out


def train(engine: MPIEngine, model: Model, args: argparse.Namespace) -> list[dict]:
    # Only the root knows the initial weights: the others must get them by
    # broadcast, or every later comparison fails.
    start = initial_weights() if engine.is_root else np.full(P, np.nan, np.float32)
    model.w = engine.broadcast_object(start if engine.is_root else None)
    engine.check_replicas()
    data = make_data(args.seed, args.steps, args.rows, args.accum)
    other = make_data(args.seed + 1, args.steps, args.rows, args.accum)
    results = []
    for step, micro_batches in enumerate(data):
        model.step = step
        if model.armed("raise_in_with") or model.armed("raise_outside"):
            raise RuntimeError(f"injected failure in the trainer at step {step}")
        if model.armed("desync"):
            engine.barrier()
        batch = other[step] if model.armed("batch") else micro_batches
        r = engine.run_accumulated(list(batch))
        results.append(
            {
                "step": r.step,
                "loss": r.loss.hex(),
                "tokens": r.tokens,
                "micro_batches": r.micro_batches,
                "groups": r.groups,
                "norm": r.optimizer_result.hex(),
                "digest": engine.last_digest,
            }
        )
    # Only the last rank asks to stop: every rank must hear it; nobody: nobody.
    results.append(
        {
            "any_rank": [
                engine.any_rank(engine.rank == engine.size - 1),
                engine.any_rank(False),
            ]
        }
    )
    engine.barrier()
    return results


def main() -> None:
    args = parse()
    model = Model(args)
    engine = MPIEngine(
        model.grad_fn,
        model.optimizer_step,
        backend=get_backend("numpy"),
        state_fn=lambda: model.w,
        check_every=args.check_every,
        timeout=args.timeout,
    )
    model.rank = engine.rank
    args.out.mkdir(parents=True, exist_ok=True)
    if args.fail == "raise_outside":
        engine.start()
        results = train(engine, model, args)
        engine.stop()
    else:
        try:
            with engine:
                results = train(engine, model, args)
        except BaseException:
            # An aborting rank must never get here (it could save a checkpoint
            # of a failed step): leave a trace for the test if it does.
            (args.out / f"went_on_rank{engine.rank}").touch()
            raise
    report = {
        "rank": engine.rank,
        "size": engine.size,
        "my_groups": list(engine.my_groups),
        "computed": sorted(set(model.computed)),
        "losses": [x.hex() for x in model.losses],
        "grads": model.grads,
        "results": results,
        "w": model.w.tobytes().hex(),
        "w_digest": weights_digest(model.w),
    }
    (args.out / f"rank{engine.rank}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
