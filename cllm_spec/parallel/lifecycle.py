"""The coordinator's lifecycle: five states and the only legal moves between them.

::

    INITIALIZING --start--> RUNNING <--pause/resume--> PAUSED
         |                     |                          |
         +-------stop----------+----------stop------------+
                               v
                            STOPPING --(threads joined)--> STOPPED

Legal transitions (anything else is a :class:`LifecycleError`, including a
transition to the current state)::

    INITIALIZING -> RUNNING, STOPPING
    RUNNING      -> PAUSED, STOPPING
    PAUSED       -> RUNNING, STOPPING
    STOPPING     -> STOPPED
    STOPPED      -> (none: a stopped coordinator is never restarted)

:meth:`Lifecycle.wait_while_paused` blocks a caller while the state is PAUSED and
returns once it is RUNNING; a move to STOPPING wakes it with a LifecycleError.
Every method is thread-safe; ``history`` lists the states entered, in order.
"""

from __future__ import annotations

import enum
import threading
import time

from cllm_spec.errors import LifecycleError, QueueTimeoutError


class State(enum.Enum):
    INITIALIZING = "initializing"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.INITIALIZING: frozenset({State.RUNNING, State.STOPPING}),
    State.RUNNING: frozenset({State.PAUSED, State.STOPPING}),
    State.PAUSED: frozenset({State.RUNNING, State.STOPPING}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset(),
}


class Lifecycle:
    """A thread-safe state machine over :data:`TRANSITIONS`."""

    def __init__(self) -> None:
        self._state = State.INITIALIZING
        self._history = [State.INITIALIZING]
        self._changed = threading.Condition(threading.Lock())

    @property
    def state(self) -> State:
        with self._changed:
            return self._state

    @property
    def history(self) -> tuple[State, ...]:
        with self._changed:
            return tuple(self._history)

    def transition(
        self, to: State, *, what: str = "", only_from: State | None = None
    ) -> State:
        """Move to ``to``; return the previous state. Illegal: LifecycleError.

        ``only_from`` narrows the legal sources further, atomically (``resume``
        is PAUSED -> RUNNING only, although INITIALIZING -> RUNNING is legal).
        """
        with self._changed:
            prev = self._state
            narrowed = only_from is not None and prev is not only_from
            if to not in TRANSITIONS[prev] or narrowed:
                action = f"{what}: " if what else ""
                raise LifecycleError(f"{action}cannot go from {prev.name} to {to.name}")
            self._state = to
            self._history.append(to)
            self._changed.notify_all()
            return prev

    def expect(self, *allowed: State, what: str) -> State:
        """The current state if it is one of ``allowed``, else LifecycleError."""
        with self._changed:
            if self._state not in allowed:
                names = ", ".join(s.name for s in allowed)
                raise LifecycleError(
                    f"{what}: not allowed in state {self._state.name} (needs {names})"
                )
            return self._state

    def wait_while_paused(self, timeout: float | None = None, *, what: str) -> None:
        """Return once RUNNING; wait while PAUSED; LifecycleError otherwise.

        ``timeout`` bounds the wait (``QueueTimeoutError`` when it runs out).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._state is State.PAUSED:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise QueueTimeoutError(f"{what}: still paused after {timeout} s")
                self._changed.wait(remaining)
            if self._state is not State.RUNNING:
                raise LifecycleError(
                    f"{what}: not allowed in state {self._state.name} (needs RUNNING)"
                )


__all__ = ["TRANSITIONS", "Lifecycle", "LifecycleError", "State"]
