"""The checkpoint format: one self-contained safetensors file, written atomically.

Layout
======

A checkpoint is a safetensors file, so any safetensors reader (the
``safetensors`` library, PyTorch, ...) loads its weights::

    bytes [0, 8)         N, the header length: unsigned 64-bit little-endian
    bytes [8, 8 + N)     the header: UTF-8 JSON, padded with spaces to a multiple of 8
    bytes [8 + N, end)   the tensors: raw little-endian, C order, back to back

The header maps each tensor name to ``{"data_offsets": [begin, end], "dtype":
"F32" | "F64" | "I32" | "I64", "shape": [...]}`` (offsets relative to the
tensor bytes) and holds ``"__metadata__"``, a string -> string map.

Tensors
-------
- Parameters under their canonical names (:mod:`cllm_spec.model`):
  ``model.wte.weight``, ``model.h.0.attn.qkv.weight``, ... exactly the names and
  shapes of the config, in one float dtype.
- Optimizer state, one tensor per state field and parameter, shaped like the
  parameter: ``optim.<field>.<parameter name>``, e.g.
  ``optim.exp_avg.model.wte.weight``. Per-parameter tensors (rather than the
  flat (P,) buffers) keep the file readable by name, like a PyTorch state dict,
  and independent of the flat buffer's order. The fields are those of the
  optimizer's state NamedTuple in :mod:`cllm_spec.protocols` except ``step``
  (which is metadata): ``sgd``: momentum_buffer; ``adam``/``adamw``: exp_avg,
  exp_avg_sq, max_exp_avg_sq; ``rmsprop``: square_avg, momentum_buffer,
  grad_avg; ``adagrad``: sum.

Names are written in sorted order, in the header and in the data, and the JSON
is compact with sorted keys, so the same tensors and metadata always give the
same bytes. (The ``safetensors`` writer orders ``__metadata__`` by a hash that
changes from process to process and groups tensors by dtype; that is why this
module writes the bytes itself and uses the library only to read them.)

Metadata
--------
``__metadata__`` holds, every value a string, JSON unless noted::

    format          "cllm-checkpoint" (plain string)
    format_version  "1" (plain string)
    model_config    ModelConfig.to_dict()
    tokenizer       the tokenizer's own JSON description, or null
    optimizer       {"name": "adamw", "hyperparameters": {...}, "step": int} or null
    scheduler       the schedule config, or null
    data_cursor     where the data iterator stands (epoch, position, ...), or null
    rng_state       numpy.random.Generator.bit_generator.state, or null
    metrics         the last logged metrics, or null
    run             what ``cllm train`` ran: {"backend", "dtype", "config", "step",
                    "cllm_version"}, or null
    sha256          hex SHA-256 of the manifest and the tensor bytes (below)

The checksum is the SHA-256 of ``json({"metadata": <every entry but sha256>,
"tensors": [[name, dtype, shape], ...]})`` (compact, sorted keys, names in sorted
order) followed by every tensor's bytes in name order. It covers the data and
every meaningful header byte, so a flipped bit anywhere is detected.

API
===

``save(path, *, tensors, metadata)`` writes atomically: a temporary file in the
same directory is written, flushed and fsynced, renamed over ``path``, and the
directory is fsynced. A crash at any moment leaves either the old file or the
new one at ``path``, never a mix. ``metadata`` has the keys above minus the
automatic ones (format, format_version, sha256); ``model_config`` is required
(a ModelConfig or its dict), the others default to null. What ``save`` would
write must pass every check ``load`` makes, or it raises CheckpointError first;
bad arguments raise ConfigError or DTypeError, and an I/O failure raises the
OSError after removing the temporary file.

``load(path) -> (tensors, metadata)`` treats the file as hostile. It checks, in
this order, before anything is allocated from the file's numbers: the path is a
readable file of >= 8 bytes; the header length is <= file size - 8 and <= 100
MiB; the header is UTF-8 JSON with a ``__metadata__`` map naming this format and
a known version; every tensor entry has a known dtype, a shape of non-negative
ints and offsets that tile the data exactly with the shape's size; then the
safetensors library parses the file; the checksum matches; the metadata is
well-formed JSON; the model config is valid; the tensor names, shapes and
dtypes are exactly those of the config (and of the optimizer, if any); the RNG
state can be restored. Any failure raises :class:`CheckpointError` with a hint,
never another exception. ``metadata`` comes back with the keys of ``save``'s
argument, ``model_config`` as a :class:`ModelConfig`, so
``save(p2, tensors=t, metadata=m)`` after ``t, m = load(p1)`` rewrites the same
bytes.

``resolve(path)`` is ``path``, or the newest checkpoint when it is a run directory.
``rotate(directory, keep_last=K)`` deletes all but the K newest
``ckpt-<step>.safetensors`` files (by step, never by time stamp);
``checkpoint_path(directory, step)`` names them and :func:`latest` finds the
newest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
from safetensors.numpy import load as safetensors_load

from cllm_spec import checks
from cllm_spec.errors import CheckpointError, ConfigError
from cllm_spec.model import ModelConfig, param_layout, param_shapes
from cllm_spec.protocols import AdagradState, AdamState, RMSpropState, SGDState

FORMAT_NAME = "cllm-checkpoint"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100 * 2**20
METADATA_FIELDS = (
    "model_config",
    "tokenizer",
    "optimizer",
    "scheduler",
    "data_cursor",
    "rng_state",
    "metrics",
    "run",  # the training run: {"backend", "dtype", "config", ...}
)
_AUTOMATIC_FIELDS = ("format", "format_version", "sha256")
_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}
OPTIMIZER_STATES: dict[str, Any] = {  # name -> state NamedTuple class
    "sgd": SGDState,
    "adam": AdamState,
    "adamw": AdamState,
    "rmsprop": RMSpropState,
    "adagrad": AdagradState,
}
_CKPT_NAME = re.compile(r"^ckpt-(\d+)\.safetensors$")


# ------------------------------------------------------- tensor naming -----
def model_tensors(cfg: ModelConfig, params: np.ndarray) -> dict[str, np.ndarray]:
    """Canonical name -> view of ``params: (P,)`` (no copy)."""
    return param_layout(cfg).views(params)


def params_from_tensors(
    cfg: ModelConfig, tensors: Mapping[str, np.ndarray]
) -> np.ndarray:
    """The flat (P,) buffer of the ``model.*`` tensors, in their dtype."""
    layout = param_layout(cfg)
    return layout.flatten({name: tensors[name] for name in layout})


def optimizer_fields(name: str) -> tuple[str, ...]:
    """The array fields of optimizer ``name``'s state (``step`` excluded)."""
    state = OPTIMIZER_STATES.get(name)
    if state is None:
        raise ConfigError(
            f"optimizer: expected one of {sorted(OPTIMIZER_STATES)}, got {name!r}"
        )
    return tuple(f for f in state._fields if f != "step")


