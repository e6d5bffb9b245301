"""``cllm train --resume`` on hostile and damaged run directories.

A checkpoint's SHA-256 is a checksum anyone can recompute, so the hostile
checkpoints here are real ones whose metadata was edited and re-signed
(:func:`resign`). Each test copies one small trained run (``base_run``) and
damages its copy.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cllm_spec import checkpoint
from cllm_spec.errors import CheckpointError
from tests.cli_train_helpers import (
    ckpt_steps,
    cllm_train,
    corpus,
    expect_error,
    has_rows,
    ok,
    rows,
    sets,
    start_long_run,
    wait_for,
)

__all__ = ["corpus"]  # the fixture, shared with the cllm train tests

STEPS = 3


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, corpus) -> Path:
    """A finished 3-step run with one checkpoint."""
    run = tmp_path_factory.mktemp("base") / "run"
    ok(
        cllm_train(
            *sets(
                data__corpus=corpus,
                train__out_dir=run,
                train__steps=STEPS,
                schedule__warmup_steps=1,
            )
        )
    )
    return run


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    """A copy of ``base_run`` to damage."""
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def resign(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit the checkpoint's metadata in place and write it with a valid checksum."""
    tensors, meta = checkpoint.load(path)
    edit(meta)
    automatic = ("format", "format_version", "sha256")
    metadata = {k: v for k, v in meta.items() if k not in automatic}
    try:
        checkpoint.save(path, tensors=tensors, metadata=metadata)
    except CheckpointError:  # what the writer refuses: forged, validly signed
        prepared = checkpoint._prepare(tensors, checkpoint._encode_metadata(metadata))
        path.write_bytes(
            prepared.header + b"".join(a.tobytes() for a in prepared.arrays)
        )


def resume(run: Path, *args: str, **kwargs: Any) -> Any:
    """``cllm train --resume RUN`` for two more steps."""
    return cllm_train(
        "--resume", str(run), "--set", f"train.steps={STEPS + 2}", *args, **kwargs
    )


# ------------------------------------------------------ the stored config ---
@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("parallel", "workers", 100_000, r"parallel\.workers: expected <= 1,024"),
        ("train", "eval_batches", 10**12, r"train\.eval_batches: expected <="),
        ("model", "n_layer", -1, r"model\.n_layer: expected >= 1"),
        ("train", "keep_last", "many", r"train\.keep_last: expected int"),
        ("parallel", "timeout", 1e300, r"parallel\.timeout: expected a value in"),
    ],
)
def test_stored_config_is_validated_like_set(run, section, key, value, message):
    path = checkpoint.latest(run)
    resign(path, lambda meta: meta["run"]["config"][section].update({key: value}))
    result = resume(run)
    expect_error(
        result,
        re.escape(str(path)) + ": the run config stored in the checkpoint is not "
        "valid: " + message,
    )


def test_stored_config_of_the_wrong_shape_is_refused(run):
    path = checkpoint.latest(run)
    resign(path, lambda meta: meta["run"]["config"].update(train=[1, 2]))
    # refused by the loader's metadata types, before the resume reads it
    expect_error(resume(run), r".*metadata\.run\.config\.train: expected sections")


