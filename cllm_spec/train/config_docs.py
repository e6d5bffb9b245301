"""The run config as a user sees it: one line per field, and the config as TOML.

:data:`FIELD_DOCS` says, for every field of :class:`~cllm_spec.train.config.RunConfig`,
its range and its meaning in one line; ``cllm train --print-config`` prints the
resolved config with these lines as comments (:func:`render_toml`), and every
error about a field points there. A test keeps the table and the dataclasses in
step, so a new field cannot go undocumented.
"""

from __future__ import annotations

import json
import math
from typing import Any

from cllm_spec.train.config import RunConfig

#: Where a user reads about every field (used in error hints).
WHERE_DOCUMENTED = (
    "`cllm train --print-config` lists every field with its range and meaning"
)

FIELD_DOCS: dict[str, str] = {
    # [model]
    "model.n_embd": "C, embedding width; >= 1, a multiple of model.n_head",
    "model.n_layer": "L, transformer blocks; >= 1",
    "model.n_head": "NH, attention heads; >= 1, divides model.n_embd",
    "model.n_hidden": "F, feed-forward width; >= 0, 0 means 4 * model.n_embd",
    "model.block_size": "T_max, longest context (rows of the position table); >= 1",
    "model.activation": "feed-forward activation: gelu | gelu_tanh | relu",
    "model.tie_embeddings": "true: the LM head shares the token embedding",
    "model.init": "initializer: gpt2 | lattice (the seed's geometric embedding)",
    # [data]
    "data.corpus": 'a text file, a directory of them, or "default" (bundled)',
    "data.tokenizer": "word | byte | bpe (bpe needs the extra cllm[bpe])",
    "data.vocab_size": "upper bound of the word and bpe vocabularies; >= 1",
    "data.val_fraction": "tail of the token stream held out; in (0, 0.5]",
    # [optim]
    "optim.name": "sgd | adam | adamw | rmsprop | adagrad (torch.optim rules)",
    "optim.lr": "peak learning rate; >= 0",
    "optim.betas": "adam/adamw moment decays, each in [0, 1)",
    "optim.eps": "adam/adamw/rmsprop/adagrad denominator term; in [0, 1]",
    "optim.weight_decay": "L2 (sgd, adam, ...) or decoupled (adamw); in [0, 1000]",
    "optim.momentum": "sgd and rmsprop momentum; in [0, 1]",
    "optim.dampening": "sgd dampening; in [0, 1]",
    "optim.nesterov": "sgd Nesterov momentum (needs momentum > 0, dampening 0)",
    "optim.alpha": "rmsprop smoothing constant; in [0, 1]",
    "optim.centered": "rmsprop: normalize by the centered second moment",
    "optim.lr_decay": "adagrad learning-rate decay; in [0, 1000]",
    "optim.decay": "decayed params: all | matrices (2-D, nanoGPT) | linear",
    # [schedule]
    "schedule.name": "constant | linear | cosine | step",
    "schedule.warmup_steps": "W, step s < W uses lr*(s+1)/W; >= 0 (see README)",
    "schedule.min_lr": "floor reached at train.steps (linear, cosine); <= optim.lr",
    "schedule.step_size": "step schedule: steps between decays; >= 1",
    "schedule.gamma": "step schedule: factor per decay; in (0, 1]",
    "schedule.on_resume": "--resume with a new length: continue (no jump) | replan",
    # [train]
    "train.backend": '"" means $CLLM_BACKEND, else c when it loads, else numpy',
    "train.dtype": "float32 | float64",
    "train.batch_size": "B, sequences per micro-batch; >= 1",
    "train.seq_len": "T, tokens per sequence; 1 .. model.block_size",
    "train.steps": "optimizer steps of the whole run; >= 1",
    "train.grad_accum": "micro-batches summed into one optimizer step; >= 1",
    "train.clip_norm": "global L2 gradient clip; >= 0, 0 disables",
    "train.seed": "seed of initialization, data order and sampling",
    "train.eval_every": "steps between validation passes; >= 0, 0 disables",
    "train.eval_batches": "validation micro-batches per pass; >= 1",
    "train.checkpoint_every": "steps between checkpoints; >= 0, 0 = only at the end",
    "train.keep_last": "checkpoints kept in train.out_dir; >= 1",
    "train.sample_every": "steps between printed samples; >= 0, 0 disables",
    "train.sample_tokens": "tokens per printed sample; >= 0",
    "train.out_dir": "run directory: prepared data, metrics.jsonl, checkpoints",
    "train.time_limit": "seconds before a clean stop with a checkpoint; 0 = none",
    "train.blas_threads": "BLAS threads during the run; >= 0, 0 leaves BLAS as is",
    # [parallel]
    "parallel.workers": "worker threads computing gradients; 0 = one per core, at "
    "most 12 (same bits for any)",
    "parallel.engine": "threads | mpi (one rank per mpiexec process)",
    "parallel.check_every": "mpi: steps between weight-digest checks; 0 = never",
    "parallel.timeout": "seconds a step waits for a worker or rank; > 0",
}


def field_names() -> list[str]:
    """Every ``section.key`` of :class:`RunConfig`, in declaration order."""
    return [
        f"{section}.{key}"
        for section, values in RunConfig().to_dict().items()
        for key in values
    ]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def render_toml(cfg: RunConfig) -> str:
    """``cfg`` as a TOML document that :func:`load_config` reads back to ``cfg``,
    each field followed by its line of :data:`FIELD_DOCS` as a comment."""
    lines: list[str] = []
    for section, values in cfg.to_dict().items():
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        entries = [(key, _toml_value(value)) for key, value in values.items()]
        width = max(len(key) + 3 + len(text) for key, text in entries)
        for key, text in entries:
            assignment = f"{key} = {text}"
            doc = FIELD_DOCS[f"{section}.{key}"]
            lines.append(f"{assignment:<{width}}  # {doc}")
    return "\n".join(lines) + "\n"


__all__ = ["FIELD_DOCS", "WHERE_DOCUMENTED", "field_names", "render_toml"]
