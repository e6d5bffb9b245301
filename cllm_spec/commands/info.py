"""``cllm info CKPT [--json]``: what a checkpoint holds (see DESCRIPTION).

This module also holds what the read-side commands (``generate``, ``eval``,
``info``) share: resolving ``CKPT`` (a file, or a run directory whose
highest-step ``ckpt-<step>.safetensors`` is taken), loading it, choosing the
backend, and reporting errors as ``cllm <command>: error: <message>`` plus a
hint line on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cllm_spec import checkpoint
from cllm_spec.data.tokenizers import Tokenizer, tokenizer_from_dict
from cllm_spec.errors import BackendError, CheckpointError, CllmError
from cllm_spec.model import ModelConfig, param_count
from cllm_spec.registry import ENV_VAR, default_backend_name, get_backend

EXIT_ERROR = 2
Command = Callable[[argparse.Namespace], int]

DESCRIPTION = """\
Prints the checkpoint's path, file size and checksum status, the training step,
the model config, the parameter count and dtype, the tokenizer's kind and
vocabulary size, the backend the run recorded, the optimizer and the last
logged metrics. --json prints the same as one JSON object (non-finite metric
values become null, so the output is strict JSON).

CKPT is a checkpoint file or a run directory (its highest-step checkpoint).
The checksum status is "verified": loading checks the SHA-256 of every tensor
and metadata byte, and a file that fails it (or any other check) is an error,
not a status: "cllm info: error: ... checksum mismatch", exit status 2.
"""


# ------------------------------------------------------------ error reporting ---
def report_error(command: str, message: str, hint: str = "") -> int:
    """Print ``cllm <command>: error: <message>`` and the hint; return 2."""
    print(f"cllm {command}: error: {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)
    return EXIT_ERROR


def reports_errors(command: str) -> Callable[[Command], Command]:
    """Turn the spec's errors and OS errors raised by a command into exit 2.

    Only errors raised on purpose (``CllmError``) and I/O failures
    (``OSError``) are caught: anything else is a bug and keeps its traceback.
    """

    def wrap(func: Command) -> Command:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            try:
                return func(args)
            except BrokenPipeError:
                # the reader left (`| head`): stop quietly, as Python's docs advise
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                return 1
            except CllmError as exc:
                return report_error(command, exc.message, exc.hint_text)
            except FileNotFoundError as exc:
                return report_error(command, str(exc), "check the path")
            except OSError as exc:
                return report_error(command, str(exc), "check the path's permissions")

        return run

    return wrap


# ------------------------------------------------------------ loading -----------
@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read and validated by :func:`cllm_spec.checkpoint.load`."""

    path: Path
    cfg: ModelConfig
    params: np.ndarray  # (P,) in the stored dtype
    metadata: dict[str, Any]
    file_size: int  # bytes

    @property
    def step(self) -> int | None:
        return checkpoint_step(self.path, self.metadata)


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read and fully validate a checkpoint file, or the newest of a run
    directory (``ckpt-<step>.safetensors`` with the highest step); any defect
    is a CheckpointError."""
    target = checkpoint.resolve(path)
    tensors, metadata = checkpoint.load(target)
    cfg = metadata["model_config"]
    params = checkpoint.params_from_tensors(cfg, tensors)
    return LoadedCheckpoint(target, cfg, params, metadata, target.stat().st_size)


def load_tokenizer(ckpt: LoadedCheckpoint) -> Tokenizer:
    """The checkpoint's tokenizer; it must fit the model's vocabulary."""
    stored = ckpt.metadata.get("tokenizer")
    if stored is None:
        raise CheckpointError(
            f"{ckpt.path}: the checkpoint stores no tokenizer",
            hint="checkpoints written by `cllm train` store theirs; text cannot "
            "be encoded without it",
        )
    tokenizer = tokenizer_from_dict(stored)
    if tokenizer.vocab_size > ckpt.cfg.vocab_size:
        raise CheckpointError(
            f"{ckpt.path}: the tokenizer has {tokenizer.vocab_size} ids but the "
            f"model only {ckpt.cfg.vocab_size}",
            hint="the tokenizer and the weights come from different runs",
        )
    return tokenizer


def checkpoint_step(path: Path, metadata: Mapping[str, Any]) -> int | None:
    """The training step: the optimizer's, else the run's, else the file name's."""
    optimizer = metadata.get("optimizer")
    if isinstance(optimizer, Mapping) and isinstance(optimizer.get("step"), int):
        return int(optimizer["step"])
    run = metadata.get("run")
    if isinstance(run, Mapping) and isinstance(run.get("step"), int):
        return int(run["step"])
    name = path.name
    if name.startswith("ckpt-") and name.endswith(".safetensors"):
        digits = name[len("ckpt-") : -len(".safetensors")]
        if digits.isdigit():
            return int(digits)
    return None


def recorded_backend(metadata: Mapping[str, Any]) -> str | None:
    """The backend name in the metadata's ``run`` section, if any."""
    run = metadata.get("run")
    name = run.get("backend") if isinstance(run, Mapping) else None
    return name if isinstance(name, str) and name.strip() else None


