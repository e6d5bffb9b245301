"""The backend exposes every protocol function with a compatible signature.

Compatible means: the same parameter names in the same order, the same kinds
(positional or keyword-only) and the same defaults, so that code written against
the spec calls every backend the same way.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from cllm_spec.protocols import COMPONENT_FUNCTIONS, Backend

ALL_FUNCTIONS = [name for names in COMPONENT_FUNCTIONS.values() for name in names]


def _spec_parameters(name: str) -> list[inspect.Parameter]:
    params = list(inspect.signature(getattr(Backend, name)).parameters.values())
    return params[1:]  # drop self: a backend is a module of plain functions


@pytest.mark.parametrize("name", ALL_FUNCTIONS)
def test_function_signature_matches_protocol(backend, name):
    func = getattr(backend, name, None)
    assert callable(func), f"backend {backend.name} lacks {name}"
    got = list(inspect.signature(func).parameters.values())
    want = _spec_parameters(name)
    got_desc = [(p.name, p.kind, p.default) for p in got]
    want_desc = [(p.name, p.kind, p.default) for p in want]
    assert got_desc == want_desc, f"{name}: signature {got_desc} != spec {want_desc}"


def test_backend_metadata(backend):
    assert isinstance(backend.name, str) and backend.name
    assert isinstance(backend.version, str) and backend.version
    assert backend.dtypes, "a backend declares at least one float dtype"
    assert {np.dtype(d) for d in backend.dtypes} <= {
        np.dtype(np.float32),
        np.dtype(np.float64),
    }
    info = backend.build_info()
    assert isinstance(info, dict) and info


def test_backend_satisfies_runtime_protocol(backend):
    assert isinstance(backend, Backend)
