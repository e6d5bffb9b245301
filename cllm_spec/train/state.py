"""What a training run checkpoints, and how it comes back.

The optimizer and the schedule are chosen by name from the run config; this
module maps the config onto :mod:`cllm_spec.optim` and :mod:`cllm_spec.schedules`
and onto the checkpoint format of :mod:`cllm_spec.checkpoint`.

Optimizer hyperparameters passed to ``backend.<name>_step`` (``lr`` comes from
the schedule at every step)::

    sgd       momentum, dampening, weight_decay, nesterov
    adam      betas, eps, weight_decay          (coupled L2 decay)
    adamw     betas, eps, weight_decay          (decoupled decay)
    rmsprop   alpha, eps, weight_decay, momentum, centered
    adagrad   lr_decay, weight_decay, eps

A run checkpoint's metadata (besides the model config and the tensors)::

    tokenizer     the tokenizer's to_dict()
    optimizer     {"name", "hyperparameters" (the above, plus the last "lr"),
                   "step": optimizer steps taken}
    scheduler     the ScheduleConfig fields
    data_cursor   {"epoch", "batch": micro-batches taken in that epoch,
                   "seed", "n_train", "n_val", "sha256": the token stream's}
    rng_state     the sampling generator's state
    metrics       {"train": last train row, "eval": last eval row or null}
    run           {"backend", "dtype", "config": RunConfig.to_dict(),
                   "step", "cllm_version"}

Parameters and optimizer state are stored in the run's dtype and cast to the
resuming run's ``train.dtype``, so a float32 run can continue in float64 and a
checkpoint written with one backend resumes with another: tensors are named,
not laid out by a backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import cllm_spec
from cllm_spec import checkpoint
from cllm_spec.data import Tokenizer, tokenizer_from_dict
from cllm_spec.errors import CheckpointError, ConfigError
from cllm_spec.model import ModelConfig, param_layout
from cllm_spec.optim import (
    init_adagrad_state,
    init_adam_state,
    init_rmsprop_state,
    init_sgd_state,
)
from cllm_spec.schedules import ScheduleConfig, continue_schedule, lr_at
from cllm_spec.train.config import OptimSection, RunConfig

_INIT_STATE: dict[str, Callable[[np.ndarray], Any]] = {
    "sgd": init_sgd_state,
    "adam": init_adam_state,
    "adamw": init_adam_state,
    "rmsprop": init_rmsprop_state,
    "adagrad": init_adagrad_state,
}
_HYPERPARAMETERS = {
    "sgd": ("momentum", "dampening", "weight_decay", "nesterov"),
    "adam": ("betas", "eps", "weight_decay"),
    "adamw": ("betas", "eps", "weight_decay"),
    "rmsprop": ("alpha", "eps", "weight_decay", "momentum", "centered"),
    "adagrad": ("lr_decay", "weight_decay", "eps"),
}
# Fields that fix the model, the data or the batch order: a resumed run that
# changed one would not continue the same run. data.corpus is not one: the same
# text may have moved, and the tokens' fingerprint decides (train/resume.py).
FROZEN_ON_RESUME = (
    "model",
    "data.tokenizer",
    "data.vocab_size",
    "data.val_fraction",
    "optim.name",
    "train.seed",
    "train.batch_size",
    "train.seq_len",
)


# ---------------------------------------------------------------- config ----
def model_config(cfg: RunConfig, vocab_size: int) -> ModelConfig:
    """The ModelConfig of the ``[model]`` section for a vocabulary of V ids."""
    m = cfg.model
    return ModelConfig(
        vocab_size=vocab_size,
        n_embd=m.n_embd,
        n_layer=m.n_layer,
        n_head=m.n_head,
        block_size=m.block_size,
        n_hidden=m.n_hidden,
        activation=m.activation,
        tie_embeddings=m.tie_embeddings,
        init=m.init,
    )


def schedule_config(cfg: RunConfig) -> ScheduleConfig:
    """The schedule of ``[schedule]`` with peak ``optim.lr`` over ``train.steps``.

    Checks what spans sections (a ConfigError names the field): ``schedule.min_lr
    <= optim.lr``, and ``schedule.warmup_steps < train.steps`` for the linear
    and cosine schedules, which decay over the steps after the warmup.
    """
    s = cfg.schedule
    if s.min_lr > cfg.optim.lr:
        raise ConfigError(
            f"schedule.min_lr: must be <= optim.lr={cfg.optim.lr}, got {s.min_lr}"
        )
    if s.name in ("linear", "cosine") and s.warmup_steps >= cfg.train.steps:
        raise ConfigError(
            f"schedule.warmup_steps: must be < train.steps={cfg.train.steps} for "
            f"the {s.name} schedule, got {s.warmup_steps}"
        )
    return ScheduleConfig(
        name=s.name,
        lr=cfg.optim.lr,
        warmup_steps=s.warmup_steps,
        total_steps=cfg.train.steps,
        min_lr=s.min_lr,
        step_size=s.step_size,
        gamma=s.gamma,
    )


def optimizer_hyperparameters(optim: OptimSection) -> dict[str, Any]:
    """Keyword arguments of ``backend.<optim.name>_step`` other than ``lr``."""
    return {key: getattr(optim, key) for key in _HYPERPARAMETERS[optim.name]}


def init_optimizer_state(name: str, params: np.ndarray) -> Any:
    """A fresh state of optimizer ``name`` for ``params: (P,)``."""
    return _INIT_STATE[name](params)


#: optim.decay: which parameters weight decay applies to (see decay_mask)
DECAY_RULES = ("all", "matrices", "linear")
_LINEAR_WEIGHTS = (
    "attn.qkv.weight",
    "attn.proj.weight",
    "mlp.fc.weight",
    "mlp.proj.weight",
    "model.lm_head.weight",
)
_EMBEDDINGS = ("model.wte.weight", "model.wpe.weight")


def decay_mask(mcfg: ModelConfig, rule: str) -> np.ndarray | None:
    """``(P,)`` bool: True where weight decay applies; None for ``"all"``.

    - ``"all"``: every parameter (the optimizer's own rule, torch.optim with one
      parameter group);
    - ``"matrices"``: every 2-D tensor, i.e. the linear weights and both
      embeddings; biases and LayerNorm weights are not decayed (nanoGPT's two
      parameter groups);
    - ``"linear"``: the linear weights only; the embeddings are not decayed
      either. A tied LM head is the token embedding, so it follows the
      embedding.
    """
    if rule not in DECAY_RULES:
        raise ConfigError(f"optim.decay: expected one of {DECAY_RULES}, got {rule!r}")
    if rule == "all":
        return None
    suffixes = _LINEAR_WEIGHTS + (_EMBEDDINGS if rule == "matrices" else ())
    layout = param_layout(mcfg)
    mask = np.zeros(layout.size, dtype=bool)
    for name in layout.names:
        mask[layout.slice(name)] = name.endswith(suffixes)
    return mask


def optimizer_step(
    backend: Any,
    name: str,
    params: np.ndarray,
    grads: np.ndarray,
    state: Any,
    lr: float,
    hyperparameters: Mapping[str, Any],
    decay_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, Any]:
    """``backend.<name>_step(params, grads, state, lr=lr, **hyperparameters)``,
    with weight decay only where ``decay_mask`` is True (None: everywhere).

    With a mask, the step is taken twice, with and without decay, and each
    element of the params and of every per-parameter state array is taken from
    the first where the mask is True and from the second elsewhere: exactly
    torch.optim with two parameter groups (``weight_decay`` and 0), since every
    optimizer here updates each element independently. (Twice the optimizer's
    arithmetic, which is memory-bound and small next to a step of the model.)
    """
    step = getattr(backend, f"{name}_step")
    decayed: tuple[np.ndarray, Any] = step(
        params, grads, state, lr=lr, **hyperparameters
    )
    if decay_mask is None or not hyperparameters.get("weight_decay"):
        return decayed
    plain = step(
        params, grads, state, lr=lr, **{**hyperparameters, "weight_decay": 0.0}
    )
    return _select(decay_mask, decayed, plain)


def _select(
    mask: np.ndarray, a: tuple[np.ndarray, Any], b: tuple[np.ndarray, Any]
) -> tuple[np.ndarray, Any]:
    """``a`` where ``mask``, else ``b``, for the params and each (P,) state field."""
    params = np.where(mask, a[0], b[0])
    fields = {
        field: np.where(mask, x, y)
        for field, x, y in zip(a[1]._fields, a[1], b[1], strict=True)
        if isinstance(x, np.ndarray) and x.shape == mask.shape
    }
    return params, a[1]._replace(**fields)


def frozen_field_changes(
    old: Mapping[str, Any], new: RunConfig
) -> list[tuple[str, Any, Any]]:
    """``(field, old value, new value)`` of each FROZEN_ON_RESUME field that
    differs between a stored config (``to_dict`` form) and ``new``."""
    current = new.to_dict()
    changed = []
    for entry in FROZEN_ON_RESUME:
        section, _, key = entry.partition(".")
        before = old.get(section) or {}
        keys = [key] if key else sorted(current[section])
        for k in keys:
            if _plain(before.get(k)) != _plain(current[section][k]):
                changed.append((f"{section}.{k}", before.get(k), current[section][k]))
    return changed


def _plain(value: Any) -> Any:
    """Tuples as lists, so a config read back from JSON compares equal."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------ checkpoint ----
