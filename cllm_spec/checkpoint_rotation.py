"""The checkpoints of a run directory: ``ckpt-<step>.safetensors`` files,
named by :func:`checkpoint_path`, listed and ordered by step (never by time
stamp), the newest found by :func:`latest` and :func:`resolve`, the oldest
deleted by :func:`rotate`. What is inside a file is :mod:`cllm_spec.checkpoint`'s.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cllm_spec import checks
from cllm_spec.errors import CheckpointError

_CKPT_NAME = re.compile(r"^ckpt-(\d+)\.safetensors$")


def checkpoint_path(directory: str | os.PathLike[str], step: int) -> Path:
    """``<directory>/ckpt-<step, 9 digits>.safetensors``."""
    step = checks.expect_nonnegative_int("step", step)
    return Path(directory) / f"ckpt-{step:09d}.safetensors"


def list_checkpoints(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt-<step>.safetensors`` in ``directory``,
    oldest step first; other files are ignored."""
    folder = Path(directory)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: not a directory", hint="create the checkpoint directory first"
        )
    found = []
    for entry in folder.iterdir():
        match = _CKPT_NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest(directory: str | os.PathLike[str]) -> Path | None:
    """The checkpoint with the highest step, or None if there is none."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def resolve(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, or the latest checkpoint when it is a run directory."""
    target = Path(path)
    if target.is_dir():
        found = latest(target)
        if found is None:
            raise CheckpointError(
                f"{target}: no ckpt-<step>.safetensors in this directory",
                hint="pass a checkpoint file or the out_dir of a run that saved one",
            )
        return found
    return target


def rotate(directory: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` highest-step checkpoints; return the deleted."""
    keep = checks.expect_positive_int("keep_last", keep_last)
    found = list_checkpoints(directory)
    doomed = [path for _, path in found[:-keep]]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


__all__ = ["checkpoint_path", "latest", "list_checkpoints", "resolve", "rotate"]
