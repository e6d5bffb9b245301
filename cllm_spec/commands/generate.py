"""``cllm generate CKPT``: sample text from a checkpoint.

``CKPT`` is a checkpoint file or a run directory (its highest-step checkpoint
is used). The tokenizer comes from the checkpoint. The text printed is the
decoding of the prompt's ids followed by the new ids, so it shows what the
model saw: the word tokenizer lower-cases and prints unknown words as
``<unk>``; the byte tokenizer reproduces the prompt exactly.

Sampling: ``--temperature`` (default 1), ``--top-k``, ``--top-p``, or
``--greedy`` (argmax; combined with a sampling flag it is an error); ``--seed``
makes the output reproducible (without it the generator is seeded from the OS).
``--beams K`` is beam search instead: the likeliest continuation under the
model (``cllm_spec.beam``), deterministic, so no sampling flag goes with it.
Generation stops after ``-n`` tokens (default 50, at most 1,000,000) or at
``<eos>``, which is not printed. The prompt is ``--prompt TEXT`` or the text of
``--prompt-file F`` (empty by default: generation starts from ``<bos>``).

Output: one continuation is printed as it is generated, token by token; Ctrl-C
keeps what was printed, ends the line and exits 130. ``--num-samples K``
samples K continuations in one batch (every decoding step is one forward over
K rows) and prints each after a ``--- sample i/K`` line; with ``--beams`` it
prints the K best beams, each line with its log-probability.

``--interactive`` reads one prompt per line until end of file (Ctrl-D) and
continues each; on a terminal it has line editing and history (readline), a
reply ends at ``<eos>`` or after ``-n`` tokens, and Ctrl-C stops the reply (at
the prompt it quits). The generator is seeded once, so a session with a seed is
reproducible as a whole.

Backend: ``--backend``, else ``$CLLM_BACKEND``, else the backend recorded by
the run that wrote the checkpoint if it loads here, else numpy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import numpy as np

from cllm_spec.beam import MAX_BEAMS, beam_search
from cllm_spec.commands.info import (
    LoadedCheckpoint,
    load_checkpoint,
    load_tokenizer,
    reports_errors,
    select_backend,
)
from cllm_spec.data.tokenizers import EOS_ID, Tokenizer
from cllm_spec.errors import ConfigError
from cllm_spec.files import open_regular
from cllm_spec.generate import generate_stream
from cllm_spec.model import checked_params
from cllm_spec.sampling import SamplingConfig

DEFAULT_NEW_TOKENS = 50
#: -n above this is an error: far beyond any context this model family reads,
#: and each token is a forward of the model
MAX_NEW_TOKENS = 1_000_000
MAX_SAMPLES = 1024
MAX_PROMPT_FILE_BYTES = 16 << 20
EXIT_INTERRUPTED = 130
HISTORY_FILE = "~/.cllm_history"


def nonnegative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """argparse type: an int in [low, high]."""

    def parse(text: str) -> int:
        value = nonnegative_int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected an integer in [{low}, {high:,}], got {value:,}"
            )
        return value

    return parse


def check_flags(args: argparse.Namespace) -> None:
    """Flags that contradict each other are a ConfigError naming both."""
    sampling = [
        flag
        for flag, value in (
            ("--temperature", args.temperature),
            ("--top-k", args.top_k),
            ("--top-p", args.top_p),
        )
        if value is not None
    ]
    if args.greedy and sampling:
        raise ConfigError(
            f"--greedy takes the argmax, so {', '.join(sampling)} would be ignored",
            hint="drop --greedy to sample, or drop the sampling flags",
        )
    if args.beams is not None:
        extra = [*sampling, *(["--greedy"] if args.greedy else [])]
        extra += ["--seed"] if args.seed is not None else []
        if extra:
            raise ConfigError(
                f"--beams is a deterministic search, so {', '.join(extra)} would be "
                "ignored",
                hint="drop those flags, or drop --beams to sample",
            )
        if args.num_samples > args.beams:
            raise ConfigError(
                f"--num-samples {args.num_samples} is more than --beams "
                f"{args.beams} can return",
                hint="ask for at most as many samples as beams",
            )
    if args.prompt is not None and args.prompt_file is not None:
        raise ConfigError(
            "--prompt and --prompt-file both give the prompt",
            hint="pass one of them",
        )
    if args.interactive and (args.prompt is not None or args.prompt_file):
        raise ConfigError(
            "--interactive reads its prompts from stdin, so --prompt would be ignored",
            hint="drop --prompt or --interactive",
        )


def read_prompt(args: argparse.Namespace) -> str:
    """The text of ``--prompt`` or ``--prompt-file`` (UTF-8), else ''."""
    if args.prompt_file is None:
        return str(args.prompt or "")
    handle, size = open_regular(args.prompt_file, "--prompt-file", ConfigError)
    with handle:
        if size > MAX_PROMPT_FILE_BYTES:
            raise ConfigError(
                f"--prompt-file {args.prompt_file}: {size:,} bytes; a prompt is "
                f"at most {MAX_PROMPT_FILE_BYTES:,}",
                hint="the model sees only its last block_size tokens anyway",
            )
        raw = handle.read(MAX_PROMPT_FILE_BYTES + 1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"--prompt-file {args.prompt_file}: not UTF-8 text (byte {exc.start})",
            hint="pass a text file",
        ) from exc


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
    """The SamplingConfig of the flags (ConfigError names a bad field)."""
    return SamplingConfig(
        temperature=1.0 if args.temperature is None else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
    )


class TextStream:
    """The text of a growing id sequence, each character handed out once.

    ``push(ids)`` returns the text the new ids add. The text is the
    tokenizer's decoding of all ids so far (so the concatenation of what
    ``push`` returns, after ``finish``, is ``decode(prompt + new)`` exactly),
    computed from a short window of recent ids so a long generation costs
    O(1) per token. A trailing U+FFFD (a UTF-8 character whose bytes have not
    all come yet) is held back until the character completes.
    """

    WINDOW = 16  # ids of context decoded with the new ones
    HOLD = 4  # at most a UTF-8 character's bytes are held back

    def __init__(self, tokenizer: Tokenizer, prompt_ids: np.ndarray) -> None:
        self.tokenizer = tokenizer
        self.ids = [int(i) for i in prompt_ids]
        self.done = len(self.ids)  # ids whose text was handed out
        self.prompt_text = self._decode(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(np.asarray(ids, dtype=np.int64)))

    def push(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        return self._emit(final=False)

    def finish(self) -> str:
        """The text still held back."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        start = max(0, self.done - self.WINDOW)
        before = self._decode(self.ids[start : self.done])
        after = self._decode(self.ids[start:])
        if not after.startswith(before):  # a tokenizer that rewrites its past
            before = self._decode(self.ids[: self.done])
            after = self._decode(self.ids)
        text = after[len(before) :]
        held = len(self.ids) - self.done
        if not final and text.endswith("\ufffd") and held < self.HOLD:
            return ""
        self.done = len(self.ids)
        return text


