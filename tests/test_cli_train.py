"""``cllm train`` end to end, run as a subprocess on tiny configs (seconds each)."""

from __future__ import annotations

import fcntl
import json
import math
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest

from cllm_spec import checkpoint
from cllm_spec.data import read_dataset_bin, read_default_corpus
from cllm_spec.errors import BackendError
from cllm_spec.model import forward
from cllm_spec.registry import available_backends, get_backend
from cllm_spec.schedules import ScheduleConfig, lr_at
from cllm_spec.train.prepare import BatchStream

CLLM = [sys.executable, "-m", "cllm_spec.cli"]
TINY = {
    "data.tokenizer": "byte",
    "model.n_embd": 16,
    "model.n_layer": 1,
    "model.n_head": 2,
    "model.block_size": 16,
    "train.seq_len": 16,
    "train.batch_size": 4,
    "train.steps": 6,
    "schedule.warmup_steps": 2,
    "train.eval_every": 0,
    "train.eval_batches": 2,
    "train.sample_every": 0,
    "train.checkpoint_every": 0,
}


def sets(omit: tuple[str, ...] = (), **fields: object) -> list[str]:
    """``--set`` arguments for TINY updated with ``fields`` (``a__b`` = ``a.b``),
    without the keys in ``omit``."""
    merged = {**TINY, **{k.replace("__", "."): v for k, v in fields.items()}}
    return [
        arg for k, v in merged.items() if k not in omit for arg in ("--set", f"{k}={v}")
    ]


