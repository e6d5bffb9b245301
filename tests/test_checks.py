"""The shared validators: what they accept and the typed errors they raise."""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec import checks
from cllm_spec.errors import (
    CllmError,
    ConfigError,
    DTypeError,
    NonFiniteError,
    ReadOnlyError,
)
from cllm_spec.protocols import (
    EmbeddingCache,
    FFNCache,
    LinearCache,
    MHACache,
    SoftmaxCache,
)


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


def test_expect_finite_trusts_a_scans_true_and_confirms_its_false():
    calls = []

    def scan(answer):
        return lambda x: calls.append(x.dtype) or answer

    checks.expect_finite("x", np.array([np.nan]), scan(True))  # trusted: no error
    checks.expect_finite("x", np.ones(3, np.float32), scan(False))  # NumPy: finite
    with pytest.raises(NonFiniteError, match="1 non-finite value"):
        checks.expect_finite("x", np.array([1.0, np.inf]), scan(False))
    checks.expect_finite("x", np.arange(3), scan(False))  # ints: never scanned
    assert calls == [np.float64, np.float32, np.float64]


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


def test_expect_writeable_refuses_read_only_memory():
    checks.expect_writeable("x", np.zeros(2))
    with pytest.raises(ReadOnlyError, match="x: the array is read-only"):
        checks.expect_writeable("x", np.frombuffer(bytes(8), np.float32))
    assert issubclass(ReadOnlyError, ValueError)


@pytest.mark.parametrize("value", [np.zeros(0), np.array(["mean"]), 3, None, b"mean"])
def test_expect_choice_compares_only_strings(value):
    with pytest.raises(ConfigError):
        checks.expect_choice("reduction", value, ("mean", "sum"))


@pytest.mark.parametrize("value", [10**400, -(10**400)], ids=["1e400", "-1e400"])
def test_expect_in_range_takes_ints_beyond_the_float_range(value):
    with pytest.raises(ConfigError):
        checks.expect_in_range("timeout", value, 0.0, 1e9)


def test_every_cache_class_has_its_field_kinds():
    for cls, fields in checks.CACHE_FIELDS.items():
        assert tuple(fields) == cls._fields, cls.__name__


def test_expect_cache_checks_type_and_every_field():
    lin = LinearCache(np.zeros((2, 3)), np.zeros((4, 3)), True)
    assert checks.expect_cache(lin, LinearCache) is lin
    with pytest.raises(DTypeError, match="expected LinearCache, got tuple"):
        checks.expect_cache(tuple(lin), LinearCache)
    with pytest.raises(DTypeError, match="expected LinearCache, got SoftmaxCache"):
        checks.expect_cache(SoftmaxCache(np.zeros(2)), LinearCache)
    with pytest.raises(DTypeError, match="cache.w"):
        checks.expect_cache(lin._replace(w=[[0.0]]), LinearCache)
    with pytest.raises(ConfigError, match="cache.has_bias"):
        checks.expect_cache(lin._replace(has_bias=1), LinearCache)


def test_expect_cache_descends_into_nested_caches():
    lin = LinearCache(np.zeros((2, 3)), np.zeros((4, 3)), False)
    ffn = FFNCache(lin, None, lin)
    with pytest.raises(DTypeError, match="cache.act: expected ActivationCache"):
        checks.expect_cache(ffn, FFNCache)
    mha = MHACache(lin, None, lin, 2)
    with pytest.raises(DTypeError, match="cache.attn"):
        checks.expect_cache(mha, MHACache)


@pytest.mark.parametrize("ids_dtype", [np.float32, np.bool_, np.complex64])
def test_expect_cache_refuses_ids_that_are_not_ints(ids_dtype):
    cache = EmbeddingCache(np.zeros((1, 2), ids_dtype), 5, 4, 0)
    with pytest.raises(DTypeError, match="cache.ids"):
        checks.expect_cache(cache, EmbeddingCache)


HOSTILE = [
    None,
    True,
    3,
    -1,
    2**64,
    10**400,
    float("nan"),
    float("inf"),
    "x",
    b"x",
    1j,
    (),
    [],
    {},
    object(),
    np.zeros(0),
    np.zeros((2, 0)),
    np.array(3.0),
    np.array([np.nan, 1.0]),
    np.zeros(3, np.int8),
    np.array([True]),
    np.array([1 + 2j]),
    np.array([None, 1], dtype=object),
    np.frombuffer(bytes(8), np.float32),
    np.zeros((4, 4))[:, ::2],
]
VALIDATORS = {
    "as_array": lambda v: checks.as_array("x", v),
    "expect_float": lambda v: checks.expect_float("x", v),
    "expect_int": lambda v: checks.expect_int("x", v),
    "expect_bool": lambda v: checks.expect_bool("x", v),
    "expect_same_dtype": lambda v: checks.expect_same_dtype(
        ("a", "b"), (np.zeros(2), v)
    ),
    "expect_rank": lambda v: checks.expect_rank("x", v, 2),
    "expect_min_rank": lambda v: checks.expect_min_rank("x", v, 1),
    "expect_shape": lambda v: checks.expect_shape("x", v, (None, 2)),
    "expect_nonempty": lambda v: checks.expect_nonempty("x", v),
    "expect_finite": lambda v: checks.expect_finite("x", v),
    "expect_ids": lambda v: checks.expect_ids("x", v, 5, ignore_index=-100),
    "expect_contiguous": lambda v: checks.expect_contiguous("x", v),
    "expect_writeable": lambda v: checks.expect_writeable("x", v),
    "expect_int_scalar": lambda v: checks.expect_int_scalar("x", v),
    "expect_int_at_least": lambda v: checks.expect_int_at_least("x", v, 2),
    "expect_positive_int": lambda v: checks.expect_positive_int("x", v),
    "expect_nonnegative_int": lambda v: checks.expect_nonnegative_int("x", v),
    "expect_flag": lambda v: checks.expect_flag("x", v),
    "expect_in_range": lambda v: checks.expect_in_range("x", v, 0.0, 1.0),
    "expect_choice": lambda v: checks.expect_choice("x", v, ("a", "b")),
    "expect_cache": lambda v: checks.expect_cache(v, LinearCache),
}


def test_every_public_validator_is_fuzzed_here():
    public = {
        n
        for n in dir(checks)
        if (n.startswith("expect_") or n == "as_array") and callable(getattr(checks, n))
    }
    assert public == set(VALIDATORS)


@pytest.mark.parametrize("name", sorted(VALIDATORS))
@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: type(v).__name__)
def test_validators_raise_only_spec_errors(name, value):
    try:
        VALIDATORS[name](value)
    except CllmError:
        pass
