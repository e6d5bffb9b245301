"""Conformance of BatchQueue and BatchPool (spec: ``cllm_spec.batching``).

Every blocking call in these tests carries a timeout and every thread is joined
with a timeout followed by an assertion that it finished, so a deadlock in a
backend fails the test instead of hanging the suite. Tests named ``test_seedNN_*``
are the equivalents of test NN of the original ``tests/unit/test_batch.c``. The
last section holds every backend to "a call that raises leaves the queue
unchanged", with injected exceptions and with signals.
"""

from __future__ import annotations

import itertools
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from cllm_spec.batching import PUT_TOOK_EFFECT
from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    QueueClosedError,
    QueueTimeoutError,
    RefCountError,
)
from cllm_spec.protocols import Batch, PoolStats

CAPACITIES = (1, 3, 16)
POOL_SIZES = (1, 3, 5)
JOIN = 5.0  # seconds a thread may take to finish after it has been unblocked
SHORT = 0.1  # seconds of a timeout that is expected to expire
WAKE_BOUND = 2.0  # a blocked thread must wake this soon after close/put/release
BLOCKED = 0.15  # how long we let a thread sit in a blocking call before unblocking


class Worker:
    """A daemon thread that records the result or the exception of ``fn``."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # re-checked by the test
            self.error = exc
        self.finished_at = time.monotonic()

    def join(self, timeout: float = JOIN) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "thread still blocked: deadlock or no wakeup"


def timed(fn: Callable[[], Any]) -> tuple[BaseException | None, float]:
    """Run ``fn`` in a thread; return (the exception it raised or None, seconds).

    The thread keeps the test from hanging on a backend that ignores timeouts.
    """
    start = time.monotonic()
    worker = Worker(fn)
    worker.join()
    return worker.error, worker.finished_at - start


def full_queue(backend, capacity: int):
    q = backend.make_batch_queue(capacity)
    for i in range(capacity):
        assert q.try_put(i)
    return q


# =================================================================== queue ====
@pytest.mark.parametrize(
    "capacity", [0, -1, 2.0, True, "4", None, 2**24 + 1, 2**63, 2**64, np.zeros(1)]
)
def test_queue_rejects_bad_capacity(backend, capacity):
    with pytest.raises(ConfigError):
        backend.make_batch_queue(capacity)


@pytest.mark.parametrize("capacity", CAPACITIES)
def test_queue_starts_empty_and_open(backend, capacity):
    q = backend.make_batch_queue(capacity)
    assert q.capacity == capacity
    assert len(q) == 0
    assert q.closed is False
    assert q.try_get() is None


@pytest.mark.parametrize("capacity", CAPACITIES)
def test_queue_fifo_order(backend, capacity):
    q = backend.make_batch_queue(capacity)
    out = []
    for i in range(3 * capacity + 2):  # interleave so the order crosses wraparound
        q.put(i, timeout=1.0)
        if len(q) == capacity:
            out.append(q.get(timeout=1.0))
    while len(q):
        out.append(q.get(timeout=1.0))
    assert out == list(range(3 * capacity + 2))


@pytest.mark.parametrize("capacity", CAPACITIES)
def test_queue_try_put_false_when_full(backend, capacity):
    q = full_queue(backend, capacity)
    assert len(q) == capacity
    assert q.try_put("extra") is False
    assert len(q) == capacity
    assert q.try_get() == 0
    assert q.try_put("extra") is True
    drained = [q.try_get() for _ in range(capacity)]
    assert drained == [*range(1, capacity), "extra"]


@pytest.mark.parametrize("capacity", CAPACITIES)
def test_queue_len_tracks_puts_and_gets(backend, capacity):
    q = backend.make_batch_queue(capacity)
    lengths = []
    for i in range(capacity):
        q.put(i, timeout=1.0)
        lengths.append(len(q))
    for _ in range(capacity):
        q.get(timeout=1.0)
        lengths.append(len(q))
    assert lengths == [*range(1, capacity + 1), *range(capacity - 1, -1, -1)]


def test_seed10_queue_capacity10_five_try_put_five_try_get(backend):
    # test_batch.c #10: capacity 10 -> empty; 5 try_enqueue succeed; size 5;
    # 5 try_dequeue succeed (in order); empty again.
    q = backend.make_batch_queue(10)
    assert len(q) == 0
    assert all(q.try_put(f"batch{i}") for i in range(5))
    assert len(q) == 5
    assert [q.try_get() for _ in range(5)] == [f"batch{i}" for i in range(5)]
    assert len(q) == 0
    assert q.try_get() is None


def test_queue_passes_items_by_reference(backend):
    q = backend.make_batch_queue(2)
    ids = np.arange(6, dtype=np.int32).reshape(2, 3)
    batch = Batch(ids, ids + 1, np.ones_like(ids))
    q.put(batch, timeout=1.0)
    assert q.get(timeout=1.0) is batch
    assert np.array_equal(batch.input_ids, np.arange(6).reshape(2, 3))


def test_queue_none_item_is_dtype_error(backend):
    q = backend.make_batch_queue(2)
    with pytest.raises(DTypeError):
        q.put(None, timeout=0.1)
    with pytest.raises(DTypeError):
        q.try_put(None)
    assert len(q) == 0


@pytest.mark.parametrize(
    "timeout",
    [-0.01, -1, float("nan"), float("inf"), "1", True, 1e10, 1e300, 2**63]
    + [pytest.param(10**400, id="10**400")],
)
def test_queue_bad_timeout_is_config_error(backend, timeout):
    q = backend.make_batch_queue(1)
    with pytest.raises(ConfigError):
        q.put(1, timeout=timeout)
    assert len(q) == 0
    q.put(2, timeout=1.0)
    with pytest.raises(ConfigError):
        q.get(timeout=timeout)
    assert len(q) == 1


@pytest.mark.parametrize("capacity", CAPACITIES)
def test_queue_get_times_out_on_empty(backend, capacity):
    q = backend.make_batch_queue(capacity)
    err, elapsed = timed(lambda: q.get(timeout=SHORT))
    assert isinstance(err, QueueTimeoutError) and isinstance(err, TimeoutError)
    assert SHORT * 0.95 <= elapsed < SHORT + WAKE_BOUND


@pytest.mark.parametrize("capacity", CAPACITIES)
def test_queue_put_times_out_on_full(backend, capacity):
    q = full_queue(backend, capacity)
    err, elapsed = timed(lambda: q.put("late", timeout=SHORT))
    assert isinstance(err, QueueTimeoutError)
    assert SHORT * 0.95 <= elapsed < SHORT + WAKE_BOUND
    assert len(q) == capacity
    assert [q.get(timeout=1.0) for _ in range(capacity)] == list(range(capacity))


def test_queue_zero_timeout_does_not_wait(backend):
    q = backend.make_batch_queue(1)
    err, elapsed = timed(lambda: q.get(timeout=0))
    assert isinstance(err, QueueTimeoutError) and elapsed < 1.0
    q.put("a", timeout=0)  # room: succeeds without waiting
    err, elapsed = timed(lambda: q.put("b", timeout=0))
    assert isinstance(err, QueueTimeoutError) and elapsed < 1.0
    assert q.get(timeout=0) == "a"


def test_queue_blocked_get_wakes_on_put(backend):
    q = backend.make_batch_queue(2)
    getter = Worker(lambda: q.get(timeout=JOIN))
    time.sleep(BLOCKED)
    assert getter.thread.is_alive(), "get returned on an empty queue"
    put_at = time.monotonic()
    q.put("item", timeout=1.0)
    getter.join()
    assert getter.error is None and getter.result == "item"
    assert getter.finished_at - put_at < WAKE_BOUND


def test_queue_blocked_put_wakes_on_get(backend):
    q = full_queue(backend, 2)
    putter = Worker(lambda: q.put("late", timeout=JOIN))
    time.sleep(BLOCKED)
    assert putter.thread.is_alive(), "put returned on a full queue"
    got_at = time.monotonic()
    assert q.get(timeout=1.0) == 0
    putter.join()
    assert putter.error is None
    assert putter.finished_at - got_at < WAKE_BOUND
    assert [q.get(timeout=1.0) for _ in range(2)] == [1, "late"]


def test_queue_put_after_close_raises(backend):
    q = backend.make_batch_queue(4)
    q.put("a", timeout=1.0)
    q.close()
    assert q.closed is True
    with pytest.raises(QueueClosedError):
        q.put("b", timeout=1.0)
    with pytest.raises(QueueClosedError):
        q.try_put("b")
    assert len(q) == 1


@pytest.mark.parametrize("capacity", CAPACITIES)
def test_queue_get_drains_after_close_then_raises(backend, capacity):
    q = full_queue(backend, capacity)
    q.close()
    half = capacity // 2
    got = [q.get(timeout=1.0) for _ in range(half)]
    got += [q.try_get() for _ in range(capacity - half)]
    assert got == list(range(capacity))
    with pytest.raises(QueueClosedError):
        q.get(timeout=1.0)
    with pytest.raises(QueueClosedError):
        q.try_get()
    with pytest.raises(QueueClosedError):
        q.get()  # no timeout: must raise at once, not block


def test_queue_close_is_idempotent(backend):
    q = backend.make_batch_queue(2)
    q.put("a", timeout=1.0)
    q.close()
    q.close()
    assert q.closed is True
    assert q.get(timeout=1.0) == "a"
    with pytest.raises(QueueClosedError):
        q.get(timeout=1.0)


@pytest.mark.parametrize("with_timeout", [True, False], ids=["timeout", "forever"])
def test_queue_close_wakes_blocked_getters(backend, with_timeout):
    q = backend.make_batch_queue(2)
    timeout = JOIN if with_timeout else None
    getters = [Worker(lambda: q.get(timeout=timeout)) for _ in range(3)]
    time.sleep(BLOCKED)
    assert all(g.thread.is_alive() for g in getters)
    closed_at = time.monotonic()
    q.close()
    for g in getters:
        g.join()
        assert isinstance(g.error, QueueClosedError), g.error
        assert g.finished_at - closed_at < WAKE_BOUND


@pytest.mark.parametrize("with_timeout", [True, False], ids=["timeout", "forever"])
def test_queue_close_wakes_blocked_putters(backend, with_timeout):
    q = full_queue(backend, 1)
    timeout = JOIN if with_timeout else None
    putters = [Worker(lambda i=i: q.put(f"p{i}", timeout=timeout)) for i in range(3)]
    time.sleep(BLOCKED)
    assert all(p.thread.is_alive() for p in putters)
    closed_at = time.monotonic()
    q.close()
    for p in putters:
        p.join()
        assert isinstance(p.error, QueueClosedError), p.error
        assert p.finished_at - closed_at < WAKE_BOUND
    assert q.get(timeout=1.0) == 0  # the item queued before close is still there
    with pytest.raises(QueueClosedError):
        q.get(timeout=1.0)


def test_queue_mpmc_stress(backend):
    """4 producers x 4 consumers x 1000 items through a queue of capacity 8."""
    producers, consumers, per_producer = 4, 4, 1000
    q = backend.make_batch_queue(8)
    start = time.monotonic()

    def produce(p: int) -> None:
        for i in range(per_producer):
            q.put((p, i), timeout=JOIN)

    def consume() -> list[tuple[int, int]]:
        seen = []
        while True:
            try:
                seen.append(q.get(timeout=JOIN))
            except QueueClosedError:
                return seen

    readers = [Worker(consume) for _ in range(consumers)]
    writers = [Worker(lambda p=p: produce(p)) for p in range(producers)]
    for w in writers:
        w.join(timeout=10.0)
        assert w.error is None, w.error
    q.close()
    for r in readers:
        r.join(timeout=10.0)
        assert r.error is None, r.error
    elapsed = time.monotonic() - start

    received = [item for r in readers for item in r.result]
    expected = [(p, i) for p in range(producers) for i in range(per_producer)]
    assert Counter(received) == Counter(expected), "lost or duplicated items"
    for r in readers:
        for p in range(producers):
            mine = [i for pp, i in r.result if pp == p]
            assert mine == sorted(mine), f"producer {p}'s items arrived out of order"
    assert len(q) == 0
    assert elapsed < 15.0, f"stress took {elapsed:.1f} s"


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
    time.sleep(BLOCKED)
    assert all(w.thread.is_alive() for w in waiters)
    closed_at = time.monotonic()
    pool.close()
    for w in waiters:
        w.join()
        assert isinstance(w.error, QueueClosedError), w.error
        assert w.finished_at - closed_at < WAKE_BOUND
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


# ====================================================== exception safety ====
# Exception safety of BatchQueue and BatchPool (spec: ``cllm_spec.batching``).
#
# "A call that raises leaves the queue unchanged": no item is lost or delivered
# twice, and every later call works. Two ways to raise inside a call:
#
# - injection: a profile hook raises at the k-th Python function entry or
#   return from a C function inside the operation, for every k until the call
#   completes. These are where CPython runs a signal handler, which is how a
#   KeyboardInterrupt (or any exception a handler raises) enters a blocked or
#   busy call. Frames of ``threading`` itself are left out: its ``Condition`` is
#   not exception safe at every such point, and that is the standard library's
#   concern, not the spec's.
# - signals: a SIGALRM handler raises while a call blocks, and a periodic timer
#   interrupts a producer/consumer run thousands of times.
#
# The pool's ``release`` and ``retain`` never block: an exception leaves them
# either undone or done completely.
LIMIT = 5000  # injection points of one call; more means a call never completes
LATE = 0.02  # seconds before a helper thread unblocks the call under test


class Injected(BaseException):
    """Stands for KeyboardInterrupt: a BaseException, not an Exception."""


def run_injected(fn: Callable[[], Any], k: int) -> tuple[bool, Any]:
    """Run ``fn()`` raising Injected at its k-th injection point.

    Returns (True, None) if the injection happened, else (False, result).
    """
    count = 0

    def hook(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event not in ("call", "c_return"):
            return
        if frame.f_code.co_filename == threading.__file__:
            return
        count += 1
        if count == k:
            sys.setprofile(None)
            raise Injected(f"injection point {k}: {event} in {frame.f_code.co_name}")

    try:
        sys.setprofile(hook)
        return False, fn()
    except Injected:
        return True, None
    finally:
        sys.setprofile(None)


def every_injection(
    setup: Callable[[], Any],
    call: Callable[[Any], Any],
    raised: Callable[[Any], None],
    done: Callable[[Any, Any], None],
) -> int:
    """For k = 1, 2, ...: a fresh state, ``call`` injected at point k, then the
    check of an interrupted call (``raised``) or of the completed one (``done``,
    which ends the walk). Returns the number of points walked."""
    for k in itertools.count(1):
        assert k < LIMIT, "the call never completed"
        state = setup()
        was_raised, result = run_injected(lambda s=state: call(s), k)
        if was_raised:
            raised(state)
        else:
            done(state, result)
            return k
    raise AssertionError("unreachable")


def drain(q) -> list[Any]:
    items = []
    while (item := q.try_get()) is not None:
        items.append(item)
    return items


def still_works(q) -> None:
    q.put("later", timeout=JOIN)
    assert q.get(timeout=JOIN) == "later"
    assert len(q) == 0


def queue_with(backend, items, capacity: int = 3):
    q = backend.make_batch_queue(capacity)
    for item in items:
        assert q.try_put(item)
    return q


# =================================================================== queue ====
@pytest.mark.parametrize("how", ["put", "try_put"])
def test_interrupted_put_leaves_the_queue_unchanged(backend, how):
    def call(q):
        return q.put("x", timeout=JOIN) if how == "put" else q.try_put("x")

    def raised(q):
        assert drain(q) == ["a", "b"]
        still_works(q)

    def done(q, result):
        assert drain(q) == ["a", "b", "x"]
        still_works(q)

    assert every_injection(lambda: queue_with(backend, "ab"), call, raised, done) > 1


@pytest.mark.parametrize("how", ["get", "try_get"])
def test_interrupted_get_leaves_the_queue_unchanged(backend, how):
    def call(q):
        return q.get(timeout=JOIN) if how == "get" else q.try_get()

    def raised(q):
        assert drain(q) == ["a", "b"]
        still_works(q)

    def done(q, result):
        assert result == "a"
        assert drain(q) == ["b"]
        still_works(q)

    assert every_injection(lambda: queue_with(backend, "ab"), call, raised, done) > 1


def test_interrupted_put_on_a_full_queue_that_times_out(backend):
    def call(q):
        with pytest.raises(QueueTimeoutError):
            q.put("x", timeout=0.001)

    def check(q, result=None):
        assert drain(q) == ["a", "b", "c"]
        still_works(q)

    every_injection(lambda: queue_with(backend, "abc"), call, check, check)


def test_interrupted_blocking_get_loses_no_late_item(backend):
    # the item arrives while (or after) the get waits: it is taken exactly once
    def setup():
        q = backend.make_batch_queue(2)
        return q, Worker(lambda: (time.sleep(LATE), q.put("late", timeout=JOIN)))

    def raised(state):
        q, producer = state
        producer.join()
        assert producer.error is None
        assert drain(q) == ["late"]
        still_works(q)

    def done(state, result):
        q, producer = state
        producer.join()
        assert result == "late"
        assert drain(q) == []
        still_works(q)

    every_injection(setup, lambda s: s[0].get(timeout=JOIN), raised, done)


def test_interrupted_blocking_put_adds_nothing(backend):
    def setup():
        q = queue_with(backend, "abc")
        return q, Worker(lambda: (time.sleep(LATE), q.get(timeout=JOIN))[1])

    def raised(state):
        q, consumer = state
        consumer.join()
        assert consumer.result == "a"
        assert drain(q) == ["b", "c"]
        still_works(q)

    def done(state, result):
        q, consumer = state
        consumer.join()
        assert consumer.result == "a"
        assert drain(q) == ["b", "c", "x"]
        still_works(q)

    every_injection(setup, lambda s: s[0].put("x", timeout=JOIN), raised, done)


# ==================================================================== pool ====
def pool_state(pool, handles) -> tuple[Any, ...]:
    return pool.available, pool.stats(), tuple(pool.refcount(h) for h in handles)


@pytest.mark.parametrize("how", ["acquire", "try_acquire"])
def test_interrupted_acquire_leaves_the_pool_unchanged(backend, how):
    def setup():
        pool = backend.make_batch_pool(3, 1, 2)
        held = [pool.acquire(timeout=JOIN)]
        return pool, held, pool_state(pool, held)

    def call(state):
        pool = state[0]
        return pool.acquire(timeout=JOIN) if how == "acquire" else pool.try_acquire()

    def raised(state):
        pool, held, before = state
        assert pool_state(pool, held) == before
        pool.release(held[0])
        assert pool.available == 3
        handles = [pool.acquire(timeout=JOIN) for _ in range(3)]  # all of them
        assert sorted(h.slot for h in handles) == [0, 1, 2]

    def done(state, handle):
        pool, held, before = state
        assert pool.refcount(handle) == 1 and pool.available == 1
        assert pool.stats().allocations == before[1].allocations + 1
        pool.release(handle)
        pool.release(held[0])
        assert pool.available == 3

    every_injection(setup, call, raised, done)


def test_interrupted_blocking_acquire_loses_no_slot(backend):
    def setup():
        pool = backend.make_batch_pool(1, 1, 2)
        held = pool.acquire(timeout=JOIN)
        return pool, Worker(lambda: (time.sleep(LATE), pool.release(held)))

    def raised(state):
        pool, releaser = state
        releaser.join()
        assert releaser.error is None and pool.available == 1
        stats = pool.stats()
        assert (stats.allocations, stats.releases) == (1, 1)
        pool.release(pool.acquire(timeout=JOIN))

    def done(state, handle):
        pool, releaser = state
        releaser.join()
        assert pool.refcount(handle) == 1 and pool.available == 0
        pool.release(handle)
        assert pool.available == 1

    every_injection(setup, lambda s: s[0].acquire(timeout=JOIN), raised, done)


@pytest.mark.parametrize("count", [1, 2], ids=["last", "retained"])
def test_interrupted_release_is_undone_or_done(backend, count):
    def setup():
        pool = backend.make_batch_pool(2, 1, 2)
        handle = pool.acquire(timeout=JOIN)
        for _ in range(count - 1):
            pool.retain(handle)
        return pool, handle

    def check(state, result=None):
        pool, handle = state
        undone = (pool.refcount(handle), pool.available) == (count, 1)
        done = (pool.refcount(handle), pool.available) == (
            count - 1,
            1 + (count == 1),
        )
        assert undone or done
        assert pool.stats().releases == (1 if done and count == 1 else 0)
        for _ in range(pool.refcount(handle)):
            pool.release(handle)
        assert pool.available == 2

    every_injection(setup, lambda s: s[0].release(s[1]), check, check)


# ================================================================= signals ====
class Interrupted(BaseException):
    """What the SIGALRM handler raises (as Ctrl-C raises KeyboardInterrupt)."""


@contextmanager
def alarms(first: float, every: float = 0.0) -> Iterator[list[bool]]:
    """SIGALRM after ``first`` s (then every ``every`` s); the handler raises
    Interrupted while the yielded flag ``armed[0]`` is True, and disarms it.

    A second exception inside the handler of the first (two Ctrl-C in a row)
    is beyond what any call can promise, so the flag allows one per call.
    """
    if not hasattr(signal, "setitimer"):
        pytest.skip("signal.setitimer is not available on this platform")
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run only in the main thread")
    armed = [True]

    def handler(signum: int, frame: Any) -> None:
        if armed[0]:
            armed[0] = False  # one exception per call: the contract's case
            raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, first, every)
    try:
        yield armed
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, old)


def test_signal_during_a_blocked_get_leaves_the_queue_working(backend):
    q = backend.make_batch_queue(2)
    with alarms(0.05), pytest.raises(Interrupted):
        q.get(timeout=JOIN)
    assert len(q) == 0
    q.put(1, timeout=JOIN)
    assert q.get(timeout=JOIN) == 1


def test_signal_during_a_blocked_acquire_leaves_the_pool_unchanged(backend):
    pool = backend.make_batch_pool(1, 1, 2)
    held = pool.acquire(timeout=JOIN)
    before = pool.stats()
    with alarms(0.05), pytest.raises(Interrupted):
        pool.acquire(timeout=JOIN)
    assert pool.stats() == before and pool.available == 0
    pool.release(held)
    pool.release(pool.acquire(timeout=JOIN))


N_ITEMS = 3000


def test_signals_lose_and_repeat_no_item_of_a_consumer(backend):
    q = backend.make_batch_queue(4)
    producer = Worker(lambda: [q.put(i, timeout=JOIN) for i in range(N_ITEMS)])
    got: list[int] = []
    interrupts = 0
    with alarms(0.0005, 0.0007) as armed:
        while len(got) < N_ITEMS:
            try:
                armed[0] = True
                item = q.get(timeout=JOIN)
                armed[0] = False
                got.append(item)
            except Interrupted:
                armed[0] = False
                interrupts += 1
    producer.join()
    assert producer.error is None
    assert got == list(range(N_ITEMS))  # one consumer: FIFO, each item once
    assert interrupts > 0 and len(q) == 0


def test_signals_lose_and_repeat_no_item_of_a_producer(backend):
    q = backend.make_batch_queue(4)
    consumer = Worker(lambda: [q.get(timeout=JOIN) for _ in range(N_ITEMS)])
    interrupts = 0
    with alarms(0.0005, 0.0007) as armed:
        i = 0
        while i < N_ITEMS:
            try:
                armed[0] = True
                q.put(i, timeout=JOIN)  # a put that raised did nothing: retry it
                armed[0] = False
                i += 1
            except Interrupted as exc:
                armed[0] = False
                interrupts += 1
                if PUT_TOOK_EFFECT in getattr(exc, "__notes__", ()):
                    i += 1  # too late to take back: the consumer has it
    consumer.join()
    assert consumer.error is None
    assert consumer.result == list(range(N_ITEMS))
    assert interrupts > 0 and len(q) == 0
