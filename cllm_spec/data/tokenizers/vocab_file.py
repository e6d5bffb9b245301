"""``vocab.txt``: the word tokenizer's vocabulary as a text file.

:func:`write_vocab`, :func:`read_vocab`: UTF-8, one line per id in id order,
``token<TAB>count<LF>``; ids are implied by line order. The five specials are
the first five lines, written lower-case with their stored count (0 after
training, as the seed wrote them). The reader also accepts the seed's upper-case
spellings ``<PAD>`` ... ``<MASK>`` (and CRLF line ends), and rejects with a
``ConfigError`` naming the line number: a line without exactly one TAB, an empty
token, a token containing whitespace or upper-case letters (it could never be
produced by ``encode``), a count that is not a non-negative decimal integer, a
duplicate token, a missing special, or bytes that are not UTF-8. An empty file
is an ``EmptyInputError``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cllm_spec.data.tokenizers.common import NUM_SPECIAL, SPECIAL_TOKENS
from cllm_spec.data.tokenizers.word import VOCAB_HINT, WordTokenizer, _token_problem
from cllm_spec.errors import ConfigError, DTypeError, EmptyInputError
from cllm_spec.files import open_regular


def write_vocab(path: str | os.PathLike[str], tokenizer: WordTokenizer) -> None:
    """Write ``vocab.txt``: ``token<TAB>count`` per id, in id order, UTF-8, LF."""
    if not isinstance(tokenizer, WordTokenizer):
        raise DTypeError(
            f"tokenizer: expected a WordTokenizer, got {type(tokenizer).__name__}"
        )
    lines = (
        f"{t}\t{c}\n" for t, c in zip(tokenizer.tokens, tokenizer.counts, strict=True)
    )
    Path(path).write_text("".join(lines), encoding="utf-8", newline="\n")


def read_vocab(path: str | os.PathLike[str]) -> WordTokenizer:
    """Read ``vocab.txt`` (ours or the seed's); errors name the line number."""
    handle, _ = open_regular(path, "vocab.txt", ConfigError)  # no FIFO, no device
    with handle:
        raw = handle.read()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{bad_line}: not valid UTF-8", hint=VOCAB_HINT
        ) from exc
    lines = content.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final LF ends the last line; it does not start a new one
    if not lines:
        raise EmptyInputError(f"{path}: empty vocabulary file", hint=VOCAB_HINT)
    tokens: list[str] = []
    counts: list[int] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        token, count = _parse_vocab_line(path, lineno, line.removesuffix("\r"))
        if token in first_line:
            raise ConfigError(
                f"{path}:{lineno}: duplicate token {token!r} "
                f"(first on line {first_line[token]})",
                hint=VOCAB_HINT,
            )
        first_line[token] = lineno
        tokens.append(token)
        counts.append(count)
    if len(tokens) < NUM_SPECIAL:
        raise ConfigError(
            f"{path}: {len(tokens)} line(s), but the five specials alone need 5",
            hint=VOCAB_HINT,
        )
    return WordTokenizer(tokens, counts)


def _parse_vocab_line(
    path: str | os.PathLike[str], lineno: int, line: str
) -> tuple[str, int]:
    fields = line.split("\t")
    if len(fields) != 2:
        raise ConfigError(
            f"{path}:{lineno}: expected token<TAB>count, got {line!r}", hint=VOCAB_HINT
        )
    token, count_text = fields
    if lineno <= NUM_SPECIAL:
        token = _expect_special(path, lineno, token)
    else:
        problem = _token_problem(token)
        if problem is not None:
            raise ConfigError(f"{path}:{lineno}: {problem}", hint=VOCAB_HINT)
    if not (count_text.isascii() and count_text.isdigit()):
        raise ConfigError(
            f"{path}:{lineno}: count must be a non-negative integer, got "
            f"{count_text!r}",
            hint=VOCAB_HINT,
        )
    return token, int(count_text)


def _expect_special(path: str | os.PathLike[str], lineno: int, token: str) -> str:
    """The special of this line, in our spelling or the seed's upper-case one."""
    want = SPECIAL_TOKENS[lineno - 1]
    if token not in (want, want.upper()):
        raise ConfigError(
            f"{path}:{lineno}: expected the special {want!r}, got {token!r}",
            hint=VOCAB_HINT,
        )
    return want
