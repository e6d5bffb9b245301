"""optim.decay: weight decay on chosen parameters only, as torch.optim's groups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cllm_spec.errors import ConfigError
from cllm_spec.model import ModelConfig, init_params, param_layout
from cllm_spec.registry import get_backend
from cllm_spec.tolerances import tolerance
from cllm_spec.train.config import load_config
from cllm_spec.train.state import decay_mask, init_optimizer_state, optimizer_step
from tests.cli_train_helpers import (  # noqa: F401
    cllm_train,
    corpus,
    loadable_backends,
    ok,
    sets,
)

GOLDEN = json.loads(
    (Path(__file__).parent / "golden" / "decay_groups.json").read_text()
)
# the model and inputs of tests/golden/make_decay_groups.py
CFG = ModelConfig(vocab_size=5, n_embd=4, n_layer=1, n_head=1, block_size=2, n_hidden=8)
HYPER = {
    "sgd": {"momentum": 0.9, "dampening": 0.0, "nesterov": False},
    "adam": {"betas": (0.9, 0.95), "eps": 1e-8},
    "adamw": {"betas": (0.9, 0.95), "eps": 1e-8},
    "rmsprop": {"alpha": 0.9, "eps": 1e-8, "momentum": 0.5, "centered": False},
    "adagrad": {"lr_decay": 0.01, "eps": 1e-10},  # torch's default eps
}


def golden_inputs() -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(GOLDEN["seed"])
    params = init_params(CFG, rng, np.float64) + 0.5
    return params, [rng.standard_normal(params.size) for _ in range(GOLDEN["steps"])]


@pytest.mark.parametrize("backend_name", loadable_backends())
@pytest.mark.parametrize("case", sorted(GOLDEN["results"]))
def test_matches_torch_optim_param_groups(backend_name: str, case: str) -> None:
    name, rule = case.split("/")
    backend = get_backend(backend_name)
    params, grads = golden_inputs()
    state = init_optimizer_state(name, params)
    mask = decay_mask(CFG, rule)
    hyper = {**HYPER[name], "weight_decay": GOLDEN["weight_decay"]}
    for g in grads:
        params, state = optimizer_step(
            backend, name, params, g, state, GOLDEN["lr"], hyper, mask
        )
    expected = np.asarray(GOLDEN["results"][case])
    tol = tolerance("optim", "*", "float64")
    np.testing.assert_allclose(params, expected, rtol=tol.rtol, atol=tol.atol)
    # and decay mattered: without the mask every tensor would be decayed
    everywhere = golden_inputs()[0]
    state = init_optimizer_state(name, everywhere)
    for g in grads:
        everywhere, state = optimizer_step(
            backend, name, everywhere, g, state, GOLDEN["lr"], hyper
        )
    assert np.abs(everywhere - expected).max() > 1e3 * tol.atol


def test_masks_select_the_documented_tensors() -> None:
    cfg = ModelConfig(
        vocab_size=7, n_embd=4, n_layer=2, n_head=2, block_size=3, tie_embeddings=False
    )
    layout = param_layout(cfg)
    assert decay_mask(cfg, "all") is None
    for rule, extra in (
        ("matrices", {"model.wte.weight", "model.wpe.weight"}),
        ("linear", set()),
    ):
        mask = decay_mask(cfg, rule)
        assert mask is not None and mask.shape == (layout.size,)
        decayed = {n for n in layout.names if mask[layout.slice(n)].all()}
        untouched = {n for n in layout.names if not mask[layout.slice(n)].any()}
        assert decayed | untouched == set(layout.names)  # whole tensors only
        linear = {
            n for n in layout.names if n.endswith(".weight") and len(layout[n]) == 2
        }
        linear -= {"model.wte.weight", "model.wpe.weight"}
        assert "model.lm_head.weight" in linear and "model.h.1.mlp.fc.weight" in linear
        assert decayed == linear | extra
        assert not any(n.endswith(".bias") or ".ln_" in n for n in decayed)


def test_zero_weight_decay_takes_one_step() -> None:
    calls = []

    class Counting:
        def sgd_step(self, params, grads, state, **kw):  # type: ignore[no-untyped-def]
            calls.append(kw["weight_decay"])
            return get_backend("numpy").sgd_step(params, grads, state, **kw)

    params, grads = golden_inputs()
    state = init_optimizer_state("sgd", params)
    mask = decay_mask(CFG, "matrices")
    optimizer_step(
        Counting(), "sgd", params, grads[0], state, 0.1, {"weight_decay": 0.0}, mask
    )
    assert calls == [0.0]


def test_decay_rule_is_validated() -> None:
    assert load_config(None, ["optim.decay=matrices"]).optim.decay == "matrices"
    with pytest.raises(ConfigError, match="optim.decay"):
        load_config(None, ["optim.decay=biases"])
    with pytest.raises(ConfigError, match="optim.decay"):
        decay_mask(CFG, "biases")


def test_cli_run_with_decay_groups(tmp_path, corpus) -> None:  # noqa: F811
    runs = {}
    for rule in ("all", "matrices"):
        out = tmp_path / rule
        ok(cllm_train(*sets(data__corpus=corpus, train__out_dir=out, optim__decay=rule,
                            optim__weight_decay=0.5)))  # fmt: skip
        runs[rule] = (out / "metrics.jsonl").read_text()
    assert runs["all"] != runs["matrices"]  # the rule reached the optimizer
