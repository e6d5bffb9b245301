"""Mutant: the embedding backward assigns instead of scatter-adding, so a token
id that appears twice in the batch keeps only one of its gradients."""

import numpy as np
from cllm_numpy import embedding as _ref

from conformance.mutants._base import *  # noqa: F403

name = "mutant-embedding-overwrite"


def embedding_backward(dx, cache):  # type: ignore[no-untyped-def]
    dwte, dwpe = _ref.embedding_backward(dx, cache)
    dwte = np.zeros_like(dwte)
    dwte[cache.ids.reshape(-1)] = dx.reshape(-1, dx.shape[-1])
    return dwte, dwpe
