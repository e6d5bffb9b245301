"""The run config a user sees: --print-config, field docs, examples, hints."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cllm_spec.errors import ConfigError
from cllm_spec.train.config import (
    FIELD_HINT,
    RunConfig,
    clamp_warmup,
    from_dict,
    load_config,
)
from cllm_spec.train.config_docs import FIELD_DOCS, field_names, render_toml

ROOT = Path(__file__).resolve().parents[1]
CLLM = [sys.executable, "-m", "cllm_spec.cli"]


def cllm(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLLM, *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def test_every_field_is_documented_and_no_doc_is_stale() -> None:
    assert sorted(FIELD_DOCS) == sorted(field_names())
    assert all(doc.strip() for doc in FIELD_DOCS.values())


def test_rendered_toml_reads_back_to_the_same_config(tmp_path: Path) -> None:
    cfg = load_config(
        None, ["optim.betas=0.8,0.9", 'train.out_dir=a "b"', "model.n_layer=3"]
    )
    path = tmp_path / "run.toml"
    path.write_text(render_toml(cfg))
    assert load_config(path) == cfg
    assert load_config(path, ["train.steps=5"]).train.steps == 5


def test_print_config_prints_every_field_with_its_comment() -> None:
    out = cllm("train", "--print-config", "--set", "train.steps=123")
    assert out.returncode == 0, out.stderr
    doc = tomllib.loads(out.stdout)
    assert doc["train"]["steps"] == 123
    assignments = [x for x in out.stdout.splitlines() if " = " in x]
    assert len(assignments) == len(field_names())
    assert all("  # " in line for line in assignments)
    assert load_config(None, ["train.steps=123"]) == from_dict(doc)


def test_print_config_applies_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[model]\nn_embd = 64\n")
    out = cllm("train", "--print-config", "--config", str(path))
    assert out.returncode == 0, out.stderr
    assert tomllib.loads(out.stdout)["model"]["n_embd"] == 64


def test_print_config_with_a_bad_field_is_one_line_and_exit_2() -> None:
    out = cllm("train", "--print-config", "--set", "train.batch_size=0")
    assert out.returncode == 2
    assert out.stderr.startswith("cllm train: error: train.batch_size")
    assert "--print-config" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("train.stpes=3", "'steps'"),
        ("optim.weight_decy=0.1", "'weight_decay'"),
        ("trian.steps=3", "'train'"),
    ],
)
def test_unknown_key_suggests_the_nearest(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=f"did you mean {suggestion}") as info:
        load_config(None, [override])
    assert info.value.hint_text == FIELD_HINT


def test_range_errors_point_to_where_fields_are_documented() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["optim.lr=-1"])
    assert info.value.hint_text == FIELD_HINT
    assert "see the documented range" not in str(info.value)


def test_short_run_clamps_the_warmup_with_a_notice() -> None:
    cfg, notice = clamp_warmup(load_config(None, ["train.steps=20"]))
    assert cfg.schedule.warmup_steps == 2
    assert notice is not None and "warming up for 2 steps" in notice
    same, none = clamp_warmup(load_config(None, ["train.steps=21"]))
    assert none is None and same.schedule.warmup_steps == 20
    constant = load_config(None, ["train.steps=5", "schedule.name=constant"])
    assert clamp_warmup(constant) == (constant, None)
    one, _ = clamp_warmup(load_config(None, ["train.steps=1"]))
    assert one.schedule.warmup_steps == 0


def test_a_short_cli_run_works_with_the_default_warmup(tmp_path: Path) -> None:
    out = cllm(
        "train",
        *("--set", "model.n_embd=16", "--set", "model.n_layer=1"),
        *("--set", "train.batch_size=4", "--set", "train.seq_len=16"),
        *("--set", "model.block_size=16", "--set", "train.steps=5"),
        *("--set", "train.eval_batches=1", "--set", "train.sample_every=0"),
        *("--set", f"train.out_dir={tmp_path}"),
    )
    assert out.returncode == 0, out.stderr
    assert "warming up for 0 steps instead" in out.stdout + out.stderr


@pytest.mark.parametrize("kind", ["directory", "binary", "fifo", "not toml"])
def test_config_that_is_not_a_toml_file_is_a_config_error(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "cfg"
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(bytes(range(256)))
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("this is [not toml\n")
    with pytest.raises(ConfigError, match="--config"):
        load_config(path)
    out = cllm("train", "--config", str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("cllm train: error: --config")


EXAMPLES = sorted((ROOT / "configs").glob("*.toml"))


def test_the_examples_are_shipped() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"default.toml", "seed-minimal.toml", "seed-production.toml"} <= names


def test_default_example_is_the_default_run() -> None:
    assert load_config(ROOT / "configs" / "default.toml") == RunConfig()


def test_seed_examples_say_what_the_seed_ran() -> None:
    minimal = load_config(ROOT / "configs" / "seed-minimal.toml")
    assert (minimal.model.n_layer, minimal.model.n_head, minimal.model.n_embd) == (
        1,
        1,
        32,
    )
    assert (minimal.data.vocab_size, minimal.train.seq_len) == (27, 8)
    assert (minimal.train.batch_size, minimal.optim.lr) == (2, 0.01)
    prod = load_config(ROOT / "configs" / "seed-production.toml")
    got = dataclasses.astuple(prod.model)[:5]
    assert got == (384, 6, 12, 1536, 256)
    assert (prod.data.vocab_size, prod.train.seq_len, prod.train.batch_size) == (
        30000,
        128,
        32,
    )
    assert (prod.optim.name, prod.optim.lr, prod.optim.weight_decay) == (
        "adam",
        1e-4,
        0.01,
    )
    assert (prod.schedule.warmup_steps, prod.train.checkpoint_every) == (1000, 1000)
    assert (prod.train.eval_every, prod.parallel.workers) == (100, 12)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_each_example_runs_a_few_steps(example: Path, tmp_path: Path) -> None:
    out = cllm(
        "train",
        *("--config", str(example)),
        *("--set", "train.steps=2", "--set", "train.eval_batches=1"),
        *("--set", "train.sample_every=0"),
        *("--set", f"train.out_dir={tmp_path / 'run'}"),
    )
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "run").glob("ckpt-*.safetensors"))
