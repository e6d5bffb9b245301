"""The C backend's threads and SIMD level.

- thread-count invariance: every kernel gives the same bits with 1, 2 and 3
  threads (fixed reduction order), on shapes large enough to use them;
- the SIMD level is the best the CPU has, and ``CLLM_C_SCALAR`` /
  ``CLLM_NUM_THREADS`` are honoured at import.

The whole module is skipped when the extension is not built.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_c import _lib  # noqa: E402

from cllm_spec.protocols import AdamState  # noqa: E402
from tests import c_backend_helpers  # noqa: E402
from tests.c_backend_helpers import F32, _flatten, _normal  # noqa: E402

# pytest finds a test's fixtures among its module's names
rng = c_backend_helpers.rng
threads = c_backend_helpers.threads


# ------------------------------------------------------- the workloads -----
def _workloads(rng: np.random.Generator) -> dict[str, Callable[[], Any]]:
    """One call per kernel, on shapes that split over several threads."""
    n, c, f, v = 300, 96, 200, 1000
    x = _normal(rng, 3, n // 3, c)
    w, b = _normal(rng, f, c, scale=0.1), _normal(rng, f)
    _, lin = cllm_c.linear_forward(x, w, b)
    dy = _normal(rng, 3, n // 3, f)
    h = _normal(rng, 40000)
    _, gelu = cllm_c.activation_forward(h, "gelu")
    lnw, lnb = _normal(rng, c), _normal(rng, c)
    _, ln = cllm_c.layernorm_forward(x, lnw, lnb)
    logits = _normal(rng, n, v, scale=3.0)
    targets = rng.integers(0, v, n).astype(np.int32)
    targets[::7] = -100
    _, ce = cllm_c.cross_entropy_forward(logits, targets, label_smoothing=0.1)
    q, k, vv = (_normal(rng, 4, 3, 50, 16) for _ in range(3))
    _, att = cllm_c.attention_forward(q, k, vv)
    p = _normal(rng, 200000)
    g = _normal(rng, 200000)
    zeros = np.zeros_like(p)
    state = AdamState(zeros, zeros.copy(), zeros.copy(), 3)
    ids = rng.integers(0, 500, (4, 64))
    wte, wpe = _normal(rng, 500, 32), _normal(rng, 64, 32)
    _, emb = cllm_c.embedding_forward(ids, wte, wpe)
    dx_emb = _normal(rng, 4, 64, 32)
    bufs = [_normal(rng, 100000) for _ in range(5)]
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    # N > M: the GEMM splits columns and shares the packed A (the other cases
    # above split rows and share the packed B)
    x_wide, w_wide = _normal(rng, 40, 96), _normal(rng, 2000, 96, scale=0.1)
    # a few rows (decoding) take the matrix-vector path; 3000 x 97 weights
    # split over threads, and 97 leaves a K tail for every SIMD width
    x_few, w_few = _normal(rng, 5, 97), _normal(rng, 3000, 97, scale=0.1)
    b_few = _normal(rng, 3000)
    # one decoding step of 8 sequences over 200 cached positions (8 heads)
    x_dec = _normal(rng, 8, 1, 256)
    w_qkv, w_o = _normal(rng, 768, 256, scale=0.05), _normal(rng, 256, 256, scale=0.05)
    kv = cllm_c.kv_cache_new(8, 8, 201, 32, np.float32)
    kv.k[...], kv.v[...] = _normal(rng, 8, 8, 201, 32), _normal(rng, 8, 8, 201, 32)
    kv = kv._replace(length=200)
    return {
        "linear_forward": lambda: cllm_c.linear_forward(x, w, b)[0],
        "linear_forward_float64": lambda: cllm_c.linear_forward(x64, w64, None)[0],
        "linear_forward_wide": lambda: cllm_c.linear_forward(x_wide, w_wide, None)[0],
        "linear_few_rows": lambda: cllm_c.linear_forward(x_few, w_few, b_few)[0],
        "mha_decode": lambda: (
            cllm_c.mha_forward(x_dec, w_qkv, None, w_o, None, n_head=8, kv_cache=kv)[0],
            kv.k.copy(),
            kv.v.copy(),
        ),
        "linear_backward": lambda: cllm_c.linear_backward(dy, lin),
        "gelu_forward": lambda: cllm_c.activation_forward(h, "gelu")[0],
        "gelu_backward": lambda: cllm_c.activation_backward(h, gelu),
        "layernorm_forward": lambda: cllm_c.layernorm_forward(x, lnw, lnb)[:1],
        "layernorm_backward": lambda: cllm_c.layernorm_backward(x, ln),
        "softmax": lambda: cllm_c.softmax_forward(logits)[0],
        "cross_entropy_forward": lambda: cllm_c.cross_entropy_forward(
            logits, targets, label_smoothing=0.1
        ),
        "cross_entropy_backward": lambda: cllm_c.cross_entropy_backward(
            np.array(1.5, F32), ce
        ),
        "mse_forward": lambda: cllm_c.mse_forward(p, g)[0],
        "attention_forward": lambda: cllm_c.attention_forward(q, k, vv),
        "attention_backward": lambda: cllm_c.attention_backward(q, att),
        "adamw_step": lambda: cllm_c.adamw_step(p, g, state, lr=1e-3),
        "grad_stats": lambda: tuple(cllm_c.grad_stats(g)),
        "grad_global_norm": lambda: cllm_c.grad_global_norm(g),
        "grad_tree_reduce": lambda: cllm_c.grad_tree_reduce(bufs),
        "embedding_backward": lambda: cllm_c.embedding_backward(dx_emb, emb),
    }


WORKLOADS = list(_workloads(np.random.default_rng(0)))


@pytest.mark.parametrize("kernel", WORKLOADS)
@pytest.mark.parametrize("simd", ["best", "scalar"])
def test_bits_do_not_depend_on_the_thread_count(kernel, simd, rng, threads):
    _lib.set_simd(_lib.simd_detected() if simd == "best" else simd)
    run = _workloads(rng)[kernel]
    results = {}
    for n in (1, 2, 3):
        _lib.set_num_threads(n)
        results[n] = _flatten(run())
    assert results[1], "the workload returned no array"
    for n in (2, 3):
        for one, many in zip(results[1], results[n], strict=True):
            assert one.dtype == many.dtype and one.shape == many.shape
            assert one.tobytes() == many.tobytes(), f"{kernel}: 1 vs {n} threads"


def test_the_simd_path_is_the_best_the_cpu_has():
    info = cllm_c.build_info()
    assert info["simd_detected"] in ("scalar", "avx2+fma", "avx512")
    if os.environ.get("CLLM_C_SCALAR", "0") not in ("", "0"):
        assert info["simd"] == "scalar"
    else:
        assert info["simd"] == info["simd_detected"]
    assert info["threads"] >= 1


def _import_info(env: dict[str, str]) -> dict[str, Any]:
    code = "import json, cllm_c; print(json.dumps(cllm_c.build_info()))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def test_environment_selects_scalar_and_threads():
    info = _import_info({"CLLM_C_SCALAR": "1", "CLLM_NUM_THREADS": "3"})
    assert info["simd"] == "scalar" and info["threads"] == 3


def test_bad_thread_count_in_the_environment_is_a_clear_error():
    code = "import cllm_c"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "CLLM_NUM_THREADS": "zero"},
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "CLLM_NUM_THREADS" in out.stderr
