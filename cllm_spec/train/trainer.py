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

    .lock                       held (flock) by the run writing the directory;
                                holds its pid (cllm_spec.train.rundir)
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
the same backend and dtype. ``model.*``, ``data.*`` but ``data.corpus``,
``optim.name``, ``train.seed``, ``train.batch_size`` and ``train.seq_len``
cannot change on resume; everything else can (``train.steps`` to extend a run,
``train.backend``, ``train.dtype``: the tensors are cast, and named, so any
backend reads them). A resumed run writes to the checkpoint's directory unless
``train.out_dir`` is given, and keeps the rows of its ``metrics.jsonl`` up to
its step, then appends. The checkpoint is untrusted input
(:mod:`cllm_spec.train.resume`): its tokens come from the corpus the user names
(``--set data.corpus=PATH``), else from the ``dataset.bin`` of the checkpoint's
run directory, never from the path its config records.

A run locks its ``out_dir`` for as long as it writes it; a new run refuses an
``out_dir`` that already holds checkpoints, and a resumed run one that holds
checkpoints newer than its own, unless ``overwrite``
(:mod:`cllm_spec.train.rundir`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cllm_spec.data import Tokenizer, tokenizer_from_dict
from cllm_spec.errors import CllmError, ConfigError
from cllm_spec.registry import default_backend_name, get_backend
from cllm_spec.train.config import (
    RunConfig,
    clamp_warmup,
    from_dict,
    merge_settings,
    read_settings,
)
from cllm_spec.train.engines import blas_threads, make_step_engine
from cllm_spec.train.loop import Trainer, TrainResult
from cllm_spec.train.prepare import DATASET_FILE, RunData, prepare_data
from cllm_spec.train.resume import open_resume, run_dir_data
from cllm_spec.train.rundir import (
    RunDirLock,
    check_out_dir,
    remove_stale_temporaries,
)
from cllm_spec.train.runlog import say_nothing, say_stdout
from cllm_spec.train.state import (
    frozen_field_changes,
    schedule_config,
    snapshot_from,
)
from cllm_spec.train.step import DivergedError
from cllm_spec.train.watchdog import LostRankReport


def train(
    config_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    say: Callable[[str], None] = say_stdout,
) -> TrainResult:
    """Configure, prepare and run (module docstring)."""
    settings = read_settings(config_path, overrides)
    loaded = None if resume is None else open_resume(resume)
    base = None if loaded is None else loaded.base()
    cfg = from_dict(merge_settings(base or {}, settings))
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
    schedule_config(cfg)  # the cross-section checks, before anything is written
    # A backend the checkpoint names is looked up, never imported (resume.py).
    stored_backend = loaded is not None and "backend" not in settings.get("train", {})
    backend_name, backend = resolve_backend(
        cfg.train.backend, registered_only=stored_backend
    )
    if cfg.train.dtype not in tuple(str(np.dtype(d)) for d in backend.dtypes):
        raise ConfigError(
            f"train.dtype: backend {backend_name!r} computes in "
            f"{[str(np.dtype(d)) for d in backend.dtypes]}, got {cfg.train.dtype!r}"
        )
    engine = make_step_engine(cfg, backend)
    if not engine.is_root:
        say = say_nothing
    if notice:
        say(f"note: {notice}")
    out_dir = Path(cfg.train.out_dir)
    snapshot = None
    if loaded is not None:
        snapshot = snapshot_from(
            loaded.path, loaded.tensors, loaded.meta, cfg, backend_name
        )
        done = int(snapshot.opt_state.step)
        if done >= cfg.train.steps:
            raise ConfigError(
                f"train.steps: the checkpoint is at step {done} already, and "
                f"train.steps={cfg.train.steps}",
                hint=f"continue with --set train.steps=N for some N > {done}",
            )
    # The tokens: the corpus of a new run or the one the user names on resume,
    # else the resumed run's own dataset.bin; never a path the checkpoint names.
    run_dir = None
    if loaded is not None and "corpus" not in settings.get("data", {}):
        run_dir = loaded.run_dir
    source = (
        f"corpus {cfg.data.corpus!r}"
        if run_dir is None
        else f"the run's prepared {run_dir / DATASET_FILE}"
    )
    data = None
    lock: RunDirLock | None = None
    failure: BaseException | None = None
    # Rank 0 alone locks, checks and writes the run directory; its error is
    # raised on every rank (settle), so that none waits for it.
    if engine.is_root:
        try:
            lock = RunDirLock(out_dir)
            for stale in remove_stale_temporaries(out_dir):
                say(f"removed {stale.name}, a partial write of an interrupted run")
            check_out_dir(out_dir, None if snapshot is None else done, overwrite)
            tokenizer = None if snapshot is None else snapshot.tokenizer
            data = _read_data(cfg, out_dir, run_dir, tokenizer, write=True)
        except (CllmError, OSError) as exc:
            failure = exc
    # mpiexec kills the job's ranks when one is lost: rank 0 leaves a watcher
    # to say so (watchdog.py).
    watcher: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if engine.name == "mpi" and engine.is_root and engine.n_workers > 1:
        with contextlib.suppress(OSError):  # only a report: run without one
            watcher = LostRankReport(out_dir, engine.n_workers)
    threads = blas_threads(cfg.train.blas_threads)
    with lock or contextlib.nullcontext(), threads, engine, watcher:
        engine.settle(failure)
        shared = engine.share(
            None if data is None else (data.tokenizer.to_dict(), data.sha256)
        )
        if data is None:  # the other ranks: the same ids from rank 0's tokenizer
            tokenizer = tokenizer_from_dict(shared[0])
            data = _read_data(cfg, out_dir, run_dir, tokenizer, write=False)
        if data.sha256 != shared[1]:
            raise ConfigError(
                f"data.corpus: this rank read other tokens than rank 0 from {source}",
                hint="every rank must see the same corpus file",
            )
        if snapshot is not None and snapshot.cursor.get("sha256") != data.sha256:
            raise ConfigError(
                f"data.corpus: the tokens of {source} differ from the ones the "
                "checkpoint was trained on",
                hint="resume with the corpus of the run: --set data.corpus=PATH",
            )
        trainer = Trainer(cfg, backend_name, backend, data, snapshot, say, engine)
        _describe(trainer, None if loaded is None else loaded.path, source)
        return trainer.run()


def _read_data(
    cfg: RunConfig,
    out_dir: Path,
    run_dir: Path | None,
    tokenizer: Tokenizer | None,
    *,
    write: bool,
) -> RunData:
    """The run's data from the corpus (``run_dir`` None) or from ``run_dir``'s
    prepared dataset.bin (a resume that names no corpus)."""
    if run_dir is None:
        return prepare_data(cfg, out_dir, tokenizer, write=write)
    assert tokenizer is not None  # a resume has the checkpoint's
    return run_dir_data(cfg, run_dir, tokenizer, out_dir, write=write)


def _describe(trainer: Trainer, resumed_from: Path | None, source: str) -> None:
    cfg, mcfg, data = trainer.cfg, trainer.model_cfg, trainer.data
    say = trainer.say
    say(
        f"backend {trainer.backend_name} ({cfg.train.dtype}); model "
        f"{trainer.params.size:,} parameters (n_embd={mcfg.n_embd}, "
        f"n_layer={mcfg.n_layer}, n_head={mcfg.n_head}, block_size={mcfg.block_size})"
    )
    say(
        f"data: {source}, {data.tokenizer.kind} tokenizer "
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


def resolve_backend(name: str, *, registered_only: bool = False) -> tuple[str, Any]:
    """``(name, backend)``: ``name``, else the registry's default
    (:func:`cllm_spec.registry.default_backend_name`: ``$CLLM_BACKEND``, else
    c when it loads, else numpy). ``registered_only``: ``name`` was read from
    a checkpoint, so it must be a registered backend (never a module to
    import); ``$CLLM_BACKEND`` is the user's and may be a module path."""
    if name:
        return name, get_backend(name, registered_only=registered_only)
    chosen = default_backend_name()
    return chosen, get_backend(chosen)


__all__ = ["DivergedError", "TrainResult", "resolve_backend", "train"]
