"""``cllm generate`` as a person uses it: streaming, Ctrl-C, batches, beams."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cllm_spec.beam import beam_search
from cllm_spec.cli import main
from cllm_spec.commands import generate as command
from cllm_spec.commands.generate import TextStream
from cllm_spec.data import EOS_ID, make_tokenizer
from cllm_spec.generate import generate_batch
from cllm_spec.registry import get_backend
from cllm_spec.sampling import SamplingConfig
from tests.test_cli_generate import (
    assert_clean_error,
    cllm,
    expected_text,
    make_checkpoint,
)


@pytest.fixture(autouse=True)
def _numpy_backend(monkeypatch):
    # the expected texts are computed on numpy; sampled continuations are
    # compared exactly, so the command runs on the same backend
    monkeypatch.setenv("CLLM_BACKEND", "numpy")


@pytest.fixture(scope="module")
def word_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("word"))


@pytest.fixture(scope="module")
def byte_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("byte"), kind="byte")


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------- streaming ---
class Recorder:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


def test_tokens_are_printed_as_they_come(word_ckpt, monkeypatch):
    out = Recorder()
    monkeypatch.setattr(command.sys, "stdout", out)
    assert (
        main(
            [
                "generate",
                str(word_ckpt.path),
                "--prompt",
                "the cat",
                "-n",
                "9",
                "--greedy",
            ]
        )
        == 0
    )
    greedy, rng = SamplingConfig(greedy=True), np.random.default_rng()
    want = expected_text(word_ckpt, "the cat", 9, greedy, rng)
    assert "".join(out.writes) == want + "\n"
    assert len([w for w in out.writes if w]) >= 9  # the prompt, then each token


@pytest.mark.parametrize("text", ["héllo wörld ✓ 日本", "plain ascii", ""])
def test_text_stream_holds_back_partial_utf8(text):
    tok = make_tokenizer("byte", "x")
    ids = tok.encode(text)
    stream = TextStream(tok, ids[:0])
    pieces = [stream.push([int(i)]) for i in ids] + [stream.finish()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_text_stream_of_words_equals_the_whole_decoding(word_ckpt):
    tok = word_ckpt.tokenizer
    ids = tok.encode("the cat sat on the mat . a dog met by the log " * 5)
    stream = TextStream(tok, ids[:3])
    text = stream.prompt_text + "".join(stream.push([int(i)]) for i in ids[3:])
    assert text + stream.finish() == tok.decode(ids)


def test_ctrl_c_keeps_the_printed_text_and_exits_130(byte_ckpt):
    """A real SIGINT while a long generation streams (greedy: this model
    never reaches <eos>, so only the signal ends it)."""
    cmd = [
        sys.executable,
        "-m",
        "cllm_spec.cli",
        "generate",
        str(byte_ckpt.path),
        "--prompt",
        "on",
        "-n",
        "1000000",
        "--greedy",
    ]
    env = {**os.environ, "CLLM_BACKEND": "numpy"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    first = proc.stdout.read(40)  # printing has begun: the prompt and tokens
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    out = (first + rest).decode("utf-8", "replace")
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    assert out.startswith("on") and out.endswith("\n") and len(out) > 40


# ------------------------------------------------------------- bounds ------
@pytest.mark.parametrize("n", ["1000001", "8000000000000"])
def test_absurd_token_counts_are_refused_up_front(word_ckpt, n):
    code, out, err = cllm("generate", str(word_ckpt.path), "-n", n)
    assert code == 2 and out == ""
    assert "expected an integer in [0, 1,000,000]" in err


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (("--greedy", "--top-k", "5"), "--greedy takes the argmax"),
        (("--greedy", "--temperature", "0.5"), "--temperature"),
        (("--beams", "2", "--top-p", "0.9"), "--beams is a deterministic search"),
        (("--beams", "2", "--seed", "3"), "--seed"),
        (("--beams", "2", "--num-samples", "3"), "more than --beams"),
        (("--prompt", "a", "--prompt-file", "x"), "--prompt and --prompt-file"),
        (("--interactive", "--prompt", "a"), "--interactive reads its prompts"),
    ],
)
def test_contradicting_flags_are_one_clear_error(word_ckpt, capsys, flags, fragment):
    code, out, err = run_main(capsys, "generate", str(word_ckpt.path), *flags)
    assert_clean_error(code, err, "generate", fragment)
    assert out == ""


# ------------------------------------------------------------- prompts -----
def test_prompt_file_is_the_prompt(word_ckpt, tmp_path, capsys):
    path = tmp_path / "p.txt"
    path.write_text("a dog met", encoding="utf-8")
    args = ("generate", str(word_ckpt.path), "-n", "7", "--seed", "2")
    from_file = run_main(capsys, *args, "--prompt-file", str(path))
    inline = run_main(capsys, *args, "--prompt", "a dog met")
    assert from_file == inline and from_file[0] == 0
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, _, err = run_main(capsys, *args, "--prompt-file", str(fifo))
    assert_clean_error(code, err, "generate", "FIFO")


# ------------------------------------------------------ batches and beams ---
def test_num_samples_are_one_batch_of_the_batched_decoder(word_ckpt, capsys):
    code, out, err = run_main(
        capsys,
        "generate",
        str(word_ckpt.path),
        "--prompt",
        "the cat",
        "-n",
        "8",
        "--seed",
        "5",
        "--num-samples",
        "3",
    )
    assert code == 0, err
    tok = word_ckpt.tokenizer
    ids = tok.encode("the cat")
    rows = generate_batch(
        get_backend("numpy"),
        word_ckpt.cfg,
        word_ckpt.params,
        np.tile(ids, (3, 1)),
        8,
        SamplingConfig(),
        np.random.default_rng(5),
        EOS_ID,
    )
    want = "".join(
        f"--- sample {i + 1}/3\n{tok.decode(np.concatenate([ids, row]))}\n"
        for i, row in enumerate(rows)
    )
    assert out == want
    assert len({r.tobytes() for r in rows}) > 1  # three samples, not one thrice


def test_beams_print_the_best_continuations(word_ckpt, capsys):
    tok = word_ckpt.tokenizer
    ids = tok.encode("a cat")
    found = beam_search(
        get_backend("numpy"), word_ckpt.cfg, word_ckpt.params, ids, 6, 4, EOS_ID
    )
    code, out, err = run_main(
        capsys,
        "generate",
        str(word_ckpt.path),
        "--prompt",
        "a cat",
        "-n",
        "6",
        "--beams",
        "4",
    )
    assert code == 0, err
    assert out == tok.decode(np.concatenate([ids, found[0].ids])) + "\n"
    code, out, _ = run_main(
        capsys,
        "generate",
        str(word_ckpt.path),
        "--prompt",
        "a cat",
        "-n",
        "6",
        "--beams",
        "4",
        "--num-samples",
        "2",
    )
    lines = out.splitlines()
    assert lines[0] == f"--- beam 1/2 (log-probability {found[0].score:.4f})"
    assert lines[3] == tok.decode(np.concatenate([ids, found[1].ids]))


# ------------------------------------------------------------ interactive ---
def _read_until(fd: int, marker: bytes, timeout: float = 60) -> bytes:
    seen = b""
    end = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


def test_interactive_terminal_says_how_replies_end(word_ckpt, tmp_path):
    pid, fd = pty.fork()
    if pid == 0:  # the child: cllm on a terminal
        os.environ.update(CLLM_BACKEND="numpy", HOME=str(tmp_path))
        os.execv(
            sys.executable,
            [
                sys.executable,
                "-m",
                "cllm_spec.cli",
                "generate",
                str(word_ckpt.path),
                "--interactive",
                "-n",
                "4",
            ],
        )
    try:
        # markers that only the prompt can end: the banner itself holds "> "
        # ("<eos> or"), and a key sent before readline waits for it can be
        # lost (a Ctrl-D read as EOF by the cooked terminal, for one)
        banner = _read_until(fd, b"quits.\r\n> ")
        assert b"a reply ends at <eos> or after 4 tokens" in banner
        os.write(fd, b"the cat\r")
        reply = _read_until(fd, b"\n> ")
        assert reply.endswith(b"\n> ") and b"the cat" in reply
        os.write(fd, b"\x04")  # Ctrl-D quits
        assert _exit_code(pid, timeout=60) == 0
        history = Path(tmp_path, ".cllm_history")
        assert "the cat" in history.read_text()  # readline kept the history
    finally:
        os.close(fd)
        _reap(pid)


def _exit_code(pid: int, timeout: float) -> int | None:
    """The child's exit code, or None if it is still running after ``timeout``
    seconds (the caller's finally kills it: a test never hangs)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    return None


def _reap(pid: int) -> None:
    """Kill and wait for the child if it is still there."""
    with contextlib.suppress(ChildProcessError, ProcessLookupError):
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
