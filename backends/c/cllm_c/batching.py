"""BatchQueue and BatchPool on the pthread monitors of ``csrc/batching.c``.

The contract is in :mod:`cllm_spec.batching`. C owns the synchronization: the
queue's order, capacity and close, the pool's free list, refcounts and
generations, and every blocking wait (with the GIL released, so the other
Python threads run). Python keeps what C cannot hold: the queued objects
(C queues integer tokens that index them) and the pool's batch arrays.

A wait with no timeout is made of bounded C waits, so Ctrl-C still reaches a
thread blocked in ``get`` or ``acquire`` between two of them.

A call that raises leaves the queue or pool unchanged, whichever step raised:
C reports through out-parameters, written under its lock, whether it took or
queued a token or lent a slot, and the ``except BaseException`` handlers undo
exactly that (``cllm_queue_unget``, ``cllm_queue_cancel``,
``cllm_pool_unacquire``). A get takes its item from ``_items`` by a subscript
and deletes it after the ``try`` block: neither is a call, so no signal handler
runs between C handing over the token and the caller receiving the item.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cllm_c._lib import check, ffi, lib
from cllm_spec.batching import (
    PUT_TOOK_EFFECT,
    validate_pool_args,
    validate_queue_capacity,
    validate_queue_item,
    validate_timeout,
)
from cllm_spec.errors import QueueTimeoutError, RefCountError
from cllm_spec.protocols import Batch, PoolStats

#: Longest single C wait of a blocking call (seconds).
WAIT_SLICE = 0.25
#: Never a token (tokens count up from 0): "C has not handed one over".
_NO_TOKEN = 2**64 - 1


def _blocking(call: Callable[[float], int], timeout: float | None, what: str) -> None:
    """Run ``call(slice_timeout) -> status`` until it succeeds or time is up."""
    if timeout is not None and timeout <= WAIT_SLICE:
        check(call(timeout), what)
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = WAIT_SLICE if deadline is None else deadline - time.monotonic()
        status = call(max(0.0, min(WAIT_SLICE, remaining)))
        if status != lib.CLLM_ERR_TIMEOUT or (
            deadline is not None and remaining <= WAIT_SLICE
        ):
            if status == lib.CLLM_ERR_TIMEOUT:
                raise QueueTimeoutError(f"{what}: timed out after {timeout} s")
            check(status, what)
            return


# ------------------------------------------------------------------- queue ----
class _BatchQueue:
    """Bounded MPMC FIFO: C orders tokens, ``_items`` maps them to objects."""

    def __init__(self, capacity: int) -> None:
        out = ffi.new("cllm_queue **")
        check(lib.cllm_queue_new(capacity, out), "make_batch_queue")
        self._q = ffi.gc(out[0], lib.cllm_queue_free)
        self._capacity = capacity
        self._items: dict[int, Any] = {}
        self._tokens = itertools.count()  # next() is atomic under the GIL

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def closed(self) -> bool:
        return bool(lib.cllm_queue_closed(self._q))

    def __len__(self) -> int:
        return int(lib.cllm_queue_len(self._q))

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"BatchQueue({len(self)}/{self._capacity}, {state})"

    def _undo_put(self, token: int | None, queued: Any) -> bool:
        """Take back a put that raised: unqueue its token and forget its item.

        False if a consumer took it already: the item is its now.
        """
        if token is None:
            return True
        if queued[0] and lib.cllm_queue_cancel(self._q, token) != lib.CLLM_OK:
            return False
        self._items.pop(token, None)
        return True

    def _put(self, item: Any, timeout: float | None, what: str) -> None:
        queued = ffi.new("int *")
        token = None
        try:
            token = next(self._tokens)
            self._items[token] = item
            _blocking(
                lambda t: lib.cllm_queue_put(self._q, token, t, queued), timeout, what
            )
        except BaseException as exc:
            if not self._undo_put(token, queued):
                exc.add_note(PUT_TOOK_EFFECT)
            raise

    def put(self, item: Any, timeout: float | None = None) -> None:
        validate_queue_item(item)
        self._put(item, validate_timeout(timeout), "put")

    def try_put(self, item: Any) -> bool:
        validate_queue_item(item)
        try:
            self._put(item, 0.0, "try_put")
        except QueueTimeoutError:
            return False
        return True

    def _get(self, timeout: float | None, what: str) -> Any:
        token = ffi.new("uint64_t *", _NO_TOKEN)
        try:
            _blocking(lambda t: lib.cllm_queue_get(self._q, t, token), timeout, what)
            key = token[0]
            item = self._items[key]
        except BaseException as exc:
            if token[0] != _NO_TOKEN:  # C took it: give it back to the head
                status = lib.cllm_queue_unget(self._q, token[0])
                if status != lib.CLLM_OK:
                    raise MemoryError(f"{what}: cannot requeue an item") from exc
            raise
        del self._items[key]
        return item

    def get(self, timeout: float | None = None) -> Any:
        return self._get(validate_timeout(timeout), "get")

    def try_get(self) -> Any | None:
        try:
            return self._get(0.0, "try_get")
        except QueueTimeoutError:
            return None

    def close(self) -> None:
        check(lib.cllm_queue_close(self._q), "close")


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
    """Fixed set of preallocated batches; C keeps the free list and refcounts."""

    def __init__(self, size: int, batch_size: int, seq_len: int) -> None:
        out = ffi.new("cllm_pool **")
        check(lib.cllm_pool_new(size, out), "make_batch_pool")
        self._p = ffi.gc(out[0], lib.cllm_pool_free)
        shape = (batch_size, seq_len)
        self._batches = [
            Batch(
                np.zeros(shape, dtype=np.int32),
                np.zeros(shape, dtype=np.int32),
                np.ones(shape, dtype=np.int32),
            )
            for _ in range(size)
        ]

    @property
    def size(self) -> int:
        return len(self._batches)

    @property
    def available(self) -> int:
        return int(lib.cllm_pool_available(self._p))

    @property
    def closed(self) -> bool:
        return bool(lib.cllm_pool_closed(self._p))

    def __repr__(self) -> str:
        return f"BatchPool({self.available}/{self.size} free)"

    def _handle(self, slot: Any, generation: Any) -> _PooledBatch:
        s = int(slot[0])
        return _PooledBatch(self._batches[s], s, int(generation[0]), self)

    def _lent(self, attempt: Callable[[Any, Any], bool]) -> _PooledBatch | None:
        """The handle of the slot ``attempt(slot, gen)`` borrows from C (or None).

        An exception after C lent the slot (in a later step, or from a signal
        handler) gives it back: the pool is left as it was.
        """
        slot, gen = ffi.new("int64_t *", -1), ffi.new("uint64_t *")
        try:
            if not attempt(slot, gen):
                return None
            handle = self._handle(slot, gen)
        except BaseException:
            if slot[0] >= 0:
                lib.cllm_pool_unacquire(self._p, slot[0], gen[0])
            raise
        return handle

    def acquire(self, timeout: float | None = None) -> _PooledBatch:
        timeout = validate_timeout(timeout)
        calls = itertools.count()

        def attempt(slot: Any, gen: Any) -> bool:
            def once(t: float) -> int:
                # a later attempt has waited already: it cannot count as a hit
                waited = int(next(calls) > 0)
                return lib.cllm_pool_acquire(self._p, t, waited, slot, gen)

            _blocking(once, timeout, "acquire")
            return True

        handle = self._lent(attempt)
        assert handle is not None
        return handle

    def try_acquire(self) -> _PooledBatch | None:
        def attempt(slot: Any, gen: Any) -> bool:
            status = lib.cllm_pool_try_acquire(self._p, slot, gen)
            if status == lib.CLLM_ERR_EMPTY:
                return False
            check(status, "try_acquire: the pool is closed")
            return True

        return self._lent(attempt)

    def _own(self, item: object, what: str) -> _PooledBatch:
        if not isinstance(item, _PooledBatch) or item.pool is not self:
            raise RefCountError(f"{what}: {type(item).__name__} is not from this pool")
        return item

    def retain(self, item: _PooledBatch) -> None:
        h = self._own(item, "retain")
        status = lib.cllm_pool_retain(self._p, h.slot, h.generation)
        check(status, f"retain: slot {h.slot} was already released (refcount 0)")

    def release(self, item: _PooledBatch) -> None:
        h = self._own(item, "release")
        status = lib.cllm_pool_release(self._p, h.slot, h.generation)
        check(
            status,
            f"release: slot {h.slot} was already released (refcount 0); "
            "double release or a stale handle",
        )

    def refcount(self, item: _PooledBatch) -> int:
        h = self._own(item, "refcount")
        count = ffi.new("int64_t *")
        check(lib.cllm_pool_refcount(self._p, h.slot, h.generation, count), "refcount")
        return int(count[0])

    def stats(self) -> PoolStats:
        s = ffi.new("cllm_pool_stats *")
        check(lib.cllm_pool_get_stats(self._p, s), "stats")
        return PoolStats(
            int(s.allocations), int(s.releases), int(s.hits), int(s.misses)
        )

    def close(self) -> None:
        check(lib.cllm_pool_close(self._p), "close")


def make_batch_pool(size: int, batch_size: int, seq_len: int) -> _BatchPool:
    """``size`` preallocated (batch_size, seq_len) int32 batches, lent refcounted."""
    return _BatchPool(*validate_pool_args(size, batch_size, seq_len))
