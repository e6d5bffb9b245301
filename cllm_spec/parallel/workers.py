"""The worker threads of a :class:`~cllm_spec.parallel.coordinator.Coordinator`.

A :class:`Crew` is ``n`` long-lived daemon threads named ``<prefix><w>``.
Each takes :class:`Work` (a step's tasks for that worker) from its own inbox,
computes its groups with ``grad_fn`` one at a time or, given ``grad_many``,
one call per micro-batch (:meth:`Crew._run_tasks`), and posts a
:class:`Done` per group or one :class:`Failed` to the coordinator's result
queue; an exception never escapes a worker, it travels in ``Failed``. The
inboxes are :class:`~cllm_spec.parallel.messages.MessageQueue`, so the stop
message (CRITICAL) overtakes work still queued. Each worker's
:class:`~cllm_spec.parallel.stats.WorkerStats` (groups, tokens, busy and idle
seconds) is kept here; the module doc of the coordinator has the rest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from cllm_spec.errors import QueueClosedError, QueueTimeoutError
from cllm_spec.parallel.messages import MessageQueue, Priority
from cllm_spec.parallel.reduction import (
    GroupResult,
    validate_grad_output,
    validate_many_output,
)
from cllm_spec.parallel.stats import WorkerStats

GradFn = Callable[[int, Any], tuple[Any, float, int]]
GradMany = Callable[[list[int], list[Any]], Sequence[Any]]

_INBOX_CAPACITY = 4  # one step's message at a time, plus the stop message


class Task(NamedTuple):
    micro: int
    group: int
    batch: Any


class Work(NamedTuple):
    step: int
    tasks: tuple[Task, ...]


class Done(NamedTuple):
    worker: int
    result: GroupResult


class Failed(NamedTuple):
    step: int
    worker: int
    micro: int
    group: int
    error: BaseException
    together: tuple[int, ...] = ()  # the groups of a grad_many call that raised


STOP = object()  # the stop message; any non-None object would do


class Crew:
    """``n`` worker threads posting into ``results`` (module doc)."""

    def __init__(
        self,
        n: int,
        prefix: str,
        grad_fn: GradFn,
        grad_many: GradMany | None,
        results: Any,
    ) -> None:
        self._grad_fn = grad_fn
        self._grad_many = grad_many
        self._results = results
        self._inboxes = [MessageQueue(_INBOX_CAPACITY) for _ in range(n)]
        self._stop = threading.Event()
        self._started = False
        self.threads = [
            threading.Thread(
                target=self._loop,
                args=(w,),
                name=f"{prefix}{w}",
                daemon=True,  # a grad_fn stuck forever must not block exit
            )
            for w in range(n)
        ]
        self._stats = [WorkerStats()] * n
        self._stats_since = time.monotonic()
        self._stats_lock = threading.Lock()

    # ------------------------------------------------- the coordinator's side ----
    def start(self) -> None:
        self._started = True
        for t in self.threads:
            t.start()

    def alive(self) -> tuple[int, ...]:
        """Workers whose thread is still running."""
        return tuple(w for w, t in enumerate(self.threads) if t.is_alive())

    def dispatch(self, worker: int, work: Work, timeout: float) -> None:
        """Hand ``work`` to ``worker``; QueueClosedError once stopped."""
        self._inboxes[worker].put(work, Priority.NORMAL, timeout=timeout)

    def stop(self, join_timeout: float) -> None:
        """Tell every worker to end, close the result queue (waking workers
        blocked on it) and join the threads for at most ``join_timeout`` s."""
        self._stop.set()
        for inbox in self._inboxes:
            try:  # CRITICAL overtakes any work still queued for the worker
                inbox.put(STOP, Priority.CRITICAL, timeout=0)
            except (QueueClosedError, QueueTimeoutError):
                pass  # closed below anyway; a closed inbox also ends the loop
            inbox.close()
        self._results.close()
        if self._started:
            deadline = time.monotonic() + join_timeout
            for t in self.threads:
                t.join(max(0.0, deadline - time.monotonic()))

    def stats(self) -> tuple[WorkerStats, ...]:
        """One snapshot per worker, in worker order."""
        with self._stats_lock:
            return tuple(self._stats)

    def reset_stats(self) -> None:
        """Zero every worker's statistics."""
        with self._stats_lock:
            self._stats = [WorkerStats()] * len(self._stats)
            self._stats_since = time.monotonic()

    # ------------------------------------------------------ the workers' side ----
    def _loop(self, worker: int) -> None:
        inbox = self._inboxes[worker]
        while True:
            waiting_since = time.monotonic()
            try:
                msg = inbox.get()
            except QueueClosedError:
                return
            self._record(worker, idle_since=waiting_since)
            if msg is STOP:
                return
            for run in self._runs(msg.tasks):
                if self._stop.is_set() or not self._run_tasks(worker, msg.step, run):
                    return

    def _runs(self, tasks: Sequence[Task]) -> list[list[Task]]:
        """The tasks in the calls that compute them: with ``grad_many``, one
        per micro-batch; otherwise one per group."""
        if self._grad_many is None:
            return [[t] for t in tasks]
        runs: list[list[Task]] = []
        for t in tasks:
            if runs and runs[-1][0].micro == t.micro:
                runs[-1].append(t)
            else:
                runs.append([t])
        return runs

    def _run_tasks(self, worker: int, step: int, run: list[Task]) -> bool:
        """Compute ``run`` (groups of one micro-batch); False when the worker
        must end."""
        if len(run) == 1 or self._grad_many is None:
            return self._one_by_one(worker, step, run)
        started = time.monotonic()
        groups = [t.group for t in run]
        try:
            outs = self._grad_many(groups, [t.batch for t in run])
            results = validate_many_output(outs, run[0].micro, groups)
        except BaseException as exc:  # delivered to the coordinator, never lost
            self._record(worker, busy_since=started)
            together = tuple(groups)
            self._post(Failed(step, worker, run[0].micro, run[0].group, exc, together))
            return False
        tokens = sum(r.n_tokens for r in results)
        self._record(worker, busy_since=started, batches=len(run), tokens=tokens)
        return all(self._post(Done(worker, r)) for r in results)

    def _one_by_one(self, worker: int, step: int, run: list[Task]) -> bool:
        """Compute ``run`` one ``grad_fn`` call per group."""
        for task in run:
            if self._stop.is_set() or not self._run_task(worker, step, task):
                return False
        return True

    def _run_task(self, worker: int, step: int, task: Task) -> bool:
        """Compute one group; False when the worker must end."""
        started = time.monotonic()
        try:
            out = self._grad_fn(task.group, task.batch)
            grads, loss_sum, n_tokens = validate_grad_output(
                out, f"grad_fn(group {task.group})"
            )
        except BaseException as exc:  # delivered to the coordinator, never lost
            self._record(worker, busy_since=started)
            self._post(Failed(step, worker, task.micro, task.group, exc))
            return False
        self._record(worker, busy_since=started, batches=1, tokens=n_tokens)
        result = GroupResult(task.micro, task.group, grads, loss_sum, n_tokens)
        return self._post(Done(worker, result))

    def _post(self, msg: Done | Failed) -> bool:
        try:
            self._results.put(msg)
        except QueueClosedError:  # the run stopped; nobody needs this result
            return False
        return True

    def _record(
        self,
        worker: int,
        *,
        busy_since: float | None = None,
        idle_since: float | None = None,
        batches: int = 0,
        tokens: int = 0,
    ) -> None:
        now = time.monotonic()
        with self._stats_lock:
            since = self._stats_since  # time before a reset is not counted
            busy = 0.0 if busy_since is None else now - max(busy_since, since)
            idle = 0.0 if idle_since is None else now - max(idle_since, since)
            self._stats[worker] = self._stats[worker].record(
                batches=batches, tokens=tokens, busy_s=busy, idle_s=idle
            )


__all__ = ["STOP", "Crew", "Done", "Failed", "Task", "Work"]
