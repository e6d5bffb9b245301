"""The peer benchmark (``benchmarks/peers.py``) without its torch contestants.

Its torch side needs torch, which is no test dependency; everything else (the
project's contestants, the loss check, ``cllm train`` end to end, the RSS
children, the measured bounds, the tables) runs here on the tiny config, with
an importable-but-broken ``torch`` on the path so that any torch import on
these paths fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cllm_spec.errors import BackendError
from cllm_spec.model import param_count
from cllm_spec.registry import get_backend

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import peers_models  # noqa: E402


def _c_backend_loads() -> bool:
    try:
        get_backend("c")
    except BackendError:
        return False
    return True


Run = tuple[dict, str, Path]  # the JSON report, the printed tables, its path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    if not _c_backend_loads():
        pytest.fail("the C backend does not load: build it with pip install -e .")
    tmp = tmp_path_factory.mktemp("peers")
    (tmp / "torch.py").write_text("raise ImportError('torch is not for tests')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp), *sys.path])}
    report = tmp / "peers.json"
    cmd = [sys.executable, str(BENCH / "peers.py"), "--contestants", "c,numpy"]
    cmd += ["--configs", "tiny", "--threads", "1", "--repeat", "1"]
    cmd += ["--rss-configs", "tiny", "--bw-mib", "32", "--sample-seconds", "0.02"]
    cmd += ["--e2e-steps", "4", "--markdown", "--json", str(report)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(report.read_text()), done.stdout, report


def test_every_figure_is_measured_for_both_backends(
    tiny_run: Run,
) -> None:
    out, _, _ = tiny_run
    (train,) = out["train"]
    assert set(train["rates"]) == {"c", "numpy"}
    assert all(r["median"] > 0 for r in train["rates"].values())
    assert {r["backend"] for r in out["e2e"]} == {"c", "numpy"}
    for row in out["e2e"]:
        assert row["cllm train"]["median"] > 0 and row["model API"]["median"] > 0
    (decode,) = out["decode"]
    assert set(decode["decode"]) == set(decode["prefill"]) == {"c", "numpy"}
    assert {r["contestant"] for r in out["rss"]} == {"c", "numpy"}
    for row in out["rss"]:
        assert 0 < row["base"] <= row["ready"] <= row["step2"]
    machine = out["machine"]
    assert machine["fma_gflops"]["1"] > 0 and machine["read_gbs"]["1"] > 0


def test_same_model_same_loss_and_same_greedy_tokens(
    tiny_run: Run,
) -> None:
    out, _, _ = tiny_run
    assert {r["contestant"] for r in out["losses"]} == {"c", "numpy"}
    assert all(r["ok"] and r["rel_err"] < 1e-5 for r in out["losses"])
    assert out["decode"][0]["agree_with_numpy"] == {"c": 128, "numpy": 128}


def test_markdown_has_every_table(tiny_run: Run) -> None:
    _, text, _ = tiny_run
    for title in (
        "Measured bounds",
        "First training loss",
        "Training tokens/s",
        "fraction of the FMA bound",
        "`cllm train` end to end",
        "Decoding tokens/s",
        "Prefill tokens/s",
        "Peak RSS",
    ):
        assert title in text
    assert "| tiny | 1 |" in text  # a Markdown row


def test_tables_come_back_from_the_json(tiny_run: Run) -> None:
    _, text, report = tiny_run
    cmd = [sys.executable, str(BENCH / "peers.py"), "--from-json", str(report)]
    done = subprocess.run(cmd + ["--markdown"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == text


def test_flop_count_is_six_per_matrix_weight_plus_attention() -> None:
    """6 FLOP per token for each weight of a matrix product (the LM head
    included), counted here from the spec's parameter count instead."""
    for bench in peers_models.CONFIGS.values():
        m = bench.model
        c, n = m.n_embd, m.n_layer
        not_matmul = m.block_size * c + n * (9 * c + m.n_hidden) + 2 * c
        matmul = param_count(m) - not_matmul  # wte counted once: the LM head
        attention = 12 * n * c * bench.seq
        assert peers_models.train_flop_per_token(bench) == 6 * matmul + attention


def test_decode_config_fits_prompt_and_new_tokens_in_the_cache() -> None:
    for bench in peers_models.CONFIGS.values():
        cfg = peers_models.decode_config(bench)
        need = peers_models.DECODE_PROMPT + peers_models.DECODE_NEW
        assert cfg.block_size >= need
        assert cfg.block_size == max(bench.model.block_size, need)
        assert (
            cfg.n_embd == bench.model.n_embd
            and cfg.vocab_size == bench.model.vocab_size
        )


def test_write_results_replaces_only_the_marked_block(tmp_path: Path) -> None:
    import peers_report

    doc = tmp_path / "RESULTS.md"
    before = f"# Results\n\nintro\n\n{peers_report.BEGIN}\nold table\n"
    after = f"{peers_report.END}\n\nnotes kept\n"
    doc.write_text(before + after)
    peers_report.write_results(doc, "| new | table |\n")
    text = doc.read_text()
    assert "old table" not in text and "| new | table |" in text
    assert text.startswith("# Results\n\nintro\n\n") and text.endswith("notes kept\n")
    peers_report.write_results(doc, "| newer |")  # the markers survive a rewrite
    assert "| new | table |" not in doc.read_text() and "| newer |" in doc.read_text()


def test_write_results_refuses_a_file_without_markers(tmp_path: Path) -> None:
    import peers_report

    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\n")
    with pytest.raises(SystemExit, match="no .* block"):
        peers_report.write_results(doc, "| t |")
    assert doc.read_text() == "# Results\n"


def test_torch_decay_groups_are_the_trainers_mask() -> None:
    """The PyTorch side's two AdamW groups decay exactly where ``cllm train``
    does, for every ``optim.decay`` rule."""
    from cllm_spec.model import param_layout
    from cllm_spec.train.state import DECAY_RULES, decay_mask

    cfg = peers_models.CONFIGS["small"].model
    layout = param_layout(cfg)
    for rule in DECAY_RULES:
        names = peers_models.decayed_names(cfg, rule)
        mask = decay_mask(cfg, rule)
        expected = np.ones(layout.size, bool) if mask is None else mask
        rebuilt = np.zeros(layout.size, bool)
        for name in names:
            rebuilt[layout.slice(name)] = True
        assert (rebuilt == expected).all(), rule


def test_decode_bound_times_the_c_step_inside_the_whole_call() -> None:
    if not _c_backend_loads():
        pytest.fail("the C backend does not load: build it with pip install -e .")
    import cllm_c.decode
    import decode_bound
    from peers_machine import Machine

    real = cllm_c.decode.lib
    row = decode_bound.measure("tiny", 1, 2, Machine(), bw_mib=32)
    assert cllm_c.decode.lib is real  # the timer is taken out again
    # the C call is part of generate's time: it streams at least as fast
    assert 0 < row["token"] <= row["step"]
    assert row["bound"] > 0 and row["python_us"] > 0
    weights = peers_models.decode_config(peers_models.CONFIGS["tiny"])
    assert row["mb"] == pytest.approx(
        peers_models.decode_bytes_per_token(weights) / 1e6
    )
