"""``cllm train`` with ``parallel.workers``: every worker count gives the bits
of one worker (a resume with another count included), and one worker runs the
group-split step. The run reports per-worker statistics in the metrics log and
a table, sets the BLAS thread count for the run and restores it afterwards, and
bad parallel settings are refused with an error naming the field.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from cllm_spec import checkpoint
from cllm_spec.data import read_dataset_bin
from cllm_spec.errors import ConfigError
from cllm_spec.model import ModelConfig, init_params
from cllm_spec.parallel import allocate_groups
from cllm_spec.registry import get_backend
from cllm_spec.train.config import load_config
from cllm_spec.train.prepare import BatchStream
from cllm_spec.train.state import model_config
from cllm_spec.train.step import compute_step_gradients, group_step_gradients
from cllm_spec.train.trainer import train
from tests import train_parallel_helpers
from tests.train_parallel_helpers import (
    STEPS,
    B,
    K,
    T,
    assert_same_tensors,
    cllm_train,
    ok,
    run_tiny,
    sets,
)

# pytest finds a test's fixtures among its module's names
corpus = train_parallel_helpers.corpus
reference = train_parallel_helpers.reference


# ===================================================== the same bits ====
def test_the_group_split_is_not_the_unsplit_step_bitwise():
    # Without this, the trajectory tests could not tell the group-split step
    # from one unsplit forward/backward per micro-batch: they differ in bits,
    # while agreeing up to float32 rounding (same tokens, other sum orders).
    cfg = ModelConfig(vocab_size=11, n_embd=8, n_layer=1, n_head=2, block_size=8)
    tokens = np.random.default_rng(1).integers(0, 11, 600).astype(np.uint32)
    batches = BatchStream(tokens, 14, 8, seed=5).take(2)
    backend = get_backend("numpy")
    params = init_params(cfg, np.random.default_rng(0), np.float32)
    loss_s, grad_s = group_step_gradients(backend, cfg, params, batches)
    loss_u, grad_u = compute_step_gradients(backend, cfg, params, batches)
    assert grad_s.tobytes() != grad_u.tobytes()
    assert grad_s.dtype == np.float32
    np.testing.assert_allclose(grad_s, grad_u, rtol=1e-4, atol=1e-6)
    assert loss_s == pytest.approx(loss_u, rel=1e-6)
    assert np.abs(grad_u).max() > 1e-3  # a real gradient


@pytest.mark.parametrize("workers", [2, 3, 12])
def test_worker_counts_give_the_bits_of_one_worker(
    tmp_path, corpus, reference, workers
):
    run = ok(run_tiny(tmp_path / "run", corpus, "--set", f"parallel.workers={workers}"))
    assert len(run.trajectory()) == STEPS  # one optimizer step per global step
    assert run.trajectory() == reference.trajectory()  # floats: equal = same bits
    assert run.rows("eval") == reference.rows("eval")
    assert_same_tensors(run.tensors(), reference.tensors())


@pytest.mark.parametrize("workers", [2, 12])
def test_groups_in_one_pass_give_the_bits_of_one_group_at_a_time(
    tmp_path, corpus, workers
):
    """The C backend runs a worker's groups of a micro-batch in one pass
    (cllm_spec.model_groups): one worker computes all 12 at once, 12 workers
    one each, the way every group ran before; the runs agree bit for bit."""
    pytest.importorskip("cllm_c", reason="the C extension is not built")
    # 24 rows: 2 per group, 32 token rows each, enough to run together
    c = ("--set", "train.backend=c", "--set", "train.batch_size=24")
    one = ok(run_tiny(tmp_path / "one", corpus, *c, "--set", "parallel.workers=1"))
    many = ok(
        run_tiny(tmp_path / "many", corpus, *c, "--set", f"parallel.workers={workers}")
    )
    assert len(one.trajectory()) == STEPS
    assert many.trajectory() == one.trajectory()
    assert_same_tensors(many.tensors(), one.tensors())


def test_one_worker_runs_the_group_split_math(reference):
    """The logged loss of step 1 is the group-split mean of its two micro-batches
    under the initial parameters, recomputed here in this process."""
    info = json.loads((reference.out / "dataset.json").read_text())
    ids = read_dataset_bin(reference.out / "dataset.bin")[: info["n_train"]]
    cfg = load_config(None, sets()[1::2])
    batches = BatchStream(ids, B, T, seed=cfg.train.seed).take(K)
    mcfg = model_config(cfg, 261)  # the byte tokenizer's V
    params = init_params(mcfg, np.random.default_rng(cfg.train.seed), np.float32)
    loss, _ = group_step_gradients(get_backend("numpy"), mcfg, params, batches)
    assert reference.rows("train")[0]["loss"] == loss


def test_resume_with_another_worker_count_is_bitwise(tmp_path, corpus, reference):
    first = ok(
        run_tiny(
            tmp_path / "first",
            corpus,
            "--set",
            "train.steps=3",
            "--set",
            "parallel.workers=2",
        )
    )
    second = ok(
        cllm_train(
            tmp_path / "second",
            "--resume",
            str(checkpoint.checkpoint_path(first.out, 3)),
            "--set",
            f"train.steps={STEPS}",
            "--set",
            f"train.out_dir={tmp_path / 'second'}",
            "--set",
            "parallel.workers=3",
            # the first run planned 3 steps; the reference planned them all
            "--set",
            "schedule.on_resume=replan",
        )
    )
    assert first.trajectory() + second.trajectory() == reference.trajectory()
    assert_same_tensors(second.tensors(), reference.tensors())


# ================================================= statistics, output ====
def test_per_worker_table_and_parallel_row(tmp_path, corpus):
    run = ok(run_tiny(tmp_path / "run", corpus, "--set", "parallel.workers=5"))
    (row,) = run.rows("parallel")
    assert (row["engine"], row["workers"], row["step"]) == ("threads", 5, STEPS)
    per = row["per_worker"]
    assert [w["worker"] for w in per] == [0, 1, 2, 3, 4]
    # Worker t owns groups t and t + 5 (and t + 10 for t < 2); B = 14 gives
    # groups 0 and 1 two rows and the others one, T tokens per row.
    rows_of = [2, 2] + [1] * 10
    for t, w in enumerate(per):
        owned = allocate_groups(5).groups_of(t)
        assert w["batches"] == STEPS * K * len(owned)
        assert w["tokens"] == STEPS * K * T * sum(rows_of[g] for g in owned)
        assert w["busy_s"] > 0 and w["idle_s"] >= 0
    assert sum(w["tokens"] for w in per) == STEPS * K * B * T
    assert row["tokens_per_s"] > 0 and row["seconds"] > 0
    assert all(r["tokens_per_s"] > 0 for r in run.rows("train"))
    table = run.stdout[run.stdout.index("worker   groups") :].splitlines()
    assert re.fullmatch(r"worker\s+groups\s+tokens\s+busy %\s+idle %", table[0])
    for t, line in enumerate(table[1:6]):
        n, groups, tokens, busy, idle = line.split()
        assert (int(n), int(groups), int(tokens.replace(",", ""))) == (
            t,
            per[t]["batches"],
            per[t]["tokens"],
        )
        assert float(busy) + float(idle) == pytest.approx(100.0, abs=0.11)


def test_one_worker_prints_no_table(reference):
    assert "worker   groups" not in reference.stdout
    assert "parallel: 1 worker thread (threads engine); BLAS threads: 1" in (
        reference.stdout
    )
    (row,) = reference.rows("parallel")
    assert row["workers"] == 1 and row["per_worker"][0]["tokens"] == STEPS * K * B * T


def _blas_threads() -> set[int]:
    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


@pytest.mark.parametrize(("setting", "inside"), [(1, 1), (0, 2), (2, 2)])
def test_blas_threads_are_set_for_the_run(tmp_path, corpus, setting, inside):
    if not _blas_threads():
        pytest.skip("numpy reports no BLAS thread pool to limit")
    seen: list[set[int]] = []

    def say(message: str) -> None:  # called during the run, inside the limit
        seen.append(_blas_threads())

    fields = {"data__corpus": corpus, "train__out_dir": tmp_path / "r"}
    overrides = [*sets(**fields)[1::2], f"train.blas_threads={setting}"]
    with threadpool_limits(limits=2, user_api="blas"):  # outside: 2 (0 keeps it)
        train(None, overrides, say=say)
        after = _blas_threads()
    assert seen and all(s == {inside} for s in seen), seen
    assert after == {2}  # restored


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["parallel.engine=mpi", "parallel.workers=2"], "parallel.workers"),
        (["parallel.engine=gpu"], "parallel.engine"),
        (["parallel.check_every=-1"], "parallel.check_every"),
        (["parallel.timeout=0"], "parallel.timeout"),
        (["parallel.timeout=inf"], "parallel.timeout"),
        (["train.blas_threads=-1"], "train.blas_threads"),
    ],
)
def test_bad_parallel_settings_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert info.value.message.startswith(field + ":")
