"""Helpers and fixtures shared by the ``cllm train`` end-to-end test modules.

Every run is a subprocess on a tiny config (:data:`TINY`) that trains in
seconds; :func:`sets` turns fields into ``--set`` arguments for it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cllm_spec import checkpoint
from cllm_spec.data import read_default_corpus
from cllm_spec.errors import BackendError
from cllm_spec.registry import available_backends, get_backend

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


#: the end-to-end tests run on every backend that loads here
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


def expect_error(result: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"^cllm train: error: " + pattern, result.stderr, re.M), (
        result.stderr
    )
    assert "hint: " in result.stderr


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
