"""Run configuration: defaults, TOML, --set overrides, and errors naming the field."""

from __future__ import annotations

import pytest

from cllm_spec.errors import ConfigError
from cllm_spec.train.config import RunConfig, load_config, parse_overrides


def test_defaults_are_a_valid_complete_config():
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.train.seq_len <= cfg.model.block_size
    assert set(cfg.to_dict()) == {
        "model",
        "data",
        "optim",
        "schedule",
        "train",
        "parallel",
    }


def test_toml_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[train]\nsteps = 50\nbatch_size = 4\n[optim]\nname = "sgd"\n')
    cfg = load_config(
        path, ["train.steps=7", "optim.betas=0.8,0.9", "model.tie_embeddings=false"]
    )
    assert cfg.train.steps == 7  # --set wins over the file
    assert cfg.train.batch_size == 4  # the file wins over the default
    assert cfg.optim.name == "sgd"
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.model.tie_embeddings is False


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.batch_size=0", "train.batch_size"),
        ("train.steps=ten", "train.steps"),
        ("train.steps=2.5", "train.steps"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.lr=nan", "optim.lr"),
        ("optim.name=lion", "optim.name"),
        ("optim.betas=0.9", "optim.betas"),
        ("optim.betas=0.9,1.0", "optim.betas[1]"),
        ("model.n_head=5", "model.n_head"),
        ("model.activation=swish", "model.activation"),
        ("data.val_fraction=0", "data.val_fraction"),
        ("data.tokenizer=chars", "data.tokenizer"),
        ("schedule.warmup_steps=-1", "schedule.warmup_steps"),
        ("train.dtype=float16", "train.dtype"),
        ("train.seq_len=1000", "train.seq_len"),
        ("parallel.workers=-1", "parallel.workers"),
        ("model.tie_embeddings=maybe", "model.tie_embeddings"),
        ("train.nonexistent=1", "train.nonexistent"),
        ("nosection.key=1", "nosection"),
    ],
)
def test_bad_value_names_the_field(override, field):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.message.startswith(field + ":")


@pytest.mark.parametrize("pair", ["steps=1", "train.steps", ".steps=1", "train.=1"])
def test_malformed_override(pair):
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_overrides([pair])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text('[train]\nsteps = "many"\n')
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(wrong_type)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("parallel.workers=100000", "parallel.workers: expected <= 1,024, got 100,000"),
        ("parallel.workers=1024", None),
        ("model.n_embd=1000000", "model.n_embd: expected <= 65,536"),
        ("train.batch_size=100000000", "train.batch_size: expected <= 1,048,576"),
        ("train.seed=-1", "train.seed: expected >= 0, got -1"),
        ("parallel.timeout=1e300", "parallel.timeout: expected a value in"),
        ("train.time_limit=1e300", "train.time_limit: expected a value in"),
    ],
)
def test_counts_and_sizes_have_upper_bounds(override, message):
    """A value no run means (from a typo or an edited checkpoint) is an error
    naming the field, not an allocation of gigabytes."""
    if message is None:
        assert load_config(None, [override]).parallel.workers == 1024
        return
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.message.startswith(message)
