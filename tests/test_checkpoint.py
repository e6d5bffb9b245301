"""The checkpoint file format (spec: ``cllm_spec.checkpoint``): round trips
and layout.

Round trips must be bit-exact and byte-deterministic, whatever the byte order
of the inputs and whichever process writes them; a file from the first
release must still load; a generic safetensors reader must see the canonical
tensor names and shapes, written in sorted order.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from cllm_spec import checkpoint as ck
from cllm_spec.model import ModelConfig, init_params, param_shapes
from cllm_spec.optim import init_adam_state
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
        from tests.checkpoint_helpers import training_state
        from cllm_spec import checkpoint as ck
        t, m = training_state()
        ck.save({str(tmp_path / "other.safetensors")!r}, tensors=t, metadata=m)
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    other = (tmp_path / "other.safetensors").read_bytes()
    assert hashlib.sha256(other).digest() == hashlib.sha256(saved.read_bytes()).digest()
