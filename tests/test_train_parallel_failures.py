"""``cllm train`` with ``parallel.workers`` when a worker fails: an exception
in a worker ends the run promptly with that worker's error and exit status (1
for an unexpected error, 2 for a typed one), keeping the steps and checkpoints
done before it; a hung worker ends the run at ``parallel.timeout``.
"""

from __future__ import annotations

import re

import pytest

from cllm_spec import checkpoint
from tests import train_parallel_helpers
from tests.train_parallel_helpers import QUICK, run_tiny

# pytest finds a test's fixtures among its module's names
corpus = train_parallel_helpers.corpus
faulty = train_parallel_helpers.faulty


# ============================================================ failures ====
@pytest.mark.parametrize(
    ("mode", "rc", "needles"),
    [
        (
            "raise",
            1,
            ["RuntimeError: injected kernel failure", "raised by worker "],
        ),
        (
            "typed",
            2,
            ["cllm train: error: injected kernel failure", "  raised by worker "],
        ),
    ],
)
def test_a_failing_worker_stops_the_run_with_its_error(
    tmp_path, corpus, faulty, mode, rc, needles
):
    # Call 100 of layernorm_forward falls in step 2: a group's forward calls it
    # 3 times (ln_1, ln_2, ln_f), and a step computes 24 groups (B = 14 fills
    # all 12, K = 2), so step 1 makes calls 1-72 and goes through.
    run = run_tiny(
        tmp_path / "run",
        corpus,
        "--set",
        "parallel.workers=3",
        "--set",
        "train.backend=faulty_backend",
        "--set",
        "train.checkpoint_every=1",
        env={"CLLM_FAULT_MODE": mode, "CLLM_FAULT_AT": "100"},
        pythonpath=faulty,
    )
    assert run.rc == rc, run.stdout + run.stderr
    assert run.seconds < QUICK
    for needle in needles:
        assert needle in run.stderr, run.stderr
    worker = int(re.search(r"raised by worker (\d)", run.stderr).group(1))
    assert 0 <= worker < 3
    assert [r["step"] for r in run.rows("train")] == [1]
    assert [s for s, _ in checkpoint.list_checkpoints(run.out)] == [1]


def test_a_hung_worker_ends_the_run_at_the_timeout(tmp_path, corpus, faulty):
    run = run_tiny(
        tmp_path / "run",
        corpus,
        "--set",
        "parallel.workers=2",
        "--set",
        "parallel.timeout=1",
        "--set",
        "train.backend=faulty_backend",
        env={"CLLM_FAULT_MODE": "hang", "CLLM_FAULT_AT": "100"},
        pythonpath=faulty,
    )
    assert run.rc == 2, run.stdout + run.stderr
    assert run.seconds < QUICK
    assert re.search(
        r"cllm train: error: step 1: no result within 1\.0 s for .*\(worker [01]\)",
        run.stderr,
    ), run.stderr
