"""Input checks in ``cllm_spec.sampling``: SamplingConfig's defaults, type
normalisation and immutability, a ConfigError whose message names the bad
field or argument, typed errors for bad logits from every function, and
``draw`` rejecting a non-finite row wherever ``sample`` does."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    NonFiniteError,
    ShapeError,
)
from cllm_spec.sampling import (
    SamplingConfig,
    draw,
    filter_logits,
    probabilities,
    sample,
)
from tests.sampling_helpers import DRAW_CONFIGS


# ----------------------------------------------------------------- validation ---
def test_config_defaults_and_normalisation():
    cfg = SamplingConfig()
    assert (cfg.temperature, cfg.top_k, cfg.top_p, cfg.greedy) == (
        1.0,
        None,
        None,
        False,
    )
    cfg = SamplingConfig(temperature=2, top_k=np.int64(5), top_p=np.float32(0.5))
    assert type(cfg.temperature) is float and type(cfg.top_k) is int
    assert type(cfg.top_p) is float and cfg.top_k == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.top_k = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": "1"}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 2.0}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": -0.1}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"top_p": "0.9"}, "top_p"),
        ({"greedy": 1}, "greedy"),
        ({"greedy": "yes"}, "greedy"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        SamplingConfig(**kwargs)


GOOD = np.zeros((2, 5))


@pytest.mark.parametrize(
    ("logits", "error"),
    [
        (np.array([0.0, np.nan, 1.0]), NonFiniteError),
        (np.array([0.0, np.inf, 1.0]), NonFiniteError),
        (np.array([[0.0, 1.0], [-np.inf, -np.inf]]), NonFiniteError),
        (np.array([1, 2, 3]), DTypeError),
        (np.array([1.0, 2.0], dtype=np.float16), DTypeError),
        ([0.0, 1.0], DTypeError),
        (np.array(1.0), ShapeError),
        (np.zeros((2, 3, 4)), ShapeError),
        (np.zeros(0), EmptyInputError),
        (np.zeros((3, 0)), EmptyInputError),
        (np.zeros((0, 4)), EmptyInputError),
    ],
)
def test_bad_logits_raise_typed_errors_in_every_function(logits, error):
    with pytest.raises(error):
        filter_logits(logits, top_k=1)
    with pytest.raises(error):
        probabilities(logits)
    with pytest.raises(error):
        sample(logits, SamplingConfig(), np.random.default_rng(0))
    with pytest.raises(error):
        sample(logits, SamplingConfig(greedy=True), np.random.default_rng(0))


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: filter_logits(GOOD, top_k=6), "top_k"),  # V = 5
        (lambda: filter_logits(GOOD, top_k=0), "top_k"),
        (lambda: filter_logits(GOOD, top_p=0.0), "top_p"),
        (lambda: filter_logits(GOOD, top_p=1.01), "top_p"),
        (lambda: probabilities(GOOD, temperature=0.0), "temperature"),
        (lambda: probabilities(GOOD, top_k=6), "top_k"),
        (
            lambda: sample(GOOD, SamplingConfig(top_k=6), np.random.default_rng(0)),
            "top_k",
        ),
        (
            lambda: sample(
                GOOD, SamplingConfig(top_k=6, greedy=True), np.random.default_rng(0)
            ),
            "top_k",
        ),
        (
            lambda: sample(GOOD, {"temperature": 1.0}, np.random.default_rng(0)),
            "config",
        ),
        (lambda: sample(GOOD, SamplingConfig(), np.random.RandomState(0)), "rng"),
        (lambda: sample(GOOD, SamplingConfig(), 0), "rng"),
    ],
)
def test_bad_arguments_raise_config_errors_naming_them(call, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        call()


#: (how a row of 50 logits goes bad, the error's message)
BAD_ROWS = [
    (lambda r: r.__setitem__(11, np.nan), "NaN"),
    (lambda r: r.__setitem__(0, np.inf), r"\+inf"),
    (lambda r: r.fill(-np.inf), "no finite entry"),
    # NaN after a larger finite value: the check must not stop at the max
    (lambda r: (r.__setitem__(3, 1e30), r.__setitem__(40, np.nan)), "NaN"),
]


@pytest.mark.parametrize("config", DRAW_CONFIGS, ids=["greedy", "sampled"])
@pytest.mark.parametrize("bad, error", BAD_ROWS)
def test_draw_rejects_what_sample_rejects(config, bad, error):
    """draw checks a model's logits as sample does (greedy in the argmax's own
    pass), whichever row is bad."""
    logits = np.random.default_rng(5).standard_normal((3, 50))
    bad(logits[1])
    for fn in (sample, draw):
        with pytest.raises(NonFiniteError, match=error):
            fn(logits, config, np.random.default_rng(0))


@pytest.mark.parametrize("shape", [(50,), (1, 50)])
@pytest.mark.parametrize("bad, error", BAD_ROWS)
def test_draw_rejects_a_bad_single_row_greedily(shape, bad, error):
    """One sequence's greedy draw (scalars, not arrays) checks its row too."""
    logits = np.random.default_rng(5).standard_normal(shape)
    bad(logits.reshape(-1, 50)[0])
    with pytest.raises(NonFiniteError, match=error):
        draw(logits, SamplingConfig(greedy=True), np.random.default_rng(0))
