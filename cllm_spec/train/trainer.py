"""The training loop of ``cllm train``.

``train(config_path, overrides, resume=None, overwrite=False) -> TrainResult``
builds the run config (defaults, the resumed run's config, the TOML file, the
``--set`` overrides), prepares the data, and runs :class:`Trainer`.

Run directory (``train.out_dir``)
=================================
::

    tokenizer.json              the tokenizer (cllm_spec.train.prepare)
    dataset.bin                 every token id of the corpus, in order
    dataset.json                sizes of the train/val split, the stream's
                                SHA-256, the training split's unigram entropy
    metrics.jsonl               one JSON object per line (below)
    ckpt-<step, 9 digits>.safetensors
                                the last ``train.keep_last`` checkpoints;
                                ``cllm_spec.checkpoint.latest(out_dir)`` is the
                                newest

``metrics.jsonl`` rows, each with ``"kind"`` and ``"step"`` (optimizer steps
done, 1-based)::

    {"kind": "train", "step", "epoch", "loss", "lr", "grad_norm",
     "tokens_per_s"}
    {"kind": "eval", "step", "val_loss", "val_ppl", "val_acc", "val_tokens"}
    {"kind": "sample", "step", "text"}

``loss`` is the mean training cross-entropy (nats/token) of the step's batch
before the update, ``lr`` the rate the update used, ``grad_norm`` the global L2
norm before clipping. Floats are written with ``repr`` precision, so they
read back bit for bit.

One optimizer step
==================
With ``k = train.grad_accum`` micro-batches of ``B = train.batch_size``
sequences of ``T = train.seq_len`` tokens taken in order from the epoch
iterator (:class:`cllm_spec.train.prepare.BatchStream`), and ``s`` the 0-based
step, every micro-batch ``m`` is cut into the 12 symmetry groups
(:func:`cllm_spec.parallel.split_rows`: contiguous row ranges, the first
``B mod 12`` one row longer, empty groups skipped), and with ``n_mg`` the
tokens of group ``g`` of micro-batch ``m`` (:mod:`cllm_spec.parallel.reduction`)::

    l_mg, g_mg = forward/backward of group g of micro-batch m   (mean over n_mg)
    G_m        = grad_tree_reduce([grad_scale(g_mg, n_mg) for g, in group order])
    G          = grad_tree_reduce([G_1, ..., G_k])
    N          = sum of the n_mg                             (= k*B*T)
    loss       = fsum(n_mg * l_mg) / N
    g          = grad_scale(G, 1 / N)
    g, norm    = clip_grad_norm(g, clip_norm)                (clip_norm = 0: none)
    params     = <optim.name>_step(params, g, lr=lr_at(s, schedule), ...)

``parallel.engine`` computes the groups: ``threads`` hands them to
``parallel.workers`` worker threads (:class:`cllm_spec.parallel.Coordinator`),
``mpi`` to the ranks of an ``mpiexec`` job (:class:`cllm_spec.parallel.MPIEngine`).
The cut and the order of every addition depend on ``B`` and ``k`` alone, never
on the number of workers or ranks, so ``parallel.workers = 1, 2, 3, 12`` and
``mpiexec -n K`` give the same bits on a deterministic backend. The group split
is used with one worker too, so that one worker runs the same math as N: a
run's losses and checkpoints do not depend on how it was parallelised. The
same tokens in one unsplit forward/backward (:func:`compute_step_gradients`,
the textbook form, kept for reference) agree up to float rounding only.
:func:`group_step_gradients` is the group-split step in the calling thread.

Evaluation every ``train.eval_every`` steps runs the first
``train.eval_batches`` micro-batches of the validation split (a fixed, seeded
choice of windows, the same at every evaluation); the final evaluation, after
the last step, runs every validation window. The validation loss is the
token-weighted mean cross-entropy, ``val_ppl = exp(val_loss)``, ``val_acc``
the argmax token accuracy.

Checkpoints and resuming
========================
A checkpoint (:mod:`cllm_spec.train.state`) is written every
``train.checkpoint_every`` steps and after the last one, then all but the
newest ``train.keep_last`` are deleted. It holds the parameters, the optimizer
state and step, the schedule, the data cursor (epoch and micro-batches taken),
the sampling RNG, the tokenizer and the run config. ``resume=PATH`` (a file, or a
run directory for its latest checkpoint) restores all of them, so the losses
after resuming are bit-identical to the uninterrupted run's on the same backend
and dtype. ``model.*``, ``data.*``, ``optim.name``, ``train.seed``,
``train.batch_size`` and ``train.seq_len`` cannot change on resume; everything
else can (``train.steps`` to extend a run, ``train.backend``, ``train.dtype``:
the tensors are cast, and named, so any backend reads them). A resumed run
writes to the checkpoint's directory unless ``train.out_dir`` is given, and
keeps the rows of its ``metrics.jsonl`` up to its step, then appends.

A new run refuses an ``out_dir`` that already holds checkpoints, and a resumed
run one that holds checkpoints newer than its own, unless ``overwrite``: then
those checkpoints are deleted first (rotation is by step, so they would
otherwise outlive the new ones).

Parallel runs
=============
``parallel.workers = N`` (engine ``threads``): the trainer's thread is the
coordinator; it never computes a gradient, it hands out the groups, reduces
their gradients and takes the optimizer step. A worker that raises ends the run
with that worker's exception (a note names the worker, group, micro-batch and
step); a worker that hangs ends it after ``parallel.timeout`` seconds with a
QueueTimeoutError naming it. With N > 1 the end of the run prints a per-worker
table (group micro-batches, tokens, busy and idle shares of the time).

``mpiexec -n K cllm train --set parallel.engine=mpi ...``: every rank reads the
config, the corpus and (on resume) the checkpoint, and holds the whole model;
rank 0 checks ``out_dir``, trains the tokenizer and writes the run files, and
hands the tokenizer to the others. Each rank computes its share of the 12
groups of every batch; the group results are exchanged and reduced the same
way on every rank, and every rank takes the same optimizer step. Right after
starting (or resuming) the ranks compare a SHA-256 of the weights and the
optimizer state, then of the weights every ``parallel.check_every`` steps
(:func:`cllm_spec.parallel.weights_digest`). Only rank 0 prints, evaluates,
samples, writes ``metrics.jsonl`` and checkpoints; the others are silent. A
rank that raises aborts the job (``cllm mpi: rank r of K failed ...`` and the
traceback on stderr; mpiexec exits non-zero), one that dies is ended by
mpiexec, one that hangs by the others after ``parallel.timeout`` seconds.

Either way, ``metrics.jsonl`` ends with one row (workers are ranks under MPI;
``batches`` counts group micro-batches, ``busy_s`` the time in forward and
backward, ``idle_s`` the time waiting for work)::

    {"kind": "parallel", "step", "engine", "workers", "seconds",
     "tokens_per_s", "per_worker": [{"worker", "batches", "tokens",
     "busy_s", "idle_s"}, ...]}

BLAS threads: ``train.blas_threads`` (default 1; 0 leaves BLAS alone) caps the
BLAS library's threads (threadpoolctl) for the whole run. At this model size a
matrix product is too small for two BLAS threads to pay off, and on a busy
machine they wait for each other and make steps several times slower; with
one BLAS thread each, two worker threads keep two cores busy, because the
numpy kernels release the GIL inside BLAS.

Stopping
========
- Ctrl-C (SIGINT): the current step finishes, a checkpoint is saved and the
  result is ``"interrupted"`` (``cllm train`` exits with 130). A second Ctrl-C
  aborts at once without saving; the last checkpoint is intact, since writes are
  atomic. Under MPI (mpiexec forwards the signal to every rank) the ranks agree
  at the step boundary (``any_rank``), rank 0 saves, and every rank exits 130.
- ``train.time_limit`` seconds (0: none): the run stops after the step that
  crosses it, evaluates, saves a checkpoint; the result is ``"time_limit"``.
- A non-finite loss, gradient norm or updated parameter raises
  :class:`DivergedError` naming the step; nothing of the bad state is saved and
  the previous checkpoints stay loadable.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped]

from cllm_spec import checkpoint
from cllm_spec.batching import iter_epoch
from cllm_spec.data import tokenizer_from_dict
from cllm_spec.errors import (
    BackendError,
    CheckpointError,
    CllmError,
    ConfigError,
    NonFiniteError,
)
from cllm_spec.generate import generate
from cllm_spec.metrics import perplexity, token_accuracy
from cllm_spec.model import ModelConfig, backward, forward, init_params, mask_targets
from cllm_spec.parallel import (
    N_GROUPS,
    Coordinator,
    GroupResult,
    MPIEngine,
    StepResult,
    WorkerStats,
    finish_step,
    reduce_groups,
    split_rows,
)
from cllm_spec.protocols import Batch
from cllm_spec.registry import ENV_VAR, get_backend
from cllm_spec.sampling import SamplingConfig
from cllm_spec.schedules import lr_at
from cllm_spec.train.config import RunConfig, clamp_warmup, load_config
from cllm_spec.train.prepare import BatchStream, RunData, prepare_data
from cllm_spec.train.state import (
    RunSnapshot,
    frozen_field_changes,
    init_optimizer_state,
    model_config,
    optimizer_hyperparameters,
    optimizer_step,
    read_checkpoint,
    resumed_schedule,
    save_run,
    schedule_config,
    snapshot_from,
)

METRICS_FILE = "metrics.jsonl"
SAMPLING = SamplingConfig(temperature=0.8)
PROMPT_TOKENS = 16  # tokens of validation text that start each sample


class DivergedError(NonFiniteError):
    """Training produced a non-finite loss, gradient or parameter."""

    hint = (
        "lower optim.lr or set train.clip_norm, then resume from the last "
        "checkpoint (or start again)"
    )


@dataclass(frozen=True)
class TrainResult:
    status: str  # "completed" | "interrupted" | "time_limit"
    step: int  # optimizer steps done
    checkpoint: Path | None
    val_loss: float | None  # of the final evaluation (None if interrupted)
    unigram_entropy: float
    seconds: float


class EvalResult(NamedTuple):
    loss: float
    perplexity: float
    accuracy: float
    tokens: int


# ---------------------------------------------------------------- one step ---
def compute_step_gradients(
    backend: Any, cfg: ModelConfig, params: np.ndarray, batches: Sequence[Batch]
) -> tuple[float, np.ndarray]:
    """Mean loss and mean gradient ``(P,)`` over the micro-batches of one step,
    each micro-batch in one unsplit forward/backward.

    The textbook form of a step (``cllm train`` runs :func:`group_step_gradients`'
    math instead; the two agree up to float rounding). Raises DivergedError as
    soon as a micro-batch's loss is not finite (its backward is skipped).
    """
    total = 0.0
    acc: np.ndarray | None = None
    for i, batch in enumerate(batches):
        targets = mask_targets(batch.targets, batch.mask)
        _, loss, cache = forward(backend, cfg, params, batch.input_ids, targets)
        assert loss is not None  # targets were given
        if not math.isfinite(loss):
            raise DivergedError(f"loss {loss} on micro-batch {i}")
        grads = backward(backend, cfg, params, cache)
        acc = grads if acc is None else backend.grad_accumulate(acc, grads)
        total += loss
    if acc is None:
        raise ConfigError("batches: a step needs at least one micro-batch")
    if len(batches) > 1:
        acc = backend.grad_scale(acc, 1.0 / len(batches))
    return total / len(batches), acc


def group_gradients(
    backend: Any, cfg: ModelConfig, params: np.ndarray, batch: Batch
) -> tuple[np.ndarray, float, int]:
    """The parallel engines' ``grad_fn`` for one group micro-batch.

    Returns ``(n * d(mean loss)/d params, n * mean loss, n)`` with ``n`` the
    batch's counted tokens: the gradient of the summed loss, the summed loss and
    the count (:mod:`cllm_spec.parallel.reduction`). Runs on worker threads, so
    it sets its own floating-point error state (numpy's is per thread); a
    non-finite loss raises DivergedError before the backward.
    """
    n = int(np.count_nonzero(batch.mask))
    if n == 0:  # nothing counts: the mean is 0/0, the sum is 0
        return np.zeros_like(params), 0.0, 0
    # Overflow shows up as inf or NaN, which is checked and reported.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        targets = mask_targets(batch.targets, batch.mask)
        _, loss, cache = forward(backend, cfg, params, batch.input_ids, targets)
        assert loss is not None  # targets were given
        if not math.isfinite(loss):
            raise DivergedError(f"loss {loss}")
        grads = backward(backend, cfg, params, cache)
        return np.asarray(backend.grad_scale(grads, float(n))), loss * n, n


def group_step_gradients(
    backend: Any, cfg: ModelConfig, params: np.ndarray, batches: Sequence[Batch]
) -> tuple[float, np.ndarray]:
    """Mean loss and mean gradient ``(P,)`` of one step by the group split, in
    the calling thread: the bits every engine and worker count produce."""
    micro_sums: list[np.ndarray] = []
    results: list[GroupResult] = []
    for m, batch in enumerate(batches):
        mine = [
            GroupResult(m, g, *group_gradients(backend, cfg, params, part))
            for g, part in enumerate(split_rows(batch, N_GROUPS))
            if part is not None
        ]
        micro_sums.append(reduce_groups(backend, mine))
        results.extend(mine)
    if not results:
        raise ConfigError("batches: a step needs at least one micro-batch")
    grad, loss, _ = finish_step(backend, micro_sums, results)
    return loss, grad


def apply_update(
    backend: Any,
    run: RunConfig,
    params: np.ndarray,
    grads: np.ndarray,
    opt_state: Any,
    lr: float,
) -> tuple[np.ndarray, Any, float]:
    """Clip ``grads`` (when ``train.clip_norm > 0``) and take one optimizer step.

    Returns the new params, the new state and the gradient norm before clipping.
    """
    if run.train.clip_norm > 0:
        grads, norm = backend.clip_grad_norm(grads, run.train.clip_norm)
    else:
        norm = backend.grad_global_norm(grads)
    if not math.isfinite(norm):
        raise DivergedError(f"gradient norm {norm}")
    new_params, new_state = optimizer_step(
        backend,
        run.optim.name,
        params,
        grads,
        opt_state,
        lr,
        optimizer_hyperparameters(run.optim),
    )
    if not np.isfinite(new_params).all():
        raise DivergedError("the update made parameters NaN or inf")
    return new_params, new_state, float(norm)


# -------------------------------------------------------------- evaluation ---
def evaluate(
    backend: Any,
    cfg: ModelConfig,
    params: np.ndarray,
    tokens: np.ndarray,
    batch_size: int,
    seq_len: int,
    *,
    seed: int,
    max_batches: int | None = None,
) -> EvalResult:
    """Token-weighted loss, perplexity and accuracy over validation batches."""
    batches: Iterator[Batch] = iter_epoch(
        tokens, batch_size, seq_len, seed=seed, epoch=0, drop_last=False
    )
    if max_batches is not None:
        batches = itertools.islice(batches, max_batches)
    loss_sum = correct = 0.0
    count = 0
    for batch in batches:
        targets = mask_targets(batch.targets, batch.mask)
        logits, loss, _ = forward(backend, cfg, params, batch.input_ids, targets)
        assert loss is not None
        n = int(batch.mask.sum())
        flat = logits.reshape(-1, cfg.vocab_size)  # (B*T, V)
        loss_sum += loss * n
        correct += token_accuracy(flat, targets.reshape(-1)) * n
        count += n
    mean = loss_sum / count
    return EvalResult(mean, perplexity(mean), correct / count, count)


# ------------------------------------------------------------ run plumbing ---
class MetricsLog:
    """``metrics.jsonl``: rows appended and flushed one by one."""

    def __init__(self, path: Path, keep_through: int | None) -> None:
        """Start empty, or keep the rows with ``step <= keep_through``."""
        self.path = path
        kept: list[str] = []
        if keep_through is not None and path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    if json.loads(line)["step"] <= keep_through:
                        kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(row, allow_nan=False) + "\n")


class StopRequest:
    """Turns the first SIGINT into a flag checked between steps (main thread only).

    A second SIGINT raises KeyboardInterrupt at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        # Only a flag: printing from a handler could re-enter the output code.
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def resolve_backend(name: str) -> tuple[str, Any]:
    """``(name, backend)``: ``name``, else ``$CLLM_BACKEND``, else "c" if it
    loads, else "numpy"."""
    chosen = name or os.environ.get(ENV_VAR, "").strip()
    if chosen:
        return chosen, get_backend(chosen)
    try:
        return "c", get_backend("c")
    except BackendError:
        return "numpy", get_backend("numpy")


def _check_out_dir(out_dir: Path, resume_step: int | None, overwrite: bool) -> None:
    """Refuse to mix two runs' checkpoints (module docstring), or delete first."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"train.out_dir: {out_dir} exists and is not a directory")
    found = checkpoint.list_checkpoints(out_dir)
    clash = [p for s, p in found if resume_step is None or s > resume_step]
    if not clash:
        return
    if overwrite:
        for path in clash:
            path.unlink(missing_ok=True)
        return
    if resume_step is None:
        raise ConfigError(
            f"train.out_dir: {out_dir} already holds a run ({clash[-1].name})",
            hint=f"continue it with --resume {out_dir}, pick another directory with "
            "--set train.out_dir=DIR, or pass --overwrite to start over",
        )
    raise ConfigError(
        f"train.out_dir: {out_dir} holds checkpoints after step {resume_step} "
        f"({clash[-1].name}), from the run being resumed or another",
        hint="resume into another directory with --set train.out_dir=DIR, or pass "
        "--overwrite to delete the later checkpoints",
    )


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def _quiet(message: str) -> None:
    """What MPI ranks other than 0 print: nothing."""


class _NoLog:
    """The metrics log of MPI ranks other than 0."""

    def write(self, row: dict[str, Any]) -> None:
        pass


def worker_table(stats: Sequence[WorkerStats], label: str = "") -> str:
    """Per-worker statistics as a table: group micro-batches, tokens, and the
    shares of time spent computing (busy) and waiting (idle)."""
    who = label or "worker"
    lines = [f"{who:>8} {'groups':>8} {'tokens':>12} {'busy %':>7} {'idle %':>7}"]
    for w, st in enumerate(stats):
        busy = 100.0 * st.utilization
        idle = 100.0 - busy if st.busy_s + st.idle_s > 0 else 0.0
        lines.append(
            f"{w:>8} {st.batches:>8,} {st.tokens:>12,} {busy:>7.1f} {idle:>7.1f}"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """At most ``n`` BLAS threads inside the block (``n = 0``: unchanged).

    Why: see "BLAS threads" in the module docstring.
    """
    if n == 0:
        yield
        return
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(limits=n, user_api="blas"):
        yield


# ----------------------------------------------------------------- engines ---
class StepEngine:
    """Computes a Trainer's steps: :class:`ThreadSteps` or :class:`MPISteps`.

    ``bind(trainer)`` names the trainer whose ``grad_fn`` and ``optimizer_step``
    it calls. ``with engine:`` starts it and stops it; blocks nest, and only the
    outermost one starts and stops. The collective methods (``any_rank``,
    ``barrier``, ``share``, ``check_start``, ``worker_stats``) must be called by
    every rank in the same order; with threads they are local.
    """

    name = ""
    is_root = True  # the process that prints, logs and writes checkpoints
    n_workers = 1

    def __init__(self) -> None:
        self._trainer: Trainer | None = None
        self._depth = 0

    def bind(self, trainer: Trainer) -> None:
        self._trainer = trainer

    def _target(self) -> Trainer:
        if self._trainer is None:
            raise ConfigError("the step engine has no trainer: call bind() first")
        return self._trainer

    def grad_fn(self, group: int, batch: Batch) -> tuple[np.ndarray, float, int]:
        return self._target().grad_fn(group, batch)

    def optimizer_step(self, grad: np.ndarray, loss: float) -> float:
        return self._target().optimizer_step(grad, loss)

    def __enter__(self) -> StepEngine:
        if self._depth == 0:
            self._open()
        self._depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._close(exc_type, exc, tb)

    def _open(self) -> None:
        raise NotImplementedError

    def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        raise NotImplementedError

    def step(self, batches: list[Batch]) -> StepResult:
        """One optimizer step over the micro-batches ``batches``."""
        raise NotImplementedError

    def reset_stats(self) -> None:
        raise NotImplementedError

    def worker_stats(self) -> list[WorkerStats]:
        """Per worker (rank) statistics since ``reset_stats``, on every rank."""
        raise NotImplementedError

    def any_rank(self, flag: bool) -> bool:
        return flag

    def barrier(self) -> None:
        """Every rank got here (after rank 0 saved a checkpoint)."""

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return obj

    def check_start(self, state: dict[str, np.ndarray]) -> None:
        """Every rank starts from the same ``state``."""

    def settle(self, failure: BaseException | None) -> None:
        """Raise ``failure``, rank 0's error in preparing the run, on every rank.

        Collective. The engine then stops cleanly (no abort), so every rank
        leaves with the same error and exit status, while the others would
        otherwise wait for rank 0 until ``parallel.timeout``.
        """
        if failure is not None:
            raise failure

    def describe(self) -> str:
        raise NotImplementedError


class ThreadSteps(StepEngine):
    """``parallel.engine = threads``: a Coordinator of ``workers`` threads."""

    name = "threads"

    def __init__(self, backend: Any, workers: int, timeout: float) -> None:
        super().__init__()
        self.n_workers = workers
        self._coord = Coordinator(
            workers, self.grad_fn, self.optimizer_step, backend=backend, timeout=timeout
        )

    def _open(self) -> None:
        self._coord.start()

    def _close(self, *exc: object) -> None:
        self._coord.stop()

    def step(self, batches: list[Batch]) -> StepResult:
        return self._coord.run_accumulated(list(batches))

    def reset_stats(self) -> None:
        self._coord.reset_stats()

    def worker_stats(self) -> list[WorkerStats]:
        return list(self._coord.stats())

    def describe(self) -> str:
        return (
            f"{self.n_workers} worker thread{'s' * (self.n_workers > 1)} "
            "(threads engine)"
        )


class MPISteps(StepEngine):
    """``parallel.engine = mpi``: this process is one rank of an mpiexec job."""

    name = "mpi"

    def __init__(self, backend: Any, check_every: int, timeout: float) -> None:
        super().__init__()
        self._engine = MPIEngine(
            self.grad_fn,
            self.optimizer_step,
            backend=backend,
            state_fn=self._weights,
            check_every=check_every,
            timeout=timeout,
        )
        self._check_every = check_every
        self.rank = self._engine.rank
        self.is_root = self._engine.is_root
        self.n_workers = self._engine.size
        self._stats = WorkerStats()
        self._busy = 0.0
        self._settled: BaseException | None = None

    def _weights(self) -> np.ndarray:
        return self._target().params

    def grad_fn(self, group: int, batch: Batch) -> tuple[np.ndarray, float, int]:
        started = time.monotonic()
        out = super().grad_fn(group, batch)
        self._busy += time.monotonic() - started
        self._stats = self._stats.record(batches=1, tokens=out[2])
        return out

    def _open(self) -> None:
        self._engine.start()

    def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and exc is self._settled:
            self._engine.stop()  # every rank raised it: nobody waits for us
            return
        # Any other exception aborts the whole job: the others would wait for us.
        self._engine.__exit__(exc_type, exc, tb)

    def step(self, batches: list[Batch]) -> StepResult:
        self._busy = 0.0
        result = self._engine.run_accumulated(list(batches))
        # Everything but this rank's own forward/backward was waiting for work
        # or for the other ranks (the exchange, the reduction, the update).
        idle = max(result.seconds - self._busy, 0.0)
        self._stats = self._stats.record(busy_s=self._busy, idle_s=idle)
        return result

    def reset_stats(self) -> None:
        self._stats = WorkerStats()

    def worker_stats(self) -> list[WorkerStats]:
        return [
            self._engine.broadcast_object(self._stats, root=r)
            for r in range(self.n_workers)
        ]

    def any_rank(self, flag: bool) -> bool:
        return self._engine.any_rank(flag)

    def barrier(self) -> None:
        self._engine.barrier()

    def share(self, obj: Any) -> Any:
        return self._engine.broadcast_object(obj, root=0)

    def check_start(self, state: dict[str, np.ndarray]) -> None:
        self._engine.check_replicas(state)

    def settle(self, failure: BaseException | None) -> None:
        told = self.share(
            None if failure is None else f"{type(failure).__name__}: {failure}"
        )
        if told is None:
            return
        error = failure or ConfigError(
            f"MPI rank {self.rank} of {self.n_workers}: rank 0 could not prepare "
            f"the run ({told.splitlines()[0]})",
            hint="rank 0's message, above or below, gives the cause and a hint",
        )
        self._settled = error
        raise error

    def describe(self) -> str:
        every = {0: "at the start", 1: "after every step"}.get(
            self._check_every, f"every {self._check_every} steps"
        )
        return (
            f"{self.n_workers} MPI rank{'s' * (self.n_workers > 1)} (rank 0 logs and "
            f"checkpoints; weights compared {every})"
        )


def make_step_engine(cfg: RunConfig, backend: Any) -> StepEngine:
    """The engine ``parallel.engine`` names, set up from ``[parallel]``."""
    par = cfg.parallel
    if par.engine == "mpi":
        return MPISteps(backend, par.check_every, par.timeout)
    return ThreadSteps(backend, par.workers, par.timeout)


# ----------------------------------------------------------------- trainer ---
class Trainer:
    """One run: the state, the data stream and the loop (module docstring)."""

    def __init__(
        self,
        cfg: RunConfig,
        backend_name: str,
        backend: Any,
        data: RunData,
        snapshot: RunSnapshot | None = None,
        say: Callable[[str], None] = _say,
        engine: StepEngine | None = None,
    ) -> None:
        self.cfg = cfg
        self.backend_name = backend_name
        self.backend = backend
        self.data = data
        self.engine = engine if engine is not None else make_step_engine(cfg, backend)
        self.engine.bind(self)
        self.is_root = self.engine.is_root
        self.say = say if self.is_root else _quiet
        self.out_dir = Path(cfg.train.out_dir)
        self.model_cfg = model_config(cfg, data.tokenizer.vocab_size)
        self.schedule = schedule_config(cfg)
        self.schedule_notice: str | None = None
        dtype = np.dtype(cfg.train.dtype)
        seed = cfg.train.seed
        if snapshot is None:
            self.params = init_params(
                self.model_cfg, np.random.default_rng(seed), dtype
            )
            self.opt_state = init_optimizer_state(cfg.optim.name, self.params)
            self.rng = np.random.default_rng([seed, 1])
            self.last_rows: dict[str, Any] = {"train": None, "eval": None}
            epoch, index = 0, 0
        else:
            if snapshot.model_config != self.model_cfg:
                raise CheckpointError(
                    "the checkpoint's model config differs from the run config's"
                )
            self.params = snapshot.params
            self.opt_state = snapshot.opt_state
            self.schedule, self.schedule_notice = resumed_schedule(
                cfg, snapshot.schedule, int(snapshot.opt_state.step)
            )
            self.rng = snapshot.rng
            self.last_rows = {"train": None, "eval": None, **snapshot.metrics}
            epoch, index = _cursor_position(snapshot.cursor)
        self.stream = BatchStream(
            data.train,
            cfg.train.batch_size,
            cfg.train.seq_len,
            seed=seed,
            epoch=epoch,
            index=index,
        )
        self.start_step = self.step
        self.log: MetricsLog | _NoLog = _NoLog()
        if self.is_root:
            self.log = MetricsLog(
                self.out_dir / METRICS_FILE,
                None if snapshot is None else self.start_step,
            )
        self._lr = math.nan  # the rate of the step in flight
        self.last_checkpoint: Path | None = checkpoint.latest(self.out_dir)
        self.saved_step: int | None = None

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return int(self.opt_state.step)

    # ------------------------------------------------------------- the loop --
    def run(self) -> TrainResult:
        with self.engine:
            self.engine.check_start(self.replica_state())
            self.engine.reset_stats()
            status, seconds, val_loss = self._loop()
            stats = self.engine.worker_stats()
        self._report(status, seconds, val_loss, stats)
        return TrainResult(
            status,
            self.step,
            self.last_checkpoint,
            val_loss,
            self.data.unigram_entropy,
            seconds,
        )

    def _loop(self) -> tuple[str, float, float | None]:
        train = self.cfg.train
        started = time.perf_counter()
        status = "completed"
        bar = tqdm(
            total=train.steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=None if self.is_root else True,  # a bar only on a terminal
            file=sys.stderr,
            dynamic_ncols=True,
        )
        with bar, StopRequest() as stop:
            while self.step < train.steps:
                late = bool(train.time_limit) and (
                    time.perf_counter() - started > train.time_limit
                )
                # Collective under MPI: every rank stops after the same step.
                if self.engine.any_rank(stop.requested or late):
                    if self.engine.any_rank(stop.requested):
                        self.say(
                            "interrupted: saving a checkpoint (Ctrl-C again aborts)"
                        )
                        status = "interrupted"
                    else:
                        status = "time_limit"
                    break
                row = self.train_step()
                bar.update(1)
                bar.set_postfix(
                    loss=f"{row['loss']:.4f}",
                    lr=f"{row['lr']:.2e}",
                    tok_s=f"{row['tokens_per_s']:.0f}",
                    refresh=False,
                )
                self._periodic()
            seconds = time.perf_counter() - started
            # Still under StopRequest: a Ctrl-C now cannot cut the final save.
            val_loss = None
            if status != "interrupted" and self.is_root:
                val_loss = self.run_evaluation(None).loss  # every validation window
            if self.saved_step != self.step:
                self.save_checkpoint()
        return status, seconds, val_loss

    def train_step(self) -> dict[str, Any]:
        """One optimizer step; returns (and logs) its metrics row."""
        train = self.cfg.train
        s = self.step
        begin = time.perf_counter()
        self._lr = lr = lr_at(s, self.schedule)
        batches = self.stream.take(train.grad_accum)
        with self._or_diverged(s + 1):
            result = self.engine.step(batches)
        seconds = time.perf_counter() - begin
        row = {
            "kind": "train",
            "step": self.step,
            "epoch": self.stream.epoch,
            "loss": result.loss,
            "lr": lr,
            "grad_norm": result.optimizer_result,
            "tokens_per_s": result.tokens / max(seconds, 1e-9),
        }
        self.log.write(row)
        self.last_rows["train"] = row
        return row

    def grad_fn(self, group: int, batch: Batch) -> tuple[np.ndarray, float, int]:
        """One group's gradient terms (worker threads; see group_gradients).

        Reads ``params`` only: the coordinator replaces them after every group
        of the step is in.
        """
        return group_gradients(self.backend, self.model_cfg, self.params, batch)

    def optimizer_step(self, grad: np.ndarray, loss: float) -> float:
        """Clip, update ``params`` and the optimizer state; the pre-clip norm.

        Called once per step by the engine, on the trainer's thread.
        """
        if not math.isfinite(loss):
            raise DivergedError(f"loss {loss}")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            params, state, norm = apply_update(
                self.backend, self.cfg, self.params, grad, self.opt_state, self._lr
            )
        self.params, self.opt_state = params, state
        return norm

    def replica_state(self) -> dict[str, np.ndarray]:
        """What every MPI rank must hold the same bits of: weights, optimizer."""
        state = {"params": self.params, "step": np.asarray(self.step)}
        for name in checkpoint.optimizer_fields(self.cfg.optim.name):
            state[f"optimizer.{name}"] = np.asarray(getattr(self.opt_state, name))
        return state

    def _periodic(self) -> None:
        train, step = self.cfg.train, self.step
        last = step == train.steps
        if self.is_root:  # evaluations and samples are for display: rank 0 only
            if train.eval_every and step % train.eval_every == 0 and not last:
                self.run_evaluation(train.eval_batches)
            if train.sample_every and (step % train.sample_every == 0 or last):
                self.print_sample()
        if train.checkpoint_every and step % train.checkpoint_every == 0 and not last:
            self.save_checkpoint()

    @contextlib.contextmanager
    def _or_diverged(self, step: int) -> Iterator[None]:
        """Re-raise a NonFiniteError of step ``step`` as a DivergedError."""
        try:
            yield
        except NonFiniteError as exc:
            kept = (
                f"the last good checkpoint is {self.last_checkpoint}"
                if self.last_checkpoint is not None
                else "no checkpoint had been written yet"
            )
            diverged = DivergedError(
                f"training stopped at step {step}: non-finite values "
                f"({exc.message}); this state was not saved, {kept}"
            )
            for note in getattr(exc, "__notes__", ()):  # e.g. the worker's
                diverged.add_note(note)
            raise diverged from exc

    # --------------------------------------------------- eval, sample, save --
    def run_evaluation(self, max_batches: int | None) -> EvalResult:
        train = self.cfg.train
        result = evaluate(
            self.backend,
            self.model_cfg,
            self.params,
            self.data.val,
            train.batch_size,
            train.seq_len,
            seed=train.seed,
            max_batches=max_batches,
        )
        row = {
            "kind": "eval",
            "step": self.step,
            "val_loss": result.loss,
            "val_ppl": result.perplexity,
            "val_acc": result.accuracy,
            "val_tokens": result.tokens,
        }
        self.log.write(row)
        self.last_rows["eval"] = row
        train_row = self.last_rows.get("train") or {}
        self.say(
            f"step {self.step}: train loss {train_row.get('loss', math.nan):.4f}, "
            f"val loss {result.loss:.4f} (ppl {result.perplexity:.2f}, "
            f"acc {result.accuracy:.3f}, {result.tokens} tokens)"
        )
        return result

    def print_sample(self) -> str:
        prompt = np.asarray(self.data.val[:PROMPT_TOKENS], dtype=np.int32)
        new = generate(
            self.backend,
            self.model_cfg,
            self.params,
            prompt,
            self.cfg.train.sample_tokens,
            SAMPLING,
            self.rng,
            None,
        )
        text = self.data.tokenizer.decode(np.concatenate([prompt, new]))
        self.log.write({"kind": "sample", "step": self.step, "text": text})
        self.say(f"sample at step {self.step}:\n{text}\n")
        return text

    def save_checkpoint(self) -> Path:
        """Rank 0 writes; every rank waits for it (a barrier under MPI)."""
        path = checkpoint.checkpoint_path(self.out_dir, self.step)
        if self.is_root:
            self._write_checkpoint(path)
        self.engine.barrier()
        self.last_checkpoint = path
        self.saved_step = self.step
        return path

    def _write_checkpoint(self, path: Path) -> None:
        snap = RunSnapshot(
            config=self.cfg,
            backend=self.backend_name,
            model_config=self.model_cfg,
            tokenizer=self.data.tokenizer,
            params=self.params,
            opt_state=self.opt_state,
            cursor={
                **self.stream.cursor,
                "seed": self.cfg.train.seed,
                "n_train": int(self.data.train.size),
                "n_val": int(self.data.val.size),
                "sha256": self.data.sha256,
            },
            rng=self.rng,
            schedule=self.schedule,
            metrics=self.last_rows,
        )
        save_run(path, snap)
        checkpoint.rotate(self.out_dir, self.cfg.train.keep_last)

    def _report(
        self,
        status: str,
        seconds: float,
        val_loss: float | None,
        stats: Sequence[WorkerStats],
    ) -> None:
        steps = self.step - self.start_step
        tokens = steps * self.cfg.train.grad_accum * self.cfg.train.batch_size
        tokens *= self.cfg.train.seq_len
        rate = tokens / seconds if seconds > 0 else 0.0
        self.log.write(
            {
                "kind": "parallel",
                "step": self.step,
                "engine": self.engine.name,
                "workers": len(stats),
                "seconds": seconds,
                "tokens_per_s": rate,
                "per_worker": [
                    {
                        "worker": w,
                        "batches": st.batches,
                        "tokens": st.tokens,
                        "busy_s": st.busy_s,
                        "idle_s": st.idle_s,
                    }
                    for w, st in enumerate(stats)
                ],
            }
        )
        if status == "interrupted":
            self.say(f"interrupted at step {self.step}")
        elif status == "time_limit":
            self.say(
                f"time limit of {self.cfg.train.time_limit:g} s reached at step "
                f"{self.step}"
            )
        self.say(
            f"trained {steps} steps in {seconds:.1f} s ({rate:,.0f} tokens/s); "
            f"step {self.step} of {self.cfg.train.steps}"
        )
        if len(stats) > 1:
            self.say(worker_table(stats, "rank" if self.engine.name == "mpi" else ""))
        h = self.data.unigram_entropy
        if val_loss is not None:
            self.say(
                f"final validation loss {val_loss:.4f} nats/token; unigram entropy "
                f"{h:.4f} nats/token; ratio {val_loss / h:.3f}"
            )
        self.say(f"checkpoint: {self.last_checkpoint}")
        if status == "completed":
            self.say(f"sample from it with: cllm generate {self.out_dir}")
        else:
            self.say(f"resume with: cllm train --resume {self.last_checkpoint}")


def _cursor_position(cursor: dict[str, Any]) -> tuple[int, int]:
    epoch, index = cursor.get("epoch"), cursor.get("batch")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (epoch, index)):
        raise CheckpointError(
            f"data_cursor: expected ints epoch and batch, got {cursor!r}",
            hint="resume from a checkpoint written by `cllm train`",
        )
    return int(epoch), int(index)  # type: ignore[arg-type]


# -------------------------------------------------------------- entry point ---
def train(
    config_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    say: Callable[[str], None] = _say,
) -> TrainResult:
    """Configure, prepare and run (module docstring)."""
    loaded = None
    base = None
    if resume is not None:
        path = checkpoint.resolve(resume)
        tensors, meta, run = read_checkpoint(path)
        loaded = (path, tensors, meta)
        # The run continues where its checkpoint is, unless told otherwise.
        base = {**run["config"], "train": {**run["config"].get("train", {})}}
        base["train"]["out_dir"] = str(path.parent)
    cfg = load_config(config_path, overrides, base=base)
    if base is not None:
        changed = frozen_field_changes(base, cfg)
        if changed:
            field, before, after = changed[0]
            raise ConfigError(
                f"{field}: cannot change when resuming (the checkpoint's run has "
                f"{before!r}, got {after!r})",
                hint="start a new run in another train.out_dir to change it",
            )
    cfg, notice = clamp_warmup(cfg)
    if notice:
        _say(f"note: {notice}")
    schedule_config(cfg)  # the cross-section checks, before anything is written
    backend_name, backend = resolve_backend(cfg.train.backend)
    if cfg.train.dtype not in tuple(str(np.dtype(d)) for d in backend.dtypes):
        raise ConfigError(
            f"train.dtype: backend {backend_name!r} computes in "
            f"{[str(np.dtype(d)) for d in backend.dtypes]}, got {cfg.train.dtype!r}"
        )
    engine = make_step_engine(cfg, backend)
    if not engine.is_root:
        say = _quiet
    out_dir = Path(cfg.train.out_dir)
    snapshot = None
    if loaded is not None:
        path, tensors, meta = loaded
        snapshot = snapshot_from(path, tensors, meta, cfg, backend_name)
        done = int(snapshot.opt_state.step)
        if done >= cfg.train.steps:
            raise ConfigError(
                f"train.steps: the checkpoint is at step {done} already, and "
                f"train.steps={cfg.train.steps}",
                hint=f"continue with --set train.steps=N for some N > {done}",
            )
    data = None
    failure: BaseException | None = None
    # Rank 0 alone checks and writes the run directory; its error is raised on
    # every rank (settle), so that none waits for it.
    if engine.is_root:
        try:
            _check_out_dir(out_dir, None if snapshot is None else done, overwrite)
            tokenizer = None if snapshot is None else snapshot.tokenizer
            data = prepare_data(cfg, out_dir, tokenizer)
        except (CllmError, OSError) as exc:
            failure = exc
    with blas_threads(cfg.train.blas_threads), engine:
        engine.settle(failure)
        shared = engine.share(
            None if data is None else (data.tokenizer.to_dict(), data.sha256)
        )
        if data is None:  # the other ranks: the same ids from rank 0's tokenizer
            data = prepare_data(
                cfg, out_dir, tokenizer_from_dict(shared[0]), write=False
            )
        if data.sha256 != shared[1]:
            raise ConfigError(
                f"data.corpus: this rank read other tokens than rank 0 from "
                f"{cfg.data.corpus!r}",
                hint="every rank must see the same corpus file",
            )
        if snapshot is not None and snapshot.cursor.get("sha256") != data.sha256:
            raise ConfigError(
                f"data.corpus: the tokens of {cfg.data.corpus!r} differ from the "
                "ones the checkpoint was trained on",
                hint="resume with the corpus of the run",
            )
        trainer = Trainer(cfg, backend_name, backend, data, snapshot, say, engine)
        _describe(trainer, resumed_from=None if loaded is None else loaded[0])
        return trainer.run()


def _describe(trainer: Trainer, resumed_from: Path | None) -> None:
    cfg, mcfg, data = trainer.cfg, trainer.model_cfg, trainer.data
    say = trainer.say
    say(
        f"backend {trainer.backend_name} ({cfg.train.dtype}); model "
        f"{trainer.params.size:,} parameters (n_embd={mcfg.n_embd}, "
        f"n_layer={mcfg.n_layer}, n_head={mcfg.n_head}, block_size={mcfg.block_size})"
    )
    say(
        f"data: corpus {cfg.data.corpus!r}, {data.tokenizer.kind} tokenizer "
        f"(V={data.tokenizer.vocab_size}): {data.train.size:,} train + "
        f"{data.val.size:,} validation tokens; unigram entropy "
        f"{data.unigram_entropy:.4f} nats/token (training split)"
    )
    blas = cfg.train.blas_threads
    say(
        f"parallel: {trainer.engine.describe()}; BLAS threads: "
        f"{blas if blas else 'as set outside'}"
    )
    per_step = cfg.train.grad_accum * cfg.train.batch_size * cfg.train.seq_len
    start = f"resuming {resumed_from} at step {trainer.step}; " if resumed_from else ""
    say(
        f"{start}run dir {trainer.out_dir}: {cfg.train.steps} steps of {per_step} "
        f"tokens, {cfg.optim.name} lr {cfg.optim.lr:g} ({cfg.schedule.name})"
    )
    if trainer.schedule_notice:
        say(trainer.schedule_notice)


__all__ = [
    "METRICS_FILE",
    "DivergedError",
    "EvalResult",
    "MPISteps",
    "MetricsLog",
    "StepEngine",
    "StopRequest",
    "ThreadSteps",
    "TrainResult",
    "Trainer",
    "apply_update",
    "blas_threads",
    "compute_step_gradients",
    "evaluate",
    "group_gradients",
    "group_step_gradients",
    "make_step_engine",
    "resolve_backend",
    "train",
    "worker_table",
]