class RunSnapshot(NamedTuple):
    """Everything needed to continue a run exactly."""

    config: RunConfig
    backend: str
    model_config: ModelConfig
    tokenizer: Tokenizer
    params: np.ndarray  # (P,)
    opt_state: Any  # the optimizer's state NamedTuple
    cursor: dict[str, Any]  # data_cursor metadata
    rng: np.random.Generator  # sampling generator
    metrics: dict[str, Any]
    # the plan the run follows (a continued one after a resume with a new
    # length); None: the plain plan of the config
    schedule: ScheduleConfig | None = None


def save_run(path: Path, snap: RunSnapshot) -> Path:
    """Write ``snap`` as a checkpoint at ``path`` (atomically)."""
    cfg, mcfg = snap.config, snap.model_config
    name = cfg.optim.name
    step = int(snap.opt_state.step)
    tensors = {
        **checkpoint.model_tensors(mcfg, snap.params),
        **checkpoint.optimizer_tensors(mcfg, name, snap.opt_state),
    }
    hyper = _plain(optimizer_hyperparameters(cfg.optim))
    last_train = snap.metrics.get("train") or {}
    metadata = {
        "model_config": mcfg,
        "tokenizer": snap.tokenizer.to_dict(),
        "optimizer": {
            "name": name,
            "hyperparameters": {**hyper, "lr": last_train.get("lr")},
            "step": step,
        },
        "scheduler": dataclasses.asdict(snap.schedule or schedule_config(cfg)),
        "data_cursor": snap.cursor,
        "rng_state": checkpoint.rng_state(snap.rng),
        "metrics": snap.metrics,
        "run": {
            "backend": snap.backend,
            "dtype": str(snap.params.dtype),
            "config": _plain(cfg.to_dict()),
            "step": step,
            "cllm_version": cllm_spec.__version__,
        },
    }
    return checkpoint.save(path, tensors=tensors, metadata=metadata)


