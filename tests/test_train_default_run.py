"""The default run: ``cllm train`` with no arguments, then ``cllm generate``.

Takes about three minutes on two cores, so it runs only when ``CLLM_SLOW_TESTS=1``
is set: ``CLLM_SLOW_TESTS=1 pytest tests/test_train_default_run.py``.

Measured on an otherwise idle 2-core machine (numpy backend, one worker): 700
steps of 48 x 64 tokens in 159-171 s, validation loss 0.480 x the unigram
entropy, 0.82 of the sampled words real (seed 0; 0.88 and 0.86 with seeds 1, 2).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from cllm_spec.data import read_default_corpus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("CLLM_SLOW_TESTS") != "1",
        reason="the default run takes minutes; set CLLM_SLOW_TESTS=1 to run it",
    ),
]

CLLM = [sys.executable, "-m", "cllm_spec.cli"]
BUDGET_SECONDS = 300.0
MAX_RATIO = 0.7  # final validation loss / unigram entropy (the requirement)
MIN_REAL_WORDS = 0.7  # share of sampled words found in the corpus


def test_default_run_beats_the_unigram_entropy_and_generates_words(tmp_path):
    begin = time.monotonic()
    result = subprocess.run(
        [*CLLM, "train"], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    seconds = time.monotonic() - begin
    assert result.returncode == 0, result.stdout + result.stderr
    # Reported, not asserted: wall time on a shared machine is noise, and the
    # budget is tracked where it is measured (benchmarks/RESULTS.md).
    print(f"default run: {seconds:.0f} s (budget {BUDGET_SECONDS:.0f} s)")
    found = re.search(
        r"final validation loss ([\d.]+) nats/token; unigram entropy ([\d.]+) "
        r"nats/token; ratio ([\d.]+)",
        result.stdout,
    )
    assert found, result.stdout
    val, entropy, _ = map(float, found.groups())
    assert val <= MAX_RATIO * entropy, result.stdout

    sample = subprocess.run(
        [
            *CLLM,
            "generate",
            "runs/default",
            "--seed",
            "0",
            "-n",
            "400",
            "--temperature",
            "0.7",
            "--prompt",
            "Elizabeth",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert sample.returncode == 0, sample.stderr
    vocabulary = set(re.findall(r"[a-z]+", read_default_corpus().lower()))
    words = re.findall(r"[a-z]+", sample.stdout.lower())[1:-1]  # ends may be cut
    assert len(words) >= 40, sample.stdout
    real = sum(w in vocabulary for w in words) / len(words)
    # Letters drawn from the corpus byte frequencies alone score 0.16 here.
    assert real >= MIN_REAL_WORDS, f"{real:.2f} of the words are real:\n{sample.stdout}"
