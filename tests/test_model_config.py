"""ModelConfig, the canonical parameter layout, its count, and the initializers.

Spec: ``cllm_spec.model``. Nothing here runs a backend; the composed forward is
checked by ``conformance/test_model_*.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cllm_spec.errors import ConfigError, DTypeError, ShapeError
from cllm_spec.model import (
    DIMENSIONAL_FREQUENCIES,
    IGNORE_INDEX,
    ModelConfig,
    init_params,
    lattice_embedding,
    mask_targets,
    param_count,
    param_layout,
    param_shapes,
    param_views,
)

BASE = {"vocab_size": 11, "n_embd": 8, "n_layer": 2, "n_head": 2, "block_size": 6}


def make(**overrides: object) -> ModelConfig:
    return ModelConfig(**{**BASE, **overrides})  # type: ignore[arg-type]


# ----------------------------------------------------------------- config ---
def test_defaults_and_hidden_size_convention() -> None:
    cfg = make()
    assert cfg.n_hidden == 32  # 0 (the default) means 4 * n_embd
    assert (cfg.activation, cfg.tie_embeddings, cfg.init) == ("gelu", True, "gpt2")
    assert cfg.head_size == 4
    assert make(n_hidden=12).n_hidden == 12
    assert make(n_hidden=0) == make()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vocab_size", 0),
        ("vocab_size", -3),
        ("vocab_size", 2.5),
        ("vocab_size", True),
        ("n_embd", 0),
        ("n_layer", 0),
        ("n_head", 0),
        ("n_head", 3),  # does not divide n_embd = 8
        ("block_size", 0),
        ("n_hidden", -1),
        ("n_hidden", 1.5),
        ("activation", "swish"),
        ("init", "xavier"),
        ("tie_embeddings", 1),
    ],
)
def test_invalid_field_is_a_config_error_naming_it(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        make(**{field: value})


def test_config_is_frozen() -> None:
    cfg = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_embd = 16  # type: ignore[misc]


def test_dict_round_trip_through_json() -> None:
    cfg = make(n_hidden=12, activation="relu", tie_embeddings=False, init="lattice")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["n_hidden"] == 12
    assert ModelConfig.from_dict(data) == cfg


def test_from_dict_rejects_unknown_and_missing_fields() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_dict({**BASE, "dropout": 0.1})
    partial = dict(BASE)
    del partial["n_head"]
    with pytest.raises(ConfigError, match="n_head"):
        ModelConfig.from_dict(partial)
    with pytest.raises(ConfigError):
        ModelConfig.from_dict([("vocab_size", 3)])  # type: ignore[arg-type]


# ---------------------------------------------------------- parameters ------
def test_canonical_names_and_shapes_untied() -> None:
    cfg = make(n_layer=1, n_hidden=12, tie_embeddings=False)
    v, c, f, t = 11, 8, 12, 6
    assert list(param_shapes(cfg).items()) == [
        ("model.wte.weight", (v, c)),
        ("model.wpe.weight", (t, c)),
        ("model.h.0.ln_1.weight", (c,)),
        ("model.h.0.ln_1.bias", (c,)),
        ("model.h.0.attn.qkv.weight", (3 * c, c)),
        ("model.h.0.attn.qkv.bias", (3 * c,)),
        ("model.h.0.attn.proj.weight", (c, c)),
        ("model.h.0.attn.proj.bias", (c,)),
        ("model.h.0.ln_2.weight", (c,)),
        ("model.h.0.ln_2.bias", (c,)),
        ("model.h.0.mlp.fc.weight", (f, c)),
        ("model.h.0.mlp.fc.bias", (f,)),
        ("model.h.0.mlp.proj.weight", (c, f)),
        ("model.h.0.mlp.proj.bias", (c,)),
        ("model.ln_f.weight", (c,)),
        ("model.ln_f.bias", (c,)),
        ("model.lm_head.weight", (v, c)),
    ]


def test_tied_model_has_no_lm_head_and_layers_are_numbered() -> None:
    names = list(param_shapes(make(n_layer=3)))
    assert "model.lm_head.weight" not in names
    assert [n for n in names if n.endswith("ln_1.weight")] == [
        f"model.h.{i}.ln_1.weight" for i in range(3)
    ]


def test_gpt2_small_count() -> None:
    # GPT-2 small (V 50257, C 768, L 12, NH 12, T_max 1024, F 3072, tied) has
    # the well-known 124,439,808 parameters:
    # 38,597,376 (wte) + 786,432 (wpe) + 12 * 7,087,872 (blocks) + 1,536 (ln_f).
    cfg = ModelConfig(
        vocab_size=50257, n_embd=768, n_layer=12, n_head=12, block_size=1024
    )
    assert param_count(cfg) == 124_439_808
    untied = dataclasses.replace(cfg, tie_embeddings=False)
    assert param_count(untied) == 124_439_808 + 50257 * 768


def test_hand_counted_tiny_model() -> None:
    # V 11, C 8, T_max 6, L 2, F 12: 88 + 48 + 2 * (256 + 192 + 72 + 12) + 16
    assert param_count(make(n_hidden=12)) == 1216
    assert param_count(make(n_hidden=12, tie_embeddings=False)) == 1216 + 88


@given(
    v=st.integers(1, 70),
    heads=st.integers(1, 4),
    head_size=st.integers(1, 5),
    n_layer=st.integers(1, 4),
    hidden=st.integers(0, 20),
    t_max=st.integers(1, 17),
    tied=st.booleans(),
)
def test_count_formula_equals_the_layout(
    v: int,
    heads: int,
    head_size: int,
    n_layer: int,
    hidden: int,
    t_max: int,
    tied: bool,
) -> None:
    cfg = ModelConfig(
        vocab_size=v,
        n_embd=heads * head_size,
        n_layer=n_layer,
        n_head=heads,
        block_size=t_max,
        n_hidden=hidden,
        tie_embeddings=tied,
    )
    shapes = param_shapes(cfg)
    assert param_count(cfg) == param_layout(cfg).size
    assert param_count(cfg) == sum(math.prod(s) for s in shapes.values())
    assert len(shapes) == 4 + 12 * n_layer + (0 if tied else 1)


def test_views_share_the_one_flat_buffer() -> None:
    cfg = make()
    flat = init_params(cfg, np.random.default_rng(0), np.float32)
    views = param_views(cfg, flat)
    assert all(np.shares_memory(view, flat) for view in views.values())
    views["model.ln_f.bias"][3] = 7.0
    offset = param_layout(cfg).offsets["model.ln_f.bias"]
    assert flat[offset + 3] == 7.0
    with pytest.raises(ShapeError):
        param_views(cfg, flat[:-1])


# ----------------------------------------------------------------- init -----
def test_gpt2_init_statistics() -> None:
    cfg = ModelConfig(vocab_size=500, n_embd=64, n_layer=4, n_head=4, block_size=64)
    views = param_views(cfg, init_params(cfg, np.random.default_rng(1), np.float64))
    residual_std = 0.02 / math.sqrt(2 * 4)  # 0.00707
    for name, w in views.items():
        if name.endswith(".bias"):
            assert not np.any(w), name
        elif ".ln_" in name:
            assert np.all(w == 1.0), name
        else:
            want = residual_std if name.endswith("proj.weight") else 0.02
            # >= 4096 draws: the sample std is within 5% of sigma with margin.
            assert abs(w.std() / want - 1) < 0.05, (name, w.std())
            assert abs(w.mean()) < 4 * want / math.sqrt(w.size), name


def test_init_is_seeded_and_float32_is_the_rounded_float64() -> None:
    cfg = make()
    a = init_params(cfg, np.random.default_rng(7), np.float64)
    b = init_params(cfg, np.random.default_rng(7), np.float64)
    c = init_params(cfg, np.random.default_rng(8), np.float64)
    f32 = init_params(cfg, np.random.default_rng(7), np.float32)
    assert a.tobytes() == b.tobytes() and not np.array_equal(a, c)
    assert f32.dtype == np.float32 and f32.shape == (param_count(cfg),)
    assert f32.tobytes() == a.astype(np.float32).tobytes()


def test_init_rejects_bad_dtype_and_rng() -> None:
    with pytest.raises(DTypeError):
        init_params(make(), np.random.default_rng(0), np.float16)
    with pytest.raises(ConfigError, match="rng"):
        init_params(make(), 0, np.float32)  # type: ignore[arg-type]


def test_lattice_init_replaces_only_the_token_embedding() -> None:
    cfg = make(init="lattice")
    views = param_views(cfg, init_params(cfg, np.random.default_rng(0), np.float64))
    np.testing.assert_array_equal(views["model.wte.weight"], lattice_embedding(11, 8))
    assert abs(views["model.wpe.weight"].std() / 0.02 - 1) < 0.3


def test_lattice_embedding_golden_values() -> None:
    e = lattice_embedding(300, 16)
    assert e.shape == (300, 16) and e.dtype == np.float64
    # t = 1: ring 0, p = 1, angle = (1 - 3) * 2pi/12 = -pi/3, O = 1/12,
    # clock = cos(2pi/12) = sqrt(3)/2.
    # j = 0: phi = 3, cos(-pi) = -1, damp = tanh(1.00).
    l10 = 3 ** (1 / 12) * -1.0 * (math.sqrt(3) / 2) * math.tanh(1.0)
    # j = 3: phi = 12, cos(-4 pi) = 1, damp = tanh(1.03).
    l13 = 3 ** (1 / 12) * 1.0 * (math.sqrt(3) / 2) * math.tanh(1.03)
    # t = 12: ring 1, p = 0, angle = -15 * 2pi/60 = -pi/2, O = 1, clock = cos 0 = 1;
    # j = 3: phi = 12, cos(-6 pi) = 1, damp = tanh(1 + 0.1 + 0.03).
    l12_3 = 3.0 * math.tanh(1.13)
    # t = 232: ring 4, p = 0, angle = 0, O = 4, clock = cos(2pi * 4/12) = -1/2;
    # j = 1: phi = 7, cos 0 = 1, damp = tanh(1 + 0.4 + 0.01).
    l232_1 = 81.0 * -0.5 * math.tanh(1.41)
    # t = 140: ring 3, p = 8, angle = (8 - 25) * 2pi/100, O = 3.08,
    # clock = cos(2pi * 8/12) = -1/2; j = 13: phi_1 = 7, damp = tanh(1.43).
    l140_13 = 3**3.08 * math.cos(-17 * 2 * math.pi / 100 * 7) * -0.5 * math.tanh(1.43)
    for (t, j), lat in {
        (1, 0): l10,
        (1, 3): l13,
        (12, 3): l12_3,
        (232, 1): l232_1,
        (140, 13): l140_13,
    }.items():
        assert e[t, j] == pytest.approx(math.tanh(lat / 100), rel=1e-12), (t, j)
    assert DIMENSIONAL_FREQUENCIES[:4] == (3, 7, 31, 12)


def test_lattice_embedding_reproduces_the_original_zero_rows() -> None:
    # cos(2pi * 3/12) = cos(pi/2) ~ 6e-17: the original's tokens 3, 15, 9, 21...
    e = lattice_embedding(40, 8)
    assert np.abs(e[[3, 9, 15, 21, 27, 33, 39]]).max() < 1e-15
    assert np.abs(e[[1, 2, 4, 13]]).max() > 1e-3


def test_lattice_embedding_is_finite_and_bounded_for_huge_vocabularies() -> None:
    e = lattice_embedding(300_000, 3)  # ring 4 reaches O ~ 304 before the cap
    assert np.all(np.isfinite(e)) and np.abs(e).max() <= 1.0
    assert np.abs(e[-1000:]).max() == 1.0  # saturated, not NaN


# -------------------------------------------------------------- targets -----
def test_mask_targets() -> None:
    targets = np.array([[4, 5, 6], [7, 8, 9]], dtype=np.int32)
    mask = np.array([[1, 0, 1], [0, 0, 1]], dtype=np.int32)
    out = mask_targets(targets, mask)
    np.testing.assert_array_equal(out, [[4, IGNORE_INDEX, 6], [IGNORE_INDEX] * 2 + [9]])
    assert out.dtype == np.int32 and targets[0, 1] == 5  # a copy
    np.testing.assert_array_equal(mask_targets(targets, mask.astype(bool)), out)
    with pytest.raises(ShapeError):
        mask_targets(targets, mask[:, :2])
    with pytest.raises(DTypeError):
        mask_targets(targets, mask.astype(np.float32))
