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
  grad_avg; ``adagrad``: sum. ``max_exp_avg_sq`` (ZERO_OPTIONAL_FIELDS) is
  only written when some bit of it is set: without amsgrad it stays zero, and
  storing it cost a quarter of an AdamW checkpoint. A file without it reads as
  zeros; one with it (all of its tensors, never a part) loads as before.

Names are written in sorted order, in the header and in the data, and the JSON
is compact with sorted keys, so the same tensors and metadata always give the
same bytes. (The ``safetensors`` writer orders ``__metadata__`` by a hash that
changes from process to process and groups tensors by dtype; that is why this
module writes the bytes itself; it reads them itself too, one tensor at a
time with the limits of ``load`` below. The tests check that the library
reads what it writes.)

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
this order, and reads no tensor byte before the last header check:

1. the path names a regular file (:func:`cllm_spec.files.open_regular`: a
   FIFO, a device or a directory is refused before it is opened for reading)
   of >= 8 bytes;
2. it begins like a safetensors file, a length below 2**48 then ``{``, else it
   is "not a CLLM checkpoint" (a text file, a picture, ...); the header length
   is <= file size - 8 and <= MAX_HEADER_BYTES;
3. the header, read piece by piece, is printable ASCII (what ``json.dumps``
   writes; a sparse file's zeros stop the read at the first piece), and JSON
   within the limits below, with a ``__metadata__`` map naming this format and
   a known version;
4. at most MAX_TENSORS entries, each with a known dtype, a shape of
   non-negative ints and offsets that tile the data exactly with the shape's
   size (so the declared sizes add up to the file's);
5. the metadata values are JSON within the limits below, each of the shape
   :mod:`cllm_spec.checkpoint_metadata` gives; the model config is valid; the
   RNG state can be restored;
6. the tensor names, shapes and dtypes are exactly those of the config (and of
   the optimizer, if any): a file declaring more data than its config needs
   is refused here, however large;
7. the checksum matches, computed through one 1 MiB buffer in name order;
8. only then is each tensor read, one at a time, straight into its own array.

Any failure raises :class:`CheckpointError` with a hint, never another
exception. ``metadata`` comes back with the keys of ``save``'s argument,
``model_config`` as a :class:`ModelConfig`, so ``save(p2, tensors=t,
metadata=m)`` after ``t, m = load(p1)`` rewrites the same bytes.

``resolve(path)`` is ``path``, or the newest checkpoint when it is a run directory.
``rotate(directory, keep_last=K)`` deletes all but the K newest
``ckpt-<step>.safetensors`` files (by step, never by time stamp);
``checkpoint_path(directory, step)`` names them and :func:`latest` finds the
newest.

This module encodes, saves and loads; the rest is in its parts:
:mod:`cllm_spec.checkpoint_format` (the bytes: header, checksum, reading
within the limits), :mod:`cllm_spec.checkpoint_metadata` (the shape of each
metadata value), :mod:`cllm_spec.checkpoint_contents` (checks 5 and 6 of
``load``), :mod:`cllm_spec.checkpoint_state` (parameters, optimizer state and
RNG state to and from tensors and metadata) and
:mod:`cllm_spec.checkpoint_rotation` (the checkpoints of a run directory).
This module re-exports the public names of the last two and the format's
constants.

Limits
------
What the numbers of a file can make the reader do (the constants live in
:mod:`cllm_spec.checkpoint_format`, with the reader; ``save`` refuses to write
a file over them)::

    MAX_HEADER_BYTES  100 MiB   the header (a word vocabulary of 30,000 takes
                                ~0.5 MB, a BPE tokenizer a few MB)
    MAX_TENSORS       65,536    entries: a 1,300-layer model with 3 optimizer
                                fields
    MAX_JSON_DEPTH    32        nesting of the header and of each metadata
                                value (cllm writes at most 4)
    MAX_JSON_ITEMS    1,000,000 containers and commas of the header and all
                                metadata values together (:mod:`cllm_spec.
                                bounded_json`): ~8 per tensor, 2 per word of a
                                word vocabulary

Memory: Python objects cost up to ~25 times their JSON text (``[],`` is 3
bytes and 64 of list), so the item limit, not the byte limit, is what bounds
the objects the header makes: ~60 MB at most. Until the checksum has
matched, the reader holds the header (as bytes, then text) and that: never
more than ~3 times the header plus a constant, whatever the file declares. A
sparse file reads as zeros; its apparent size is what the header must tile,
and a header whose config wants that much data and whose checksum matches is
an all-zero checkpoint of that size, which is then read like any other.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from cllm_spec import bounded_json, checks
from cllm_spec import checkpoint_format as fmt
from cllm_spec.checkpoint_contents import decode_metadata, validate_contents
from cllm_spec.checkpoint_format import (
    CODES,
    DTYPES,
    EDITED,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_HEADER_BYTES,
    MAX_JSON_DEPTH,
    MAX_JSON_ITEMS,
    MAX_TENSORS,
    METADATA_FIELDS,
    checksum,
    fail,
    header_bytes,
    json_text,
)
from cllm_spec.checkpoint_rotation import (
    checkpoint_path,
    latest,
    list_checkpoints,
    resolve,
    rotate,
)
from cllm_spec.checkpoint_state import (
    OPTIMIZER_STATES,
    ZERO_OPTIONAL_FIELDS,
    model_tensors,
    optimizer_fields,
    optimizer_state_from_tensors,
    optimizer_tensors,
    params_from_tensors,
    rng_from_state,
    rng_state,
)
from cllm_spec.errors import CheckpointError, ConfigError
from cllm_spec.files import fsync_directory
from cllm_spec.model import ModelConfig


# ------------------------------------------------------------- encoding ----
def _tensor_code(name: str, arr: np.ndarray) -> str:
    code = CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise CheckpointError(
            f"tensor {name!r}: dtype {arr.dtype} cannot be stored",
            hint="store float32, float64, int32 or int64 arrays",
        )
    return code


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
    full_meta["sha256"] = checksum(meta, entries, arrays)
    return _Prepared(header_bytes(full_meta, entries), arrays)


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
            meta[key] = json_text(values[key])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"metadata.{key}: not JSON-serializable: {exc}") from exc
        except RecursionError as exc:
            raise ConfigError(
                f"metadata.{key}: nested too deeply to store (the limit is "
                f"{fmt.MAX_JSON_DEPTH} levels)"
            ) from exc
        try:  # the reader's limits, so that what is written can be read
            bounded_json.measure(
                meta[key], max_depth=fmt.MAX_JSON_DEPTH, max_items=fmt.MAX_JSON_ITEMS
            )
        except bounded_json.JSONLimitError as exc:
            raise ConfigError(f"metadata.{key}: {exc}") from exc
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
    # Refuse to write what load would refuse to read: the header's limits (the
    # JSON items are shared by the header and the metadata), then its contents.
    if len(tensors) > fmt.MAX_TENSORS:
        raise CheckpointError(
            f"{len(tensors):,} tensors, more than the {fmt.MAX_TENSORS:,} a "
            "checkpoint may hold"
        )
    prepared = _prepare(tensors, meta)
    text = prepared.header[8:].decode("ascii")  # json_text escapes the rest
    if len(text) > fmt.MAX_HEADER_BYTES:
        raise CheckpointError(
            f"the header would take {len(text):,} bytes, more than the "
            f"{fmt.MAX_HEADER_BYTES:,} a checkpoint may use"
        )
    try:
        items = bounded_json.measure(
            text, max_depth=fmt.MAX_JSON_DEPTH, max_items=fmt.MAX_JSON_ITEMS
        )
    except bounded_json.JSONLimitError as exc:
        raise CheckpointError(f"header: {exc}") from exc
    specs = {n: (np.shape(a), np.asarray(a).dtype) for n, a in tensors.items()}
    validate_contents(specs, decode_metadata(meta, fmt.MAX_JSON_ITEMS - items))
    return prepared


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
    fsync_directory(directory)


# --------------------------------------------------------------- reading ---
def load(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and fully validate a checkpoint (module docstring)."""
    target = Path(path)
    fh, size = fmt.open_checkpoint(target)
    with fh:
        layout = fmt.read_layout(target, fh, size)
        try:
            metadata = decode_metadata(layout.meta, fmt.MAX_JSON_ITEMS - layout.items)
            specs = {e.name: (e.shape, DTYPES[e.code]) for e in layout.entries}
            validate_contents(specs, metadata)
        except CheckpointError as exc:
            raise fail(target, exc.message, exc.hint_text or EDITED) from exc
        # Everything the header declares is consistent: only now is data read.
        fmt.verify_checksum(target, fh, layout)
        tensors = fmt.read_tensors(target, fh, layout)
    return tensors, metadata


def _little_endian(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_JSON_ITEMS",
    "MAX_TENSORS",
    "METADATA_FIELDS",
    "OPTIMIZER_STATES",
    "ZERO_OPTIONAL_FIELDS",
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
    "resolve",
    "rng_from_state",
    "rng_state",
    "rotate",
    "save",
]
