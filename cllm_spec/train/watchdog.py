"""One line from ``cllm train`` when an MPI job loses a rank.

When a rank of an ``mpiexec`` job dies without a word (a signal, the OOM
killer, ``os._exit``) or aborts the job, mpiexec ends every other rank at once
with SIGKILL, so no rank can say what happened: the job used to end with the
launcher's banner alone. Rank 0 therefore starts a watcher
(:class:`LostRankReport`), a small process in its own session that mpiexec's
kill does not reach, joined to rank 0 by a pipe. A rank 0 that leaves the run
through Python (finished, stopped, or with an error it reports itself) writes
``done`` to the pipe; a pipe that closes without it means the job was killed,
and the watcher writes to the launcher's stderr (:func:`launcher_stderr`)::

    cllm train: error: the MPI job of K ranks ended abnormally: a rank failed
    (its report, if any, is above) or was killed, and mpiexec ended the others
      hint: resume from <the newest checkpoint> with: mpiexec -n K cllm train
      --resume <out_dir> --set parallel.engine=mpi

(the message on one line, the hint on the next) to rank 0's stderr.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType

DONE = b"done\n"


class LostRankReport:
    """The watcher of rank 0 of a ``ranks``-rank job writing ``out_dir``."""

    def __init__(self, out_dir: Path, ranks: int) -> None:
        report_fd = launcher_stderr()
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    __name__,
                    str(out_dir),
                    str(ranks),
                    str(report_fd),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                pass_fds=(report_fd,),
                start_new_session=True,  # out of reach of the job's kill
            )
        finally:
            os.close(report_fd)

    def __enter__(self) -> LostRankReport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(DONE)
            stdin.close()
        except OSError:
            pass  # the watcher is gone already: nothing to tell it


def message(out_dir: Path, ranks: int) -> str:
    """The watcher's report (module docstring)."""
    newest = sorted(out_dir.glob("ckpt-*.safetensors"))
    hint = (
        f"resume from {newest[-1].name} with: mpiexec -n {ranks} cllm train "
        f"--resume {out_dir} --set parallel.engine=mpi"
        if newest
        else "no checkpoint was written yet: start the run again"
    )
    return (
        f"cllm train: error: the MPI job of {ranks} ranks ended abnormally: a rank "
        "failed (its report, if any, is above) or was killed, and mpiexec ended "
        f"the others\n  hint: {hint}\n"
    )


#: names of launcher processes (/proc/PID/comm, cut to 15 characters): MPICH's
#: hydra, Open MPI's and PRRTE's
LAUNCHERS = ("mpiexec", "mpirun", "hydra", "orted", "prterun", "prted")


def _parent(pid: int) -> tuple[int, str]:
    """``(parent pid, name)`` of process ``pid`` (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        stat = fh.read()
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    return int(stat[stat.rindex(")") + 2 :].split()[1]), name


def launcher_stderr() -> int:
    """A new descriptor of the launcher's stderr, else of our own.

    Rank 0's stderr is a pipe to the launcher's proxy, and the proxy's to
    mpiexec; both exit as soon as the job's ranks are dead, so a report written
    there after the kill is lost. The outermost launcher process among rank
    0's ancestors holds the user's stderr (terminal, log or pipe): its ``fd
    2`` is opened now, while it lives, in append mode so that a log file is
    never overwritten.
    """
    target = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = os.getppid()
        while pid > 1:
            parent, name = _parent(pid)
            if not name.startswith(LAUNCHERS):
                break
            target, pid = pid, parent
    if target is not None:
        with contextlib.suppress(OSError):
            return os.open(f"/proc/{target}/fd/2", os.O_WRONLY | os.O_APPEND)
    return os.dup(2)


def main(argv: list[str]) -> int:
    """Wait for rank 0's word; report if the pipe closes without it."""
    out_dir, ranks, fd = Path(argv[0]), int(argv[1]), int(argv[2])
    said = sys.stdin.buffer.read()
    if not said.endswith(DONE):
        with contextlib.suppress(OSError):  # nobody is reading any more
            os.write(fd, message(out_dir, ranks).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = ["DONE", "LostRankReport", "message"]