def select_backend(
    flag: str | None, metadata: Mapping[str, Any], command: str
) -> tuple[Any, str]:
    """The backend and where its name came from.

    Order: ``--backend``, else ``$CLLM_BACKEND``, else the backend the run
    recorded (``metadata["run"]["backend"]``) if it is registered and loads
    here, else numpy. A name given explicitly (flag or environment) that does
    not load is an error; a recorded one that does not only prints a note,
    since the weights are backend-independent. A recorded name is never
    imported as a module path (the checkpoint is untrusted input).
    """
    if flag:
        return get_backend(flag), "--backend"
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return get_backend(env), f"${ENV_VAR}"
    recorded = recorded_backend(metadata)
    if recorded is not None:
        try:
            return get_backend(recorded, registered_only=True), "the checkpoint's run"
        except BackendError:
            print(
                f"cllm {command}: note: the run's backend {recorded!r} does not "
                f"load here; using {default_backend_name()}",
                file=sys.stderr,
            )
    return get_backend(default_backend_name()), "default"


# ------------------------------------------------------------ the command -------
def json_safe(value: Any) -> Any:
    """JSON-safe copy: NaN and inf floats become None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _tokenizer_summary(stored: Any) -> dict[str, Any] | None:
    if stored is None:
        return None
    kind = stored.get("kind") if isinstance(stored, Mapping) else None
    try:
        return {"kind": kind, "vocab_size": tokenizer_from_dict(stored).vocab_size}
    except CllmError as exc:  # e.g. bpe without the optional `tokenizers`
        return {"kind": kind, "vocab_size": None, "error": exc.message}


def describe(ckpt: LoadedCheckpoint) -> dict[str, Any]:
    """Everything ``cllm info`` prints, as JSON-ready values."""
    meta = ckpt.metadata
    optimizer = meta.get("optimizer")
    info: dict[str, Any] = json_safe(
        {
            "path": str(ckpt.path),
            "file_size": ckpt.file_size,
            "checksum": "verified",
            "step": ckpt.step,
            "model_config": ckpt.cfg.to_dict(),
            "parameters": param_count(ckpt.cfg),
            "dtype": str(ckpt.params.dtype),
            "tokenizer": _tokenizer_summary(meta.get("tokenizer")),
            "backend": recorded_backend(meta),
            "optimizer": None
            if optimizer is None
            else {"name": optimizer["name"], "step": optimizer["step"]},
            "scheduler": meta.get("scheduler"),
            "metrics": meta.get("metrics"),
            "run": meta.get("run"),
        }
    )
    return info


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: {"train": {"loss": 2}} ->
    {"train.loss": 2}."""
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, Mapping):
            flat.update(_flatten(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def _format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, Mapping):
        items = sorted(_flatten(value).items())
        return ", ".join(f"{k}={_format_value(v)}" for k, v in items) or "-"
    return str(value)


#: The fields of each schedule that change its rates (cllm_spec.schedules).
_SCHEDULE_FIELDS = {
    "constant": ("lr", "warmup_steps"),
    "linear": ("lr", "warmup_steps", "total_steps", "min_lr"),
    "cosine": ("lr", "warmup_steps", "total_steps", "min_lr"),
    "step": ("lr", "warmup_steps", "step_size", "gamma", "min_lr"),
}


def schedule_fields(scheduler: Any) -> Any:
    """The stored schedule with only the fields its ``name`` uses (and a
    continuation, when the run was extended on resume); anything else as is."""
    if not isinstance(scheduler, Mapping):
        return scheduler
    used = _SCHEDULE_FIELDS.get(scheduler.get("name"))  # type: ignore[arg-type]
    if used is None:
        return scheduler
    shown = {"name": scheduler["name"]}
    shown |= {k: scheduler[k] for k in used if k in scheduler}
    if scheduler.get("resume_step") is not None:
        shown |= {k: scheduler.get(k) for k in ("resume_step", "resume_lr")}
    return shown


def format_description(info: Mapping[str, Any]) -> str:
    """The human-readable table of :func:`describe`'s result."""
    cfg = info["model_config"]
    tok = info["tokenizer"]
    opt = info["optimizer"]
    rows = [
        ("checkpoint", info["path"]),
        ("file", f"{info['file_size']:,} bytes, checksum {info['checksum']}"),
        ("step", _format_value(info["step"])),
        ("model", _format_value(cfg)),
        ("parameters", f"{info['parameters']:,} ({info['dtype']})"),
        (
            "tokenizer",
            "-"
            if tok is None
            else f"{tok['kind']}, vocab size {_format_value(tok['vocab_size'])}",
        ),
        ("backend", info["backend"] or "not recorded"),
        ("optimizer", "-" if opt is None else f"{opt['name']} (step {opt['step']})"),
        ("scheduler", _format_value(schedule_fields(info["scheduler"]))),
        ("metrics", _format_value(info["metrics"])),
    ]
    return "\n".join(f"{key:<11} {value}" for key, value in rows)


@reports_errors("info")
def cmd_info(args: argparse.Namespace) -> int:
    info = describe(load_checkpoint(args.checkpoint))
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, allow_nan=False))
    else:
        print(format_description(info))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cllm info``."""
    p = sub.add_parser(
        "info",
        help="show a checkpoint's config, step, size, tokenizer and metrics",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint file or run dir")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)
