"""Fuzzing the checkpoint loader (spec: ``cllm_spec.checkpoint.load``).

Mutations of a small valid checkpoint: flipped bytes, cuts and extensions,
and edits of the header (metadata values, tensor entries) re-signed with a
recomputed checksum, as anyone can. For every one, ``load`` raises
CheckpointError or returns tensors and metadata that the writer accepts back
and ``cllm info`` describes, never another exception.

Examples: ``CLLM_HYPOTHESIS_PROFILE=ci`` (the default, and tox's) runs a few
derandomized ones in seconds; ``thorough`` (``tox -e fuzz``) runs thousands,
seeded at random.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cllm_spec import checkpoint as ck
from cllm_spec import checkpoint_format as fmt
from cllm_spec.commands.info import LoadedCheckpoint, describe, format_description
from cllm_spec.errors import CheckpointError
from tests.checkpoint_helpers import training_state

_PROFILES = {  # name -> (examples per test, derandomized)
    "ci": (40, True),
    "dev": (100, False),
    "thorough": (3000, False),
}
_EXAMPLES, _DERANDOMIZE = _PROFILES[os.environ.get("CLLM_HYPOTHESIS_PROFILE", "ci")]
FUZZ = settings(
    max_examples=_EXAMPLES,
    derandomize=_DERANDOMIZE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TENSORS, METADATA = training_state()
VALID = ck.encode(TENSORS, METADATA)
_N = int.from_bytes(VALID[:8], "little")
HEADER: dict[str, Any] = json.loads(VALID[8 : 8 + _N])
DATA = VALID[8 + _N :]


def resign(header: dict[str, Any], data: bytes = DATA) -> bytes:
    """A file of ``header`` and ``data`` whose sha256 is what the loader
    computes (when the entries make sense): the checksum is no signature."""
    header = json.loads(json.dumps(header))
    meta = header.get("__metadata__")
    if isinstance(meta, dict):
        meta.pop("sha256", None)
        entries, blobs = [], []
        for name in sorted(k for k in header if k != "__metadata__"):
            entry = header[name]
            try:
                begin, end = entry["data_offsets"]
                entries.append((name, entry["dtype"], entry["shape"]))
                blobs.append(np.frombuffer(data[begin:end], np.uint8))
            except (KeyError, TypeError, ValueError):
                continue  # the loader refuses this entry before the checksum
        try:
            meta["sha256"] = fmt.checksum(meta, entries, blobs)
        except (TypeError, ValueError):
            pass
    text = fmt.json_text(header).encode()  # compact, sorted keys: as the writer
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


def outcome(path: Path, data: bytes) -> str:
    """Load ``data``; whatever loads must be usable by the writer and cllm info."""
    path.write_bytes(data)
    try:
        tensors, meta = ck.load(path)
    except CheckpointError:
        return "refused"
    ck.encode(tensors, meta)  # what the loader accepts, the writer accepts
    cfg = meta["model_config"]
    params = ck.params_from_tensors(cfg, tensors)
    info = describe(LoadedCheckpoint(path, cfg, params, meta, len(data)))
    format_description(info)
    json.dumps(info, allow_nan=False)
    optimizer = meta["optimizer"]
    if optimizer is not None:
        ck.optimizer_state_from_tensors(
            cfg, optimizer["name"], tensors, optimizer["step"]
        )
    if meta["rng_state"] is not None:
        ck.rng_from_state(meta["rng_state"])
    return "loaded"


# ---------------------------------------------------------------- strategies ---
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
KEYS = st.sampled_from(
    ["kind", "loss", "lr", "name", "step", "train", "eval", "config", "backend"]
) | st.text(max_size=6)


@st.composite
def edited(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with one part, at a random depth, replaced or removed."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)) | KEYS)
        out = dict(value)
        if key in out and draw(st.integers(0, 4)) == 0:
            del out[key]
        else:
            out[key] = draw(edited(out.get(key)))
        return out
    if isinstance(value, list) and value and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        return [*value[:i], draw(edited(value[i])), *value[i + 1 :]]
    return draw(JSON_VALUES)


@st.composite
def metadata_edits(draw: st.DrawFn) -> bytes:
    header = json.loads(json.dumps(HEADER))
    meta = header["__metadata__"]
    key = draw(st.sampled_from(sorted(meta)))
    if draw(st.integers(0, 9)) == 0:
        meta[key] = draw(st.text(max_size=20))  # not JSON, or a plain string
    else:
        try:
            current = json.loads(meta[key])
        except ValueError:
            current = meta[key]
        meta[key] = json.dumps(draw(edited(current)))
    return resign(header)


@st.composite
def entry_edits(draw: st.DrawFn) -> bytes:
    header = json.loads(json.dumps(HEADER))
    names = sorted(k for k in header if k != "__metadata__")
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names))
        choice = draw(st.integers(0, 5))
        if choice == 0:
            header.pop(name, None)
        elif choice == 1:
            header[draw(st.text(max_size=30))] = header.get(name, {})
        else:
            header[name] = draw(edited(header.get(name)))
    data = DATA
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return resign(header, data)


@st.composite
def byte_damage(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(0, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    cut = draw(st.integers(0, len(data) + 16))
    tail = draw(st.binary(max_size=16)) if cut > len(data) else b""
    return bytes(data[:cut]) + tail


# --------------------------------------------------------------------- tests ---
def test_the_valid_file_and_its_resigned_copy_load(tmp_path: Path) -> None:
    assert outcome(tmp_path / "v", VALID) == "loaded"
    assert resign(HEADER) == VALID  # the helper signs exactly as the writer


@FUZZ
@given(data=byte_damage())
def test_damaged_bytes(tmp_path_factory: Any, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "c.safetensors"
    if outcome(path, data) == "loaded":
        # the checksum covers every meaningful byte: only the same file loads
        assert data[:8] == VALID[:8] and data[8:].rstrip(b" ") == VALID[8:].rstrip()


@FUZZ
@given(data=metadata_edits())
def test_resigned_metadata_edits(tmp_path_factory: Any, data: bytes) -> None:
    outcome(tmp_path_factory.mktemp("fuzz") / "c.safetensors", data)


@FUZZ
@given(data=entry_edits())
def test_resigned_tensor_entry_edits(tmp_path_factory: Any, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "c.safetensors"
    if outcome(path, data) == "loaded":
        tensors, _ = ck.load(path)
        assert sum(a.nbytes for a in tensors.values()) <= len(data)
        assert all(math.prod(a.shape) == a.size for a in tensors.values())
