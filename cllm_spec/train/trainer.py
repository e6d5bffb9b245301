"""``cllm train``'s entry point: configure, prepare, run.

``train(config_path, overrides, resume=None, overwrite=False) -> TrainResult``
builds the run config (defaults, the resumed run's config, the TOML file, the
``--set`` overrides), prepares the data, and runs
:class:`cllm_spec.train.loop.Trainer`. Where the rest is:

- :mod:`cllm_spec.train.step`: the math of one step, and the evaluation;
- :mod:`cllm_spec.train.engines`: who computes a step's groups (threads, MPI);
- :mod:`cllm_spec.train.loop`: the loop, evaluation, samples, checkpoints,
  stopping;
- :mod:`cllm_spec.train.runlog`: ``metrics.jsonl``, Ctrl-C, what is printed;
- :mod:`cllm_spec.train.state`: what a checkpoint holds and how it comes back;
- :mod:`cllm_spec.train.prepare`: the tokenizer and the tokens of the corpus.

Run directory (``train.out_dir``)
=================================
::

    tokenizer.json              the tokenizer (cllm_spec.train.prepare)
    dataset.bin                 every token id of the corpus, in order
    dataset.json                sizes of the train/val split, the stream's
                                SHA-256, the training split's unigram entropy
    metrics.jsonl               one JSON object per line
                                (cllm_spec.train.runlog)
    ckpt-<step, 9 digits>.safetensors
                                the last ``train.keep_last`` checkpoints;
                                ``cllm_spec.checkpoint.latest(out_dir)`` is the
                                newest

Checkpoints and resuming
========================
``resume=PATH`` (a checkpoint file, or a run directory for its latest
checkpoint) restores the parameters, the optimizer state and step, the
schedule, the data cursor, the sampling RNG, the tokenizer and the run config,
so the losses after resuming are bit-identical to the uninterrupted run's on
the same backend and dtype. ``model.*``, ``data.*``, ``optim.name``,
``train.seed``, ``train.batch_size`` and ``train.seq_len`` cannot change on
resume; everything else can (``train.steps`` to extend a run,
``train.backend``, ``train.dtype``: the tensors are cast, and named, so any
backend reads them). A resumed run writes to the checkpoint's directory unless
``train.out_dir`` is given, and keeps the rows of its ``metrics.jsonl`` up to
its step, then appends.

A new run refuses an ``out_dir`` that already holds checkpoints, and a resumed
run one that holds checkpoints newer than its own, unless ``overwrite``: then
those checkpoints are deleted first (rotation is by step, so they would
otherwise outlive the new ones).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cllm_spec import checkpoint
from cllm_spec.data import tokenizer_from_dict
from cllm_spec.errors import BackendError, CllmError, ConfigError
from cllm_spec.registry import ENV_VAR, get_backend
from cllm_spec.train.config import load_config
from cllm_spec.train.engines import blas_threads, make_step_engine
from cllm_spec.train.loop import Trainer, TrainResult
from cllm_spec.train.prepare import prepare_data
from cllm_spec.train.runlog import say_nothing, say_stdout
from cllm_spec.train.state import (
    frozen_field_changes,
    read_checkpoint,
    schedule_config,
    snapshot_from,
)
from cllm_spec.train.step import DivergedError


def train(
    config_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    say: Callable[[str], None] = say_stdout,
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
    schedule_config(cfg)  # the cross-section checks, before anything is written
    backend_name, backend = resolve_backend(cfg.train.backend)
    if cfg.train.dtype not in tuple(str(np.dtype(d)) for d in backend.dtypes):
        raise ConfigError(
            f"train.dtype: backend {backend_name!r} computes in "
            f"{[str(np.dtype(d)) for d in backend.dtypes]}, got {cfg.train.dtype!r}"
        )
    engine = make_step_engine(cfg, backend)
    if not engine.is_root:
        say = say_nothing
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


__all__ = ["DivergedError", "TrainResult", "resolve_backend", "train"]
