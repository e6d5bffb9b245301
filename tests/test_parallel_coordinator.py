"""The coordinator's arithmetic and its threads: N workers give the bits of one
worker, a step is the mean over the whole batch, each group runs on the worker
that owns it and the optimizer on the caller's thread, and the per-worker
statistics add up.

The model and trainer are in ``tests/parallel_coordinator_helpers.py``.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cllm_spec.parallel import N_GROUPS, WorkerStats, split_rows
from cllm_spec.tolerances import tolerance
from tests.parallel_coordinator_helpers import (
    BACKEND,
    P,
    Trainer,
    assert_same_bits,
    batches,
    lsq_terms,
    reference,
    train,
)


# ========================================================== determinism ====
def test_the_data_is_order_sensitive():
    # Without this, the bitwise tests below could pass with any summation order.
    mb = batches(7, 1, 16)[0][0]
    parts = split_rows(mb, N_GROUPS)
    w = np.full(P, 0.01, dtype=np.float32)
    group_grads = [lsq_terms(w, p)[0] for p in parts]
    in_order = BACKEND.grad_tree_reduce(group_grads)
    assert in_order.tobytes() != BACKEND.grad_tree_reduce(group_grads[::-1]).tobytes()
    sequential = group_grads[0]
    for g in group_grads[1:]:
        sequential = sequential + g
    assert in_order.tobytes() != sequential.tobytes()


@pytest.mark.parametrize("n_workers", [1, 2, 3, 5, 12, 13, 24])
def test_n_workers_reproduce_one_worker_bitwise(n_workers):
    trainer, results, _, _ = train(n_workers, batches(7, 10, 16))
    ref = reference(10, 16, 1)
    assert len(trainer.losses) == 10  # one optimizer step per global step
    assert_same_bits(trainer, ref)
    assert all(np.isfinite(trainer.losses))
    assert [r.step for r in results] == list(range(10))
    assert [r.loss for r in results] == ref.losses


@pytest.mark.parametrize("n_workers", [2, 3, 12])
def test_accumulation_reproduces_one_worker_bitwise(n_workers):
    trainer, results, _, _ = train(n_workers, batches(7, 4, 16, accum=3))
    assert_same_bits(trainer, reference(4, 16, 3))
    assert all(r.micro_batches == 3 and r.groups == 36 for r in results)


@pytest.mark.parametrize("n_workers", [3, 12])
def test_fewer_rows_than_groups(n_workers):
    # B = 5: groups 5..11 are empty, never computed, and change nothing.
    trainer, results, _, _ = train(n_workers, batches(7, 3, 5))
    assert_same_bits(trainer, reference(3, 5, 1))
    assert sorted({g for g, _, _ in trainer.calls}) == [0, 1, 2, 3, 4]
    assert all(r.groups == 5 for r in results)


@pytest.mark.parametrize(("rows", "accum"), [(16, 1), (13, 3), (30, 2)])
def test_step_equals_the_whole_batch_mean(rows, accum):
    # float64, so the comparison with the direct formula is tight: the loss is
    # the mean over every counted token of the step (not a mean of group means)
    # and the gradient is its gradient.
    data = batches(3, 1, rows, accum, dtype=np.float64)
    trainer, results, _, _ = train(3, data, dtype=np.float64)
    x = np.concatenate([mb[0] for mb in data[0]]).astype(np.float64)
    y = np.concatenate([mb[1] for mb in data[0]]).astype(np.float64)
    mask = np.concatenate([mb[2] for mb in data[0]])
    r = (np.einsum("bkp,p->bk", x, np.zeros(P)) - y) * mask
    n = int(mask.sum())
    want_grad = np.einsum("bk,bkp->p", r, x) / n
    want_loss = 0.5 * np.sum(r**2) / n
    tol = tolerance("parallel", "step", np.float64)
    got_grad = np.frombuffer(trainer.grads[0], dtype=np.float64)
    np.testing.assert_allclose(got_grad, want_grad, rtol=tol.rtol, atol=tol.atol)
    np.testing.assert_allclose(trainer.losses[0], want_loss, rtol=tol.rtol)
    assert results[0].tokens == n


# ============================================================ threads ====
@pytest.mark.parametrize("n_workers", [1, 3, 13])
def test_who_runs_what(n_workers):
    trainer, _, stats, coord = train(n_workers, batches(7, 2, 16))
    # The optimizer only on the caller's (coordinator's) thread ...
    assert trainer.opt_threads == {threading.get_ident()}
    # ... and every group on the worker that owns it, never on the caller.
    prefix = coord.thread_prefix
    for group, thread_name, _ in trainer.calls:
        owner = coord.allocation.group_to_worker[group]
        assert thread_name == f"{prefix}{owner}"
    assert len(trainer.calls) == 2 * N_GROUPS
    for w in coord.allocation.idle_workers:  # workers 12.. never compute
        assert stats[w].batches == 0 and stats[w].tokens == 0
    assert coord.alive_workers() == ()


def test_stats_add_up_and_reset():
    trainer = Trainer()
    data = batches(5, 4, 16)
    with trainer.coordinator(5) as coord:
        results = [coord.run_step(step[0]) for step in data]
        stats = coord.stats()
        total = coord.total_stats()
        assert total == WorkerStats.total(stats)
        assert total.batches == 4 * N_GROUPS
        assert total.tokens == sum(r.tokens for r in results)
        assert total.tokens == sum(n for _, _, n in trainer.calls)
        for w, s in enumerate(stats):
            assert s.batches == 4 * len(coord.allocation.groups_of(w))
            assert s.busy_s > 0 and s.idle_s >= 0
        coord.reset_stats()
        assert coord.stats() == (WorkerStats(),) * 5
        again = coord.run_step(data[0][0])
        assert coord.total_stats().batches == N_GROUPS
        assert coord.total_stats().tokens == again.tokens
