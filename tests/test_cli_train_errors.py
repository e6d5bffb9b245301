"""``cllm train`` on bad input: bad fields, config files, backends and
corpora, an MPI launch without the MPI engine, an existing run directory, a
changed model on resume and a damaged checkpoint are each refused with one
error line and a hint (exit status 2); a corpus that is not UTF-8 only warns."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cllm_spec import checkpoint
from cllm_spec.data import read_default_corpus
from tests import cli_train_helpers
from tests.cli_train_helpers import cllm_train, expect_error, ok, rows, sets

# pytest finds a test's fixtures among its module's names
corpus = cli_train_helpers.corpus


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


def _three_step_run(run: Path, corpus: Path) -> Path:
    """A finished 3-step run in ``run``, for the tests that then resume it."""
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
    return run


def test_resume_cannot_change_the_model(tmp_path, corpus):
    run = _three_step_run(tmp_path / "r", corpus)
    result = cllm_train("--resume", str(run), "--set", "model.n_embd=32")
    expect_error(result, r"model\.n_embd: cannot change when resuming")


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign"])
def test_damaged_checkpoint_is_refused_with_a_hint(tmp_path, corpus, damage):
    run = _three_step_run(tmp_path / "r", corpus)
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