def cllm_train(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``cllm train ARGS``; ``env`` adds to the environment."""
    return subprocess.run(
        [*CLLM, "train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def rows(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def ckpt_steps(run: Path) -> list[int]:
    return [step for step, _ in checkpoint.list_checkpoints(run)]


def loadable_backends() -> list[str]:
    names = []
    for name in available_backends():
        try:
            get_backend(name)
        except BackendError:
            continue
        names.append(name)
    return names


#: the end-to-end tests below run on every backend that loads here
BACKENDS = loadable_backends()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3000 characters of the bundled corpus: 2700 train + 300 validation bytes."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(read_default_corpus()[:3000])
    return path


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# ------------------------------------------------------------ a normal run ---
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


# ------------------------------------------------------------------ resume ---
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_resume_is_bit_identical(tmp_path, corpus, backend_name):
    """Run 8 steps; resume the step-4 checkpoint for steps 5-8; same bits.

    grad_accum 2 of batches of 8 from 1500 tokens: 10 micro-batches per epoch,
    so the resumed half crosses an epoch boundary.
    """
    small = tmp_path / "small.txt"
    small.write_text(corpus.read_text()[:1500])
    common = dict(
        train__backend=backend_name,
        data__corpus=small,
        train__batch_size=8,
        train__grad_accum=2,
        train__steps=8,
        train__checkpoint_every=4,
        train__keep_last=5,
        train__eval_every=2,
        schedule__warmup_steps=3,
    )
    first, second = tmp_path / "first", tmp_path / "second"
    ok(cllm_train(*sets(train__out_dir=first, **common)))
    ok(
        cllm_train(
            "--resume",
            str(checkpoint.checkpoint_path(first, 4)),
            "--set",
            f"train.out_dir={second}",
        )
    )
    a, b = rows(first, "train"), rows(second, "train")
    assert [r["step"] for r in b] == [5, 6, 7, 8]
    assert a[-1]["epoch"] == 1  # the epoch boundary was crossed after step 5
    for key in ("loss", "lr", "grad_norm", "epoch"):
        assert [r[key] for r in a[4:]] == [r[key] for r in b], key
    assert rows(first, "eval")[2:] == rows(second, "eval")
    ta, _ = checkpoint.load(checkpoint.checkpoint_path(first, 8))
    tb, _ = checkpoint.load(checkpoint.checkpoint_path(second, 8))
    assert sorted(ta) == sorted(tb)
    for name in ta:
        np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)


def test_resume_in_place_extends_the_run(tmp_path, corpus):
    run = tmp_path / "run"
    ok(
        cllm_train(
            *sets(
                data__corpus=corpus,
                train__out_dir=run,
                train__steps=4,
                schedule__name="constant",
            )
        )
    )
    expect_error(cllm_train("--resume", str(run)), "train.steps: .* at step 4")
    ok(cllm_train("--resume", str(run), "--set", "train.steps=6"))
    assert [r["step"] for r in rows(run, "train")] == [1, 2, 3, 4, 5, 6]
    assert ckpt_steps(run) == [4, 6]


def test_resume_an_earlier_checkpoint_in_place(tmp_path, corpus):
    """Going back to step 4 of a 6-step run: the later checkpoint is refused,
    then deleted with --overwrite, and the rows after step 4 are replaced."""
    run = tmp_path / "run"
    ok(
        cllm_train(
            *sets(
                data__corpus=corpus,
                train__out_dir=run,
                train__checkpoint_every=2,
                train__keep_last=5,
            )
        )
    )
    before = rows(run, "train")
    earlier = str(checkpoint.checkpoint_path(run, 4))
    expect_error(cllm_train("--resume", earlier), "train.out_dir: .* after step 4")
    ok(cllm_train("--resume", earlier, "--overwrite"))
    after = rows(run, "train")
    assert [r["step"] for r in after] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in after] == [r["loss"] for r in before]
    assert ckpt_steps(run) == [2, 4, 6]


def test_resume_in_float64_follows_the_float32_run(tmp_path, corpus):
    if "float64" not in [str(np.dtype(d)) for d in get_backend("numpy").dtypes]:
        pytest.skip("the numpy backend does not list float64")
    common = dict(
        data__corpus=corpus,
        train__backend="numpy",
        train__steps=8,
        train__checkpoint_every=4,
        train__keep_last=5,
    )
    f32, f64 = tmp_path / "f32", tmp_path / "f64"
    ok(cllm_train(*sets(train__out_dir=f32, **common)))
    ok(
        cllm_train(
            "--resume",
            str(checkpoint.checkpoint_path(f32, 4)),
            "--set",
            f"train.out_dir={f64}",
            "--set",
            "train.dtype=float64",
        )
    )
    _, meta = checkpoint.load(checkpoint.latest(f64))
    assert meta["run"]["dtype"] == "float64"
    a = [r["loss"] for r in rows(f32, "train")[4:]]
    b = [r["loss"] for r in rows(f64, "train")]
    assert a != b  # really computed in another precision
    np.testing.assert_allclose(b, a, rtol=1e-4)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_checkpoint_resumes_on_another_backend(tmp_path, corpus, direction):
    names = loadable_backends()
    if len(names) < 2:
        pytest.skip(f"only one backend can load ({names}); nothing to cross to")
    first_name, second_name = names[:2] if direction == "forward" else names[1::-1]
    one, two = tmp_path / "one", tmp_path / "two"
    common = dict(
        data__corpus=corpus,
        train__steps=8,
        train__checkpoint_every=4,
        train__keep_last=5,
    )
    ok(cllm_train(*sets(train__out_dir=one, train__backend=first_name, **common)))
    ok(
        cllm_train(
            "--resume",
            str(checkpoint.checkpoint_path(one, 4)),
            "--backend",
            second_name,
            "--set",
            f"train.out_dir={two}",
        )
    )
    _, meta = checkpoint.load(checkpoint.latest(two))
    assert meta["run"]["backend"] == second_name
    a = [r["loss"] for r in rows(one, "train")[4:]]
    np.testing.assert_allclose([r["loss"] for r in rows(two, "train")], a, rtol=1e-3)


# ---------------------------------------------------------------- stopping ---
def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def start_long_run(run: Path, corpus: Path, **fields: object) -> subprocess.Popen:
    args = sets(
        data__corpus=corpus, train__out_dir=run, train__steps=1_000_000, **fields
    )
    return subprocess.Popen(
        [*CLLM, "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def has_rows(run: Path) -> bool:
    path = run / "metrics.jsonl"
    return path.exists() and path.read_text().count("\n") >= 1


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


# ------------------------------------------------------------------ errors ---
def expect_error(result: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"^cllm train: error: " + pattern, result.stderr, re.M), (
        result.stderr
    )
    assert "hint: " in result.stderr


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.batch_size=0", "train.batch_size"),
        ("optim.name=lion", "optim.name"),
        ("train.seq_len=1000", "train.seq_len"),
        ("schedule.min_lr=1", "schedule.min_lr"),  # above optim.lr
    ],
)
def test_bad_set_value_names_the_field(tmp_path, corpus, override, field):
    result = cllm_train(
        *sets(data__corpus=corpus, train__out_dir=tmp_path / "r"), "--set", override
    )
    expect_error(result, re.escape(field) + ":")
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_missing_config_file(tmp_path):
    result = cllm_train("--config", str(tmp_path / "missing.toml"))
    expect_error(result, r"--config .*missing\.toml: no such file")


def test_config_file_is_read(tmp_path, corpus):
    toml = tmp_path / "run.toml"
    toml.write_text(f'[train]\nsteps = 3\nout_dir = "{tmp_path / "r"}"\n')
    ok(
        cllm_train(
            "--config",
            str(toml),
            *sets(omit=("train.steps",), data__corpus=corpus, schedule__warmup_steps=1),
        )
    )
    assert len(rows(tmp_path / "r", "train")) == 3


def test_unknown_backend(tmp_path, corpus):
    result = cllm_train(
        *sets(data__corpus=corpus, train__out_dir=tmp_path / "r"),
        "--backend",
        "no_such_backend",
    )
    expect_error(result, "backend 'no_such_backend' could not be loaded")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [("abc", "corpus too small"), ("  \n", "corpus file .*no text")],
)
def test_tiny_or_empty_corpus_fails_fast(tmp_path, text, pattern):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text(text)
    result = cllm_train(
        *sets(data__corpus=tiny, train__out_dir=tmp_path / "r"), timeout=60
    )
    expect_error(result, pattern)


def test_missing_corpus(tmp_path):
    result = cllm_train(
        *sets(data__corpus=tmp_path / "nope", train__out_dir=tmp_path / "r")
    )
    expect_error(result, "data.corpus: no such file or directory")


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "/dev/urandom"])
def test_special_corpus_fails_fast(tmp_path, special):
    # A FIFO blocked the read forever, a device read until memory ran out.
    path = tmp_path / "pipe.txt" if special == "fifo" else Path(special)
    if special == "fifo":
        os.mkfifo(path)
    result = cllm_train(
        *sets(data__corpus=path, train__out_dir=tmp_path / "r"), timeout=60
    )
    kind = "a FIFO" if special == "fifo" else "a character device"
    expect_error(result, re.escape(f"corpus: {path} is {kind}"))
    assert len(result.stderr.strip().splitlines()) == 2  # the error and its hint


def test_a_corpus_that_is_not_utf8_warns_in_one_line(tmp_path):
    text = read_default_corpus()[:3000].encode()
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes(text[:100] + b"caf\xe9 " + text[100:] + b"\xff")
    result = ok(cllm_train(*sets(data__corpus=corpus, train__out_dir=tmp_path / "r")))
    warning = (
        f"cllm train: warning: corpus file {corpus} is not valid UTF-8; 2 byte(s) "
        "replaced with U+FFFD (the first at byte offset 103)"
    )
    assert result.stderr.splitlines() == [warning], result.stderr


@pytest.mark.parametrize(
    "launcher", [{"PMI_SIZE": "2", "PMI_RANK": "1"}, {"OMPI_COMM_WORLD_SIZE": "3"}]
)
def test_an_mpi_launch_without_the_mpi_engine_is_refused(tmp_path, corpus, launcher):
    """What mpiexec sets in each process it starts: with the threads engine,
    each would train alone into the same run directory."""
    run = tmp_path / "r"
    result = cllm_train(*sets(data__corpus=corpus, train__out_dir=run), env=launcher)
    expect_error(result, r"parallel\.engine: this is one of [23] processes started by")
    assert "--set parallel.engine=mpi" in result.stderr
    assert not run.exists()
    ok(
        cllm_train(
            *sets(data__corpus=corpus, train__out_dir=run), env={"PMI_SIZE": "1"}
        )
    )


def test_existing_run_needs_resume_or_overwrite(tmp_path, corpus):
    args = sets(
        data__corpus=corpus,
        train__out_dir=tmp_path / "r",
        train__steps=3,
        schedule__warmup_steps=1,
    )
    ok(cllm_train(*args))
    expect_error(cllm_train(*args), "train.out_dir: .* already holds a run")
    ok(cllm_train(*args, "--overwrite"))
    assert [r["step"] for r in rows(tmp_path / "r", "train")] == [1, 2, 3]


def test_resume_cannot_change_the_model(tmp_path, corpus):
    run = tmp_path / "r"
    ok(
        cllm_train(
            *sets(
                data__corpus=corpus,
                train__out_dir=run,
                train__steps=3,
                schedule__warmup_steps=1,
            )
        )
    )
    result = cllm_train("--resume", str(run), "--set", "model.n_embd=32")
    expect_error(result, r"model\.n_embd: cannot change when resuming")


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign"])
def test_damaged_checkpoint_is_refused_with_a_hint(tmp_path, corpus, damage):
    run = tmp_path / "r"
    ok(
        cllm_train(
            *sets(
                data__corpus=corpus,
                train__out_dir=run,
                train__steps=3,
                schedule__warmup_steps=1,
            )
        )
    )
    path = checkpoint.latest(run)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-5] ^= 0x10
    else:
        data = bytearray(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 14)
    path.write_bytes(bytes(data))
    result = cllm_train("--resume", str(path))
    expect_error(result, re.escape(str(path)))
