"""Resuming a run: what is taken from a checkpoint, and what never is.

A checkpoint's SHA-256 is a checksum, not a signature: anyone can edit its
metadata and recompute it. So everything in it is untrusted input, and
``cllm train --resume CKPT`` takes from it only state, never an instruction:

- **Run config.** The stored ``run.config`` goes through the validation of
  ``--set`` (:func:`cllm_spec.train.config.from_dict`, bounds included) before
  anything else is done with it; a bad value is a ConfigError naming the field
  and the checkpoint.
- **Corpus.** The corpus path the run config records is never opened. The data
  is the corpus the user names (``--set data.corpus=PATH`` or ``--config``),
  else the prepared ``dataset.bin`` of the checkpoint's own run directory
  (:func:`run_dir_data`); either way the tokens must have the checkpoint's
  fingerprint (``data_cursor.sha256``). Anything else is refused with a hint
  naming the fix. (So ``data.corpus`` may change on resume: the same text at
  another path is the same run.)
- **Backend.** The backend the run recorded (``train.backend``) is looked up
  among the registered backends only (``get_backend(name,
  registered_only=True)`` of :mod:`cllm_spec.registry`), never imported as a
  module path; a path the user gives (``--backend``, ``--set
  train.backend=``, ``$CLLM_BACKEND``) still is.
- **Metadata.** The metrics, data cursor, tokenizer, optimizer and RNG state
  must have the shapes ``cllm train`` writes (:func:`check_run_metadata`), or
  the resume is refused with a CheckpointError naming the entry instead of
  failing somewhere later with a TypeError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cllm_spec import checkpoint
from cllm_spec.batching import num_batches
from cllm_spec.data import (
    Tokenizer,
    read_dataset_bin,
    train_val_split,
    write_dataset_bin,
)
from cllm_spec.errors import CheckpointError, ConfigError
from cllm_spec.files import open_regular
from cllm_spec.train.config import RunConfig, from_dict
from cllm_spec.train.prepare import (
    DATASET_FILE,
    DATASET_INFO_FILE,
    TOKENIZER_FILE,
    RunData,
    fingerprint,
    unigram_entropy,
)
from cllm_spec.train.state import read_checkpoint

RESUME_HINT = "resume from a checkpoint written by `cllm train`"


class Resume(NamedTuple):
    """A checkpoint to resume, read and checked."""

    path: Path
    tensors: dict[str, np.ndarray]
    meta: dict[str, Any]
    config: RunConfig  # the stored run config, validated

    @property
    def run_dir(self) -> Path:
        """The directory of the run that wrote the checkpoint."""
        return self.path.parent

    def base(self) -> dict[str, dict[str, Any]]:
        """The stored config as the base of the resumed one: it writes into the
        checkpoint's directory unless told otherwise."""
        base = self.config.to_dict()
        base["train"]["out_dir"] = str(self.run_dir)
        return base


def open_resume(resume: str | Path) -> Resume:
    """Read the checkpoint ``resume`` (a file, or a run directory's latest) and
    check its run config and metadata (module docstring)."""
    path = checkpoint.resolve(resume)
    tensors, meta, run = read_checkpoint(path)
    check_run_metadata(path, meta)
    try:
        stored = from_dict(run["config"])
    except ConfigError as exc:
        raise ConfigError(
            f"{path}: the run config stored in the checkpoint is not valid: "
            f"{exc.message}",
            hint="the checkpoint was edited or damaged; resume from another "
            "checkpoint of the run, or start a new run",
        ) from exc
    return Resume(path, tensors, meta, stored)


# ---------------------------------------------------------------- metadata ---
def _fail(path: Path, message: str) -> CheckpointError:
    return CheckpointError(f"{path}: metadata {message}", hint=RESUME_HINT)


def _json_kind(value: object) -> str:
    """The JSON name of ``value``'s type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_run_metadata(path: Path, meta: dict[str, Any]) -> None:
    """The metadata a resume reads has the shapes ``cllm train`` writes
    (:mod:`cllm_spec.train.state`), or a CheckpointError names the entry."""
    for key in ("optimizer", "tokenizer", "data_cursor", "rng_state"):
        if not isinstance(meta.get(key), dict):
            found = _json_kind(meta.get(key))
            raise _fail(path, f"{key}: expected an object, got {found}")
    cursor = meta["data_cursor"]
    for key in ("epoch", "batch"):
        if not _is_int(cursor.get(key)) or cursor[key] < 0:
            raise _fail(path, f"data_cursor.{key}: expected an int >= 0")
    if not isinstance(cursor.get("sha256"), str):
        raise _fail(path, "data_cursor.sha256: expected a string")
    metrics = meta.get("metrics")
    if metrics is None:
        return
    if not isinstance(metrics, dict):
        raise _fail(path, f"metrics: expected an object, got {_json_kind(metrics)}")
    for kind, row in metrics.items():
        if kind not in ("train", "eval"):
            raise _fail(path, f"metrics: unexpected entry {kind!r}")
        if row is None:
            continue
        if not isinstance(row, dict):
            found = _json_kind(row)
            raise _fail(path, f"metrics.{kind}: expected an object, got {found}")
        for key, value in row.items():
            if isinstance(value, list | dict):
                found = _json_kind(value)
                raise _fail(
                    path,
                    f"metrics.{kind}.{key}: expected a number or a string, got {found}",
                )
        for key in ("loss", "lr", "val_loss"):
            value = row.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise _fail(path, f"metrics.{kind}.{key}: expected a number")


# -------------------------------------------------------------------- data ---
def run_dir_data(
    cfg: RunConfig,
    run_dir: Path,
    tokenizer: Tokenizer,
    out_dir: Path,
    *,
    write: bool = True,
) -> RunData:
    """The run's data from the prepared ``dataset.bin`` of ``run_dir``.

    Used on resume when the user names no corpus. A missing file is a
    ConfigError naming the fix; anything but a regular file is refused before
    it is read. The ids are checked against the tokenizer's vocabulary here and
    against the checkpoint's fingerprint by the caller. When ``out_dir`` is
    another directory (and ``write``), the run files are written there too, so
    that it is a complete run directory.
    """
    path = run_dir / DATASET_FILE
    try:
        handle, _ = open_regular(path, "dataset.bin", ConfigError)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"--resume: the run directory {run_dir} has no prepared data "
            f"({DATASET_FILE}), and no corpus was named",
            hint="name the run's corpus with --set data.corpus=PATH",
        ) from exc
    handle.close()
    ids = read_dataset_bin(path, tokenizer.vocab_size)
    train, val = train_val_split(
        ids, cfg.data.val_fraction, min_tokens=cfg.train.seq_len + 1
    )
    num_batches(train.size, cfg.train.batch_size, cfg.train.seq_len)
    data = RunData(
        tokenizer,
        train,
        val,
        fingerprint(ids),
        unigram_entropy(train, tokenizer.vocab_size),
    )
    if write and not _same_dir(out_dir, run_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / TOKENIZER_FILE).write_text(json.dumps(tokenizer.to_dict()) + "\n")
        write_dataset_bin(out_dir / DATASET_FILE, ids)
        info = {
            "corpus": cfg.data.corpus,
            "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "n_tokens": int(ids.size),
            "n_train": int(train.size),
            "n_val": int(val.size),
            "sha256": data.sha256,
            "unigram_entropy": data.unigram_entropy,
        }
        (out_dir / DATASET_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return data


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.exists() and a.samefile(b)
    except OSError:
        return False


__all__ = [
    "RESUME_HINT",
    "Resume",
    "check_run_metadata",
    "open_resume",
    "run_dir_data",
]
