"""The typed errors: each is also a builtin, and its message carries a hint."""

from __future__ import annotations

import inspect

import pytest

from cllm_spec import errors

ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.CllmError) and cls is not errors.CllmError
]

BUILTIN_OF = {
    errors.ShapeError: ValueError,
    errors.DTypeError: TypeError,
    errors.IdRangeError: ValueError,
    errors.NonFiniteError: ValueError,
    errors.EmptyInputError: ValueError,
    errors.ConfigError: ValueError,
    errors.ReadOnlyError: ValueError,
    errors.CacheFullError: RuntimeError,
    errors.QueueClosedError: RuntimeError,
    errors.QueueTimeoutError: TimeoutError,
    errors.RefCountError: RuntimeError,
    errors.LifecycleError: RuntimeError,
    errors.ReplicaMismatchError: RuntimeError,
    errors.CheckpointError: ValueError,
    errors.BackendError: ImportError,
    errors.Unsupported: NotImplementedError,
}


def test_every_error_class_is_listed_here():
    assert set(ERROR_CLASSES) == set(BUILTIN_OF)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_error_is_its_builtin_and_carries_a_hint(cls):
    assert issubclass(cls, BUILTIN_OF[cls])
    assert cls.hint, f"{cls.__name__} needs a one-line hint"
    assert "\n" not in cls.hint
    with pytest.raises(BUILTIN_OF[cls]) as info:
        raise cls("what went wrong")
    text = str(info.value)
    assert text.startswith("what went wrong")
    assert f"hint: {cls.hint}" in text
    assert info.value.message == "what went wrong"


def test_hint_can_be_overridden_per_raise():
    err = errors.ShapeError("bad", hint="pass np.ascontiguousarray(x)")
    assert str(err) == "bad\n  hint: pass np.ascontiguousarray(x)"
