"""BatchQueue and BatchPool of the reference backend (spec: ``cllm_spec.batching``).

Both are monitors: one lock guards all state, and every blocking call waits on a
``threading.Condition`` in a loop that re-checks its predicate (wakeups can be
spurious or stolen by another thread) against a ``time.monotonic`` deadline.
``close`` broadcasts, so nothing stays blocked on a queue or pool that is shut.
Every notify is a broadcast too: ``Condition.wait`` interrupted at the wrong
moment leaves a stale entry among its waiters that a single ``notify`` could
wake instead of a live one. The lock is an ``RLock`` because only an RLock can
tell whether this thread holds it, which the wait's exception handler needs.

A call that raises leaves the queue or pool unchanged, whichever step raised,
including a signal handler's exception (KeyboardInterrupt) that CPython raises
at the next call or loop jump of this code. Each change of state is one call
(``append``, ``popleft``) made after the notify it needs: an exception before
it changes nothing, and the handler around it puts back what it changed. The
change is kept in a local, so the handler of the whole call undoes it when the
exception arrives later, as the lock is released. Queue entries are 1-tuples,
so a put can find and remove exactly its own entry.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cllm_spec.batching import (
    PUT_TOOK_EFFECT,
    validate_pool_args,
    validate_queue_capacity,
    validate_queue_item,
    validate_timeout,
)
from cllm_spec.errors import QueueClosedError, QueueTimeoutError, RefCountError
from cllm_spec.protocols import Batch, PoolStats


def _wait_for(
    cond: threading.Condition,
    ready: Callable[[], bool],
    timeout: float | None,
    what: str,
) -> bool:
    """Wait on ``cond`` (held) until ``ready()``; return whether we had to wait.

    Raises QueueTimeoutError once the deadline passes with ``ready()`` still false.
    The predicate is checked before the deadline, so a wakeup that races with the
    timeout still takes the item it was woken for.
    """
    if ready():
        return False
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not ready():
            if deadline is None:
                cond.wait()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QueueTimeoutError(f"{what}: timed out after {timeout} s")
            cond.wait(remaining)
    except BaseException:
        # Condition.wait can raise between releasing the lock and taking it
        # back (a signal handler's exception); the caller's state needs it held
        if not cond._is_owned():  # type: ignore[attr-defined]
            cond.acquire()
        raise
    return True


# ------------------------------------------------------------------- queue ----
class _BatchQueue:
    """Bounded MPMC FIFO: a deque under one lock with two conditions."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[tuple[Any]] = deque()
        self._closed = False
        self._lock = threading.RLock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"BatchQueue({len(self._items)}/{self._capacity}, {state})"

    def _has_room(self) -> bool:
        return self._closed or len(self._items) < self._capacity

    def _has_item(self) -> bool:
        return self._closed or bool(self._items)

    # lock held by the callers of _push and _pop
    def _push(self, entry: tuple[Any]) -> bool:
        self._not_empty.notify_all()
        n = len(self._items)
        try:
            self._items.append(entry)
        except BaseException:
            if len(self._items) > n:
                self._items.pop()
            raise
        return True

    def _pop(self) -> tuple[Any]:
        self._not_full.notify_all()
        n, entry = len(self._items), self._items[0]
        try:
            self._items.popleft()
        except BaseException:
            if len(self._items) < n:
                self._items.appendleft(entry)
            raise
        return entry

    def _cancel(self, entry: tuple[Any]) -> bool:
        """Undo the put of ``entry``; False if a consumer has taken it already."""
        with self._lock:
            for i in range(len(self._items) - 1, -1, -1):
                if self._items[i] is entry:
                    del self._items[i]
                    self._not_full.notify_all()
                    return True
        return False

    def _give_back(self, entry: tuple[Any]) -> None:
        """Undo the get of ``entry``: it returns to the head of the queue."""
        with self._lock:
            self._items.appendleft(entry)
            self._not_empty.notify_all()

    def _put(self, item: Any, timeout: float | None, what: str, wait: bool) -> bool:
        entry, added = (item,), False
        try:
            with self._lock:
                if wait:
                    _wait_for(self._not_full, self._has_room, timeout, what)
                if self._closed:
                    raise QueueClosedError(f"{what}: the queue is closed")
                if len(self._items) >= self._capacity:
                    return False  # try_put only: a wait ends with room or raises
                added = self._push(entry)
        except BaseException as exc:
            if added and not self._cancel(entry):
                exc.add_note(PUT_TOOK_EFFECT)
            raise
        return True

    def put(self, item: Any, timeout: float | None = None) -> None:
        validate_queue_item(item)
        timeout = validate_timeout(timeout)
        self._put(item, timeout, "put", wait=True)

    def try_put(self, item: Any) -> bool:
        validate_queue_item(item)
        return self._put(item, 0.0, "try_put", wait=False)

    def _get(self, timeout: float | None, what: str, wait: bool) -> tuple[Any] | None:
        entry = None
        try:
            with self._lock:
                if wait:
                    _wait_for(self._not_empty, self._has_item, timeout, what)
                if self._items:
                    entry = self._pop()
                elif self._closed:
                    raise QueueClosedError(f"{what}: the queue is closed and drained")
        except BaseException:
            if entry is not None:
                self._give_back(entry)
            raise
        return entry

    def get(self, timeout: float | None = None) -> Any:
        timeout = validate_timeout(timeout)
        entry = self._get(timeout, "get", wait=True)
        assert entry is not None  # a wait ends with an item, or raises
        return entry[0]

    def try_get(self) -> Any | None:
        entry = self._get(0.0, "try_get", wait=False)
        return None if entry is None else entry[0]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()


