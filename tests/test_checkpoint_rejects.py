"""Damaged, foreign and inconsistent checkpoint files (spec:
``cllm_spec.checkpoint``).

Every truncated, bit-flipped, malformed, foreign or inconsistent file must
raise CheckpointError, never another exception; save must refuse to write
what load would reject, and leave nothing behind when it does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from cllm_spec import checkpoint as ck
from cllm_spec import checkpoint_format as fmt
from cllm_spec.errors import CheckpointError, ConfigError
from tests import checkpoint_helpers
from tests.checkpoint_helpers import (
    CFG,
    expect_rejected,
    forge,
    header_of,
    training_state,
)

# pytest finds a test's fixtures among its module's names
saved = checkpoint_helpers.saved


def with_header(data: bytes, header: dict[str, Any]) -> bytes:
    """``data`` with its header replaced (same tensor bytes)."""
    n = int.from_bytes(data[:8], "little")
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


# ---------------------------------------------------------- hostile files ---
def test_truncation_at_every_kind_of_cut_point(saved: Path, tmp_path: Path) -> None:
    data = saved.read_bytes()
    n = int.from_bytes(data[:8], "little")
    cuts = {0, 1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, len(data) - 1}
    cuts |= set(range(0, len(data), max(1, len(data) // 97)))
    bad = tmp_path / "cut.safetensors"
    for cut in sorted(cuts):
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            ck.load(bad)


def test_flipped_header_bytes_are_detected(saved: Path, tmp_path: Path) -> None:
    data = bytearray(saved.read_bytes())
    n = int.from_bytes(data[:8], "little")
    bad = tmp_path / "flip.safetensors"
    # All 8 length bytes and ~400 header bytes spread over every field.
    positions = sorted(set(range(8)) | set(range(8, 8 + n, max(1, n // 400))))
    for i in positions:
        flipped = data.copy()
        flipped[i] ^= 0x01
        bad.write_bytes(flipped)
        with pytest.raises(CheckpointError):
            ck.load(bad)


def test_flipped_data_bytes_fail_the_checksum(saved: Path, tmp_path: Path) -> None:
    data = bytearray(saved.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    bad = tmp_path / "flip.safetensors"
    for i in np.linspace(start, len(data) - 1, 25).astype(int):
        flipped = data.copy()
        flipped[i] ^= 0x80
        bad.write_bytes(flipped)
        with pytest.raises(CheckpointError, match="checksum"):
            ck.load(bad)


def test_huge_header_length_is_rejected_before_parsing(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = saved.read_bytes()
    for n in (2**40, len(data) - 7):
        expect_rejected(
            tmp_path / "h", n.to_bytes(8, "little") + data[8:], "header length"
        )
    # No file comes near 2**48 bytes: such a length is not a header's.
    for n in (2**48, 2**64 - 1):
        expect_rejected(
            tmp_path / "h", n.to_bytes(8, "little") + data[8:], "not a CLLM checkpoint"
        )
    # Within the file but above the cap: the cap alone must reject it.
    monkeypatch.setattr(fmt, "MAX_HEADER_BYTES", 64)
    expect_rejected(tmp_path / "h", data, "header length")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h: [1, 2],  # not an object
        lambda h: {**h, "model.wte.weight": {**h["model.wte.weight"], "dtype": "BF16"}},
        lambda h: {**h, "model.wte.weight": {**h["model.wte.weight"], "dtype": []}},
        lambda h: {
            **h,
            "model.wte.weight": {**h["model.wte.weight"], "shape": [-1, 6]},
        },
        lambda h: {**h, "model.wte.weight": {**h["model.wte.weight"], "shape": [11]}},
        lambda h: {
            **h,
            "model.wte.weight": {**h["model.wte.weight"], "data_offsets": [0, 10**12]},
        },
        lambda h: {
            **h,
            "model.wpe.weight": {
                **h["model.wpe.weight"],
                "data_offsets": h["model.wte.weight"]["data_offsets"],
                "shape": h["model.wte.weight"]["shape"],
            },
        },  # overlapping tensors
        lambda h: {**h, "model.wte.weight": "nonsense"},
        lambda h: {k: v for k, v in h.items() if k != "model.ln_f.bias"},  # gap
    ],
    ids=[
        "array",
        "dtype",
        "dtype-list",
        "negative-dim",
        "size",
        "offsets",
        "overlap",
        "entry",
        "gap",
    ],
)
def test_malformed_tensor_entries(saved: Path, tmp_path: Path, mutate: Any) -> None:
    data = saved.read_bytes()
    expect_rejected(tmp_path / "m", with_header(data, mutate(header_of(data))))


def test_header_that_is_not_utf8_json(saved: Path, tmp_path: Path) -> None:
    body = b"\xff\xfe{not json}    "
    expect_rejected(tmp_path / "j", len(body).to_bytes(8, "little") + body, "JSON")
    body = b'{"a": '.ljust(16)
    expect_rejected(tmp_path / "j", len(body).to_bytes(8, "little") + body, "JSON")
    body = b"[" * 200_000 + b"]" * 200_000  # nesting deeper than any parser stack
    expect_rejected(tmp_path / "j", len(body).to_bytes(8, "little") + body, "JSON")


def test_foreign_safetensors_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"weight": np.ones((2, 2), np.float32)}, plain)
    with pytest.raises(CheckpointError, match="not a CLLM checkpoint"):
        ck.load(plain)
    other = tmp_path / "other.safetensors"
    save_file({"w": np.ones(2, np.float32)}, other, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="format"):
        ck.load(other)


def test_unknown_format_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors, metadata = training_state()
    monkeypatch.setattr(ck, "FORMAT_VERSION", 2)
    path = ck.save(tmp_path / "v2.safetensors", tensors=tensors, metadata=metadata)
    monkeypatch.setattr(ck, "FORMAT_VERSION", 1)
    with pytest.raises(CheckpointError, match="version '2'"):
        ck.load(path)


def test_empty_file_directory_and_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for path, match in (
        (empty, "too short"),
        (tmp_path, "not a regular file"),
        (tmp_path / "missing.safetensors", "no such file"),
    ):
        with pytest.raises(CheckpointError, match=match):
            ck.load(path)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"model_config": json.dumps({**CFG.to_dict(), "n_head": 4})}, "n_head"),
        ({"model_config": "[1, 2]"}, "model_config"),
        # A config that would describe 12e9 tensors is refused by counting.
        ({"model_config": json.dumps({**CFG.to_dict(), "n_layer": 10**9})}, "model"),
        ({"optimizer": '{"name": "lion", "hyperparameters": {}, "step": 1}'}, "name"),
        ({"optimizer": '{"name": "adamw", "hyperparameters": {}, "step": -1}'}, "step"),
        ({"optimizer": '{"name": "adamw"}'}, "optimizer"),
        ({"rng_state": '{"bit_generator": "Mersenne"}'}, "rng_state"),
        ({"rng_state": '{"bit_generator": "PCG64", "state": 3}'}, "rng_state"),
        ({"tokenizer": "{not json"}, "tokenizer"),
        ({"extra": "1"}, "metadata keys"),
        ({"format": "cllm-checkpoint-v9"}, "format"),
    ],
)
def test_inconsistent_metadata_behind_a_valid_checksum(
    tmp_path: Path, override: dict[str, str], match: str
) -> None:
    tensors, _ = training_state()
    expect_rejected(tmp_path / "f", forge(tensors, override), match)


def test_tensors_that_disagree_with_the_config(tmp_path: Path) -> None:
    tensors, _ = training_state()
    missing = {k: v for k, v in tensors.items() if k != "model.h.1.mlp.fc.bias"}
    expect_rejected(tmp_path / "a", forge(missing, {}), "missing")
    extra = {**tensors, "model.h.2.ln_1.weight": np.ones(6, np.float32)}
    expect_rejected(tmp_path / "b", forge(extra, {}), "unexpected")
    reshaped = {**tensors, "model.wpe.weight": np.zeros((6, 5), np.float32)}
    expect_rejected(tmp_path / "c", forge(reshaped, {}), "shape")
    mixed = {**tensors, "model.ln_f.bias": np.zeros(6, np.float64)}
    expect_rejected(tmp_path / "d", forge(mixed, {}), "dtype")
    ints = {k: v.astype(np.int32) for k, v in tensors.items()}
    expect_rejected(tmp_path / "e", forge(ints, {}), "dtype")
    no_optimizer = {k: v for k, v in tensors.items() if k.startswith("model.")}
    expect_rejected(tmp_path / "f", forge(no_optimizer, {}), "missing")


def test_save_refuses_what_load_would_reject(tmp_path: Path) -> None:
    tensors, metadata = training_state()
    target = tmp_path / "x.safetensors"
    with pytest.raises(CheckpointError):
        ck.save(target, tensors={**tensors, "junk": np.zeros(1)}, metadata=metadata)
    with pytest.raises(CheckpointError):
        bad_cfg = {**CFG.to_dict(), "n_head": 4}
        ck.save(target, tensors=tensors, metadata={**metadata, "model_config": bad_cfg})
    with pytest.raises(ConfigError, match="unknown"):
        ck.save(target, tensors=tensors, metadata={**metadata, "epoch": 3})
    with pytest.raises(ConfigError, match="model_config"):
        ck.save(target, tensors=tensors, metadata={"metrics": {}})
    with pytest.raises(ConfigError, match="metrics"):
        ck.save(target, tensors=tensors, metadata={**metadata, "metrics": object()})
    with pytest.raises(CheckpointError, match="metrics"):
        ck.save(target, tensors=tensors, metadata={**metadata, "metrics": [1, 2]})
    with pytest.raises(CheckpointError, match="scheduler"):
        ck.save(target, tensors=tensors, metadata={**metadata, "scheduler": "cos"})
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_save_refuses_a_file_over_the_readers_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors, metadata = training_state()
    target = tmp_path / "x.safetensors"
    ck.load(ck.save(target, tensors=tensors, metadata=metadata))
    target.unlink()
    with monkeypatch.context() as patch:
        patch.setattr(fmt, "MAX_TENSORS", len(tensors) - 1)
        with pytest.raises(CheckpointError, match="tensors, more than"):
            ck.save(target, tensors=tensors, metadata=metadata)
    with monkeypatch.context() as patch:
        patch.setattr(fmt, "MAX_HEADER_BYTES", 4096)
        with pytest.raises(CheckpointError, match="header would take"):
            ck.save(target, tensors=tensors, metadata=metadata)
    # Every metadata value fits the item limit alone, the whole header does not.
    header_items = len(tensors) * 7  # ~8 per tensor entry
    with monkeypatch.context() as patch:
        patch.setattr(fmt, "MAX_JSON_ITEMS", header_items)
        with pytest.raises(CheckpointError, match="JSON items"):
            ck.save(target, tensors=tensors, metadata=metadata)
    assert list(tmp_path.iterdir()) == []


def nested(depth: int) -> Any:
    value: Any = 1.0
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [33, 985, 100_000])
def test_save_refuses_deeply_nested_metadata_with_a_clear_error(
    tmp_path: Path, depth: int
) -> None:
    tensors, metadata = training_state()
    target = tmp_path / "deep.safetensors"
    for key in ("metrics", "scheduler", "tokenizer", "run"):
        with pytest.raises(ConfigError, match=f"metadata.{key}: .*nested"):
            ck.save(target, tensors=tensors, metadata={**metadata, key: nested(depth)})
    assert list(tmp_path.iterdir()) == []
