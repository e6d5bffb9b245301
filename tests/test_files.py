"""open_regular refuses everything but a regular file, without blocking;
fsync_directory syncs the directory a rename happened in."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from cllm_spec.errors import CheckpointError, EmptyInputError
from cllm_spec.files import fsync_directory, open_regular


def test_regular_file_opens_with_its_size(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello")
    handle, size = open_regular(path, "corpus", EmptyInputError)
    with handle:
        assert size == 5
        assert handle.read() == b"hello"


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="FIFO"):
        open_regular(fifo, "checkpoint", CheckpointError)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_devices_are_refused(device: str) -> None:
    with pytest.raises(EmptyInputError, match="character device"):
        open_regular(device, "corpus", EmptyInputError)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EmptyInputError, match="a directory"):
        open_regular(tmp_path, "corpus", EmptyInputError)


def test_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(path))
        # a bound UNIX socket cannot be opened at all; either refusal is fine,
        # but it must not be read as a file
        with pytest.raises((EmptyInputError, OSError)):
            open_regular(path, "corpus", EmptyInputError)
    finally:
        sock.close()


def test_symlink_to_regular_file_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    handle, size = open_regular(tmp_path / "link", "corpus", EmptyInputError)
    handle.close()
    assert size == 1


def test_missing_path_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "nope", "corpus", EmptyInputError)


def test_fsync_directory_syncs_that_directory(tmp_path: Path, monkeypatch) -> None:
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def record(fd: int) -> None:
        info = os.fstat(fd)
        synced.append((info.st_dev, info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    fsync_directory(tmp_path)
    want = os.stat(tmp_path)
    assert synced == [(want.st_dev, want.st_ino)]


def test_fsync_directory_of_a_missing_directory_does_nothing(tmp_path: Path) -> None:
    fsync_directory(tmp_path / "gone")  # no error: there is nothing to make durable