def make_batch_queue(capacity: int) -> _BatchQueue:
    """A bounded MPMC FIFO holding at most ``capacity`` items."""
    return _BatchQueue(validate_queue_capacity(capacity))


# -------------------------------------------------------------------- pool ----
@dataclass(frozen=True, slots=True, eq=False)
class _PooledBatch:
    """One loan of a pool slot; ``generation`` tells this loan from later ones."""

    batch: Batch = field(repr=False)
    slot: int
    generation: int
    pool: _BatchPool = field(repr=False)


class _BatchPool:
    """Fixed set of preallocated batches with per-loan reference counts."""

    def __init__(self, size: int, batch_size: int, seq_len: int) -> None:
        shape = (batch_size, seq_len)
        self._batches = [
            Batch(
                np.zeros(shape, dtype=np.int32),
                np.zeros(shape, dtype=np.int32),
                np.ones(shape, dtype=np.int32),
            )
            for _ in range(size)
        ]
        self._free: deque[int] = deque(range(size))
        self._refcount = [0] * size
        self._generation = [0] * size
        self._lent_as_hit = [False] * size  # so an undone acquire takes back its hit
        self._closed = False
        self._allocations = self._releases = self._hits = self._misses = 0
        self._lock = threading.RLock()
        self._slot_freed = threading.Condition(self._lock)

    @property
    def size(self) -> int:
        return len(self._batches)

    @property
    def available(self) -> int:
        with self._lock:
            return len(self._free)

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def __repr__(self) -> str:
        return f"BatchPool({len(self._free)}/{len(self._batches)} free)"

    def _lend(self, hit: bool) -> _PooledBatch:
        """Lend the oldest free slot (lock held); popleft is the one change
        that can be interrupted, the counters after it are plain stores."""
        slot = self._free[0]
        handle = _PooledBatch(self._batches[slot], slot, self._generation[slot], self)
        n = len(self._free)
        try:
            self._free.popleft()
        except BaseException:
            if len(self._free) < n:
                self._free.appendleft(slot)
            raise
        self._refcount[slot] = 1
        self._lent_as_hit[slot] = hit
        self._allocations += 1
        self._hits += hit
        return handle

    def _unlend(self, handle: _PooledBatch) -> None:
        """Undo the acquire of ``handle``, which never reached its caller."""
        with self._lock:
            slot = handle.slot
            self._refcount[slot] = 0
            self._allocations -= 1
            self._hits -= self._lent_as_hit[slot]
            self._free.appendleft(slot)
            self._slot_freed.notify_all()

    def _has_slot(self) -> bool:
        return self._closed or bool(self._free)

    def _acquire(
        self, timeout: float | None, what: str, wait: bool
    ) -> _PooledBatch | None:
        handle = None
        try:
            with self._lock:
                waited = False
                if wait:
                    waited = _wait_for(self._slot_freed, self._has_slot, timeout, what)
                if self._closed:
                    raise QueueClosedError(f"{what}: the pool is closed")
                if self._free:
                    handle = self._lend(not waited)
                else:
                    self._misses += 1  # try_acquire only: a wait ends with a slot
        except BaseException:
            if handle is not None:
                self._unlend(handle)
            raise
        return handle

    def acquire(self, timeout: float | None = None) -> _PooledBatch:
        timeout = validate_timeout(timeout)
        handle = self._acquire(timeout, "acquire", wait=True)
        assert handle is not None  # a wait ends with a free slot, or raises
        return handle

    def try_acquire(self) -> _PooledBatch | None:
        return self._acquire(0.0, "try_acquire", wait=False)

    def _live_slot(self, item: object, what: str) -> int:
        """The slot of a handle of this pool whose loan is still outstanding."""
        if not isinstance(item, _PooledBatch) or item.pool is not self:
            raise RefCountError(f"{what}: {type(item).__name__} is not from this pool")
        slot = item.slot
        if item.generation != self._generation[slot] or self._refcount[slot] == 0:
            raise RefCountError(
                f"{what}: slot {slot} was already released (refcount 0); "
                "double release or a stale handle"
            )
        return slot

    def retain(self, item: _PooledBatch) -> None:
        with self._lock:
            self._refcount[self._live_slot(item, "retain")] += 1

    def release(self, item: _PooledBatch) -> None:
        with self._lock:
            slot = self._live_slot(item, "release")
            if self._refcount[slot] > 1:
                self._refcount[slot] -= 1
                return
            # notify first (the waiter runs once we unlock), then the plain
            # stores, then the one call: an exception leaves all or nothing
            self._slot_freed.notify_all()
            self._refcount[slot] = 0
            self._generation[slot] += 1  # every handle of this loan is now stale
            self._releases += 1
            self._free.append(slot)

    def refcount(self, item: _PooledBatch) -> int:
        with self._lock:
            if not isinstance(item, _PooledBatch) or item.pool is not self:
                raise RefCountError(
                    f"refcount: {type(item).__name__} is not from this pool"
                )
            if item.generation != self._generation[item.slot]:
                return 0
            return self._refcount[item.slot]

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(
                self._allocations, self._releases, self._hits, self._misses
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._slot_freed.notify_all()


def make_batch_pool(size: int, batch_size: int, seq_len: int) -> _BatchPool:
    """``size`` preallocated (batch_size, seq_len) int32 batches, lent refcounted."""
    return _BatchPool(*validate_pool_args(size, batch_size, seq_len))