class Session:
    """A loaded checkpoint ready to continue prompts, printing as it goes.

    The weights are checked (finite, the model's size) once, here: each reply
    then skips that O(P) scan, which on a production model costs as much as
    a short prompt's forward.
    """

    def __init__(
        self,
        ckpt: LoadedCheckpoint,
        tokenizer: Tokenizer,
        backend: Any,
        args: argparse.Namespace,
        out: TextIO,
    ) -> None:
        self.ckpt = ckpt
        self.params = checked_params(backend, ckpt.cfg, ckpt.params)
        self.tokenizer = tokenizer
        self.backend = backend
        self.sampling = sampling_from_args(args)
        self.rng = np.random.default_rng(args.seed)
        self.max_new_tokens = args.max_new_tokens
        self.samples = args.num_samples
        self.beams = args.beams
        self.out = out

    def reply(self, prompt: str) -> None:
        """Continue ``prompt`` and print the result (module docstring)."""
        prompt_ids = self.tokenizer.encode(prompt)
        if self.beams is not None:
            self._beams(prompt_ids)
        elif self.samples == 1:
            self._stream(prompt_ids)
        else:
            self._batch(prompt_ids)

    def _steps(self, prompt_ids: np.ndarray, rows: int) -> Iterator[Any]:
        return generate_stream(
            self.backend,
            self.ckpt.cfg,
            self.params,
            np.tile(prompt_ids, (rows, 1)),  # (K, T)
            self.max_new_tokens,
            self.sampling,
            self.rng,
            EOS_ID,
        )

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _stream(self, prompt_ids: np.ndarray) -> None:
        text = TextStream(self.tokenizer, prompt_ids)
        self._write(text.prompt_text)
        steps = self._steps(prompt_ids, 1)
        try:
            for toks, _ in steps:
                self._write(text.push([int(toks[0])]))
            self._write(text.finish())
        finally:
            steps.close()  # type: ignore[attr-defined]
            self._write("\n")  # Ctrl-C too: what was printed keeps its line

    def _batch(self, prompt_ids: np.ndarray) -> None:
        kept: list[list[int]] = [[] for _ in range(self.samples)]
        for toks, live in self._steps(prompt_ids, self.samples):
            for row in np.flatnonzero(live):
                kept[row].append(int(toks[row]))
        for i, new in enumerate(kept):
            ids = np.concatenate([prompt_ids, np.asarray(new, dtype=np.int64)])
            self._write(f"--- sample {i + 1}/{self.samples}\n")
            self._write(self.tokenizer.decode(ids) + "\n")

    def _beams(self, prompt_ids: np.ndarray) -> None:
        assert self.beams is not None
        found = beam_search(
            self.backend,
            self.ckpt.cfg,
            self.params,
            prompt_ids,
            self.max_new_tokens,
            self.beams,
            EOS_ID,
        )
        for i, hyp in enumerate(found[: self.samples]):
            if self.samples > 1:
                self._write(
                    f"--- beam {i + 1}/{self.samples} (log-probability "
                    f"{hyp.score:.4f})\n"
                )
            self._write(self.tokenizer.decode(np.concatenate([prompt_ids, hyp.ids])))
            self._write("\n")


