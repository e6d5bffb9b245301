"""What a run writes as it goes, and how it is told to stop.

``metrics.jsonl`` (:class:`MetricsLog`): one JSON object per line, each with
``"kind"`` and ``"step"`` (optimizer steps done, 1-based)::

    {"kind": "train", "step", "epoch", "loss", "lr", "grad_norm",
     "tokens_per_s"}
    {"kind": "eval", "step", "val_loss", "val_ppl", "val_acc", "val_tokens"}
    {"kind": "sample", "step", "text"}
    {"kind": "parallel", "step", "engine", "workers", "seconds",
     "tokens_per_s", "per_worker": [{"worker", "batches", "tokens",
     "busy_s", "idle_s"}, ...]}

``loss`` is the mean training cross-entropy (nats/token) of the step's batch
before the update, ``lr`` the rate the update used, ``grad_norm`` the global L2
norm before clipping. Floats are written with ``repr`` precision, so they
read back bit for bit. The ``parallel`` row ends the file: workers are ranks
under MPI, ``batches`` counts group micro-batches, ``busy_s`` the time in
forward and backward, ``idle_s`` the time waiting for work
(:func:`worker_table` prints the same as a table).

:class:`StopRequest` turns the first Ctrl-C (SIGINT) into a flag the loop reads
between steps; a second one raises KeyboardInterrupt at once.

Only the process that logs (rank 0 under MPI) prints (:func:`say_stdout`) and
writes the log; the others get :func:`say_nothing` and :class:`NullLog`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped]

from cllm_spec.parallel import WorkerStats

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """``metrics.jsonl``: rows appended and flushed one by one."""

    def __init__(self, path: Path, keep_through: int | None) -> None:
        """Start empty, or keep the rows with ``step <= keep_through``."""
        self.path = path
        kept: list[str] = []
        if keep_through is not None and path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    if json.loads(line)["step"] <= keep_through:
                        kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(row, allow_nan=False) + "\n")


class StopRequest:
    """Turns the first SIGINT into a flag checked between steps (main thread only).

    A second SIGINT raises KeyboardInterrupt at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        # Only a flag: printing from a handler could re-enter the output code.
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def say_stdout(message: str) -> None:
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def say_nothing(message: str) -> None:
    """What MPI ranks other than 0 print: nothing."""


class NullLog:
    """The metrics log of MPI ranks other than 0."""

    def write(self, row: dict[str, Any]) -> None:
        pass


def worker_table(stats: Sequence[WorkerStats], label: str = "") -> str:
    """Per-worker statistics as a table: group micro-batches, tokens, and the
    shares of time spent computing (busy) and waiting (idle)."""
    who = label or "worker"
    lines = [f"{who:>8} {'groups':>8} {'tokens':>12} {'busy %':>7} {'idle %':>7}"]
    for w, st in enumerate(stats):
        busy = 100.0 * st.utilization
        idle = 100.0 - busy if st.busy_s + st.idle_s > 0 else 0.0
        lines.append(
            f"{w:>8} {st.batches:>8,} {st.tokens:>12,} {busy:>7.1f} {idle:>7.1f}"
        )
    return "\n".join(lines)


__all__ = [
    "METRICS_FILE",
    "MetricsLog",
    "NullLog",
    "StopRequest",
    "say_nothing",
    "say_stdout",
    "worker_table",
]
