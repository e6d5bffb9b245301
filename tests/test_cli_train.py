"""``cllm train`` end to end on a normal run: its metrics, checkpoints and
final summary, the logged loss against the model's own, the loss falling on
every backend, and the progress bar on a terminal."""

from __future__ import annotations

import fcntl
import json
import math
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time

import numpy as np
import pytest

from cllm_spec import checkpoint
from cllm_spec.data import read_dataset_bin
from cllm_spec.model import forward
from cllm_spec.registry import get_backend
from cllm_spec.schedules import ScheduleConfig, lr_at
from cllm_spec.train.prepare import BatchStream
from tests import cli_train_helpers
from tests.cli_train_helpers import (
    BACKENDS,
    CLLM,
    ckpt_steps,
    cllm_train,
    ok,
    rows,
    sets,
)

# pytest finds a test's fixtures among its module's names
corpus = cli_train_helpers.corpus


def test_metrics_checkpoints_and_summary(tmp_path, corpus):
    run = tmp_path / "run"
    result = ok(
        cllm_train(
            *sets(
                data__corpus=corpus,
                train__out_dir=run,
                optim__lr=0.01,
                schedule__min_lr=0.001,
                train__eval_every=3,
                train__sample_every=3,
                train__sample_tokens=5,
                train__checkpoint_every=1,
                train__keep_last=2,
            )
        )
    )
    train = rows(run, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    schedule = ScheduleConfig("cosine", 0.01, 2, 6, 0.001, 100, 0.5)
    assert [r["lr"] for r in train] == [lr_at(s, schedule) for s in range(6)]
    assert all(0 < r["loss"] < 10 and r["grad_norm"] > 0 for r in train)
    assert all(r["tokens_per_s"] > 0 and r["epoch"] == 0 for r in train)

    evals = rows(run, "eval")
    assert [e["step"] for e in evals] == [3, 6]
    assert evals[0]["val_tokens"] == 2 * 4 * 16  # eval_batches micro-batches
    assert evals[1]["val_tokens"] == (300 - 1) // 16 * 16  # every window
    for e in evals:
        assert e["val_ppl"] == pytest.approx(math.exp(e["val_loss"]))
        assert 0 <= e["val_acc"] <= 1
    assert [s["step"] for s in rows(run, "sample")] == [3, 6]

    assert ckpt_steps(run) == [5, 6]  # keep_last=2 of one checkpoint per step
    _, meta = checkpoint.load(checkpoint.latest(run))
    assert meta["optimizer"]["step"] == 6 and meta["run"]["step"] == 6
    assert meta["run"]["config"]["train"]["keep_last"] == 2
    assert meta["metrics"]["eval"] == evals[1]

    h = json.loads((run / "dataset.json").read_text())["unigram_entropy"]
    line = re.search(
        r"final validation loss ([\d.]+) nats/token; unigram entropy ([\d.]+) "
        r"nats/token; ratio ([\d.]+)",
        result.stdout,
    )
    assert line, result.stdout
    val, entropy, ratio = map(float, line.groups())
    assert val == pytest.approx(evals[1]["val_loss"], abs=5e-5)
    assert entropy == pytest.approx(h, abs=5e-5)
    assert ratio == pytest.approx(val / entropy, abs=1e-3)


def test_logged_loss_is_the_model_loss_on_the_cursor_batch(tmp_path, corpus):
    """The loss of step 6 is the cross-entropy, under the step-5 checkpoint's
    parameters, of the batch its data cursor points at: computed in the 12
    groups of rows (4 rows: groups 0-3 of one row each, 16 tokens each) and
    averaged over all tokens with fsum, as every engine does."""
    run = tmp_path / "run"
    ok(
        cllm_train(
            *sets(
                data__corpus=corpus,
                train__out_dir=run,
                train__keep_last=9,
                train__checkpoint_every=5,
            )
        )
    )
    tensors, meta = checkpoint.load(checkpoint.checkpoint_path(run, 5))
    cfg = meta["model_config"]
    params = checkpoint.params_from_tensors(cfg, tensors)
    cursor = meta["data_cursor"]
    ids = read_dataset_bin(run / "dataset.bin")[: cursor["n_train"]]
    stream = BatchStream(
        ids, 4, 16, seed=cursor["seed"], epoch=cursor["epoch"], index=cursor["batch"]
    )
    (batch,) = stream.take(1)
    # the run's own backend: bitwise equality only holds on the same kernels
    backend = get_backend(meta["run"]["backend"])
    _, whole, _ = forward(backend, cfg, params, batch.input_ids, batch.targets)
    sums = []
    for row in range(4):
        _, loss, _ = forward(
            backend,
            cfg,
            params,
            batch.input_ids[row : row + 1],
            batch.targets[row : row + 1],
        )
        sums.append(loss * 16)
    logged = rows(run, "train")[5]["loss"]
    assert logged == math.fsum(sums) / 64
    assert logged == pytest.approx(whole, rel=1e-6)  # the unsplit batch's mean


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_training_lowers_the_loss(tmp_path, corpus, backend_name):
    run = tmp_path / "run"
    ok(
        cllm_train(
            *sets(
                train__backend=backend_name,
                data__corpus=corpus,
                train__out_dir=run,
                train__steps=40,
                optim__lr=0.02,
                schedule__name="constant",
            )
        )
    )
    losses = [r["loss"] for r in rows(run, "train")]
    assert losses[0] > 5.0  # ln 261 = 5.56 at initialization
    assert np.mean(losses[-5:]) < losses[0] - 1.5


def test_progress_bar_shows_loss_lr_and_throughput_on_a_terminal(tmp_path, corpus):
    parent, child = pty.openpty()
    # a new pseudo-terminal is 0 columns wide; give it a real size
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    proc = subprocess.Popen(
        [*CLLM, "train", *sets(data__corpus=corpus, train__out_dir=tmp_path / "r")],
        stdout=subprocess.DEVNULL,
        stderr=child,
    )
    os.close(child)
    output = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([parent], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(parent, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        proc.kill()
        proc.wait()
        os.close(parent)
    text = output.decode(errors="replace")
    assert re.search(r"6/6 .*loss=\d+\.\d{4}, lr=[\d.e+-]+, tok_s=\d+", text), text
