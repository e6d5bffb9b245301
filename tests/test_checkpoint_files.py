"""Writing and rotating checkpoint files (spec: ``cllm_spec.checkpoint``).

A save that fails, is interrupted or is killed at any point must leave the
previous checkpoint loadable, and a leftover temporary file is never taken
for a checkpoint; rotate keeps the last k checkpoints by step and removes
nothing else.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cllm_spec import checkpoint as ck
from cllm_spec.errors import CheckpointError, ConfigError
from tests import checkpoint_helpers
from tests.checkpoint_helpers import training_state

# pytest finds a test's fixtures among its module's names
saved = checkpoint_helpers.saved


# ------------------------------------------------------- atomic writes ------
def _only(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_failed_rename_keeps_the_old_checkpoint(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = saved.read_bytes()
    tensors, metadata = training_state(seed=1)

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk pulled")

    monkeypatch.setattr(ck.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk pulled"):
        ck.save(saved, tensors=tensors, metadata=metadata)
    assert saved.read_bytes() == before
    assert _only(saved.parent) == [saved.name]  # the temporary file is gone
    ck.load(saved)


def test_write_failing_midway_keeps_the_old_checkpoint(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = saved.read_bytes()
    tensors, metadata = training_state(seed=2)

    def half_write(fh: Any, prepared: Any) -> None:
        fh.write(prepared.header)
        fh.write(prepared.arrays[0].tobytes()[:5])
        raise KeyboardInterrupt  # Ctrl-C in the middle of the data

    monkeypatch.setattr(ck, "_write_all", half_write)
    with pytest.raises(KeyboardInterrupt):
        ck.save(saved, tensors=tensors, metadata=metadata)
    assert saved.read_bytes() == before
    assert _only(saved.parent) == [saved.name]


WRITER = """
import sys
sys.path.insert(0, {root!r})
import numpy as np
from cllm_spec import checkpoint as ck
from cllm_spec.model import ModelConfig, init_params
cfg = ModelConfig(vocab_size=4096, n_embd=128, n_layer=2, n_head=4, block_size=64)
params = init_params(cfg, np.random.default_rng(0), np.float64)  # ~8 MB
step = 0
while True:
    ck.save({path!r}, tensors=ck.model_tensors(cfg, params),
            metadata={{"model_config": cfg, "metrics": {{"step": step}}}})
    if step == 0:
        open({ready!r}, "w").close()
    step += 1
    params[step % params.size] += 1.0
"""


def _wait_for(condition: Any, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert proc.poll() is None, "the writer died"
        assert time.monotonic() < deadline, f"the writer never {what}"
        time.sleep(0.002)


@pytest.mark.parametrize("when", ["temporary-file-seen", "after-0.23s"])
def test_sigkill_while_writing_never_damages_the_checkpoint(
    tmp_path: Path, when: str
) -> None:
    path, ready = ck.checkpoint_path(tmp_path, 1), tmp_path / "ready"
    code = WRITER.format(
        root=str(Path(__file__).parent.parent), path=str(path), ready=str(ready)
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        _wait_for(ready.exists, proc, "wrote a first checkpoint")
        if when == "temporary-file-seen":  # a later save is under way right now
            _wait_for(lambda: any(tmp_path.glob("*.tmp")), proc, "started a save")
        else:
            time.sleep(0.23)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    tensors, meta = ck.load(path)
    assert meta["metrics"]["step"] >= 0 and "model.wte.weight" in tensors
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert all(p.name.startswith(f".{path.name}.") for p in leftovers)
    assert ck.latest(tmp_path) == path  # a leftover is never taken for a checkpoint


# -------------------------------------------------------------- rotation ----
def test_rotate_keeps_the_last_k_by_step(tmp_path: Path) -> None:
    steps = [1, 5, 20, 999_999_999, 1_000_000_000]
    for s in steps:
        ck.checkpoint_path(tmp_path, s).write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / ".ckpt-000000002.safetensors.abc.tmp").write_bytes(b"")
    assert ck.checkpoint_path(tmp_path, 5).name == "ckpt-000000005.safetensors"
    assert ck.latest(tmp_path) == ck.checkpoint_path(tmp_path, 1_000_000_000)
    removed = ck.rotate(tmp_path, keep_last=2)
    assert removed == [ck.checkpoint_path(tmp_path, s) for s in (1, 5, 20)]
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == steps[-2:]
    assert (tmp_path / "notes.txt").exists()
    assert ck.rotate(tmp_path, keep_last=5) == []


def test_rotate_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keep_last"):
        ck.rotate(tmp_path, keep_last=0)
    with pytest.raises(CheckpointError):
        ck.rotate(tmp_path / "nope", keep_last=1)
    assert ck.latest(tmp_path) is None
    with pytest.raises(ConfigError):
        ck.checkpoint_path(tmp_path, -1)
