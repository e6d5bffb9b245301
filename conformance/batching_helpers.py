"""Threads and timings shared by the batching conformance files.

Every blocking call in these tests carries a timeout and every thread is joined
with a timeout followed by an assertion that it finished, so a deadlock in a
backend fails the test instead of hanging the suite.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cllm_spec.errors import QueueClosedError

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


def assert_close_wakes(workers: list[Worker], close: Callable[[], None]) -> None:
    """``workers``, blocked in a queue's or pool's call, all raise
    QueueClosedError within WAKE_BOUND of ``close()``."""
    time.sleep(BLOCKED)
    assert all(w.thread.is_alive() for w in workers)
    closed_at = time.monotonic()
    close()
    for w in workers:
        w.join()
        assert isinstance(w.error, QueueClosedError), w.error
        assert w.finished_at is not None and w.finished_at - closed_at < WAKE_BOUND
