"""Conformance of BatchQueue, the bounded FIFO queue between threads.

Spec: ``cllm_spec.batching``. Capacity and timeout arguments, FIFO order and
length, try_put and try_get, timeouts, blocked calls woken by put, get and
close, draining after close, and a many-producer many-consumer stress run.
``test_seedNN_*`` is the equivalent of test NN of the original
``tests/unit/test_batch.c``.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    QueueClosedError,
    QueueTimeoutError,
)
from cllm_spec.protocols import Batch
from conformance.batching_helpers import (
    BLOCKED,
    JOIN,
    SHORT,
    WAKE_BOUND,
    Worker,
    assert_close_wakes,
    timed,
)

CAPACITIES = (1, 3, 16)


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
    assert_close_wakes(getters, q.close)


@pytest.mark.parametrize("with_timeout", [True, False], ids=["timeout", "forever"])
def test_queue_close_wakes_blocked_putters(backend, with_timeout):
    q = full_queue(backend, 1)
    timeout = JOIN if with_timeout else None
    putters = [Worker(lambda i=i: q.put(f"p{i}", timeout=timeout)) for i in range(3)]
    assert_close_wakes(putters, q.close)
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
