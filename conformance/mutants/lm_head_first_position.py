"""Mutant plugin: ``forward(..., logits="last")`` heads the first position of
the sequence instead of the last, as a slice ``x[:, :1]`` for ``x[:, -1:]``
would. The slice is in the spec's model, not in a backend, so this mutant is
a pytest plugin that patches the spec module at start-up:

    pytest conformance/test_model_*.py -p conformance.mutants.lm_head_first_position
"""

import cllm_spec.model as _model

_reference = _model.forward


def _first_position(*args, logits="all", **kwargs):  # type: ignore[no-untyped-def]
    out, loss, cache = _reference(*args, **kwargs)
    return (out[:, :1] if logits == "last" else out), loss, cache


_model.forward = _first_position
