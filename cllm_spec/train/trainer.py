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
step::

    loss_i, g_i = forward/backward of micro-batch i     (mean over its B*T tokens)
    loss        = (loss_1 + ... + loss_k) / k
    g           = grad_scale(g_1 + ... + g_k, 1 / k)   (grad_accumulate, in order)
    g, norm     = clip_grad_norm(g, clip_norm)          (clip_norm = 0: no clipping)
    params      = <optim.name>_step(params, g, lr=lr_at(s, schedule), ...)

Every micro-batch counts the same number of tokens (full windows, no padding),
so ``loss`` and ``g`` are the mean loss and its gradient over all ``k*B*T``
tokens: ``k`` micro-batches of ``B`` equal one batch of ``k*B`` up to float
rounding (the sums are ordered differently). :func:`compute_step_gradients`
holds the first two lines; a parallel coordinator replaces exactly that
function.

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

Stopping
========
- Ctrl-C (SIGINT): the current step finishes, a checkpoint is saved and the
  result is ``"interrupted"`` (``cllm train`` exits with 130). A second Ctrl-C
  aborts at once without saving; the last checkpoint is intact, since writes are
  atomic.
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
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped]

from cllm_spec import checkpoint
from cllm_spec.batching import iter_epoch
from cllm_spec.errors import (
    BackendError,
    CheckpointError,
    ConfigError,
    NonFiniteError,
    Unsupported,
)
from cllm_spec.generate import generate
from cllm_spec.metrics import perplexity, token_accuracy
from cllm_spec.model import ModelConfig, backward, forward, init_params, mask_targets
from cllm_spec.protocols import Batch
from cllm_spec.registry import ENV_VAR, get_backend
from cllm_spec.sampling import SamplingConfig
from cllm_spec.schedules import lr_at
from cllm_spec.train.config import RunConfig, load_config
from cllm_spec.train.prepare import BatchStream, RunData, prepare_data
from cllm_spec.train.state import (
    RunSnapshot,
    frozen_field_changes,
    init_optimizer_state,
    model_config,
    optimizer_hyperparameters,
    optimizer_step,
    read_checkpoint,
    resolve_checkpoint,
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
    """Mean loss and mean gradient ``(P,)`` over the micro-batches of one step.

    Raises DivergedError as soon as a micro-batch's loss is not finite (its
    backward is skipped).
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
    ) -> None:
        self.cfg = cfg
        self.backend_name = backend_name
        self.backend = backend
        self.data = data
        self.say = say
        self.out_dir = Path(cfg.train.out_dir)
        self.model_cfg = model_config(cfg, data.tokenizer.vocab_size)
        self.schedule = schedule_config(cfg)
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
        self.log = MetricsLog(
            self.out_dir / METRICS_FILE,
            None if snapshot is None else self.start_step,
        )
        self.last_checkpoint: Path | None = checkpoint.latest(self.out_dir)
        self.saved_step: int | None = None

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return int(self.opt_state.step)

    # ------------------------------------------------------------- the loop --
    def run(self) -> TrainResult:
        train = self.cfg.train
        started = time.perf_counter()
        status = "completed"
        bar = tqdm(
            total=train.steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=None,  # no bar unless stderr is a terminal
            file=sys.stderr,
            dynamic_ncols=True,
        )
        with bar, StopRequest() as stop:
            while self.step < train.steps:
                if stop.requested:
                    self.say("interrupted: saving a checkpoint (Ctrl-C again aborts)")
                    status = "interrupted"
                    break
                if (
                    train.time_limit
                    and time.perf_counter() - started > train.time_limit
                ):
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
            if status != "interrupted":
                val_loss = self.run_evaluation(None).loss  # every validation window
            if self.saved_step != self.step:
                self.save_checkpoint()
        self._report(status, seconds, val_loss)
        return TrainResult(
            status,
            self.step,
            self.last_checkpoint,
            val_loss,
            self.data.unigram_entropy,
            seconds,
        )

    def train_step(self) -> dict[str, Any]:
        """One optimizer step; returns (and logs) its metrics row."""
        train = self.cfg.train
        s = self.step
        begin = time.perf_counter()
        lr = lr_at(s, self.schedule)
        batches = self.stream.take(train.grad_accum)
        # Overflow shows up as inf or NaN, which is checked and reported below.
        with (
            np.errstate(over="ignore", invalid="ignore", divide="ignore"),
            self._or_diverged(s + 1),
        ):
            loss, grads = compute_step_gradients(
                self.backend, self.model_cfg, self.params, batches
            )
            params, state, norm = apply_update(
                self.backend, self.cfg, self.params, grads, self.opt_state, lr
            )
        seconds = time.perf_counter() - begin
        self.params, self.opt_state = params, state
        tokens = train.grad_accum * train.batch_size * train.seq_len
        row = {
            "kind": "train",
            "step": self.step,
            "epoch": self.stream.epoch,
            "loss": loss,
            "lr": lr,
            "grad_norm": norm,
            "tokens_per_s": tokens / max(seconds, 1e-9),
        }
        self.log.write(row)
        self.last_rows["train"] = row
        return row

    def _periodic(self) -> None:
        train, step = self.cfg.train, self.step
        last = step == train.steps
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
            raise DivergedError(
                f"training stopped at step {step}: non-finite values "
                f"({exc.message}); this state was not saved, {kept}"
            ) from exc

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
            metrics=self.last_rows,
        )
        path = save_run(checkpoint.checkpoint_path(self.out_dir, self.step), snap)
        checkpoint.rotate(self.out_dir, self.cfg.train.keep_last)
        self.last_checkpoint = path
        self.saved_step = self.step
        return path

    def _report(self, status: str, seconds: float, val_loss: float | None) -> None:
        steps = self.step - self.start_step
        tokens = steps * self.cfg.train.grad_accum * self.cfg.train.batch_size
        tokens *= self.cfg.train.seq_len
        rate = tokens / seconds if seconds > 0 else 0.0
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
        path = resolve_checkpoint(resume)
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
    schedule_config(cfg)  # the cross-section checks, before anything is written
    if cfg.parallel.workers > 1:
        raise Unsupported(
            f"parallel.workers: {cfg.parallel.workers} workers are not supported yet",
            hint="set parallel.workers=1",
        )
    backend_name, backend = resolve_backend(cfg.train.backend)
    if cfg.train.dtype not in tuple(str(np.dtype(d)) for d in backend.dtypes):
        raise ConfigError(
            f"train.dtype: backend {backend_name!r} computes in "
            f"{[str(np.dtype(d)) for d in backend.dtypes]}, got {cfg.train.dtype!r}"
        )
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
        _check_out_dir(out_dir, done, overwrite)
    else:
        _check_out_dir(out_dir, None, overwrite)
    data = prepare_data(cfg, out_dir, None if snapshot is None else snapshot.tokenizer)
    if snapshot is not None and snapshot.cursor.get("sha256") != data.sha256:
        raise ConfigError(
            f"data.corpus: the tokens of {cfg.data.corpus!r} differ from the ones "
            "the checkpoint was trained on",
            hint="resume with the corpus of the run",
        )
    trainer = Trainer(cfg, backend_name, backend, data, snapshot, say)
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
    per_step = cfg.train.grad_accum * cfg.train.batch_size * cfg.train.seq_len
    start = f"resuming {resumed_from} at step {trainer.step}; " if resumed_from else ""
    say(
        f"{start}run dir {trainer.out_dir}: {cfg.train.steps} steps of {per_step} "
        f"tokens, {cfg.optim.name} lr {cfg.optim.lr:g} ({cfg.schedule.name})"
    )


__all__ = [
    "METRICS_FILE",
    "DivergedError",
    "EvalResult",
    "MetricsLog",
    "StopRequest",
    "TrainResult",
    "Trainer",
    "apply_update",
    "compute_step_gradients",
    "evaluate",
    "resolve_backend",
    "train",
]
