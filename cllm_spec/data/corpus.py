"""Reading a text corpus from a file or a directory, and the bundled corpus.

``read_corpus(path) -> str``

- A file: its text. A directory: the text of every text file below it,
  recursively, sorted by path components (so the corpus, and every vocabulary
  built from it, is the same on every machine, whatever order the file system
  lists files in), joined with ``"\\n"`` where a file does not already end
  with a newline, so the last word of one file never merges with the first word
  of the next.
- Hidden files and directories (name starting with ``"."``, e.g. ``.git``) are
  skipped, as the seed's loader did. Symbolic links to directories are not
  followed (no cycles); links to files are read.
- A text file is one without NUL bytes. Files containing NUL bytes are binary
  and skipped with one :class:`CorpusWarning` that names them (the seed skipped
  by extension instead, so a binary file with an unlisted extension entered the
  corpus). A file named directly that is binary is an ``EmptyInputError``.
- Text is decoded as UTF-8 (a leading byte-order mark is dropped). Bytes that are
  not valid UTF-8 are replaced with U+FFFD and a :class:`CorpusWarning` names the
  file and the byte offset of the first bad sequence: one stray Latin-1 byte
  should not stop a run, but it should not pass silently either.
- Line ends ``"\\r\\n"`` and ``"\\r"`` become ``"\\n"`` (Python's universal
  newlines), so a corpus gives the same tokens whichever system wrote it.
- A path that does not exist is a ``FileNotFoundError``. A result with no
  non-whitespace character (no files, only empty or binary files) is an
  ``EmptyInputError`` whose hint says what to pass instead.

``default_corpus_path()`` is the corpus that ships with the package (see
``corpus/SOURCE.md``: Jane Austen's *Pride and Prejudice*, public domain);
``read_default_corpus()`` reads it.
"""

from __future__ import annotations

import os
import warnings
from importlib import resources
from pathlib import Path

from cllm_spec.errors import EmptyInputError

DEFAULT_CORPUS_FILE = "pride_and_prejudice.txt"
EMPTY_HINT = (
    "pass a UTF-8 text file or a directory containing some; "
    "omit the corpus to use the bundled default"
)


class CorpusWarning(UserWarning):
    """A corpus file was skipped (binary) or had bytes replaced (not UTF-8)."""


def default_corpus_path() -> Path:
    """Path of the bundled default corpus (package data, installed unzipped)."""
    return Path(str(resources.files("cllm_spec.data") / "corpus" / DEFAULT_CORPUS_FILE))


def read_default_corpus() -> str:
    """Text of the bundled default corpus."""
    return read_corpus(default_corpus_path())


def read_corpus(path: str | os.PathLike[str]) -> str:
    """Text of a file, or of every text file under a directory (see module doc)."""
    root = Path(path)
    if root.is_dir():
        return _read_directory(root)
    if not root.exists():
        raise FileNotFoundError(f"corpus: no such file or directory: {root}")
    text = _decode_file(root)
    if text is None:
        raise EmptyInputError(
            f"corpus: {root} is a binary file (it contains NUL bytes)", hint=EMPTY_HINT
        )
    return _expect_some_text(text, f"corpus file {root}")


def list_corpus_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every non-hidden regular file under ``root``, in sorted path order."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place stops os.walk from descending into hidden directories;
        # sorting in place fixes the order it visits the rest.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        found.extend(base / f for f in sorted(filenames) if not f.startswith("."))
    return sorted(p for p in found if p.is_file())


def _read_directory(root: Path) -> str:
    texts: list[str] = []
    binary: list[Path] = []
    for file in list_corpus_files(root):
        text = _decode_file(file)
        if text is None:
            binary.append(file)
        elif text:
            texts.append(text)
    if binary:
        names = ", ".join(str(p.relative_to(root)) for p in binary)
        warnings.warn(
            f"corpus: skipped {len(binary)} binary file(s) under {root}: {names}",
            CorpusWarning,
            stacklevel=3,
        )
    joined = "".join(t if t.endswith("\n") else t + "\n" for t in texts[:-1])
    joined += texts[-1] if texts else ""
    what = f"corpus directory {root} ({len(texts)} non-empty text file(s))"
    return _expect_some_text(joined, what)


def _decode_file(file: Path) -> str | None:
    """The file's text with universal newlines, or None for a binary file."""
    data = file.read_bytes()
    if b"\0" in data:
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        warnings.warn(
            f"corpus: {file} is not valid UTF-8 (first bad byte at offset "
            f"{exc.start}); undecodable bytes were replaced with U+FFFD",
            CorpusWarning,
            stacklevel=4,
        )
        text = data.decode("utf-8-sig", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _expect_some_text(text: str, what: str) -> str:
    if not text.strip():
        raise EmptyInputError(
            f"{what}: no text (empty or whitespace only)", hint=EMPTY_HINT
        )
    return text
