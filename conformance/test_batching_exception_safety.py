"""Conformance of BatchQueue and BatchPool when a call raises.

Spec: ``cllm_spec.batching``. Every backend is held to "a call that raises
leaves the queue unchanged", with exceptions injected at every point of a call
and with signals; the pool's acquire, release and retain likewise.
"""

from __future__ import annotations

import itertools
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from cllm_spec.batching import PUT_TOOK_EFFECT
from cllm_spec.errors import QueueTimeoutError
from conformance.batching_helpers import JOIN, Worker

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
