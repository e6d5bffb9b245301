"""``cllm generate CKPT``: sample text from a checkpoint.

``CKPT`` is a checkpoint file or a run directory (its highest-step checkpoint
is used). The tokenizer comes from the checkpoint. The text printed is the
decoding of the prompt's ids followed by the new ids, so it shows what the
model saw: the word tokenizer lower-cases and prints unknown words as
``<unk>``; the byte tokenizer reproduces the prompt exactly.

Sampling: ``--temperature`` (default 1), ``--top-k``, ``--top-p``, or
``--greedy`` (argmax); ``--seed`` makes the output reproducible (without it the
generator is seeded from the OS). Generation stops after ``-n`` tokens (default
50) or at ``<eos>``, which is not printed. An empty prompt (the default) starts
from ``<bos>``. ``--interactive`` reads one prompt per line from stdin until
end of file and prints one continuation per line; the generator is seeded once,
so a session with a seed is reproducible as a whole.

Backend: ``--backend``, else ``$CLLM_BACKEND``, else the backend recorded by
the run that wrote the checkpoint if it loads here, else numpy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import numpy as np

from cllm_spec.commands.info import (
    LoadedCheckpoint,
    load_checkpoint,
    load_tokenizer,
    reports_errors,
    select_backend,
)
from cllm_spec.data.tokenizers import EOS_ID, Tokenizer
from cllm_spec.generate import generate
from cllm_spec.sampling import SamplingConfig

DEFAULT_NEW_TOKENS = 50


def nonnegative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
    """The SamplingConfig of the flags (ConfigError names a bad field)."""
    return SamplingConfig(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
    )


class Session:
    """A loaded checkpoint ready to continue prompts."""

    def __init__(
        self,
        ckpt: LoadedCheckpoint,
        tokenizer: Tokenizer,
        backend: Any,
        sampling: SamplingConfig,
        rng: np.random.Generator,
        max_new_tokens: int,
    ) -> None:
        self.ckpt = ckpt
        self.tokenizer = tokenizer
        self.backend = backend
        self.sampling = sampling
        self.rng = rng
        self.max_new_tokens = max_new_tokens

    def continue_text(self, prompt: str) -> str:
        """The prompt's decoding followed by the generated continuation."""
        prompt_ids = self.tokenizer.encode(prompt)
        new_ids = generate(
            self.backend,
            self.ckpt.cfg,
            self.ckpt.params,
            prompt_ids,
            self.max_new_tokens,
            self.sampling,
            self.rng,
            EOS_ID,
        )
        return self.tokenizer.decode(np.concatenate([prompt_ids, new_ids]))


def _lines(stream: TextIO) -> Iterator[str]:
    """Lines of ``stream`` without their line ends, prompting on a terminal."""
    interactive = stream.isatty()
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = stream.readline()
        if not line:
            return
        yield line.rstrip("\r\n")


@reports_errors("generate")
def cmd_generate(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    tokenizer = load_tokenizer(ckpt)
    sampling = sampling_from_args(args)
    backend, _ = select_backend(args.backend, ckpt.metadata, "generate")
    session = Session(
        ckpt,
        tokenizer,
        backend,
        sampling,
        np.random.default_rng(args.seed),
        args.max_new_tokens,
    )
    if not args.interactive:
        print(session.continue_text(args.prompt))
        return 0
    try:
        for line in _lines(sys.stdin):
            print(session.continue_text(line), flush=True)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
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
    p.add_argument("--prompt", default="", help="text to continue (default: empty)")
    p.add_argument(
        "-n",
        "--max-new-tokens",
        type=nonnegative_int,
        default=DEFAULT_NEW_TOKENS,
        metavar="N",
        help=f"tokens to generate at most (default {DEFAULT_NEW_TOKENS})",
    )
    p.add_argument(
        "--temperature", type=float, default=1.0, metavar="T", help="> 0 (default 1)"
    )
    p.add_argument(
        "--top-k", type=int, default=None, metavar="K", help="keep the K likeliest"
    )
    p.add_argument(
        "--top-p", type=float, default=None, metavar="P", help="nucleus mass in (0, 1]"
    )
    p.add_argument("--greedy", action="store_true", help="always take the argmax")
    p.add_argument(
        "--seed", type=nonnegative_int, default=None, metavar="S", help="RNG seed"
    )
    p.add_argument(
        "--interactive",
        action="store_true",
        help="read prompts from stdin, one per line, until end of file",
    )
    p.add_argument("--backend", default=None, metavar="NAME", help="compute backend")
    p.set_defaults(func=cmd_generate)