# ----------------------------------------------------------------- backend ---
def test_a_backend_the_checkpoint_names_is_never_imported(run, tmp_path):
    """The stored train.backend is looked up among registered backends only; a
    module path the user gives on the command line still loads."""
    plant = tmp_path / "plant"
    plant.mkdir()
    marker = tmp_path / "imported"
    (plant / "planted_backend.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    path = checkpoint.latest(run)
    resign(
        path,
        lambda meta: meta["run"]["config"]["train"].update(backend="planted_backend"),
    )
    env = {"PYTHONPATH": str(plant)}
    result = cllm_train("--resume", str(run), "--set", "train.steps=5", env=env)
    expect_error(result, r"backend 'planted_backend' is not a registered backend")
    assert not marker.exists()
    ok(
        cllm_train(
            "--resume",
            str(run),
            "--set",
            "train.steps=5",
            "--backend",
            "cllm_numpy",
            env=env,
        )
    )
    assert not marker.exists()


# ------------------------------------------------------------------ corpus ---
def plant_corpus(run: Path, tmp_path: Path) -> Path:
    """Point the checkpoint's data.corpus at a FIFO: opening it for reading
    would block forever."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    resign(
        checkpoint.latest(run),
        lambda meta: meta["run"]["config"]["data"].update(corpus=str(fifo)),
    )
    return fifo


def test_resume_reads_the_run_dirs_data_not_the_stored_corpus_path(run, tmp_path):
    plant_corpus(run, tmp_path)
    result = ok(resume(run, timeout=60))
    assert f"data: the run's prepared {run / 'dataset.bin'}" in result.stdout
    assert [r["step"] for r in rows(run, "train")] == list(range(1, STEPS + 3))


def test_resume_without_prepared_data_needs_a_named_corpus(run, tmp_path, corpus):
    plant_corpus(run, tmp_path)
    (run / "dataset.bin").unlink()
    expect_error(
        resume(run, timeout=60),
        re.escape(f"--resume: the run directory {run} has no prepared data"),
    )
    moved = tmp_path / "moved.txt"  # the same text at another path
    shutil.copyfile(corpus, moved)
    ok(resume(run, "--set", f"data.corpus={moved}", timeout=60))
    assert (run / "dataset.bin").exists()


def test_a_named_corpus_with_other_text_is_refused(run, tmp_path, corpus):
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text()[::-1])
    expect_error(
        resume(run, "--set", f"data.corpus={other}"),
        "data.corpus: the tokens of corpus .* differ from the ones the checkpoint",
    )


def test_a_special_prepared_dataset_is_refused_unopened(run):
    (run / "dataset.bin").unlink()
    os.mkfifo(run / "dataset.bin")
    expect_error(resume(run, timeout=60), r"dataset.bin: .* is a FIFO")


def test_resume_into_another_directory_copies_the_prepared_data(run, tmp_path):
    other = tmp_path / "other"
    ok(resume(run, "--set", f"train.out_dir={other}"))
    for name in ("dataset.bin", "tokenizer.json", "dataset.json"):
        assert (other / name).read_bytes() == (run / name).read_bytes(), name


# ---------------------------------------------------------------- metadata ---
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("metrics", [1, 2], "metrics: expected an object"),
        ("metrics", {"train": [1]}, "metrics.train: expected "),
        ("metrics", {"train": {"loss": "low"}}, "metrics.train: expected "),
        ("metrics", {"train": {"loss": {"a": 1}}}, "metrics.train: expected "),
        ("metrics", {"other": {}}, "metrics: unexpected entry 'other'"),
        ("data_cursor", [0, 0], "data_cursor: expected an object"),
        ("data_cursor", {"epoch": "0", "batch": 0}, "data_cursor.epoch: expected an"),
        ("data_cursor", {"epoch": 0, "batch": 0}, "data_cursor.sha256: expected a"),
        ("tokenizer", "byte", "tokenizer: expected "),
    ],
)
def test_malformed_metadata_is_a_clear_error(run, key, value, message):
    """Metadata of the wrong shape, refused by the loader or by the resume:
    one line naming the entry (metrics that are a list raised a TypeError)."""
    path = checkpoint.latest(run)
    resign(path, lambda meta: meta.update({key: value}))
    expect_error(
        resume(run), re.escape(f"{path}: metadata") + "[. ]" + re.escape(message)
    )


# ---------------------------------------------------------- one writer only ---
def test_a_run_directory_has_one_writer(tmp_path, corpus):
    """A second run on a directory in use is refused naming the holder, even
    with --overwrite (which would delete the live run's checkpoints)."""
    run = tmp_path / "run"
    proc = start_long_run(run, corpus, train__checkpoint_every=1)
    try:
        wait_for(lambda: has_rows(run) and ckpt_steps(run))
        holder = re.escape(f"(pid {proc.pid})")
        busy = r"train\.out_dir: .* is being written by another cllm train " + holder
        expect_error(
            cllm_train("--resume", str(run), "--set", "train.steps=2000000"), busy
        )
        again = sets(data__corpus=corpus, train__out_dir=run)
        expect_error(cllm_train(*again, "--overwrite"), busy)
        assert ckpt_steps(run)  # still there
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out + err
    step = rows(run, "train")[-1]["step"]  # the lock went with the process
    ok(cllm_train("--resume", str(run), "--set", f"train.steps={step + 1}"))


def test_partial_files_of_killed_writes_are_removed_at_start(run):
    """A kill during a write leaves its temporary file; the next run on the
    directory deletes them (and nothing else)."""
    partial = [
        run / ".ckpt-000000004.safetensors.k2j4_x.tmp",
        run / ".metrics.jsonl.a8f3.tmp",
        run / "dataset.binq9z1.tmp",
    ]
    for path in partial:
        path.write_bytes(b"\0" * 100)
    keep = run / "notes.tmp"
    keep.write_text("mine")
    result = ok(resume(run))
    for path in partial:
        assert not path.exists(), path.name
        assert f"removed {path.name}, a partial write" in result.stdout
    assert keep.read_text() == "mine"


# ------------------------------------------------------------ sampling RNG ---
def test_resume_restores_the_sampling_rng(tmp_path, corpus):
    """A run that printed samples before its checkpoint prints, after resuming,
    the samples of the uninterrupted run and saves the same RNG state."""
    common = sets(
        data__corpus=corpus,
        train__steps=8,
        train__sample_every=2,
        train__sample_tokens=12,
        train__checkpoint_every=4,
        train__keep_last=5,
    )
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    ok(cllm_train(*common, "--set", f"train.out_dir={whole}"))
    at_4 = checkpoint.checkpoint_path(whole, 4)
    ok(cllm_train("--resume", str(at_4), "--set", f"train.out_dir={resumed}"))
    fresh = checkpoint.rng_state(np.random.default_rng([1337, 1]))  # the seed's
    assert checkpoint.load(at_4)[1]["rng_state"] != fresh  # samples 2, 4 drew
    samples = {r["step"]: r["text"] for r in rows(whole, "sample")}
    assert sorted(samples) == [2, 4, 6, 8]
    assert {r["step"]: r["text"] for r in rows(resumed, "sample")} == {
        6: samples[6],
        8: samples[8],
    }
    assert samples[6] != samples[8]
    end = [
        checkpoint.load(checkpoint.checkpoint_path(d, 8))[1] for d in (whole, resumed)
    ]
    assert end[0]["rng_state"] == end[1]["rng_state"]
