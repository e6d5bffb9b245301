"""The run directory: one writer at a time, and what may already be in it.

:class:`RunDirLock` makes the run that writes a directory its only writer: it
holds an exclusive ``flock`` on ``<out_dir>/.lock`` (holding the holder's pid)
from before the directory is checked until the run ends. A second ``cllm
train`` on the same directory (or each process of an ``mpiexec`` launch that
forgot ``parallel.engine=mpi``) gets a ConfigError naming the holder's pid
instead of interleaving its rows and checkpoints with the first one's. The
lock goes with the process: a killed run leaves no lock behind (the file
stays, unlocked). Under MPI only rank 0 writes, so only rank 0 locks.

A run killed while writing leaves the temporary file of that write behind
(every writer writes a temporary file and renames it into place); with the
lock taken, :func:`remove_stale_temporaries` deletes those of earlier runs.

:func:`check_out_dir` refuses to mix two runs' checkpoints: a new run refuses
a directory that already holds checkpoints, a resumed run one that holds
checkpoints newer than its own, unless ``overwrite`` (then those are deleted
first, since rotation is by step and they would outlive the new ones).
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from types import TracebackType

from cllm_spec import checkpoint
from cllm_spec.errors import ConfigError
from cllm_spec.files import describe_kind

LOCK_FILE = ".lock"
#: the temporary files of the run's atomic writers (write, fsync, rename):
#: checkpoint.save, the metrics log's rewrite, data.write_dataset_bin
TEMPORARY_PATTERNS = (
    ".ckpt-*.safetensors.*.tmp",
    ".metrics.jsonl.*.tmp",
    "dataset.bin*.tmp",
)


class RunDirLock:
    """An exclusive lock on ``out_dir`` for this process (module docstring).

    Created (and the directory with it) on construction; released by
    :meth:`release` or by leaving the ``with`` block.
    """

    def __init__(self, out_dir: Path) -> None:
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"train.out_dir: {out_dir} exists and is not a directory")
        self.path = out_dir / LOCK_FILE
        flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:  # /proc/nope, a read-only place, no permission
            raise ConfigError(
                f"train.out_dir: cannot write the run directory {out_dir}: "
                f"{exc.strerror}",
                hint="choose a writable directory with --set train.out_dir=DIR",
            ) from exc
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise ConfigError(
                    f"train.out_dir: {self.path} is {describe_kind(mode)}, not the "
                    "run's lock file",
                    hint=f"remove {self.path}",
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"train.out_dir: {out_dir} is being written by another cllm "
                    f"train ({_holder(fd)})",
                    hint="wait for that run to end or stop it, or choose another "
                    "directory with --set train.out_dir=DIR",
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _holder(fd: int) -> str:
    """``pid N`` of the lock's holder, as it wrote it."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return f"pid {text}" if text.isdigit() else "pid unknown"


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete the partial files of writes a killed run left in ``out_dir``.

    Called with the lock held, so no live writer owns them. Only regular files
    (or links, which are removed, not followed) matching TEMPORARY_PATTERNS.
    """
    removed = []
    for pattern in TEMPORARY_PATTERNS:
        for path in sorted(out_dir.glob(pattern)):
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def check_out_dir(out_dir: Path, resume_step: int | None, overwrite: bool) -> None:
    """Refuse to mix two runs' checkpoints (module docstring), or delete first."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"train.out_dir: {out_dir} exists and is not a directory")
    found = checkpoint.list_checkpoints(out_dir)
    clash = [p for s, p in found if resume_step is None or s > resume_step]
    if not clash:
        return
    if overwrite:
        for path in clash:
            path.unlink(missing_ok=True)
        return
    if resume_step is None:
        raise ConfigError(
            f"train.out_dir: {out_dir} already holds a run ({clash[-1].name})",
            hint=f"continue it with --resume {out_dir}, pick another directory with "
            "--set train.out_dir=DIR, or pass --overwrite to start over",
        )
    raise ConfigError(
        f"train.out_dir: {out_dir} holds checkpoints after step {resume_step} "
        f"({clash[-1].name}), from the run being resumed or another",
        hint="resume into another directory with --set train.out_dir=DIR, or pass "
        "--overwrite to delete the later checkpoints",
    )


__all__ = [
    "LOCK_FILE",
    "TEMPORARY_PATTERNS",
    "RunDirLock",
    "check_out_dir",
    "remove_stale_temporaries",
]
