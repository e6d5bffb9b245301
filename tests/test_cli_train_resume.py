"""``cllm train --resume`` on sound runs: bit-identical continuation on every
backend, in place (extending a run or going back to an earlier checkpoint),
in float64, and on another backend.

The refusals of hostile and damaged runs are in ``test_cli_resume``."""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec import checkpoint
from cllm_spec.registry import get_backend
from tests import cli_train_helpers
from tests.cli_train_helpers import (
    BACKENDS,
    ckpt_steps,
    cllm_train,
    expect_error,
    loadable_backends,
    ok,
    rows,
    sets,
)

# pytest finds a test's fixtures among its module's names
corpus = cli_train_helpers.corpus


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_resume_is_bit_identical(tmp_path, corpus, backend_name):
    """Run 8 steps; resume the step-4 checkpoint for steps 5-8; same bits.

    grad_accum 2 of batches of 8 from 1500 tokens: 10 micro-batches per epoch,
    so the resumed half crosses an epoch boundary.
    """
    small = tmp_path / "small.txt"
    small.write_text(corpus.read_text()[:1500])
    common = dict(
        train__backend=backend_name,
        data__corpus=small,
        train__batch_size=8,
        train__grad_accum=2,
        train__steps=8,
        train__checkpoint_every=4,
        train__keep_last=5,
        train__eval_every=2,
        schedule__warmup_steps=3,
    )
    first, second = tmp_path / "first", tmp_path / "second"
    ok(cllm_train(*sets(train__out_dir=first, **common)))
    ok(
        cllm_train(
            "--resume",
            str(checkpoint.checkpoint_path(first, 4)),
            "--set",
            f"train.out_dir={second}",
        )
    )
    a, b = rows(first, "train"), rows(second, "train")
    assert [r["step"] for r in b] == [5, 6, 7, 8]
    assert a[-1]["epoch"] == 1  # the epoch boundary was crossed after step 5
    for key in ("loss", "lr", "grad_norm", "epoch"):
        assert [r[key] for r in a[4:]] == [r[key] for r in b], key
    assert rows(first, "eval")[2:] == rows(second, "eval")
    ta, _ = checkpoint.load(checkpoint.checkpoint_path(first, 8))
    tb, _ = checkpoint.load(checkpoint.checkpoint_path(second, 8))
    assert sorted(ta) == sorted(tb)
    for name in ta:
        np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)


def test_resume_in_place_extends_the_run(tmp_path, corpus):
    run = tmp_path / "run"
    ok(
        cllm_train(
            *sets(
                data__corpus=corpus,
                train__out_dir=run,
                train__steps=4,
                schedule__name="constant",
            )
        )
    )
    expect_error(cllm_train("--resume", str(run)), "train.steps: .* at step 4")
    ok(cllm_train("--resume", str(run), "--set", "train.steps=6"))
    assert [r["step"] for r in rows(run, "train")] == [1, 2, 3, 4, 5, 6]
    assert ckpt_steps(run) == [4, 6]


def test_resume_an_earlier_checkpoint_in_place(tmp_path, corpus):
    """Going back to step 4 of a 6-step run: the later checkpoint is refused,
    then deleted with --overwrite, and the rows after step 4 are replaced."""
    run = tmp_path / "run"
    ok(
        cllm_train(
            *sets(
                data__corpus=corpus,
                train__out_dir=run,
                train__checkpoint_every=2,
                train__keep_last=5,
            )
        )
    )
    before = rows(run, "train")
    earlier = str(checkpoint.checkpoint_path(run, 4))
    expect_error(cllm_train("--resume", earlier), "train.out_dir: .* after step 4")
    ok(cllm_train("--resume", earlier, "--overwrite"))
    after = rows(run, "train")
    assert [r["step"] for r in after] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in after] == [r["loss"] for r in before]
    assert ckpt_steps(run) == [2, 4, 6]


def test_resume_in_float64_follows_the_float32_run(tmp_path, corpus):
    if "float64" not in [str(np.dtype(d)) for d in get_backend("numpy").dtypes]:
        pytest.skip("the numpy backend does not list float64")
    common = dict(
        data__corpus=corpus,
        train__backend="numpy",
        train__steps=8,
        train__checkpoint_every=4,
        train__keep_last=5,
    )
    f32, f64 = tmp_path / "f32", tmp_path / "f64"
    ok(cllm_train(*sets(train__out_dir=f32, **common)))
    ok(
        cllm_train(
            "--resume",
            str(checkpoint.checkpoint_path(f32, 4)),
            "--set",
            f"train.out_dir={f64}",
            "--set",
            "train.dtype=float64",
        )
    )
    _, meta = checkpoint.load(checkpoint.latest(f64))
    assert meta["run"]["dtype"] == "float64"
    a = [r["loss"] for r in rows(f32, "train")[4:]]
    b = [r["loss"] for r in rows(f64, "train")]
    assert a != b  # really computed in another precision
    np.testing.assert_allclose(b, a, rtol=1e-4)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_checkpoint_resumes_on_another_backend(tmp_path, corpus, direction):
    names = loadable_backends()
    if len(names) < 2:
        pytest.skip(f"only one backend can load ({names}); nothing to cross to")
    first_name, second_name = names[:2] if direction == "forward" else names[1::-1]
    one, two = tmp_path / "one", tmp_path / "two"
    common = dict(
        data__corpus=corpus,
        train__steps=8,
        train__checkpoint_every=4,
        train__keep_last=5,
    )
    ok(cllm_train(*sets(train__out_dir=one, train__backend=first_name, **common)))
    ok(
        cllm_train(
            "--resume",
            str(checkpoint.checkpoint_path(one, 4)),
            "--backend",
            second_name,
            "--set",
            f"train.out_dir={two}",
        )
    )
    _, meta = checkpoint.load(checkpoint.latest(two))
    assert meta["run"]["backend"] == second_name
    a = [r["loss"] for r in rows(one, "train")[4:]]
    np.testing.assert_allclose([r["loss"] for r in rows(two, "train")], a, rtol=1e-3)
