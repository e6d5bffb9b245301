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

:class:`StopRequest` turns the first Ctrl-C (SIGINT) or SIGTERM into a flag the
loop reads between steps; a second one raises :class:`StopNow` at once.

Only the process that logs (rank 0 under MPI) prints (:func:`say_stdout`) and
writes the log; the others get :func:`say_nothing` and :class:`NullLog`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped]

from cllm_spec.errors import ConfigError
from cllm_spec.files import fsync_directory, open_regular
from cllm_spec.parallel import WorkerStats

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """``metrics.jsonl``: rows appended and flushed one by one.

    The history is never truncated in place: a resumed run that keeps every
    row appends to the file as it is; one that drops rows (resuming an earlier
    checkpoint, or a torn last line from a killed run) writes the kept rows to
    a temporary file, fsyncs it and renames it over the log, so a kill at any
    moment leaves either the old history or the new one.
    """

    def __init__(self, path: Path, keep_through: int | None) -> None:
        """Start empty, or keep the rows with ``step <= keep_through``."""
        self.path = path
        if keep_through is None:
            _replace(path, [])
            return
        if not path.exists():
            path.touch()
            return
        lines, kept = 0, 0
        whole = True  # every line ends with a newline
        for line in _lines(path):
            lines += 1
            kept += _step_at_most(line, keep_through)
            whole = line.endswith("\n")
        if kept < lines or not whole:
            _replace(path, [x for x in _lines(path) if _step_at_most(x, keep_through)])

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(row, allow_nan=False) + "\n")


def _lines(path: Path) -> Iterator[str]:
    """The lines of the log, streamed; a special file is refused unread."""
    handle, _ = open_regular(path, METRICS_FILE, ConfigError)
    with io.TextIOWrapper(handle, encoding="utf-8", errors="replace") as fh:
        yield from fh


def _step_at_most(line: str, keep_through: int) -> bool:
    """A complete row (newline included) whose ``step`` is <= ``keep_through``."""
    if not line.endswith("\n"):
        return False  # torn by a kill while it was appended
    with contextlib.suppress(ValueError, TypeError, KeyError, RecursionError):
        return bool(json.loads(line)["step"] <= keep_through)
    return False


def _replace(path: Path, lines: Iterable[str]) -> None:
    """Write ``lines`` to a temporary file, fsync, rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


class StopNow(KeyboardInterrupt):
    """A second stop signal: the run aborts at once, without saving."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequest:
    """Turns the first SIGINT or SIGTERM into a flag checked between steps (main
    thread only); ``signum`` says which came.

    SIGTERM is what batch schedulers, ``docker stop`` and ``kill`` send; it is
    handled like Ctrl-C so that such a stop saves a checkpoint of the last
    step instead of losing up to ``train.checkpoint_every`` steps. A second
    signal raises :class:`StopNow` (a KeyboardInterrupt) at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        # Only a flag: printing from a handler could re-enter the output code.
        if self.requested:
            raise StopNow(signum)
        self.requested = True
        self.signum = signum

    @property
    def how(self) -> str:
        """The signal as a user knows it: ``Ctrl-C`` or ``SIGTERM``."""
        if self.signum is None or self.signum == signal.SIGINT:
            return "Ctrl-C"
        return signal.Signals(self.signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


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
    "StopNow",
    "StopRequest",
    "say_nothing",
    "say_stdout",
    "worker_table",
]
