"""A bounded priority queue for control messages.

``MessageQueue(capacity, when_full="block")`` holds at most ``capacity`` items
(an int >= 1) of four priorities::

    CRITICAL (3) > HIGH (2) > NORMAL (1) > LOW (0)

``get`` returns the oldest item of the highest priority present: priorities
first, FIFO within one priority. (The coordinator uses this so a stop request
overtakes work that is already queued for a worker.)

- ``put(item, priority=NORMAL, timeout=None) -> bool``. When the queue is full:
  with ``when_full="block"`` it waits up to ``timeout`` seconds (``None``: as
  long as needed) for room and raises ``QueueTimeoutError`` if none appears;
  with ``when_full="drop"`` it discards ``item`` at once, counts it in
  ``stats().dropped`` and returns ``False`` (``timeout`` is not used). Otherwise
  it returns ``True``. A full queue never evicts an item already queued, whatever
  the priorities. ``None`` cannot be queued (``DTypeError``): ``try_get`` uses
  it to mean "empty".
- ``get(timeout=None)``: blocks while the queue is empty and open;
  ``QueueTimeoutError`` when ``timeout`` runs out. ``try_get()`` returns ``None``
  instead of waiting. ``peek()`` returns the item ``get`` would return, without
  removing it (``None`` when empty).
- ``close()`` (idempotent, irreversible) behaves like the batch queue's: ``put``
  then raises ``QueueClosedError`` (a blocked producer wakes at once and raises);
  ``get`` and ``try_get`` keep returning the remaining items in priority order and
  raise ``QueueClosedError`` once it is drained; blocked consumers wake and raise.
- ``len(q)``, ``q.count(priority)``, ``capacity``, ``closed``, ``when_full``;
  ``stats() -> MessageQueueStats(put, got, dropped, peak)`` counts accepted puts,
  removed items, dropped puts and the largest length seen.

Every ``timeout`` is ``None`` or a finite number >= 0 (``0`` never waits).
Errors: ``capacity`` not an int >= 1, ``when_full`` not "block"/"drop",
``priority`` not one of the four levels (a :class:`Priority` or its int), or a
bad ``timeout``: ``ConfigError``.

Relation to the original: its lock-free queue had the same four priorities and
the same drop-on-full option, but a drop freed the caller's message; here the
caller keeps its object and only the queue forgets it.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from cllm_spec.batching import validate_queue_item, validate_timeout
from cllm_spec.checks import expect_choice, expect_positive_int
from cllm_spec.errors import ConfigError, QueueClosedError, QueueTimeoutError

WhenFull = Literal["block", "drop"]


class Priority(enum.IntEnum):
    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3


_HIGHEST_FIRST = sorted(Priority, reverse=True)


class MessageQueueStats(NamedTuple):
    put: int  # items accepted
    got: int  # items removed by get / try_get
    dropped: int  # puts refused because the queue was full ("drop" only)
    peak: int  # largest length reached


def validate_priority(priority: object) -> Priority:
    """A :class:`Priority` or the int of one; anything else is a ConfigError."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigError(
            f"priority: expected a Priority, got {type(priority).__name__}"
        )
    try:
        return Priority(priority)
    except ValueError:
        raise ConfigError(
            f"priority: expected one of {[p.name for p in Priority]}, got {priority}"
        ) from None


class MessageQueue:
    """Bounded priority queue: one deque per priority under one lock."""

    def __init__(self, capacity: int, *, when_full: WhenFull = "block") -> None:
        self._capacity = expect_positive_int("capacity", capacity)
        self._when_full = expect_choice("when_full", when_full, ("block", "drop"))
        self._lanes: dict[Priority, deque[Any]] = {p: deque() for p in Priority}
        self._size = 0
        self._closed = False
        self._put = self._got = self._dropped = self._peak = 0
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def when_full(self) -> str:
        return self._when_full

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def __len__(self) -> int:
        with self._lock:
            return self._size

    def count(self, priority: Priority | int) -> int:
        """Items queued at ``priority``."""
        p = validate_priority(priority)
        with self._lock:
            return len(self._lanes[p])

    def stats(self) -> MessageQueueStats:
        with self._lock:
            return MessageQueueStats(self._put, self._got, self._dropped, self._peak)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"MessageQueue({self._size}/{self._capacity}, {self._when_full}, {state})"
        )

    # ---------------------------------------------------------------- put ----
    def put(
        self,
        item: Any,
        priority: Priority | int = Priority.NORMAL,
        timeout: float | None = None,
    ) -> bool:
        validate_queue_item(item)
        p = validate_priority(priority)
        timeout = validate_timeout(timeout)
        with self._lock:
            if self._closed:
                raise QueueClosedError("put: the queue is closed")
            if self._size >= self._capacity:
                if self._when_full == "drop":
                    self._dropped += 1
                    return False
                self._wait(self._not_full, self._has_room, timeout, "put")
                if self._closed:
                    raise QueueClosedError("put: the queue was closed while waiting")
            self._lanes[p].append(item)
            self._size += 1
            self._put += 1
            self._peak = max(self._peak, self._size)
            self._not_empty.notify()
            return True

    # ---------------------------------------------------------------- get ----
    def get(self, timeout: float | None = None) -> Any:
        timeout = validate_timeout(timeout)
        with self._lock:
            self._wait(self._not_empty, self._has_item, timeout, "get")
            if self._size == 0:
                raise QueueClosedError("get: the queue is closed and drained")
            return self._pop()

    def try_get(self) -> Any | None:
        with self._lock:
            if self._size:
                return self._pop()
            if self._closed:
                raise QueueClosedError("try_get: the queue is closed and drained")
            return None

    def peek(self) -> Any | None:
        with self._lock:
            for p in _HIGHEST_FIRST:
                if self._lanes[p]:
                    return self._lanes[p][0]
            return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    # ----------------------------------------------------------- internals ----
    def _has_room(self) -> bool:
        return self._closed or self._size < self._capacity

    def _has_item(self) -> bool:
        return self._closed or self._size > 0

    def _pop(self) -> Any:
        for p in _HIGHEST_FIRST:
            lane = self._lanes[p]
            if lane:
                self._size -= 1
                self._got += 1
                self._not_full.notify()
                return lane.popleft()
        raise AssertionError("size > 0 but every lane is empty")  # pragma: no cover

    @staticmethod
    def _wait(
        cond: threading.Condition,
        ready: Callable[[], bool],
        timeout: float | None,
        what: str,
    ) -> None:
        """Wait on ``cond`` (held) until ``ready()``; re-checked on every wakeup,
        since wakeups can be spurious or taken by another thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            if deadline is None:
                cond.wait()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QueueTimeoutError(f"{what}: timed out after {timeout} s")
            cond.wait(remaining)


__all__ = [
    "MessageQueue",
    "MessageQueueStats",
    "Priority",
    "WhenFull",
    "validate_priority",
]
