"""The bounded priority message queue, including a 4 x 4 producer/consumer stress."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    QueueClosedError,
    QueueTimeoutError,
)
from cllm_spec.parallel import MessageQueue, MessageQueueStats, Priority

JOIN = 10.0  # seconds: every thread of these tests must end well before this


def drain(q: MessageQueue) -> list:
    out = []
    while (item := q.try_get()) is not None:
        out.append(item)
    return out


def run_threads(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"


# =========================================================== ordering ====
def test_seed10_priority_order():
    # The original's queue_priority: put NORMAL, LOW, CRITICAL, HIGH ->
    # get CRITICAL, HIGH, NORMAL, LOW.
    q = MessageQueue(10)
    for p in (Priority.NORMAL, Priority.LOW, Priority.CRITICAL, Priority.HIGH):
        assert q.put(p.name, p) is True
    assert drain(q) == ["CRITICAL", "HIGH", "NORMAL", "LOW"]


def test_fifo_within_each_priority_interleaved():
    q = MessageQueue(32)
    order = [1, 0, 3, 1, 2, 0, 3, 1, 2, 2, 0, 3]
    for i, p in enumerate(order):
        q.put((p, i), p)
    got = drain(q)
    # Highest priority first; inside one level, the order of the puts.
    expected = sorted(((p, i) for i, p in enumerate(order)), key=lambda x: -x[0])
    assert got == expected
    assert q.stats() == MessageQueueStats(put=12, got=12, dropped=0, peak=12)


def test_default_priority_is_normal_and_int_levels_work():
    q = MessageQueue(4)
    q.put("n")
    q.put("h", 2)
    q.put("l", 0)
    assert q.count(Priority.NORMAL) == 1 and q.count(2) == 1 and q.count(0) == 1
    assert q.peek() == "h" and len(q) == 3  # peek does not remove
    assert drain(q) == ["h", "n", "l"]
    assert q.peek() is None


def test_seed13_statistics():
    q = MessageQueue(100)
    for i in range(10):
        q.put(i)
    for _ in range(5):
        q.get(timeout=1.0)
    assert q.stats() == MessageQueueStats(put=10, got=5, dropped=0, peak=10)
    assert len(q) == 5


# ============================================================ bounded ====
def test_seed11_drop_when_full():
    q = MessageQueue(3, when_full="drop")
    assert [q.put(i) for i in range(3)] == [True, True, True]
    assert q.put(3, Priority.CRITICAL) is False  # full: dropped, even CRITICAL
    assert q.put(4) is False
    assert len(q) == 3 and q.stats().dropped == 2
    assert drain(q) == [0, 1, 2]  # nothing was evicted
    assert q.put(5) is True


def test_block_when_full_times_out_and_leaves_the_queue_unchanged():
    q = MessageQueue(2)
    q.put("a")
    q.put("b")
    t0 = time.monotonic()
    with pytest.raises(QueueTimeoutError):
        q.put("c", Priority.CRITICAL, timeout=0.05)
    assert 0.04 <= time.monotonic() - t0 < 2.0
    with pytest.raises(QueueTimeoutError):
        q.put("c", timeout=0)  # timeout 0 never waits
    assert drain(q) == ["a", "b"]
    assert q.stats() == MessageQueueStats(put=2, got=2, dropped=0, peak=2)


def test_blocked_put_completes_when_a_consumer_makes_room():
    q = MessageQueue(1)
    q.put("first")
    done = threading.Event()

    def producer():
        q.put("second", timeout=JOIN)
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert not done.wait(0.1)  # still blocked: the queue is full
    assert q.get(timeout=JOIN) == "first"
    t.join(JOIN)
    assert done.is_set() and not t.is_alive()
    assert q.get(timeout=JOIN) == "second"


def test_get_times_out_on_empty():
    q = MessageQueue(1)
    with pytest.raises(QueueTimeoutError):
        q.get(timeout=0.02)
    assert q.try_get() is None


# ============================================================== close ====
def test_close_drains_in_priority_order_then_raises():
    q = MessageQueue(4)
    q.put("low", Priority.LOW)
    q.put("crit", Priority.CRITICAL)
    q.close()
    q.close()  # idempotent
    assert q.closed
    with pytest.raises(QueueClosedError):
        q.put("x")
    assert q.get(timeout=1.0) == "crit"
    assert q.try_get() == "low"
    with pytest.raises(QueueClosedError):
        q.get(timeout=1.0)
    with pytest.raises(QueueClosedError):
        q.try_get()


def test_close_wakes_blocked_consumers_and_producers():
    empty, full = MessageQueue(1), MessageQueue(1)
    full.put("x")
    errors: list[BaseException] = []

    def call(fn):
        try:
            fn()
        except BaseException as exc:  # collected and checked below
            errors.append(exc)

    threads = [
        threading.Thread(target=call, args=(lambda: empty.get(timeout=JOIN),)),
        threading.Thread(target=call, args=(lambda: full.put("y", timeout=JOIN),)),
    ]
    for t in threads:
        t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    empty.close()
    full.close()
    for t in threads:
        t.join(JOIN)
    assert time.monotonic() - t0 < 2.0
    assert len(errors) == 2 and all(isinstance(e, QueueClosedError) for e in errors)
    assert full.get(timeout=1.0) == "x"  # the blocked put did not sneak in


# ============================================================ errors ====
@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"capacity": 0}, ConfigError),
        ({"capacity": 1.5}, ConfigError),
        ({"capacity": 2, "when_full": "evict"}, ConfigError),
    ],
)
def test_bad_construction(kwargs, error):
    with pytest.raises(error):
        MessageQueue(**kwargs)


def test_bad_put_and_get_arguments():
    q = MessageQueue(2)
    with pytest.raises(DTypeError):
        q.put(None)
    for bad in (4, -1, "HIGH", True, 1.0):
        with pytest.raises(ConfigError):
            q.put("x", bad)
    for bad in (-1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ConfigError):
            q.put("x", timeout=bad)
        with pytest.raises(ConfigError):
            q.get(timeout=bad)
    assert len(q) == 0 and q.stats().put == 0


# ============================================================ stress ====
@pytest.mark.parametrize("when_full", ["block", "drop"])
def test_stress_4_producers_4_consumers(when_full):
    n_producers, n_consumers, per_producer = 4, 4, 100
    q = MessageQueue(8, when_full=when_full)
    accepted: list[list[tuple[int, int, int]]] = [[] for _ in range(n_producers)]
    received: list[list[tuple[int, int, int]]] = [[] for _ in range(n_consumers)]

    def producer(p: int) -> None:
        for i in range(per_producer):
            prio = (i * 7 + p) % 4
            item = (p, prio, i)
            if q.put(item, prio, timeout=JOIN):
                accepted[p].append(item)

    def consumer(c: int) -> None:
        while True:
            try:
                received[c].append(q.get(timeout=JOIN))
            except QueueClosedError:
                return

    producers = [threading.Thread(target=producer, args=(p,)) for p in range(4)]
    consumers = [threading.Thread(target=consumer, args=(c,)) for c in range(4)]
    for t in consumers:
        t.start()
    run_threads(producers)
    q.close()
    for t in consumers:
        t.join(JOIN)
    assert not any(t.is_alive() for t in consumers)

    sent = sorted(x for items in accepted for x in items)
    got = sorted(x for items in received for x in items)
    assert got == sent  # every accepted item exactly once, nothing invented
    stats = q.stats()
    assert stats.put == stats.got == len(sent)
    assert stats.dropped == n_producers * per_producer - len(sent)
    assert stats.peak <= 8 and len(q) == 0
    if when_full == "block":
        assert len(sent) == n_producers * per_producer and stats.dropped == 0
    # FIFO within one priority: each consumer sees one producer's items of one
    # priority in the order they were put.
    for items in received:
        last: dict[tuple[int, int], int] = defaultdict(lambda: -1)
        for p, prio, i in items:
            assert i > last[(p, prio)]
            last[(p, prio)] = i