def optimizer_tensors(
    cfg: ModelConfig, name: str, state: NamedTuple
) -> dict[str, np.ndarray]:
    """``optim.<field>.<parameter name>`` -> view of the state's flat buffers."""
    layout = param_layout(cfg)
    out = {}
    for field in optimizer_fields(name):
        for pname, view in layout.views(getattr(state, field)).items():
            out[f"optim.{field}.{pname}"] = view
    return out


def optimizer_state_from_tensors(
    cfg: ModelConfig, name: str, tensors: Mapping[str, np.ndarray], step: int
) -> Any:
    """Rebuild the state NamedTuple of optimizer ``name`` from its tensors."""
    layout = param_layout(cfg)
    arrays = {
        field: layout.flatten({p: tensors[f"optim.{field}.{p}"] for p in layout})
        for field in optimizer_fields(name)
    }
    return OPTIMIZER_STATES[name](**arrays, step=int(step))


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The JSON-ready state of ``rng`` (``rng.bit_generator.state``)."""
    return dict(rng.bit_generator.state)


def rng_from_state(state: Mapping[str, Any]) -> np.random.Generator:
    """A Generator that continues exactly where the one of ``state`` stood."""
    name = state.get("bit_generator") if isinstance(state, Mapping) else None
    cls = getattr(np.random, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, np.random.BitGenerator)):
        raise ConfigError(f"rng_state: unknown bit generator {name!r}")
    bit_generator = cls()
    bit_generator.state = dict(state)
    return np.random.Generator(bit_generator)


# ------------------------------------------------------------- encoding ----
def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _tensor_code(name: str, arr: np.ndarray) -> str:
    code = _CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise CheckpointError(
            f"tensor {name!r}: dtype {arr.dtype} cannot be stored",
            hint="store float32, float64, int32 or int64 arrays",
        )
    return code


def _checksum(
    meta: Mapping[str, str],
    entries: list[tuple[str, str, list[int]]],
    blobs: Iterable[np.ndarray],
) -> str:
    digest = hashlib.sha256()
    manifest = {"metadata": dict(meta), "tensors": [list(e) for e in entries]}
    digest.update(_json(manifest).encode())
    for blob in blobs:  # C-contiguous arrays: hashed in place, no copies
        digest.update(blob.data)
    return digest.hexdigest()


class _Prepared(NamedTuple):
    header: bytes  # the 8 length bytes and the padded JSON header
    arrays: list[np.ndarray]  # little-endian, C order, in name order


def _prepare(tensors: Mapping[str, np.ndarray], meta: Mapping[str, str]) -> _Prepared:
    names = sorted(tensors)
    arrays = [_little_endian(tensors[n]) for n in names]
    entries = [
        (n, _tensor_code(n, a), list(a.shape))
        for n, a in zip(names, arrays, strict=True)
    ]
    full_meta = dict(meta)
    full_meta["sha256"] = _checksum(meta, entries, arrays)
    header: dict[str, Any] = {"__metadata__": full_meta}
    offset = 0
    for (name, code, shape), arr in zip(entries, arrays, strict=True):
        header[name] = {
            "data_offsets": [offset, offset + arr.nbytes],
            "dtype": code,
            "shape": shape,
        }
        offset += arr.nbytes
    text = _json(header).encode()
    text += b" " * (-len(text) % 8)  # 8-byte alignment of the data, as safetensors pads
    return _Prepared(len(text).to_bytes(8, "little") + text, arrays)


def _encode_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise ConfigError(
            f"metadata: expected a mapping, got {type(metadata).__name__}"
        )
    unknown = sorted(set(metadata) - set(METADATA_FIELDS))
    if unknown:
        raise ConfigError(
            f"metadata: unknown key(s) {unknown}; "
            f"expected some of {list(METADATA_FIELDS)}"
        )
    if "model_config" not in metadata:
        raise ConfigError("metadata: model_config is required")
    values = dict.fromkeys(METADATA_FIELDS)
    values.update(metadata)
    cfg = values["model_config"]
    values["model_config"] = cfg.to_dict() if isinstance(cfg, ModelConfig) else cfg
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}
    for key in METADATA_FIELDS:
        try:
            meta[key] = _json(values[key])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"metadata.{key}: not JSON-serializable: {exc}") from exc
    return meta


def encode(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> bytes:
    """The exact bytes :func:`save` writes (validated the same way)."""
    prepared = _checked_prepare(tensors, metadata)
    return prepared.header + b"".join(a.tobytes() for a in prepared.arrays)


def _checked_prepare(
    tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any]
) -> _Prepared:
    if not isinstance(tensors, Mapping):
        raise ConfigError(f"tensors: expected a mapping, got {type(tensors).__name__}")
    for name, arr in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ConfigError(f"tensors: bad tensor name {name!r}")
        checks.as_array(name, arr)
    meta = _encode_metadata(metadata)
    # Refuse to write what load would refuse to read.
    _validate_contents(tensors, _decode_metadata(meta))
    return _prepare(tensors, meta)


# --------------------------------------------------------------- writing ---
def save(
    path: str | os.PathLike[str],
    *,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any],
) -> Path:
    """Write a checkpoint atomically (module docstring); returns the path."""
    prepared = _checked_prepare(tensors, metadata)
    target = Path(path)
    _atomic_write(target, prepared)
    return target


def _write_all(fh: BinaryIO, prepared: _Prepared) -> None:
    fh.write(prepared.header)
    for arr in prepared.arrays:
        fh.write(arr.data)  # contiguous: the raw bytes, without a copy


def _atomic_write(target: Path, prepared: _Prepared) -> None:
    directory = target.parent
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=directory
    )
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; a checkpoint is shareable
            os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            _write_all(fh, prepared)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories can't
    be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the data is synced
    finally:
        os.close(fd)


# --------------------------------------------------------------- reading ---
def _fail(path: Path, message: str, hint: str | None = None) -> CheckpointError:
    return CheckpointError(f"{path}: {message}", hint=hint)


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise _fail(
            path, "no such file", "check the path; `ls` the checkpoint directory"
        )
    if not path.is_file():
        raise _fail(
            path, "not a regular file", "pass the checkpoint file, not a directory"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _fail(
            path, f"cannot be read: {exc}", "check the file's permissions"
        ) from exc


def _parse_header(path: Path, data: bytes) -> tuple[dict[str, Any], int]:
    """The header object and the start of the tensor bytes, checked structurally."""
    size = len(data)
    if size < 8:
        raise _fail(
            path, f"{size} bytes is too short for a checkpoint (>= 8)", _TRUNCATED
        )
    n = int.from_bytes(data[:8], "little")
    if n > size - 8 or n > MAX_HEADER_BYTES:
        raise _fail(
            path,
            f"header length {n} exceeds the file ({size} bytes) or the "
            f"{MAX_HEADER_BYTES}-byte limit",
            _TRUNCATED,
        )
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # RecursionError: deep nesting
        raise _fail(path, f"header is not UTF-8 JSON: {exc}", _TRUNCATED) from exc
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object", _TRUNCATED)
    return header, 8 + n


_TRUNCATED = "the file is truncated or corrupted; use an earlier checkpoint"
_FOREIGN = (
    "this is a safetensors file written by another program; load it with safetensors"
)


def _check_format(path: Path, header: Mapping[str, Any]) -> dict[str, str]:
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _fail(path, "no string __metadata__ map: not a CLLM checkpoint", _FOREIGN)
    if meta.get("format") != FORMAT_NAME:
        raise _fail(
            path, f"format is {meta.get('format')!r}, not {FORMAT_NAME!r}", _FOREIGN
        )
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise _fail(
            path,
            f"format version {version!r} is not supported (this cllm reads "
            f"version {FORMAT_VERSION})",
            "a different cllm version wrote this file; use a matching cllm",
        )
    expected = set(METADATA_FIELDS) | set(_AUTOMATIC_FIELDS)
    if set(meta) != expected:
        raise _fail(
            path,
            f"metadata keys {sorted(meta)} differ from {sorted(expected)}",
            _TRUNCATED,
        )
    return meta


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entries(
    path: Path, header: Mapping[str, Any], body: int
) -> list[tuple[str, str, list[int]]]:
    """Each tensor entry is well-formed and the entries tile [0, body) exactly."""
    spans = []
    entries = []
    for name in sorted(k for k in header if k != "__metadata__"):
        entry = header[name]
        if not isinstance(entry, dict) or set(entry) != {
            "data_offsets",
            "dtype",
            "shape",
        }:
            raise _fail(path, f"tensor {name!r}: malformed header entry", _TRUNCATED)
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPES:
            raise _fail(path, f"tensor {name!r}: unknown dtype {dtype!r}", _TRUNCATED)
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _fail(path, f"tensor {name!r}: bad shape {shape!r}", _TRUNCATED)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_count(o) for o in offsets)
            or not offsets[0] <= offsets[1] <= body
        ):
            raise _fail(
                path,
                f"tensor {name!r}: offsets {offsets!r} outside the data",
                _TRUNCATED,
            )
        if offsets[1] - offsets[0] != math.prod(shape) * _DTYPES[dtype].itemsize:
            raise _fail(
                path, f"tensor {name!r}: offsets disagree with its shape", _TRUNCATED
            )
        spans.append((offsets[0], offsets[1]))
        entries.append((name, dtype, shape))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise _fail(path, "tensor data overlaps or leaves gaps", _TRUNCATED)
        position = end
    if position != body:
        raise _fail(path, f"tensor data covers {position} of {body} bytes", _TRUNCATED)
    return entries


def load(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and fully validate a checkpoint (module docstring)."""
    target = Path(path)
    data = _read_bytes(target)
    header, start = _parse_header(target, data)
    meta = _check_format(target, header)
    entries = _check_entries(target, header, len(data) - start)
    raw = _parse_tensors(target, data)
    names = sorted(raw)
    if names != [e[0] for e in entries]:
        raise _fail(target, "the parsed tensors differ from the header", _TRUNCATED)
    stored = {k: v for k, v in meta.items() if k != "sha256"}
    digest = _checksum(stored, entries, [_little_endian(raw[n]) for n in names])
    if digest != meta["sha256"]:
        raise _fail(
            target,
            "checksum mismatch: the tensors or the metadata were modified",
            "the file is corrupted; use an earlier checkpoint",
        )
    # Native byte order, own memory: callers may write into the arrays.
    tensors = {
        name: np.array(arr, dtype=arr.dtype.newbyteorder("="), order="C")
        for name, arr in raw.items()
    }
    try:
        metadata = _decode_metadata(meta)
        _validate_contents(tensors, metadata)
    except CheckpointError as exc:
        raise _fail(target, exc.message, exc.hint_text) from exc
    return tensors, metadata


