"""Opening files named by users or by other files, which are untrusted.

A path can name something that is not a file: a FIFO (an ``open`` for reading
blocks until a writer comes, possibly forever), a device (``/dev/zero`` never
ends, ``/dev/urandom`` neither), a directory, a socket. Every reader of a
checkpoint, a corpus or a config goes through :func:`open_regular`, which opens
without blocking, checks the *opened* descriptor (so a path swapped between a
check and the open cannot slip through) and refuses anything but a regular file
before a single byte is read.

Writers of checkpoints and run logs replace a file by renaming a finished
temporary one over it; :func:`fsync_directory` then makes the rename itself
durable.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

from cllm_spec.errors import CllmError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def describe_kind(mode: int) -> str:
    """What a ``st_mode`` names, in words (``"a FIFO (named pipe)"``, ...)."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def open_regular(
    path: str | os.PathLike[str], what: str, error: type[CllmError]
) -> tuple[BinaryIO, int]:
    """``(binary file object, size in bytes)`` of the regular file at ``path``.

    ``what`` names the role in messages (``"corpus"``, ``"checkpoint"``);
    ``error`` is the typed error to raise for anything that is not a regular
    file. A missing path is a ``FileNotFoundError`` and an unreadable one a
    ``PermissionError``, as from ``open``. The caller closes the file.
    """
    target = Path(path)
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = describe_kind(info.st_mode)
            raise error(
                f"{what}: {target} is {kind}, not a regular file",
                hint=f"name a regular {what} file",
            )
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return handle, info.st_size


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where
    directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the data is synced
    finally:
        os.close(fd)


__all__ = ["describe_kind", "fsync_directory", "open_regular"]
