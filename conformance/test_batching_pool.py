"""Conformance of BatchPool, preallocated batches lent by reference count.

Spec: ``cllm_spec.batching``. Pool arguments, zeroed int32 batches that share no
memory, retain and release, stale, foreign and non-handles, exhaustion and
timeouts, stats, waiters woken by release and close, and a stress run of
threads sharing the slots. ``test_seedNN_*`` is the equivalent of test NN of
the original ``tests/unit/test_batch.c``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from cllm_spec.errors import (
    ConfigError,
    QueueClosedError,
    QueueTimeoutError,
    RefCountError,
)
from cllm_spec.protocols import Batch, PoolStats
from conformance.batching_helpers import (
    BLOCKED,
    JOIN,
    SHORT,
    WAKE_BOUND,
    Worker,
    assert_close_wakes,
    timed,
)

POOL_SIZES = (1, 3, 5)


# ==================================================================== pool ====
@pytest.mark.parametrize(
    "args",
    [
        (0, 2, 3),
        (2, 0, 3),
        (2, 3, 0),
        (-1, 2, 3),
        (2.0, 2, 3),
        (2, True, 3),
        (2**63, 2, 3),
        (2, 2**31, 2**31),
        (1024, 1024, 1024),  # 12 GiB of arrays: over MAX_POOL_BYTES
    ],
)
def test_pool_rejects_bad_arguments(backend, args):
    with pytest.raises(ConfigError):
        backend.make_batch_pool(*args)


@pytest.mark.parametrize("size", POOL_SIZES)
def test_seed01_pool_preallocates_zeroed_int32_batches(backend, size):
    # test_batch.c #1/#4 (tensor_create, batch_create): the shapes asked for are
    # stored and the data starts zeroed; the mask starts at 1 as in the original.
    pool = backend.make_batch_pool(size, 4, 7)
    assert pool.size == size and pool.available == size and pool.closed is False
    items = [pool.acquire(timeout=1.0) for _ in range(size)]
    assert sorted(it.slot for it in items) == list(range(size))
    for it in items:
        assert isinstance(it.batch, Batch)
        for arr in it.batch:
            assert arr.dtype == np.int32 and arr.shape == (4, 7)
        assert not it.batch.input_ids.any() and not it.batch.targets.any()
        assert (it.batch.mask == 1).all()
    arrays = [arr for it in items for arr in it.batch]
    for i, a in enumerate(arrays):
        for b in arrays[i + 1 :]:
            assert not np.shares_memory(a, b), "two pool arrays share memory"


def test_seed08_refcount_starts_at_one_retain_release(backend):
    # test_batch.c #8: refcount starts at 1; retain -> 2; release -> 1.
    pool = backend.make_batch_pool(2, 2, 2)
    item = pool.acquire(timeout=1.0)
    assert pool.refcount(item) == 1
    pool.retain(item)
    assert pool.refcount(item) == 2
    pool.release(item)
    assert pool.refcount(item) == 1
    assert pool.available == 1
    pool.release(item)
    assert pool.refcount(item) == 0
    assert pool.available == 2


def test_pool_slot_returns_only_at_refcount_zero(backend):
    pool = backend.make_batch_pool(1, 2, 2)
    item = pool.acquire(timeout=1.0)
    for _ in range(3):
        pool.retain(item)
    for expected in (3, 2, 1):
        pool.release(item)
        assert pool.refcount(item) == expected
        assert pool.available == 0
        assert pool.try_acquire() is None
    pool.release(item)
    assert pool.available == 1
    assert pool.stats().releases == 1


def test_pool_double_release_is_refcount_error(backend):
    pool = backend.make_batch_pool(2, 2, 2)
    item = pool.acquire(timeout=1.0)
    pool.release(item)
    with pytest.raises(RefCountError):
        pool.release(item)
    assert pool.available == 2
    assert pool.stats().releases == 1


def test_pool_retain_after_release_is_refcount_error(backend):
    pool = backend.make_batch_pool(2, 2, 2)
    item = pool.acquire(timeout=1.0)
    pool.release(item)
    with pytest.raises(RefCountError):
        pool.retain(item)
    assert pool.refcount(item) == 0


def test_pool_stale_handle_after_reuse_is_refcount_error(backend):
    pool = backend.make_batch_pool(1, 2, 2)
    old = pool.acquire(timeout=1.0)
    pool.release(old)
    new = pool.acquire(timeout=1.0)
    assert new.slot == old.slot  # the only slot, lent again
    assert pool.refcount(old) == 0
    assert pool.refcount(new) == 1
    with pytest.raises(RefCountError):
        pool.release(old)
    with pytest.raises(RefCountError):
        pool.retain(old)
    assert pool.refcount(new) == 1, "a stale handle changed the new loan's count"
    assert pool.available == 0
    pool.release(new)
    assert pool.available == 1


def test_pool_foreign_handle_is_refcount_error(backend):
    pool_a = backend.make_batch_pool(1, 2, 2)
    pool_b = backend.make_batch_pool(1, 2, 2)
    item = pool_a.acquire(timeout=1.0)
    held_b = pool_b.acquire(timeout=1.0)
    for op in (pool_b.release, pool_b.retain, pool_b.refcount):
        with pytest.raises(RefCountError, match="not from this pool"):
            op(item)
    assert pool_a.refcount(item) == 1 and pool_b.refcount(held_b) == 1
    assert pool_a.available == 0 and pool_b.available == 0


@pytest.mark.parametrize("other", [None, "x", 0], ids=["None", "str", "int"])
def test_pool_non_handle_is_refcount_error(backend, other):
    pool = backend.make_batch_pool(1, 2, 2)
    with pytest.raises(RefCountError):
        pool.release(other)
    with pytest.raises(RefCountError):
        pool.retain(other)
    assert pool.available == 1


def test_seed11_pool5_sixth_try_acquire_fails_stats(backend):
    # test_batch.c #11: pool(5, 16, 64): 5 try_allocate succeed, the 6th returns
    # nothing; after 5 releases the stats are allocations 5, releases 5.
    pool = backend.make_batch_pool(5, 16, 64)
    items = [pool.try_acquire() for _ in range(5)]
    assert all(it is not None for it in items)
    assert pool.try_acquire() is None
    for it in items:
        pool.release(it)
    assert pool.stats() == PoolStats(allocations=5, releases=5, hits=5, misses=1)
    assert pool.available == 5


@pytest.mark.parametrize("size", POOL_SIZES)
def test_pool_exhaustion_and_available(backend, size):
    pool = backend.make_batch_pool(size, 1, 1)
    items = []
    for k in range(size):
        assert pool.available == size - k
        items.append(pool.acquire(timeout=1.0))
    assert pool.available == 0
    assert pool.try_acquire() is None
    err, _ = timed(lambda: pool.acquire(timeout=0))
    assert isinstance(err, QueueTimeoutError)
    pool.release(items[-1])
    assert pool.available == 1


def test_pool_acquire_times_out_when_exhausted(backend):
    pool = backend.make_batch_pool(1, 1, 1)
    held = pool.acquire(timeout=1.0)
    err, elapsed = timed(lambda: pool.acquire(timeout=SHORT))
    assert isinstance(err, QueueTimeoutError) and isinstance(err, TimeoutError)
    assert SHORT * 0.95 <= elapsed < SHORT + WAKE_BOUND
    assert pool.refcount(held) == 1
    assert pool.stats().allocations == 1


@pytest.mark.parametrize("timeout", [-1, float("nan"), "1"])
def test_pool_bad_timeout_is_config_error(backend, timeout):
    pool = backend.make_batch_pool(1, 1, 1)
    with pytest.raises(ConfigError):
        pool.acquire(timeout=timeout)
    assert pool.available == 1


def test_pool_stats_count_hits_waits_and_misses(backend):
    pool = backend.make_batch_pool(1, 1, 1)
    first = pool.acquire(timeout=1.0)  # served at once: a hit
    assert pool.try_acquire() is None  # a miss
    waiter = Worker(lambda: pool.acquire(timeout=JOIN))  # must wait: not a hit
    time.sleep(BLOCKED)
    assert waiter.thread.is_alive()
    pool.release(first)
    waiter.join()
    assert waiter.error is None
    pool.release(waiter.result)
    assert pool.stats() == PoolStats(allocations=2, releases=2, hits=1, misses=1)


def test_pool_waiter_wakes_on_release(backend):
    pool = backend.make_batch_pool(2, 1, 1)
    held = [pool.acquire(timeout=1.0) for _ in range(2)]
    waiter = Worker(lambda: pool.acquire(timeout=JOIN))
    time.sleep(BLOCKED)
    assert waiter.thread.is_alive(), "acquire returned from an exhausted pool"
    released_at = time.monotonic()
    pool.release(held[1])
    waiter.join()
    assert waiter.error is None
    assert waiter.result.slot == held[1].slot
    assert pool.refcount(waiter.result) == 1
    assert waiter.finished_at - released_at < WAKE_BOUND


@pytest.mark.parametrize("with_timeout", [True, False], ids=["timeout", "forever"])
def test_pool_waiters_wake_on_close(backend, with_timeout):
    pool = backend.make_batch_pool(1, 1, 1)
    held = pool.acquire(timeout=1.0)
    timeout = JOIN if with_timeout else None
    waiters = [Worker(lambda: pool.acquire(timeout=timeout)) for _ in range(3)]
    assert_close_wakes(waiters, pool.close)
    assert pool.refcount(held) == 1


def test_pool_closed_refuses_acquire_but_accepts_release(backend):
    pool = backend.make_batch_pool(2, 1, 1)
    held = pool.acquire(timeout=1.0)
    pool.close()
    pool.close()  # idempotent
    assert pool.closed is True
    with pytest.raises(QueueClosedError):
        pool.acquire(timeout=1.0)
    with pytest.raises(QueueClosedError):
        pool.try_acquire()
    pool.retain(held)
    pool.release(held)
    pool.release(held)
    assert pool.available == 2
    with pytest.raises(RefCountError):
        pool.release(held)


def test_pool_holder_writes_persist_for_the_loan(backend):
    pool = backend.make_batch_pool(2, 2, 3)
    a, b = pool.acquire(timeout=1.0), pool.acquire(timeout=1.0)
    a.batch.input_ids[...] = 7
    a.batch.mask[0, 2] = 0
    assert (a.batch.input_ids == 7).all() and a.batch.mask[0, 2] == 0
    assert not b.batch.input_ids.any() and (b.batch.mask == 1).all()


def test_pool_handles_are_frozen(backend):
    pool = backend.make_batch_pool(1, 1, 1)
    item = pool.acquire(timeout=1.0)
    with pytest.raises((AttributeError, TypeError)):
        item.slot = 5  # type: ignore[misc]
    assert item.slot == 0


def test_pool_stress(backend):
    """4 threads x 500 acquire/retain/release rounds on a pool of 3."""
    threads, rounds, size = 4, 500, 3
    pool = backend.make_batch_pool(size, 2, 4)

    def work(tid: int) -> int:
        clashes = 0
        for r in range(rounds):
            item = pool.acquire(timeout=JOIN)
            ids = item.batch.input_ids
            ids[...] = tid
            if r % 3 == 0:
                pool.retain(item)
                assert pool.refcount(item) == 2
                pool.release(item)
            assert pool.refcount(item) == 1
            time.sleep(0)  # let another thread run while we hold the slot
            clashes += int((ids != tid).any())  # someone else holds our slot
            pool.release(item)
            assert pool.refcount(item) == 0
        return clashes

    workers = [Worker(lambda t=t: work(t)) for t in range(threads)]
    for w in workers:
        w.join(timeout=15.0)
        assert w.error is None, w.error
        assert w.result == 0, "two threads held the same slot at once"
    stats = pool.stats()
    assert pool.available == size
    assert stats.allocations == threads * rounds
    assert stats.releases == threads * rounds
    assert 0 < stats.hits <= stats.allocations
    assert stats.misses == 0
