"""The checkpoint file format (spec: ``cllm_spec.checkpoint``).

Round trips must be bit-exact and byte-deterministic; every damaged, foreign or
inconsistent file must raise CheckpointError (never another exception); a write
interrupted at any point must leave the previous checkpoint loadable.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from cllm_spec import checkpoint as ck
from cllm_spec import checkpoint_format as fmt
from cllm_spec.errors import CheckpointError, ConfigError
from cllm_spec.model import ModelConfig, init_params, param_shapes
from cllm_spec.optim import init_adam_state

CFG = ModelConfig(
    vocab_size=11, n_embd=6, n_layer=2, n_head=3, block_size=5, n_hidden=10
)


def training_state(
    cfg: ModelConfig = CFG, dtype: Any = np.float32, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    params = init_params(cfg, rng, dtype)
    state = init_adam_state(params)
    state = state._replace(
        exp_avg=rng.standard_normal(params.size).astype(dtype),
        exp_avg_sq=rng.random(params.size).astype(dtype),
        step=7,
    )
    tensors = ck.model_tensors(cfg, params) | ck.optimizer_tensors(cfg, "adamw", state)
    metadata = {
        "model_config": cfg,
        "tokenizer": {"kind": "word", "vocab": ["<PAD>", "a", "b"]},
        "optimizer": {
            "name": "adamw",
            "hyperparameters": {"lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
            "step": 7,
        },
        "scheduler": {"name": "cosine", "warmup_steps": 2, "min_lr": 0.0},
        "data_cursor": {"epoch": 1, "position": 42},
        "rng_state": ck.rng_state(rng),
        "metrics": {"loss": 2.5, "val_loss": float("nan")},
    }
    return tensors, metadata


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    tensors, metadata = training_state()
    return ck.save(tmp_path / "ckpt.safetensors", tensors=tensors, metadata=metadata)


def header_of(data: bytes) -> dict[str, Any]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])


def with_header(data: bytes, header: dict[str, Any]) -> bytes:
    """``data`` with its header replaced (same tensor bytes)."""
    n = int.from_bytes(data[:8], "little")
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def forge(tensors: dict[str, np.ndarray], meta_overrides: dict[str, str]) -> bytes:
    """A file with a VALID checksum but metadata the writer would refuse, so
    each check after the checksum is exercised on its own."""
    _, metadata = training_state()
    meta = ck._encode_metadata(metadata)
    meta.update(meta_overrides)
    prepared = ck._prepare(tensors, meta)
    return prepared.header + b"".join(a.tobytes() for a in prepared.arrays)


def expect_rejected(path: Path, data: bytes, match: str | None = None) -> None:
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=match):
        ck.load(path)


# ------------------------------------------------------------ round trip ----
def test_save_load_save_gives_identical_bytes(saved: Path, tmp_path: Path) -> None:
    tensors, metadata = ck.load(saved)
    again = ck.save(tmp_path / "again.safetensors", tensors=tensors, metadata=metadata)
    assert again.read_bytes() == saved.read_bytes()
    assert ck.encode(tensors, metadata) == saved.read_bytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parameters_and_optimizer_state_round_trip_bit_exactly(
    tmp_path: Path, dtype: Any
) -> None:
    tensors, metadata = training_state(dtype=dtype)
    path = ck.save(tmp_path / "c.safetensors", tensors=tensors, metadata=metadata)
    loaded, meta = ck.load(path)
    assert sorted(loaded) == sorted(tensors)
    for name, arr in tensors.items():
        assert loaded[name].dtype == dtype
        assert loaded[name].tobytes() == np.ascontiguousarray(arr).tobytes(), name
    params = ck.params_from_tensors(CFG, loaded)
    assert params.tobytes() == ck.params_from_tensors(CFG, tensors).tobytes()
    state = ck.optimizer_state_from_tensors(
        CFG, "adamw", loaded, meta["optimizer"]["step"]
    )
    want = ck.optimizer_state_from_tensors(CFG, "adamw", tensors, 7)
    assert state.step == 7
    for field in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert getattr(state, field).tobytes() == getattr(want, field).tobytes()
    assert loaded["model.wte.weight"].flags.writeable


def test_byte_order_of_the_inputs_does_not_change_the_file() -> None:
    tensors, metadata = training_state(dtype=np.float64)
    swapped = {n: a.astype(a.dtype.newbyteorder(">")) for n, a in tensors.items()}
    assert ck.encode(swapped, metadata) == ck.encode(tensors, metadata)


def test_metadata_round_trip_and_rng_continues_exactly(saved: Path) -> None:
    _, meta = ck.load(saved)
    _, original = training_state()
    assert meta["model_config"] == CFG
    for key in ("tokenizer", "optimizer", "scheduler", "data_cursor"):
        assert meta[key] == original[key], key
    assert meta["metrics"]["loss"] == 2.5 and np.isnan(meta["metrics"]["val_loss"])
    # training_state drew its tensors from this rng, then saved its state.
    rng = np.random.default_rng(0)
    init_params(CFG, rng, np.float32)
    n = init_params(CFG, np.random.default_rng(0), np.float32).size
    rng.standard_normal(n)
    rng.random(n)
    restored = ck.rng_from_state(meta["rng_state"])
    np.testing.assert_array_equal(restored.random(5), rng.random(5))


def test_optional_metadata_defaults_to_null(tmp_path: Path) -> None:
    params = init_params(CFG, np.random.default_rng(0), np.float64)
    path = ck.save(
        tmp_path / "m.safetensors",
        tensors=ck.model_tensors(CFG, params),
        metadata={"model_config": CFG.to_dict()},
    )
    tensors, meta = ck.load(path)
    assert sorted(tensors) == sorted(param_shapes(CFG))
    assert meta["optimizer"] is None and meta["rng_state"] is None


@pytest.mark.parametrize(
    "shape",
    [
        {"vocab_size": 7, "n_embd": 9, "n_layer": 3, "n_head": 3, "block_size": 4},
        {
            "vocab_size": 5,
            "n_embd": 10,
            "n_layer": 1,
            "n_head": 5,
            "block_size": 3,
            "n_hidden": 7,
            "tie_embeddings": False,
        },
        {
            "vocab_size": 3,
            "n_embd": 4,
            "n_layer": 2,
            "n_head": 1,
            "block_size": 2,
            "n_hidden": 30,
        },
    ],
)
def test_round_trip_over_shapes_the_original_broke_on(
    tmp_path: Path, shape: dict[str, Any]
) -> None:
    # NH not dividing 8 and F != 4C: the original reader assumed both (13.1, 13.5).
    cfg = ModelConfig(**shape)
    tensors, metadata = training_state(cfg, np.float64)
    path = ck.save(tmp_path / "g.safetensors", tensors=tensors, metadata=metadata)
    loaded, meta = ck.load(path)
    assert meta["model_config"] == cfg
    assert ck.params_from_tensors(cfg, loaded).tobytes() == (
        ck.params_from_tensors(cfg, tensors).tobytes()
    )


OLD_FILE = Path(__file__).parent / "data" / "ckpt-format1-adamw.safetensors"


def test_a_file_written_before_the_amsgrad_state_was_left_out_still_loads() -> None:
    # Written by the format-1 writer of the first release from training_state():
    # it stores max_exp_avg_sq, all zeros. Its bytes pin the checksum too.
    assert hashlib.sha256(OLD_FILE.read_bytes()).hexdigest() == (
        "09d5e569e81f81e2334e54d2926e05cf711c0e5d71b64ba0fc9d7f0e69211930"
    )
    loaded, meta = ck.load(OLD_FILE)
    tensors, _ = training_state()
    assert sum(k.startswith("optim.max_exp_avg_sq.") for k in loaded) == 28
    for name, arr in tensors.items():
        assert loaded[name].tobytes() == np.ascontiguousarray(arr).tobytes(), name
    state = ck.optimizer_state_from_tensors(CFG, "adamw", loaded, 7)
    assert state.max_exp_avg_sq.dtype == np.float32
    assert not state.max_exp_avg_sq.any()
    # Re-saved as loaded (tensors given explicitly): the same bytes.
    assert ck.encode(loaded, meta) == OLD_FILE.read_bytes()


def test_all_zero_amsgrad_state_is_left_out_and_comes_back_as_zeros(
    tmp_path: Path,
) -> None:
    tensors, metadata = training_state()
    assert not any(k.startswith("optim.max_exp_avg_sq.") for k in tensors)
    assert {k.split(".")[1] for k in tensors if k.startswith("optim.")} == {
        "exp_avg",
        "exp_avg_sq",
    }
    path = ck.save(tmp_path / "a.safetensors", tensors=tensors, metadata=metadata)
    assert path.stat().st_size < 0.8 * OLD_FILE.stat().st_size  # a quarter less
    loaded, _ = ck.load(path)
    state = ck.optimizer_state_from_tensors(CFG, "adamw", loaded, 7)
    want = init_adam_state(ck.params_from_tensors(CFG, loaded)).max_exp_avg_sq
    assert state.max_exp_avg_sq.tobytes() == want.tobytes()


@pytest.mark.parametrize("value", [1e-30, -0.0])
def test_amsgrad_state_with_any_nonzero_bit_is_stored(value: float) -> None:
    params = init_params(CFG, np.random.default_rng(0), np.float64)
    state = init_adam_state(params)
    state.max_exp_avg_sq[17] = value  # a -0.0 has its sign bit set
    tensors = ck.optimizer_tensors(CFG, "adamw", state)
    assert sum(k.startswith("optim.max_exp_avg_sq.") for k in tensors) == 28
    back = ck.optimizer_state_from_tensors(
        CFG, "adamw", ck.model_tensors(CFG, params) | tensors, 0
    )
    assert back.max_exp_avg_sq.tobytes() == state.max_exp_avg_sq.tobytes()


def test_amsgrad_state_is_stored_whole_or_not_at_all(tmp_path: Path) -> None:
    tensors, _ = training_state()
    partial = {**tensors, "optim.max_exp_avg_sq.model.wte.weight": np.ones((11, 6))}
    expect_rejected(tmp_path / "p", forge(partial, {}), "missing")


# ------------------------------------------------------------ the layout ----
def test_a_generic_reader_sees_canonical_names_and_shapes(saved: Path) -> None:
    generic = load_file(saved)
    expected = dict(param_shapes(CFG))
    for field in ("exp_avg", "exp_avg_sq"):  # max_exp_avg_sq: all zero, left out
        expected |= {f"optim.{field}.{n}": s for n, s in param_shapes(CFG).items()}
    assert {n: a.shape for n, a in generic.items()} == expected
    assert "model.h.1.attn.qkv.weight" in generic
    with safe_open(saved, framework="numpy") as fh:
        meta = fh.metadata()
    assert meta["format"] == ck.FORMAT_NAME and meta["format_version"] == "1"
    assert json.loads(meta["model_config"]) == CFG.to_dict()
    assert len(meta["sha256"]) == 64


def test_tensors_are_written_in_sorted_name_order(saved: Path) -> None:
    data = saved.read_bytes()
    header = header_of(data)
    names = [k for k in header if k != "__metadata__"]
    assert names == sorted(names)
    starts = [header[n]["data_offsets"][0] for n in names]
    assert starts == sorted(starts) and starts[0] == 0
    assert (8 + int.from_bytes(data[:8], "little")) % 8 == 0  # aligned data
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])


def test_bytes_do_not_depend_on_the_process(saved: Path, tmp_path: Path) -> None:
    # safetensors' own writer orders metadata by a per-process random hash; ours
    # must not. Write the same checkpoint in a fresh interpreter and compare.
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from tests.test_checkpoint import training_state
        from cllm_spec import checkpoint as ck
        t, m = training_state()
        ck.save({str(tmp_path / "other.safetensors")!r}, tensors=t, metadata=m)
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    other = (tmp_path / "other.safetensors").read_bytes()
    assert hashlib.sha256(other).digest() == hashlib.sha256(saved.read_bytes()).digest()


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


# ------------------------------------------------------- atomic writes ------
def _only(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_failed_rename_keeps_the_old_checkpoint(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = saved.read_bytes()
    tensors, metadata = training_state(seed=1)

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk pulled")

    monkeypatch.setattr(ck.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk pulled"):
        ck.save(saved, tensors=tensors, metadata=metadata)
    assert saved.read_bytes() == before
    assert _only(saved.parent) == [saved.name]  # the temporary file is gone
    ck.load(saved)


def test_write_failing_midway_keeps_the_old_checkpoint(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = saved.read_bytes()
    tensors, metadata = training_state(seed=2)

    def half_write(fh: Any, prepared: Any) -> None:
        fh.write(prepared.header)
        fh.write(prepared.arrays[0].tobytes()[:5])
        raise KeyboardInterrupt  # Ctrl-C in the middle of the data

    monkeypatch.setattr(ck, "_write_all", half_write)
    with pytest.raises(KeyboardInterrupt):
        ck.save(saved, tensors=tensors, metadata=metadata)
    assert saved.read_bytes() == before
    assert _only(saved.parent) == [saved.name]


WRITER = """
import sys
sys.path.insert(0, {root!r})
import numpy as np
from cllm_spec import checkpoint as ck
from cllm_spec.model import ModelConfig, init_params
cfg = ModelConfig(vocab_size=4096, n_embd=128, n_layer=2, n_head=4, block_size=64)
params = init_params(cfg, np.random.default_rng(0), np.float64)  # ~8 MB
step = 0
while True:
    ck.save({path!r}, tensors=ck.model_tensors(cfg, params),
            metadata={{"model_config": cfg, "metrics": {{"step": step}}}})
    if step == 0:
        open({ready!r}, "w").close()
    step += 1
    params[step % params.size] += 1.0