def stored_run(meta: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The ``run`` metadata of a checkpoint written by ``cllm train``."""
    run = meta.get("run")
    if not isinstance(run, dict) or not isinstance(run.get("config"), dict):
        raise CheckpointError(
            f"{path}: has no training run metadata, so it cannot be resumed",
            hint="resume from a checkpoint written by `cllm train`",
        )
    return run


def read_checkpoint(
    path: Path,
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Tensors, metadata and the ``run`` metadata of a ``cllm train`` checkpoint."""
    tensors, meta = checkpoint.load(path)
    return tensors, meta, stored_run(meta, path)


def snapshot_from(
    path: Path,
    tensors: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    cfg: RunConfig,
    backend_name: str,
) -> RunSnapshot:
    """The state of a loaded checkpoint, cast to ``cfg.train.dtype``."""
    optimizer = meta["optimizer"]
    if optimizer is None or optimizer["name"] != cfg.optim.name:
        found = None if optimizer is None else optimizer["name"]
        raise CheckpointError(
            f"{path}: optimizer {found!r} does not match optim.name={cfg.optim.name!r}",
            hint="resume with the optimizer the run was trained with",
        )
    missing = [k for k in ("tokenizer", "data_cursor", "rng_state") if not meta[k]]
    if missing:
        raise CheckpointError(
            f"{path}: no {', '.join(missing)} in the metadata",
            hint="resume from a checkpoint written by `cllm train`",
        )
    try:
        tokenizer = tokenizer_from_dict(meta["tokenizer"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: tokenizer: {exc.message}") from exc
    mcfg = meta["model_config"]
    dtype = np.dtype(cfg.train.dtype)
    params = checkpoint.params_from_tensors(mcfg, tensors).astype(dtype)
    state = checkpoint.optimizer_state_from_tensors(
        mcfg, cfg.optim.name, tensors, optimizer["step"]
    )
    fields = checkpoint.optimizer_fields(cfg.optim.name)
    state = state._replace(**{f: getattr(state, f).astype(dtype) for f in fields})
    return RunSnapshot(
        config=cfg,
        backend=backend_name,
        model_config=mcfg,
        tokenizer=tokenizer,
        params=params,
        opt_state=state,
        cursor=dict(meta["data_cursor"]),
        rng=checkpoint.rng_from_state(meta["rng_state"]),
        metrics=dict(meta["metrics"] or {}),
        schedule=stored_schedule(path, meta),
    )


def stored_schedule(path: Path, meta: Mapping[str, Any]) -> ScheduleConfig | None:
    """The plan a checkpoint's run followed (None if it recorded none)."""
    stored = meta.get("scheduler")
    if stored is None:
        return None
    try:
        return ScheduleConfig(**stored)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: scheduler: {exc}",
            hint="the metadata was edited or damaged; use another checkpoint",
        ) from exc


def resumed_schedule(
    cfg: RunConfig, old: ScheduleConfig | None, step: int
) -> tuple[ScheduleConfig, str | None]:
    """``(plan, notice)`` of a run resumed at ``step`` from a run planned ``old``.

    ``schedule.on_resume = "continue"`` (the default) keeps the rate continuous
    (:func:`cllm_spec.schedules.continue_schedule`); ``"replan"`` plans the
    config's schedule from step 0, so the rate may jump. ``notice`` says what
    changed, and is None when the plan is the old one.
    """
    new = schedule_config(cfg)
    if old is None:
        return new, None
    if cfg.schedule.on_resume == "replan":
        plan = new
    else:
        plan = continue_schedule(new, old, step)
    if plan == old:
        return plan, None
    before, after = lr_at(step, old), lr_at(step, plan)
    end = plan.total_steps if plan.total_steps is not None else cfg.train.steps
    if after == before:
        how = f"the rate continues from {before:.4g} at step {step}"
        if plan.name in ("linear", "cosine"):
            how += f" and reaches min_lr {plan.min_lr:g} at step {end}"
    else:
        how = f"the rate jumps from {before:.4g} to {after:.4g} at step {step}"
    return plan, f"schedule ({cfg.schedule.on_resume}): {how}"


__all__ = [
    "FROZEN_ON_RESUME",
    "RunSnapshot",
    "frozen_field_changes",
    "init_optimizer_state",
    "DECAY_RULES",
    "decay_mask",
    "read_checkpoint",
    "resumed_schedule",
    "stored_schedule",
    "model_config",
    "optimizer_hyperparameters",
    "optimizer_step",
    "save_run",
    "schedule_config",
    "snapshot_from",
    "stored_run",
]
