"""Reading a text corpus from a file or a directory, and the bundled corpus.

``open_corpus(path) -> Corpus`` checks a corpus; ``Corpus.pieces()`` streams its
text in pieces of about ``CHUNK_BYTES`` (1 MiB) characters, so a corpus of any
size is read in bounded memory; ``read_corpus(path) -> str`` is the whole text,
``"".join(open_corpus(path).pieces())``.

- A file: its text. A directory: the text of every text file below it,
  recursively, sorted by path components (so the corpus, and every vocabulary
  built from it, is the same on every machine, whatever order the file system
  lists files in), joined with ``"\\n"`` where a file does not already end
  with a newline, so the last word of one file never merges with the first word
  of the next.
- Only regular files are ever opened, through :func:`cllm_spec.files.open_regular`:
  a corpus path that is a FIFO, a device (``/dev/zero``, ``/dev/urandom``) or a
  socket is a ``ConfigError`` before a byte is read (a FIFO would block forever, a
  device never ends). Such files found under a directory are skipped with one
  :class:`CorpusWarning` that names them.
- Hidden files and directories (name starting with ``"."``, e.g. ``.git``) are
  skipped, as the seed's loader did. Symbolic links to directories are not
  followed (no cycles); links to files are read.
- A text file is one without NUL bytes. Files containing NUL bytes are binary
  and skipped with one :class:`CorpusWarning` that names them (the seed skipped
  by extension instead, so a binary file with an unlisted extension entered the
  corpus). A file named directly that is binary is an ``EmptyInputError``.
- Text is decoded as UTF-8 (a leading byte-order mark is dropped). Bytes that are
  not valid UTF-8 are replaced with U+FFFD, exactly as ``bytes.decode(errors=
  "replace")`` does, and a :class:`CorpusWarning` names the file, the number of
  bytes replaced and the byte offset of the first: one stray Latin-1 byte should
  not stop a run, but it should not pass silently either.
- Line ends ``"\\r\\n"`` and ``"\\r"`` become ``"\\n"`` (Python's universal
  newlines), so a corpus gives the same tokens whichever system wrote it.
- A path that does not exist is a ``FileNotFoundError``. A corpus with no
  non-whitespace character (no files, only empty or binary files) is an
  ``EmptyInputError`` whose hint says what to pass instead.

``open_corpus`` reads every file once to check it (NUL bytes, UTF-8, whether
there is any text) and raises or warns then, before any tokenizing; each call of
``pieces()`` reads the files again. Pieces end anywhere, even inside a word (never
inside a character): a tokenizer regroups them at boundaries that are safe for it
(:mod:`cllm_spec.data.pieces`).

``default_corpus_path()`` is the corpus that ships with the package (see
``corpus/SOURCE.md``: Jane Austen's *Pride and Prejudice*, public domain);
``read_default_corpus()`` reads it.
"""

from __future__ import annotations

import codecs
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from cllm_spec.errors import CllmWarning, ConfigError, EmptyInputError
from cllm_spec.files import open_regular

DEFAULT_CORPUS_FILE = "pride_and_prejudice.txt"
EMPTY_HINT = (
    "pass a UTF-8 text file or a directory containing some; "
    "omit the corpus to use the bundled default"
)
#: bytes read from a corpus file at a time (pieces hold at most this many characters)
CHUNK_BYTES = 1 << 20


class CorpusWarning(CllmWarning):
    """A corpus file was skipped (binary, special) or had bytes replaced (not UTF-8)."""


def default_corpus_path() -> Path:
    """Path of the bundled default corpus (package data, installed unzipped)."""
    return Path(str(resources.files("cllm_spec.data") / "corpus" / DEFAULT_CORPUS_FILE))


def read_default_corpus() -> str:
    """Text of the bundled default corpus."""
    return read_corpus(default_corpus_path())


def read_corpus(path: str | os.PathLike[str]) -> str:
    """Text of a file, or of every text file under a directory (see module doc)."""
    return "".join(open_corpus(path).pieces())