"""


def _wait_for(condition: Any, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert proc.poll() is None, "the writer died"
        assert time.monotonic() < deadline, f"the writer never {what}"
        time.sleep(0.002)


@pytest.mark.parametrize("when", ["temporary-file-seen", "after-0.23s"])
def test_sigkill_while_writing_never_damages_the_checkpoint(
    tmp_path: Path, when: str
) -> None:
    path, ready = ck.checkpoint_path(tmp_path, 1), tmp_path / "ready"
    code = WRITER.format(
        root=str(Path(__file__).parent.parent), path=str(path), ready=str(ready)
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        _wait_for(ready.exists, proc, "wrote a first checkpoint")
        if when == "temporary-file-seen":  # a later save is under way right now
            _wait_for(lambda: any(tmp_path.glob("*.tmp")), proc, "started a save")
        else:
            time.sleep(0.23)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    tensors, meta = ck.load(path)
    assert meta["metrics"]["step"] >= 0 and "model.wte.weight" in tensors
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert all(p.name.startswith(f".{path.name}.") for p in leftovers)
    assert ck.latest(tmp_path) == path  # a leftover is never taken for a checkpoint


# -------------------------------------------------------------- rotation ----
def test_rotate_keeps_the_last_k_by_step(tmp_path: Path) -> None:
    steps = [1, 5, 20, 999_999_999, 1_000_000_000]
    for s in steps:
        ck.checkpoint_path(tmp_path, s).write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / ".ckpt-000000002.safetensors.abc.tmp").write_bytes(b"")
    assert ck.checkpoint_path(tmp_path, 5).name == "ckpt-000000005.safetensors"
    assert ck.latest(tmp_path) == ck.checkpoint_path(tmp_path, 1_000_000_000)
    removed = ck.rotate(tmp_path, keep_last=2)
    assert removed == [ck.checkpoint_path(tmp_path, s) for s in (1, 5, 20)]
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == steps[-2:]
    assert (tmp_path / "notes.txt").exists()
    assert ck.rotate(tmp_path, keep_last=5) == []


def test_rotate_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keep_last"):
        ck.rotate(tmp_path, keep_last=0)
    with pytest.raises(CheckpointError):
        ck.rotate(tmp_path / "nope", keep_last=1)
    assert ck.latest(tmp_path) is None
    with pytest.raises(ConfigError):
        ck.checkpoint_path(tmp_path, -1)