def _terminal_lines(max_new_tokens: int) -> Iterator[str]:
    """Prompts typed at a terminal, with line editing and history."""
    import readline  # noqa: F401  (importing it gives input() editing and history)

    history = os.path.expanduser(HISTORY_FILE)
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    print(
        "Type a prompt and press Enter; a reply ends at <eos> or after "
        f"{max_new_tokens} tokens. Ctrl-C stops a reply, Ctrl-D quits.",
        file=sys.stderr,
    )
    try:
        while True:
            try:
                yield input("> ")
            except EOFError:
                print(file=sys.stderr)
                return
    finally:
        with contextlib.suppress(OSError):
            readline.write_history_file(history)


def _piped_lines(stream: TextIO) -> Iterator[str]:
    """Lines of ``stream`` without their line ends."""
    while True:
        line = stream.readline()
        if not line:
            return
        yield line.rstrip("\r\n")


@reports_errors("generate")
def cmd_generate(args: argparse.Namespace) -> int:
    check_flags(args)
    prompt = None if args.interactive else read_prompt(args)
    ckpt = load_checkpoint(args.checkpoint)
    tokenizer = load_tokenizer(ckpt)
    backend, _ = select_backend(args.backend, ckpt.metadata, "generate")
    session = Session(ckpt, tokenizer, backend, args, sys.stdout)
    if prompt is not None:
        try:
            session.reply(prompt)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED  # the stream ended its line already
        return 0
    lines = (
        _terminal_lines(args.max_new_tokens)
        if sys.stdin.isatty()
        else _piped_lines(sys.stdin)
    )
    try:
        for line in lines:
            try:
                session.reply(line)
            except KeyboardInterrupt:
                if not sys.stdin.isatty():
                    raise
                print("(stopped)", file=sys.stderr)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cllm generate``."""
    p = sub.add_parser(
        "generate",
        help="sample text from a checkpoint",
        description=(__doc__ or "").replace("``", ""),  # no reST in --help
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint file or run dir")
    p.add_argument("--prompt", default=None, help="text to continue (default: empty)")
    p.add_argument(
        "--prompt-file", default=None, metavar="F", help="continue the text of file F"
    )
    p.add_argument(
        "-n",
        "--max-new-tokens",
        type=bounded_int(0, MAX_NEW_TOKENS),
        default=DEFAULT_NEW_TOKENS,
        metavar="N",
        help=f"tokens to generate at most (default {DEFAULT_NEW_TOKENS}, at most "
        f"{MAX_NEW_TOKENS:,})",
    )
    p.add_argument(
        "--temperature", type=float, default=None, metavar="T", help="> 0 (default 1)"
    )
    p.add_argument(
        "--top-k", type=int, default=None, metavar="K", help="keep the K likeliest"
    )
    p.add_argument(
        "--top-p", type=float, default=None, metavar="P", help="nucleus mass in (0, 1]"
    )
    p.add_argument("--greedy", action="store_true", help="always take the argmax")
    p.add_argument(
        "--num-samples",
        type=bounded_int(1, MAX_SAMPLES),
        default=1,
        metavar="K",
        help="K continuations in one batch (with --beams: the K best beams)",
    )
    p.add_argument(
        "--beams",
        type=bounded_int(1, MAX_BEAMS),
        default=None,
        metavar="K",
        help="beam search with K beams: the likeliest continuation, no sampling",
    )
    p.add_argument(
        "--seed", type=nonnegative_int, default=None, metavar="S", help="RNG seed"
    )
    p.add_argument(
        "--interactive",
        action="store_true",
        help="read prompts from stdin, one per line, until end of file "
        "(line editing and history on a terminal)",
    )
    p.add_argument("--backend", default=None, metavar="NAME", help="compute backend")
    p.set_defaults(func=cmd_generate)
