"""metrics.jsonl on resume: rows kept, appended, and never lost to a kill."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from cllm_spec.train.runlog import MetricsLog

ROWS = 30


def history(path: Path, steps: int = ROWS) -> str:
    text = "".join(
        json.dumps({"kind": "train", "step": s, "loss": 1.0 / s}) + "\n"
        for s in range(1, steps + 1)
    )
    path.write_text(text)
    return text


def steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


class Killed(BaseException):
    """Stands for the SIGKILL of the process at that moment."""


def kill_at_first_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file opened for writing (the rewrite's) dies at its first write,
    after the open: what a kill in the middle of the rewrite leaves."""
    real_open = io.open

    class Dying:
        def __init__(self, fh):
            self._fh = fh

        def write(self, text):
            self._fh.write(text[: len(text) // 2])
            self._fh.flush()
            raise Killed

        def writelines(self, lines):
            self.write("".join(lines))

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

    def dying_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return Dying(fh) if any(m in mode for m in "wax+") else fh

    monkeypatch.setattr(io, "open", dying_open)


def test_resuming_the_last_step_appends_without_rewriting(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    text = history(path)
    kill_at_first_write(monkeypatch)
    log = MetricsLog(path, keep_through=ROWS)  # nothing to drop: no write at all
    monkeypatch.undo()
    assert path.read_text() == text
    log.write({"kind": "train", "step": ROWS + 1})
    assert steps(path) == list(range(1, ROWS + 2))


def test_a_kill_during_the_rewrite_keeps_the_whole_history(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    text = history(path)
    kill_at_first_write(monkeypatch)
    with pytest.raises(Killed):
        MetricsLog(path, keep_through=20)
    monkeypatch.undo()
    assert path.read_text() == text  # 30 of 30 rows
    assert list(tmp_path.iterdir()) == [path]  # and no temporary file left


def test_the_rewrite_keeps_the_rows_up_to_the_step_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    history(path, 10)
    with path.open("a") as fh:
        fh.write('{"kind": "train", "st')  # a kill while a row was appended
    MetricsLog(path, keep_through=10)
    assert path.read_text().endswith("\n")
    assert steps(path) == list(range(1, 11))
    MetricsLog(path, keep_through=4)
    assert steps(path) == [1, 2, 3, 4]


def test_a_new_run_starts_an_empty_log(tmp_path):
    path = tmp_path / "metrics.jsonl"
    history(path)
    MetricsLog(path, keep_through=None)
    assert path.read_text() == ""
