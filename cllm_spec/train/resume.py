"""Resuming a run: what is taken from a checkpoint, and what never is.

A checkpoint's SHA-256 is a checksum, not a signature: anyone can edit its
metadata and recompute it. So everything in it is untrusted input, and
``cllm train --resume CKPT`` takes from it only state, never an instruction:

- **Run config.** The stored ``run.config`` goes through the validation of
  ``--set`` (:func:`cllm_spec.train.config.from_dict`, bounds included) before
  anything else is done with it; a bad value is a ConfigError naming the field
  and the checkpoint.
- **Backend.** The backend the run recorded (``train.backend``) is looked up
  among the registered backends only (``get_backend(name,
  registered_only=True)`` of :mod:`cllm_spec.registry`), never imported as a
  module path; a path the user gives (``--backend``, ``--set
  train.backend=``, ``$CLLM_BACKEND``) still is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cllm_spec import checkpoint
from cllm_spec.errors import ConfigError
from cllm_spec.train.config import RunConfig, from_dict
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


__all__ = [
    "RESUME_HINT",
    "Resume",
    "open_resume",
]
