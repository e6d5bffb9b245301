"""The shared validators: what they accept and the typed errors they raise."""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec import checks
from cllm_spec.errors import ConfigError, NonFiniteError


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_expect_finite_accepts_finite_values_whose_sum_overflows(dtype):
    big = np.finfo(dtype).max
    checks.expect_finite("x", np.array([big, big, -big / 2], dtype=dtype))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 500, 999])
def test_expect_finite_finds_one_bad_value_anywhere(bad, where):
    x = np.ones(1000, dtype=np.float32)
    x[where] = bad
    with pytest.raises(NonFiniteError, match="1 non-finite value"):
        checks.expect_finite("x", x)


def test_expect_finite_counts_cancelling_infinities():
    x = np.array([np.inf, -np.inf, 1.0])
    with pytest.raises(NonFiniteError, match="2 non-finite values?"):
        checks.expect_finite("x", x)


@pytest.mark.parametrize("value", [True, 1.5, "3", None])
def test_expect_int_scalar_rejects_non_ints(value):
    with pytest.raises(ConfigError, match="n: expected an int"):
        checks.expect_int_scalar("n", value)


def test_expect_int_at_least_names_the_bound():
    assert checks.expect_int_at_least("n", np.int64(3), 3) == 3
    with pytest.raises(ConfigError, match="n: expected >= 4, got 3"):
        checks.expect_int_at_least("n", 3, 4)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_expect_flag_accepts_only_bools(value):
    assert checks.expect_flag("f", np.bool_(True)) is True
    with pytest.raises(ConfigError, match="f: expected a bool"):
        checks.expect_flag("f", value)
