"""Helpers and fixtures shared by the checkpoint test modules: a small
training state, the file it saves to, and files forged with a valid checksum.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cllm_spec import checkpoint as ck
from cllm_spec.errors import CheckpointError
from cllm_spec.model import ModelConfig, init_params
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
