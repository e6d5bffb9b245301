"""Mutant: the batch queue hands out the newest item first (LIFO, not FIFO)."""

from collections import deque

from cllm_numpy import batching as _ref

from conformance.mutants._base import *  # noqa: F403

name = "mutant-queue-lifo"


class _LifoDeque(deque):  # type: ignore[type-arg]
    """The head is the newest entry: it is read as [0] and removed by popleft."""

    def popleft(self):  # type: ignore[no-untyped-def]
        return self.pop()

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        return deque.__getitem__(self, -1 if i == 0 else i)


def make_batch_queue(capacity):  # type: ignore[no-untyped-def]
    queue = _ref.make_batch_queue(capacity)
    queue._items = _LifoDeque()
    return queue
