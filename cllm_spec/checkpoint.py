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
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from cllm_spec import bounded_json, checks
from cllm_spec import checkpoint_format as fmt
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
from cllm_spec.checkpoint_metadata import check_metadata
from cllm_spec.errors import CheckpointError, ConfigError
from cllm_spec.files import fsync_directory
from cllm_spec.model import ModelConfig, param_layout, param_shapes
from cllm_spec.protocols import AdagradState, AdamState, RMSpropState, SGDState

OPTIMIZER_STATES: dict[str, Any] = {  # name -> state NamedTuple class
    "sgd": SGDState,
    "adam": AdamState,
    "adamw": AdamState,
    "rmsprop": RMSpropState,
    "adagrad": AdagradState,
}
# State fields a checkpoint leaves out when every bit is zero, as it always is
# for an option that is off (amsgrad), and restores as zeros.
ZERO_OPTIONAL_FIELDS = ("max_exp_avg_sq",)
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
    """``optim.<field>.<parameter name>`` -> view of the state's flat buffers.

    A field of ZERO_OPTIONAL_FIELDS whose every bit is zero is left out
    (``max_exp_avg_sq`` without amsgrad: a quarter of an AdamW checkpoint);
    :func:`optimizer_state_from_tensors` restores it as zeros, bit for bit.
    """
    layout = param_layout(cfg)
    out = {}
    for field in optimizer_fields(name):
        buffer = np.asarray(getattr(state, field))
        if field in ZERO_OPTIONAL_FIELDS and _all_bits_zero(buffer):
            continue
        for pname, view in layout.views(buffer).items():
            out[f"optim.{field}.{pname}"] = view
    return out


def _all_bits_zero(arr: np.ndarray) -> bool:
    """Every element is +0 (a -0.0 is not: its sign bit would be lost)."""
    return not arr.any() and not np.signbit(arr).any()


def optimizer_state_from_tensors(
    cfg: ModelConfig, name: str, tensors: Mapping[str, np.ndarray], step: int
) -> Any:
    """Rebuild the state NamedTuple of optimizer ``name`` from its tensors; a
    field of ZERO_OPTIONAL_FIELDS that the tensors leave out is zeros of the
    parameters' dtype."""
    layout = param_layout(cfg)
    dtype = next(tensors[p] for p in layout).dtype
    arrays = {}
    for field in optimizer_fields(name):
        names = {p: f"optim.{field}.{p}" for p in layout}
        if field in ZERO_OPTIONAL_FIELDS and not any(
            n in tensors for n in names.values()
        ):
            arrays[field] = np.zeros(layout.size, dtype=dtype)
        else:
            arrays[field] = layout.flatten({p: tensors[n] for p, n in names.items()})
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
    _validate_contents(specs, _decode_metadata(meta, fmt.MAX_JSON_ITEMS - items))
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
            metadata = _decode_metadata(layout.meta, fmt.MAX_JSON_ITEMS - layout.items)
            specs = {e.name: (e.shape, DTYPES[e.code]) for e in layout.entries}
            _validate_contents(specs, metadata)
        except CheckpointError as exc:
            raise fail(target, exc.message, exc.hint_text or EDITED) from exc
        # Everything the header declares is consistent: only now is data read.
        fmt.verify_checksum(target, fh, layout)
        tensors = fmt.read_tensors(target, fh, layout)
    return tensors, metadata


def _little_endian(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))


def _decode_metadata(
    meta: Mapping[str, str], max_items: int | None = None
) -> dict[str, Any]:
    """JSON-decoded metadata with ``model_config`` as a ModelConfig, every
    value checked (:mod:`cllm_spec.checkpoint_metadata`); the values share
    ``max_items`` JSON items (:mod:`cllm_spec.bounded_json`; None: the limit)."""
    if max_items is None:
        max_items = fmt.MAX_JSON_ITEMS
    out: dict[str, Any] = {}
    for key in METADATA_FIELDS:
        try:
            out[key], used = bounded_json.loads(
                meta[key], max_depth=fmt.MAX_JSON_DEPTH, max_items=max_items
            )
        except bounded_json.JSONLimitError as exc:
            raise CheckpointError(f"metadata.{key}: {exc}") from exc
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"metadata.{key}: missing or not JSON") from exc
        max_items -= used
    try:
        out["model_config"] = ModelConfig.from_dict(out["model_config"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"metadata.model_config: {exc}") from exc
    check_metadata(out, OPTIMIZER_STATES)
    if out["rng_state"] is not None:
        try:
            rng_from_state(out["rng_state"])
        # NumPy's state setters raise several types for malformed states.
        except Exception as exc:
            raise CheckpointError(
                f"metadata.rng_state: cannot be restored: {exc}"
            ) from exc
    return out


def _validate_contents(
    specs: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]],
    metadata: Mapping[str, Any],
) -> None:
    """Tensor names, shapes and dtypes (``specs``: name -> (shape, dtype)) are
    exactly those the metadata implies."""
    cfg = metadata["model_config"]
    # Count first: a hostile config (n_layer = 10**9) must not make us build
    # the list of its names; past this check that list is no longer than the
    # file's own tensor list.
    n_model = 4 + 12 * cfg.n_layer + (0 if cfg.tie_embeddings else 1)
    if n_model > len(specs):
        raise CheckpointError(
            f"the model config has {n_model} parameters (missing tensors), "
            f"but the file holds only {len(specs)} tensors"
        )
    shapes = param_shapes(cfg)
    expected = dict(shapes)
    optimizer = metadata.get("optimizer")
    if optimizer is not None:
        for field in optimizer_fields(optimizer["name"]):
            names = {f"optim.{field}.{name}": shape for name, shape in shapes.items()}
            if field in ZERO_OPTIONAL_FIELDS and not any(n in specs for n in names):
                continue  # left out: all zeros (optimizer_tensors)
            expected |= names
    missing = sorted(set(expected) - set(specs))
    extra = sorted(set(specs) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"tensors do not match the model config: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
            f"{'...' if len(extra) > 5 else ''}"
        )
    dtypes = set()
    for name, shape in expected.items():
        got_shape, dtype = specs[name]
        if tuple(got_shape) != shape:
            raise CheckpointError(
                f"tensor {name!r}: shape {tuple(got_shape)}, the config needs {shape}"
            )
        dtypes.add(dtype.newbyteorder("="))
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
    "MAX_JSON_DEPTH",
    "MAX_JSON_ITEMS",
    "MAX_TENSORS",
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