@dataclass(frozen=True)
class Corpus:
    """A checked corpus: ``files`` are its non-empty text files, in corpus order."""

    root: Path
    files: tuple[Path, ...]

    def pieces(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
        """The corpus text in order, in pieces of at most ``chunk_bytes + 4``
        characters (a piece of a file's start holds its first 3 bytes as well,
        and a CR at a piece's end waits for the next, which may start with LF)."""
        last = len(self.files) - 1
        for i, file in enumerate(self.files):
            tail = ""
            for text in _file_text(file, chunk_bytes):
                tail = text
                yield text
            if i < last and not tail.endswith("\n"):
                yield "\n"


def open_corpus(path: str | os.PathLike[str], chunk_bytes: int = CHUNK_BYTES) -> Corpus:
    """Check the corpus at ``path`` (a file or a directory); see the module doc."""
    root = Path(path)
    if root.is_dir():
        return _open_directory(root, chunk_bytes)
    if not root.exists():
        raise FileNotFoundError(f"corpus: no such file or directory: {root}")
    scan = _scan_file(root, chunk_bytes)
    if scan.binary:
        raise EmptyInputError(
            f"corpus: {root} is a binary file (it contains NUL bytes)", hint=EMPTY_HINT
        )
    if not scan.has_text:
        raise EmptyInputError(
            f"corpus file {root}: no text (empty or whitespace only)", hint=EMPTY_HINT
        )
    return Corpus(root, (root,))


def list_corpus_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every non-hidden regular file under ``root``, in sorted path order."""
    return _walk(Path(root))[0]


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """Non-hidden (regular files, special files) under ``root``, sorted by path."""
    regular: list[Path] = []
    special: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place stops os.walk from descending into hidden directories;
        # sorting in place fixes the order it visits the rest.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for name in filenames:
            if name.startswith("."):
                continue
            try:  # stat, never open: a FIFO is classified without blocking
                mode = (base / name).stat().st_mode
            except OSError:  # a dangling link: nothing to read
                continue
            (regular if stat.S_ISREG(mode) else special).append(base / name)
    return sorted(regular), sorted(special)


def _open_directory(root: Path, chunk_bytes: int) -> Corpus:
    regular, special = _walk(root)
    texts: list[Path] = []
    binary: list[Path] = []
    has_text = False
    for file in regular:
        scan = _scan_file(file, chunk_bytes)
        if scan.binary:
            binary.append(file)
        elif not scan.empty:
            texts.append(file)
            has_text = has_text or scan.has_text
    for skipped, why in ((special, "special"), (binary, "binary")):
        if skipped:
            names = ", ".join(str(p.relative_to(root)) for p in skipped)
            warnings.warn(
                f"corpus: skipped {len(skipped)} {why} file(s) under {root}: {names}",
                CorpusWarning,
                stacklevel=3,
            )
    if not has_text:
        raise EmptyInputError(
            f"corpus directory {root} ({len(texts)} non-empty text file(s)): "
            "no text (empty or whitespace only)",
            hint=EMPTY_HINT,
        )
    return Corpus(root, tuple(texts))


# --------------------------------------------------------------------------- decoding


class _Utf8Decoder:
    """Incremental UTF-8 decoding, ``errors="replace"``, counting what it replaced.

    ``feed(data, final)`` returns the text of the bytes fed so far that form whole
    characters; an incomplete character at the end waits for the next call. A bad
    sequence raises in strict decoding with the byte range the "replace" handler
    would get, so replacing each range by one U+FFFD and going on at its end gives
    exactly ``bytes.decode("utf-8", "replace")``, whatever the cut points.
    """

    def __init__(self, offset: int = 0) -> None:
        self._pending = b""
        self._offset = offset  # file offset of self._pending[0]
        self.bad_bytes = 0
        self.first_bad: int | None = None

    def feed(self, data: bytes, final: bool) -> str:
        buf = memoryview(self._pending + data)
        out: list[str] = []
        pos = 0
        while True:
            try:
                text, used = codecs.utf_8_decode(buf[pos:], "strict", final)
            except UnicodeDecodeError as exc:
                out.append(str(buf[pos : pos + exc.start], "utf-8"))
                out.append("\ufffd")
                if self.first_bad is None:
                    self.first_bad = self._offset + pos + exc.start
                self.bad_bytes += exc.end - exc.start
                pos += exc.end
                continue
            out.append(text)
            pos += used
            break
        self._pending = bytes(buf[pos:])
        self._offset += pos
        return "".join(out)


def _open_text(file: Path) -> tuple[BinaryIO, _Utf8Decoder, bytes]:
    """The open file, its decoder, and its first bytes after a byte-order mark."""
    handle, _ = open_regular(file, "corpus", ConfigError)
    head = handle.read(len(codecs.BOM_UTF8))
    if head == codecs.BOM_UTF8:
        return handle, _Utf8Decoder(len(head)), b""
    return handle, _Utf8Decoder(0), head


def _file_text(file: Path, chunk_bytes: int) -> Iterator[str]:
    """The decoded text of one file with universal newlines, in pieces."""
    handle, decoder, data = _open_text(file)
    carry = ""  # a final "\r" waits: the next piece may start with "\n"
    with handle:
        while True:
            chunk = handle.read(chunk_bytes)
            text = carry + decoder.feed(data + chunk, final=not chunk)
            data = b""
            carry = "\r" if chunk and text.endswith("\r") else ""
            if carry:
                text = text[:-1]
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if not chunk:
                return


@dataclass(frozen=True)
class _FileScan:
    binary: bool  # contains a NUL byte
    empty: bool  # decodes to "" (no bytes, or a byte-order mark alone)
    has_text: bool  # some character that is not whitespace


def _scan_file(file: Path, chunk_bytes: int) -> _FileScan:
    """Read ``file`` once: binary? empty? any text? Warn if it is not UTF-8."""
    handle, decoder, data = _open_text(file)
    empty, has_text = True, False
    with handle:
        while True:
            chunk = data + handle.read(chunk_bytes)
            data = b""
            if b"\0" in chunk:
                return _FileScan(binary=True, empty=False, has_text=False)
            text = decoder.feed(chunk, final=not chunk)
            empty = empty and not text
            has_text = has_text or (bool(text) and not text.isspace())
            if not chunk:
                break
    if decoder.bad_bytes:
        warnings.warn(
            f"corpus file {file} is not valid UTF-8; {decoder.bad_bytes} byte(s) "
            f"replaced with U+FFFD (the first at byte offset {decoder.first_bad})",
            CorpusWarning,
            stacklevel=4,
        )
    return _FileScan(binary=False, empty=empty, has_text=has_text)
