"""The loop of a training run: :class:`Trainer`.

A Trainer holds one run's state (parameters, optimizer state, sampling RNG,
data cursor) and runs its steps through a step engine
(:mod:`cllm_spec.train.engines`) until ``train.steps``:

- every step: take ``train.grad_accum`` micro-batches, compute and apply the
  update (:mod:`cllm_spec.train.step`), log a ``train`` row
  (:mod:`cllm_spec.train.runlog`);
- every ``train.eval_every`` steps: evaluate the first ``train.eval_batches``
  micro-batches of the validation split (the same windows every time); the
  final evaluation, after the last step, runs every validation window;
- every ``train.sample_every`` steps and after the last: print a sample;
- every ``train.checkpoint_every`` steps and after the last: save a checkpoint
  (:mod:`cllm_spec.train.state`), then delete all but the newest
  ``train.keep_last``. It holds the parameters, the optimizer state and step,
  the schedule, the data cursor (epoch and micro-batches taken), the sampling
  RNG, the tokenizer and the run config.

Stopping
========
- Ctrl-C (SIGINT): the current step finishes, a checkpoint is saved and the
  result is ``"interrupted"`` (``cllm train`` exits with 130). A second Ctrl-C
  aborts at once without saving; the last checkpoint is intact, since writes are
  atomic. Under MPI (mpiexec forwards the signal to every rank) the ranks agree
  at the step boundary (``any_rank``), rank 0 saves, and every rank exits 130.
- SIGTERM (batch schedulers, ``docker stop``, ``kill``): the same, with the
  result ``"terminated"`` (``cllm train`` exits with 143 = 128 + 15).
- ``train.time_limit`` seconds (0: none): the run stops after the step that
  crosses it, evaluates, saves a checkpoint; the result is ``"time_limit"``.
- A non-finite loss, gradient norm or updated parameter raises
  :class:`~cllm_spec.train.step.DivergedError` naming the step; nothing of the
  bad state is saved and the previous checkpoints stay loadable.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped]

from cllm_spec import checkpoint
from cllm_spec.errors import CheckpointError, NonFiniteError
from cllm_spec.generate import generate
from cllm_spec.model import CheckedParams, checked_params, init_params
from cllm_spec.parallel import WorkerStats
from cllm_spec.protocols import Batch
from cllm_spec.sampling import SamplingConfig
from cllm_spec.schedules import lr_at
from cllm_spec.train.config import RunConfig
from cllm_spec.train.engines import StepEngine, make_step_engine
from cllm_spec.train.prepare import BatchStream, RunData
from cllm_spec.train.runlog import (
    METRICS_FILE,
    MetricsLog,
    NullLog,
    StopRequest,
    say_nothing,
    say_stdout,
    worker_table,
)
from cllm_spec.train.state import (
    RunSnapshot,
    decay_mask,
    init_optimizer_state,
    model_config,
    resumed_schedule,
    save_run,
    schedule_config,
)
from cllm_spec.train.step import (
    DivergedError,
    EvalResult,
    apply_update,
    evaluate,
    group_gradients,
    group_gradients_many,
)

SAMPLING = SamplingConfig(temperature=0.8)
PROMPT_TOKENS = 16  # tokens of validation text that start each sample


@dataclass(frozen=True)
class TrainResult:
    status: str  # "completed" | "interrupted" | "terminated" | "time_limit"
    step: int  # optimizer steps done
    checkpoint: Path | None
    val_loss: float | None  # of the final evaluation (None if interrupted)
    unigram_entropy: float
    seconds: float


class Trainer:
    """One run: the state, the data stream and the loop (module docstring)."""

    def __init__(
        self,
        cfg: RunConfig,
        backend_name: str,
        backend: Any,
        data: RunData,
        snapshot: RunSnapshot | None = None,
        say: Callable[[str], None] = say_stdout,
        engine: StepEngine | None = None,
    ) -> None:
        self.cfg = cfg
        self.backend_name = backend_name
        self.backend = backend
        self.data = data
        self.engine = engine if engine is not None else make_step_engine(cfg, backend)
        self.engine.bind(self)
        self.is_root = self.engine.is_root
        self.say = say if self.is_root else say_nothing
        self.out_dir = Path(cfg.train.out_dir)
        self.model_cfg = model_config(cfg, data.tokenizer.vocab_size)
        self._checked: CheckedParams | None = None  # of the params, see grad_fn
        self.schedule = schedule_config(cfg)
        self.decay_mask = decay_mask(self.model_cfg, cfg.optim.decay)
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
        self.log: MetricsLog | NullLog = NullLog()
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
                            f"interrupted ({stop.how}): saving a checkpoint "
                            f"({stop.how} again aborts)"
                        )
                        terminated = stop.signum == signal.SIGTERM
                        status = "terminated" if terminated else "interrupted"
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
            if status not in ("interrupted", "terminated") and self.is_root:
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
        of the step is in. The weights are scanned for NaN once per step (the
        first group to ask checks them; the others reuse it).
        """
        return group_gradients(
            self.backend, self.model_cfg, self._checked_params(), batch
        )

    def grad_many(
        self, groups: list[int], batches: list[Batch]
    ) -> list[tuple[np.ndarray, float, int]]:
        """``grad_fn`` of each group, in one pass over all their rows where the
        backend allows (group_gradients_many): the same bits."""
        checked = self._checked_params()
        return group_gradients_many(self.backend, self.model_cfg, checked, batches)

    def _checked_params(self) -> CheckedParams:
        """``params`` scanned for NaN once per step (the first group to ask
        checks them; the others reuse it)."""
        checked = self._checked
        if checked is None or checked.flat is not self.params:
            checked = checked_params(self.backend, self.model_cfg, self.params)
            self._checked = checked
        return checked

    def optimizer_step(self, grad: np.ndarray, loss: float) -> float:
        """Clip, update ``params`` and the optimizer state; the pre-clip norm.

        Called once per step by the engine, on the trainer's thread.
        """
        if not math.isfinite(loss):
            raise DivergedError(f"loss {loss}")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            params, state, norm = apply_update(
                self.backend,
                self.cfg,
                self.params,
                grad,
                self.opt_state,
                self._lr,
                self.decay_mask,
            )
        self.params, self.opt_state = params, state
        # apply_update proved the new weights finite: the groups need not rescan
        self._checked = CheckedParams(params, self.model_cfg)
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
        elif status == "terminated":
            self.say(f"interrupted at step {self.step} (SIGTERM)")
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


__all__ = ["PROMPT_TOKENS", "SAMPLING", "TrainResult", "Trainer"]
