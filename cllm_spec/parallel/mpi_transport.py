"""How the ranks of an :class:`~cllm_spec.parallel.mpi.MPIEngine` talk: every
rank's object on every rank, without ever blocking past a timeout.

MPI collectives block forever when a peer dies, so :class:`MPITransport` never
calls a blocking MPI operation: an exchange posts non-blocking point-to-point
sends and receives (a length, then the pickled bytes) and polls them
(``Request.Test``, sleeping 10 us doubling up to 2 ms between polls) until they
complete or ``timeout`` passes; then
:class:`~cllm_spec.errors.QueueTimeoutError` names the ranks nothing came from.
Each message carries the name of the engine call and its sequence number, so
ranks in different calls are a
:class:`~cllm_spec.errors.ReplicaMismatchError`, as are ranks whose values
differ where they must agree (:func:`expect_same`). Messages are pickled: the
ranks of one job trust each other.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from cllm_spec.errors import QueueTimeoutError, ReplicaMismatchError

_TAG_LEN = 7301  # the length message that precedes every payload
_TAG_DATA = 7302  # the payload itself
_POLL_MIN = 1e-5  # seconds between polls at first ...
_POLL_MAX = 2e-3  # ... doubling up to this: a peer's long grad_fn costs no CPU


def ranks_text(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def by_value(values: Sequence[Any]) -> dict[Any, list[int]]:
    """``{value: [ranks holding it]}``, in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for rank, v in enumerate(values):
        groups.setdefault(v, []).append(rank)
    return groups


def expect_same(values: Sequence[Any], what: str) -> None:
    """ReplicaMismatchError naming which ranks hold which of ``values`` (indexed
    by rank), unless they are all equal."""
    groups = by_value(values)
    if len(groups) > 1:
        held = "; ".join(
            f"{ranks_text(ranks)}: {str(v)[:16]}" for v, ranks in groups.items()
        )
        raise ReplicaMismatchError(f"{what} ({held})")


class MPITransport:
    """The exchanges of rank ``rank`` of ``size``, each bounded by ``timeout``
    seconds from the moment this rank enters it."""

    def __init__(self, rank: int, size: int, timeout: float) -> None:
        self.rank = rank
        self.size = size
        self.timeout = timeout
        self.comm: Any = None  # the engine's duplicate, set by its start()
        self._seq = 0  # engine calls that communicated, the same count on all ranks

    def exchange(self, what: str, obj: Any) -> list[Any]:
        """Every rank's ``obj``, indexed by rank; checks all ranks are in the same
        call (``what`` and the sequence number)."""
        seq = self._seq
        self._seq += 1
        if self.size == 1:
            return [obj]
        payload = pickle.dumps((what, seq, obj), protocol=pickle.HIGHEST_PROTOCOL)
        raw = self.allgather_bytes(payload, f"{what} (call #{seq})")
        out: list[Any] = []
        calls: list[tuple[str, int]] = []
        for rank, data in enumerate(raw):
            if rank == self.rank:
                calls.append((what, seq))
                out.append(obj)
                continue
            their_what, their_seq, their_obj = pickle.loads(data)
            calls.append((their_what, their_seq))
            out.append(their_obj)
        groups = by_value(calls)
        if len(groups) > 1:
            held = "; ".join(
                f"{ranks_text(ranks)} in {w!r} (call #{s})"
                for (w, s), ranks in groups.items()
            )
            raise ReplicaMismatchError(f"the ranks are in different calls: {held}")
        return out

    def allgather_bytes(self, payload: bytes, what: str) -> list[bytes]:
        """Every rank's payload (this rank's as given), by non-blocking
        point-to-point messages: a length, then the bytes."""
        comm = self.comm
        peers = [q for q in range(self.size) if q != self.rank]
        mine = np.frombuffer(payload, dtype=np.uint8)
        my_len = np.array([mine.size], dtype=np.int64)
        lengths = {q: np.zeros(1, dtype=np.int64) for q in peers}
        sends = [(q, comm.Isend(my_len, dest=q, tag=_TAG_LEN)) for q in peers]
        sends += [(q, comm.Isend(mine, dest=q, tag=_TAG_DATA)) for q in peers]
        deadline = time.monotonic() + self.timeout
        self.wait(
            [(q, comm.Irecv(lengths[q], source=q, tag=_TAG_LEN)) for q in peers],
            what,
            deadline,
        )
        bufs = {q: np.empty(int(lengths[q][0]), dtype=np.uint8) for q in peers}
        receives = [(q, comm.Irecv(bufs[q], source=q, tag=_TAG_DATA)) for q in peers]
        self.wait(receives + sends, what, deadline)
        return [
            payload if q == self.rank else bufs[q].tobytes() for q in range(self.size)
        ]

    def wait(
        self,
        requests: Sequence[tuple[int | None, Any]],
        what: str,
        deadline: float | None = None,
    ) -> None:
        """Poll ``requests`` (peer rank or None, request) until all complete;
        QueueTimeoutError naming the peers still pending at the deadline."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        pending = list(requests)
        delay = _POLL_MIN
        while True:
            pending = [(q, r) for q, r in pending if not r.Test()]
            if not pending:
                return
            if time.monotonic() >= deadline:
                peers = sorted({q for q, _ in pending if q is not None})
                who = ranks_text(peers) if peers else "some rank (MPI names none)"
                raise QueueTimeoutError(
                    f"{what}: nothing from {who} within {self.timeout} s "
                    f"(waiting on rank {self.rank} of {self.size})",
                    hint="that rank died, hangs, or is far slower than the others: "
                    "see its stderr; raise timeout if it is just slow",
                )
            time.sleep(delay)
            delay = min(2.0 * delay, _POLL_MAX)


__all__ = ["MPITransport", "by_value", "expect_same", "ranks_text"]
