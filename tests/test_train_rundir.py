"""The run directory's lock and the clean-up of partial writes, in process."""

from __future__ import annotations

import fnmatch
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cllm_spec import checkpoint
from cllm_spec.data import write_dataset_bin
from cllm_spec.errors import ConfigError
from cllm_spec.model import ModelConfig, init_params
from cllm_spec.train.rundir import (
    LOCK_FILE,
    TEMPORARY_PATTERNS,
    RunDirLock,
    remove_stale_temporaries,
)
from cllm_spec.train.runlog import MetricsLog


class Stop(Exception):
    pass


def temporary_name(monkeypatch, tmp_path, write) -> str:
    """The name of the temporary file ``write()`` starts with (it is stopped
    right after mkstemp, as a kill would stop it)."""
    real = tempfile.mkstemp
    names = []

    def recording(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        names.append(os.path.basename(name))
        os.close(fd)
        raise Stop

    monkeypatch.setattr(tempfile, "mkstemp", recording)
    with pytest.raises(Stop):
        write()
    monkeypatch.undo()
    (name,) = names
    return name


def test_the_patterns_match_every_writer_of_the_run_directory(tmp_path, monkeypatch):
    cfg = ModelConfig(vocab_size=5, n_embd=4, n_layer=1, n_head=1, block_size=4)
    params = init_params(cfg, np.random.default_rng(0))
    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps({"kind": "train", "step": 9}) + "\n")
    writers = {
        "checkpoint": lambda: checkpoint.save(
            checkpoint.checkpoint_path(tmp_path, 12),
            tensors=checkpoint.model_tensors(cfg, params),
            metadata={"model_config": cfg},
        ),
        "metrics": lambda: MetricsLog(log, keep_through=3),
        "dataset": lambda: write_dataset_bin(tmp_path / "dataset.bin", np.arange(5)),
    }
    for what, write in writers.items():
        name = temporary_name(monkeypatch, tmp_path, write)
        assert any(fnmatch.fnmatch(name, p) for p in TEMPORARY_PATTERNS), (what, name)
    assert len(remove_stale_temporaries(tmp_path)) == len(writers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    with RunDirLock(run):
        assert (run / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(
            ConfigError, match=rf"being written .*\(pid {os.getpid()}\)"
        ):
            RunDirLock(run)
    with RunDirLock(run):  # released on leaving the block
        pass


def test_a_special_file_as_the_lock_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / LOCK_FILE)
    with pytest.raises(ConfigError, match="FIFO"):
        RunDirLock(run)


@pytest.mark.parametrize("where", ["/proc/nope", "/proc/self/nope/deeper"])
def test_an_unwritable_run_directory_is_a_config_error(where):
    with pytest.raises(ConfigError, match="cannot write the run directory") as info:
        RunDirLock(Path(where))
    assert "train.out_dir=DIR" in info.value.hint_text
