"""``cllm generate``: subprocess runs against checkpoints built here.

Every expected text is computed in this process with ``cllm_spec.generate``
on the same weights, so the command must run the stored model (not random
logits, not another checkpoint) with the flags it was given.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from cllm_spec import checkpoint as ck
from cllm_spec.cli import main
from cllm_spec.commands.info import select_backend
from cllm_spec.data import EOS_ID, make_tokenizer
from cllm_spec.data.tokenizers import Tokenizer
from cllm_spec.errors import BackendError
from cllm_spec.generate import generate
from cllm_spec.model import ModelConfig, init_params, param_views
from cllm_spec.protocols import SGDState
from cllm_spec.registry import default_backend_name, get_backend
from cllm_spec.sampling import SamplingConfig

TEXT = (
    "the cat sat on the mat . the dog sat on the log . "
    "a cat and a dog met on a mat by the log . "
) * 4


class Saved(NamedTuple):
    path: Path
    cfg: ModelConfig
    params: np.ndarray
    tokenizer: Tokenizer


def make_checkpoint(
    directory: Path,
    *,
    kind: str = "word",
    step: int = 5,
    seed: int = 0,
    block_size: int = 8,
    with_tokenizer: bool = True,
    run_backend: str | None = None,
) -> Saved:
    """A tiny model trained on nothing, saved as ``ckpt-<step>.safetensors``.

    Weights: the gpt2 init with matrices scaled by 10, so different contexts
    give clearly different logits (the plain init is nearly constant). An SGD
    optimizer at ``step``, a few metrics and (with ``run_backend``) a run
    record make the metadata realistic.
    """
    tokenizer = make_tokenizer(kind, TEXT)
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        n_embd=16,
        n_layer=1,
        n_head=2,
        block_size=block_size,
    )
    params = init_params(cfg, np.random.default_rng(seed))
    for name, view in param_views(cfg, params).items():
        if ".ln_" not in name:
            view *= 10.0
    state = SGDState(np.zeros_like(params), step)
    tensors = ck.model_tensors(cfg, params) | ck.optimizer_tensors(cfg, "sgd", state)
    metadata: dict[str, Any] = {
        "model_config": cfg,
        "tokenizer": tokenizer.to_dict() if with_tokenizer else None,
        "optimizer": {"name": "sgd", "hyperparameters": {"lr": 0.1}, "step": step},
        "metrics": {"step": step, "loss": 2.5, "val_loss": float("nan"), "lr": 0.1},
        # what `cllm train` records; None: a checkpoint written by other code
        "run": None if run_backend is None else {"backend": run_backend, "step": step},
    }
    path = ck.save(
        ck.checkpoint_path(directory, step), tensors=tensors, metadata=metadata
    )
    return Saved(path, cfg, params.copy(), tokenizer)


def cllm(*args: str, stdin: str | None = None, env: dict[str, str] | None = None):
    """Run the console script; stdout/stderr decoded as UTF-8, no newline mapping."""
    exe = shutil.which("cllm")
    cmd = [exe] if exe else [sys.executable, "-m", "cllm_spec.cli"]
    run_env = {k: v for k, v in os.environ.items() if k != "CLLM_BACKEND"}
    run_env.update(env or {})
    result = subprocess.run(
        [*cmd, *args],
        input=None if stdin is None else stdin.encode(),
        capture_output=True,
        timeout=60,
        env=run_env,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def expected_text(saved: Saved, prompt: str, n: int, sampling, rng) -> str:
    """What ``cllm generate`` must print for ``prompt`` (without the newline)."""
    ids = saved.tokenizer.encode(prompt)
    new = generate(
        get_backend("numpy"), saved.cfg, saved.params, ids, n, sampling, rng, EOS_ID
    )
    return saved.tokenizer.decode(np.concatenate([ids, new]))


def assert_clean_error(code: int, err: str, command: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith(f"cllm {command}: error: "), err
    assert "\n  hint: " in err, err
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    monkeypatch.delenv("CLLM_BACKEND", raising=False)


@pytest.fixture(scope="module")
def word_ckpt(tmp_path_factory) -> Saved:
    return make_checkpoint(tmp_path_factory.mktemp("word"))


# ---------------------------------------------------------------- subprocess ---
def test_greedy_prints_prompt_and_the_models_continuation(word_ckpt):
    code, out, err = cllm(
        "generate", str(word_ckpt.path), "--prompt", "The cat", "-n", "12", "--greedy"
    )
    want = expected_text(
        word_ckpt, "The cat", 12, SamplingConfig(greedy=True), np.random.default_rng()
    )
    assert code == 0, err
    assert out == want + "\n"
    assert out.startswith("the cat ")  # the word tokenizer lower-cases


def test_sampling_flags_and_seed_reach_the_sampler(word_ckpt):
    args = ("generate", str(word_ckpt.path), "--prompt", "a dog", "-n", "20")
    flags = ("--temperature", "0.8", "--top-k", "10", "--top-p", "0.9", "--seed", "4")
    code, out, err = cllm(*args, *flags)
    sampling = SamplingConfig(temperature=0.8, top_k=10, top_p=0.9)
    want = expected_text(word_ckpt, "a dog", 20, sampling, np.random.default_rng(4))
    assert code == 0, err
    assert out == want + "\n"
    assert cllm(*args, *flags)[1] == out  # the seed makes it reproducible


def test_run_directory_uses_its_latest_checkpoint(tmp_path):
    old = make_checkpoint(tmp_path, step=3, seed=1, kind="byte")
    new = make_checkpoint(tmp_path, step=12, seed=2, kind="byte")
    code, out, err = cllm("generate", str(tmp_path), "--prompt", "on", "--greedy")
    greedy = SamplingConfig(greedy=True)
    want_new = expected_text(new, "on", 50, greedy, np.random.default_rng())
    want_old = expected_text(old, "on", 50, greedy, np.random.default_rng())
    assert code == 0, err
    assert want_new != want_old
    assert out == want_new + "\n"
    assert out.startswith("on")  # the byte tokenizer keeps the prompt exactly


def test_interactive_continues_each_stdin_line_until_eof(word_ckpt):
    code, out, err = cllm(
        "generate",
        str(word_ckpt.path),
        "--interactive",
        "-n",
        "6",
        "--seed",
        "7",
        stdin="the cat\na dog met\n\nthe log",  # no final newline: still read
    )
    rng = np.random.default_rng(7)  # seeded once for the whole session
    sampling = SamplingConfig()
    want = [
        expected_text(word_ckpt, p, 6, sampling, rng)
        for p in ("the cat", "a dog met", "", "the log")
    ]
    assert code == 0, err
    assert out.split("\n") == [*want, ""]


def test_interactive_session_checks_the_weights_once(word_ckpt, capsys, monkeypatch):
    # every reply reuses the weights checked when the session started: a
    # production model's O(P) finite scan is not paid again per prompt
    from cllm_spec import checks

    scanned: list[str] = []
    real = checks.expect_finite

    def counting(name: str, *args: object, **kwargs: object) -> None:
        scanned.append(name)
        real(name, *args, **kwargs)

    monkeypatch.setattr(checks, "expect_finite", counting)
    monkeypatch.setattr("sys.stdin", io.StringIO("the cat\na dog met\nthe log\n"))
    code = main(["generate", str(word_ckpt.path), "--interactive", "-n", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert len(out.rstrip("\n").split("\n")) == 3  # three replies
    assert scanned.count("params") == 1


def test_missing_checkpoint_is_a_clean_error(tmp_path):
    code, _, err = cllm("generate", str(tmp_path / "nope.safetensors"))
    assert_clean_error(code, err, "generate", "no such file")


# ------------------------------------------------------------------ in-process ---
def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_corrupted_checkpoint(tmp_path, capsys):
    saved = make_checkpoint(tmp_path)
    data = bytearray(saved.path.read_bytes())
    data[-3] ^= 0x10  # one bit of the last tensor
    saved.path.write_bytes(bytes(data))
    code, _, err = run_main(capsys, "generate", str(saved.path))
    assert_clean_error(code, err, "generate", "checksum mismatch")


def test_directory_without_checkpoints(tmp_path, capsys):
    code, _, err = run_main(capsys, "generate", str(tmp_path))
    assert_clean_error(code, err, "generate", "no ckpt-")


def test_checkpoint_without_tokenizer(tmp_path, capsys):
    saved = make_checkpoint(tmp_path, with_tokenizer=False)
    code, _, err = run_main(capsys, "generate", str(saved.path))
    assert_clean_error(code, err, "generate", "stores no tokenizer")


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (("--temperature", "0"), "temperature"),
        (("--top-k", "0"), "top_k"),
        (("--top-k", "1000"), "top_k"),
        (("--top-p", "1.5"), "top_p"),
        (("--backend", "no_such_backend"), "no_such_backend"),
    ],
)
def test_bad_sampling_flags_and_backend(word_ckpt, capsys, flags, fragment):
    code, _, err = run_main(capsys, "generate", str(word_ckpt.path), *flags)
    assert_clean_error(code, err, "generate", fragment)


@pytest.mark.parametrize("flags", [("-n", "-1"), ("-n", "x"), ("--seed", "-2")])
def test_bad_counts_are_argparse_errors(word_ckpt, capsys, flags):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(word_ckpt.path), *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "cllm generate: error: argument" in err


def test_zero_tokens_prints_the_prompt(word_ckpt, capsys):
    code, out, _ = run_main(
        capsys, "generate", str(word_ckpt.path), "--prompt", "the mat", "-n", "0"
    )
    assert code == 0 and out == "the mat\n"


# ------------------------------------------------------------ backend choice ---
def test_backend_flag_beats_environment_and_run(monkeypatch):
    monkeypatch.setenv("CLLM_BACKEND", "no_such_backend")
    backend, source = select_backend("numpy", {"run": {"backend": "x"}}, "generate")
    assert backend.name == "numpy" and source == "--backend"


def test_environment_beats_the_run(monkeypatch):
    monkeypatch.setenv("CLLM_BACKEND", "no_such_backend")
    with pytest.raises(BackendError):
        select_backend(None, {"run": {"backend": "numpy"}}, "generate")


def test_the_runs_backend_when_nothing_else_is_given():
    backend, source = select_backend(None, {"run": {"backend": "numpy"}}, "eval")
    assert backend.name == "numpy" and source == "the checkpoint's run"


def test_an_unloadable_run_backend_falls_back_to_the_default_with_a_note(capsys):
    default = default_backend_name()  # c where it was built, else numpy
    backend, source = select_backend(None, {"run": {"backend": "gone_c"}}, "eval")
    assert backend is get_backend(default) and source == "default"
    assert f"'gone_c' does not load here; using {default}" in capsys.readouterr().err


def test_no_run_record_means_the_default():
    backend, source = select_backend(None, {"run": None}, "info")
    assert backend is get_backend(default_backend_name()) and source == "default"


def test_a_recorded_backend_that_does_not_load_falls_back_with_a_note(tmp_path, capsys):
    saved = make_checkpoint(tmp_path, run_backend="gone_backend")
    code, out, err = run_main(capsys, "generate", str(saved.path), "-n", "3")
    assert code == 0
    assert "note: the run's backend 'gone_backend' does not load here" in err
    assert out.endswith("\n")


def test_a_recorded_module_path_is_never_imported(tmp_path):
    """generate, eval and info with a checkpoint whose run names a module: the
    module does not run (the checkpoint is anyone's to edit)."""
    plant = tmp_path / "plant"
    plant.mkdir()
    marker = tmp_path / "imported"
    (plant / "planted_backend.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    saved = make_checkpoint(tmp_path, run_backend="planted_backend")
    env = {
        "PYTHONPATH": os.pathsep.join([str(plant), os.environ.get("PYTHONPATH", "")])
    }
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    for args in (
        ("generate", str(saved.path), "-n", "3"),
        ("eval", str(saved.path), "--data", str(text)),
        ("info", str(saved.path)),
    ):
        code, _, err = cllm(*args, env=env)
        assert code == 0, (args, err)
        assert "Traceback" not in err
        assert not marker.exists(), args
