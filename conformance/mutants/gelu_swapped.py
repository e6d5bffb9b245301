"""Mutant: 'gelu' computes the tanh approximation instead of the erf form."""

from cllm_numpy import ffn as _ref

from conformance.mutants._base import *  # noqa: F403

name = "mutant-gelu-swapped"


def activation_forward(x, kind):  # type: ignore[no-untyped-def]
    return _ref.activation_forward(x, "gelu_tanh" if kind == "gelu" else kind)
