"""How a ``cllm train`` run stops early: Ctrl-C, SIGTERM and SIGKILL, the
time limit and a non-finite loss, each leaving checkpoints that load and
resume."""

from __future__ import annotations

import re
import signal

import numpy as np

from cllm_spec import checkpoint
from tests import cli_train_helpers
from tests.cli_train_helpers import (
    ckpt_steps,
    cllm_train,
    has_rows,
    ok,
    rows,
    sets,
    start_long_run,
    wait_for,
)

# pytest finds a test's fixtures among its module's names
corpus = cli_train_helpers.corpus


def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path, corpus):
    run = tmp_path / "run"
    proc = start_long_run(run, corpus)
    try:
        wait_for(lambda: has_rows(run))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    step = int(re.search(r"interrupted at step (\d+)", out).group(1))
    assert ckpt_steps(run) == [step]
    assert rows(run, "train")[-1]["step"] == step
    ok(cllm_train("--resume", str(run), "--set", f"train.steps={step + 2}"))
    assert [r["step"] for r in rows(run, "train")] == list(range(1, step + 3))


def test_sigterm_saves_a_checkpoint_like_ctrl_c_and_exits_143(tmp_path, corpus):
    """What batch schedulers and docker stop send: no steps are lost."""
    run = tmp_path / "run"
    proc = start_long_run(run, corpus)
    try:
        wait_for(lambda: has_rows(run))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, out + err
    assert "Traceback" not in err
    assert "interrupted (SIGTERM): saving a checkpoint" in out
    step = int(re.search(r"interrupted at step (\d+) \(SIGTERM\)", out).group(1))
    assert ckpt_steps(run) == [step]
    assert rows(run, "train")[-1]["step"] == step
    ok(cllm_train("--resume", str(run), "--set", f"train.steps={step + 1}"))


def test_kill_during_checkpointing_leaves_loadable_checkpoints(tmp_path, corpus):
    run = tmp_path / "run"
    proc = start_long_run(run, corpus, train__checkpoint_every=1, train__keep_last=3)
    try:
        wait_for(lambda: run.is_dir() and len(ckpt_steps(run)) >= 3)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    for _, path in checkpoint.list_checkpoints(run):
        checkpoint.load(path)  # raises CheckpointError if any was damaged
    last = ckpt_steps(run)[-1]
    ok(cllm_train("--resume", str(run), "--set", f"train.steps={last + 1}"))
    assert rows(run, "train")[-1]["step"] == last + 1


def test_time_limit_stops_cleanly_with_a_checkpoint(tmp_path, corpus):
    run = tmp_path / "run"
    result = ok(
        cllm_train(
            *sets(data__corpus=corpus, train__out_dir=run, train__time_limit=1e-9)
        )
    )
    assert "time limit of 1e-09 s reached at step 0" in result.stdout
    assert "final validation loss" in result.stdout
    assert ckpt_steps(run) == [0]
    ok(cllm_train("--resume", str(run), "--set", "train.time_limit=0"))
    assert [r["step"] for r in rows(run, "train")] == [1, 2, 3, 4, 5, 6]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus):
    run = tmp_path / "run"
    common = dict(
        data__corpus=corpus,
        train__out_dir=run,
        optim__name="sgd",
        schedule__name="constant",
        optim__lr=0.1,
        train__steps=2,
    )
    ok(cllm_train(*sets(**common)))
    good = checkpoint.latest(run)
    before = good.read_bytes()
    result = cllm_train(
        "--resume",
        str(run),
        "--set",
        "optim.lr=1e30",
        "--set",
        "train.clip_norm=0",
        "--set",
        "train.steps=50",
        "--set",
        "train.checkpoint_every=0",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    message = re.search(r"training stopped at step (\d+): non-finite", result.stderr)
    assert message, result.stderr
    assert 3 <= int(message.group(1)) <= 50
    assert str(good) in result.stderr
    assert ckpt_steps(run) == [2]
    assert good.read_bytes() == before
    tensors, _ = checkpoint.load(good)
    assert all(np.isfinite(t).all() for t in tensors.values())