def _little_endian(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))


def _parse_tensors(path: Path, data: bytes) -> dict[str, np.ndarray]:
    try:
        return dict(safetensors_load(data))
    except Exception as exc:  # the library's error type is private; report any
        raise _fail(
            path, f"safetensors cannot parse the file: {exc}", _TRUNCATED
        ) from exc


def _decode_metadata(meta: Mapping[str, str]) -> dict[str, Any]:
    """JSON-decoded metadata with ``model_config`` as a ModelConfig."""
    out: dict[str, Any] = {}
    for key in METADATA_FIELDS:
        try:
            out[key] = json.loads(meta[key])
        except (KeyError, ValueError, RecursionError) as exc:
            raise CheckpointError(f"metadata.{key}: missing or not JSON") from exc
    try:
        out["model_config"] = ModelConfig.from_dict(out["model_config"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"metadata.model_config: {exc}") from exc
    _check_optimizer_meta(out["optimizer"])
    if out["rng_state"] is not None:
        try:
            rng_from_state(out["rng_state"])
        # NumPy's state setters raise several types for malformed states.
        except Exception as exc:
            raise CheckpointError(
                f"metadata.rng_state: cannot be restored: {exc}"
            ) from exc
    return out


def _check_optimizer_meta(optimizer: object) -> None:
    if optimizer is None:
        return
    if not isinstance(optimizer, dict) or set(optimizer) != {
        "name",
        "hyperparameters",
        "step",
    }:
        raise CheckpointError(
            "metadata.optimizer: expected {name, hyperparameters, step} or null"
        )
    if optimizer["name"] not in OPTIMIZER_STATES:
        raise CheckpointError(
            f"metadata.optimizer.name: expected one of {sorted(OPTIMIZER_STATES)}, "
            f"got {optimizer['name']!r}"
        )
    if not isinstance(optimizer["hyperparameters"], dict):
        raise CheckpointError("metadata.optimizer.hyperparameters: expected an object")
    if not _is_count(optimizer["step"]):
        raise CheckpointError(
            f"metadata.optimizer.step: expected an int >= 0, got {optimizer['step']!r}"
        )


def _validate_contents(
    tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any]
) -> None:
    """Tensor names, shapes and dtypes are exactly those the metadata implies."""
    cfg = metadata["model_config"]
    # Count first: a hostile config (n_layer = 10**9) must not make us build
    # the list of its names; past this check that list is no longer than the
    # file's own tensor list.
    n_model = 4 + 12 * cfg.n_layer + (0 if cfg.tie_embeddings else 1)
    if n_model > len(tensors):
        raise CheckpointError(
            f"the model config has {n_model} parameters (missing tensors), "
            f"but the file holds only {len(tensors)} tensors"
        )
    expected = param_shapes(cfg)
    optimizer = metadata.get("optimizer")
    if optimizer is not None:
        for field in optimizer_fields(optimizer["name"]):
            for name, shape in param_shapes(cfg).items():
                expected[f"optim.{field}.{name}"] = shape
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"tensors do not match the model config: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
            f"{'...' if len(extra) > 5 else ''}"
        )
    dtypes = set()
    for name, shape in expected.items():
        arr = tensors[name]
        if tuple(arr.shape) != shape:
            raise CheckpointError(
                f"tensor {name!r}: shape {tuple(arr.shape)}, the config needs {shape}"
            )
        dtypes.add(arr.dtype.newbyteorder("="))
    if len(dtypes) != 1 or next(iter(dtypes)) not in checks.FLOAT_DTYPES:
        raise CheckpointError(
            f"tensors must share one float32 or float64 dtype, got "
            f"{sorted(str(d) for d in dtypes)}"
        )


# -------------------------------------------------------------- rotation ---
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


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "METADATA_FIELDS",
    "OPTIMIZER_STATES",
    "checkpoint_path",
    "encode",
    "latest",
    "list_checkpoints",
    "load",
    "model_tensors",
    "optimizer_fields",
    "optimizer_state_from_tensors",
    "optimizer_tensors",
    "params_from_tensors",
    "rng_from_state",
    "rng_state",
    "rotate",
    "save",
]
