"""BatchQueue and BatchPool of the reference backend (spec: ``cllm_spec.batching``).

Both are monitors: one lock guards all state, and every blocking call waits on a
``threading.Condition`` in a loop that re-checks its predicate (wakeups can be
spurious or stolen by another thread) against a ``time.monotonic`` deadline.
``close`` broadcasts, so nothing stays blocked on a queue or pool that is shut.
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
    while not ready():
        if deadline is None:
            cond.wait()
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise QueueTimeoutError(f"{what}: timed out after {timeout} s")
        cond.wait(remaining)
    return True


# ------------------------------------------------------------------- queue ----
class _BatchQueue:
    """Bounded MPMC FIFO: a deque under one lock with two conditions."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[Any] = deque()
        self._closed = False
        self._lock = threading.Lock()
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

    def _push(self, item: Any) -> None:
        self._items.append(item)
        self._not_empty.notify()

    def _pop(self) -> Any:
        item = self._items.popleft()
        self._not_full.notify()
        return item

    def put(self, item: Any, timeout: float | None = None) -> None:
        validate_queue_item(item)
        timeout = validate_timeout(timeout)
        with self._lock:
            _wait_for(self._not_full, self._has_room, timeout, "put")
            if self._closed:
                raise QueueClosedError("put: the queue is closed")
            self._push(item)

    def try_put(self, item: Any) -> bool:
        validate_queue_item(item)
        with self._lock:
            if self._closed:
                raise QueueClosedError("try_put: the queue is closed")
            if len(self._items) >= self._capacity:
                return False
            self._push(item)
            return True

    def get(self, timeout: float | None = None) -> Any:
        timeout = validate_timeout(timeout)
        with self._lock:
            _wait_for(self._not_empty, self._has_item, timeout, "get")
            if not self._items:
                raise QueueClosedError("get: the queue is closed and drained")
            return self._pop()

    def try_get(self) -> Any | None:
        with self._lock:
            if self._items:
                return self._pop()
            if self._closed:
                raise QueueClosedError("try_get: the queue is closed and drained")
            return None

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
        self._closed = False
        self._allocations = self._releases = self._hits = self._misses = 0
        self._lock = threading.Lock()
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

    def _lend(self) -> _PooledBatch:
        slot = self._free.popleft()
        self._refcount[slot] = 1
        self._allocations += 1
        return _PooledBatch(self._batches[slot], slot, self._generation[slot], self)

    def _has_slot(self) -> bool:
        return self._closed or bool(self._free)

    def acquire(self, timeout: float | None = None) -> _PooledBatch:
        timeout = validate_timeout(timeout)
        with self._lock:
            waited = _wait_for(self._slot_freed, self._has_slot, timeout, "acquire")
            if self._closed:
                raise QueueClosedError("acquire: the pool is closed")
            self._hits += not waited
            return self._lend()

    def try_acquire(self) -> _PooledBatch | None:
        with self._lock:
            if self._closed:
                raise QueueClosedError("try_acquire: the pool is closed")
            if not self._free:
                self._misses += 1
                return None
            self._hits += 1
            return self._lend()

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
            self._refcount[slot] -= 1
            if self._refcount[slot] == 0:
                # A new generation makes every handle of this loan stale.
                self._generation[slot] += 1
                self._free.append(slot)
                self._releases += 1
                self._slot_freed.notify()

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
