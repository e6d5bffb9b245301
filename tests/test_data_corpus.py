"""Reading a corpus from a file or a directory, and the bundled default corpus."""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import resource
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cllm_spec.data.corpus import (
    CorpusWarning,
    default_corpus_path,
    list_corpus_files,
    open_corpus,
    read_corpus,
    read_default_corpus,
)
from cllm_spec.data.tokenizers import WordTokenizer
from cllm_spec.errors import CllmWarning, EmptyInputError


def write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# --------------------------------------------------------------------------- files


def test_a_file_is_read_as_is(tmp_path):
    path = tmp_path / "one.txt"
    write(path, "héllo wörld\nsecond line".encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_corpus(path) == "héllo wörld\nsecond line"


def test_line_ends_become_lf_and_a_bom_is_dropped(tmp_path):
    path = tmp_path / "win.txt"
    write(path, b"\xef\xbb\xbfone\r\ntwo\rthree\n")
    assert read_corpus(str(path)) == "one\ntwo\nthree\n"


def test_undecodable_bytes_are_replaced_with_a_warning_naming_the_file(tmp_path):
    path = tmp_path / "latin1.txt"
    write(path, b"caf\xe9 au lait\n")
    with pytest.warns(CorpusWarning, match=r"latin1\.txt.*offset 3") as record:
        text = read_corpus(path)
    assert text == "caf\ufffd au lait\n"
    assert len(record) == 1
    assert str(record[0].message) == (
        f"corpus file {path} is not valid UTF-8; 1 byte(s) replaced with U+FFFD "
        "(the first at byte offset 3)"
    )
    assert issubclass(CorpusWarning, CllmWarning)  # the CLI prints it in one line


def test_the_warning_counts_every_replaced_byte_at_file_offsets(tmp_path):
    # After a BOM (3 bytes): "ab" + \xff + "c" + a 3-byte character cut after 2
    # bytes at the very end. Offsets count from the start of the file.
    path = tmp_path / "bad.txt"
    write(path, b"\xef\xbb\xbfab\xffc\xe2\x82")
    with pytest.warns(CorpusWarning, match=r"3 byte\(s\) replaced.*offset 5\)"):
        assert read_corpus(path) == "ab\ufffdc\ufffd"


@pytest.mark.parametrize("data", [b"", b"  \n\t\r\n"], ids=["empty", "whitespace_only"])
def test_an_empty_file_is_an_error(tmp_path, data):
    path = tmp_path / "empty.txt"
    write(path, data)
    with pytest.raises(EmptyInputError, match="empty.txt") as info:
        read_corpus(path)
    assert "hint:" in str(info.value)


def test_a_binary_file_named_directly_is_an_error(tmp_path):
    path = tmp_path / "model.bin"
    write(path, b"\x01\x00\x02words")
    with pytest.raises(EmptyInputError, match="binary"):
        read_corpus(path)


def test_a_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_corpus(tmp_path / "nothing-here")


# ------------------------------------------------------------------- streaming


def old_decode(data: bytes) -> str | None:
    """The reading of one file before it streamed: whole bytes, one decode."""
    if b"\0" in data:
        return None
    text = data.decode("utf-8-sig", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def replaced_bytes(data: bytes) -> int:
    """How many bytes errors="replace" replaces in ``data`` (after a BOM)."""
    seen: list[int] = []

    def count(exc: UnicodeError) -> tuple[str, int]:
        assert isinstance(exc, UnicodeDecodeError)
        seen.append(exc.end - exc.start)
        return "\ufffd", exc.end

    codecs.register_error("test-corpus-count", count)
    data.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="test-corpus-count")
    return sum(seen)


# Characters of 1-4 bytes, bad and cut sequences, CR/LF, a BOM, mid-file BOMs.
TRICKY_BYTES = [
    b"a",
    b" ",
    b"\r",
    b"\n",
    b"\r\n",
    b"\xc3\xa9",
    b"\xe2\x82\xac",
    b"\xf0\x9d\x84\x9e",
    b"\xe2\x82",
    b"\xff",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf0\x9d",
    b"\xef\xbb\xbf",
    b"\xce\xa3",
]


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    parts=st.lists(st.sampled_from(TRICKY_BYTES), min_size=1, max_size=30),
    chunk=st.integers(1, 9),
)
def test_streamed_text_equals_the_whole_decode(tmp_path_factory, parts, chunk):
    data = b"".join(parts)
    path = tmp_path_factory.mktemp("s") / "c.txt"
    write(path, data)
    want = old_decode(data)
    assert want is not None
    if not want.strip():
        with pytest.raises(EmptyInputError):
            open_corpus(path, chunk)
        return
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        corpus = open_corpus(path, chunk)
    assert "".join(corpus.pieces(chunk)) == want
    # bounded: a chunk, plus a byte-order mark's worth and a held-back CR
    assert all(len(p) <= chunk + 4 for p in corpus.pieces(chunk))
    bad = replaced_bytes(data)
    messages = [str(w.message) for w in record]
    if bad:
        assert len(messages) == 1
        assert f"; {bad} byte(s) replaced" in messages[0]
    else:
        assert messages == []


def test_a_directory_streams_as_it_reads_whole(tmp_path):
    files = {
        "z.txt": b"omega last",
        "a.txt": b"alpha beta",
        "b/c.txt": b"\xef\xbb\xbf",  # a BOM alone: empty, adds no separator
        "b/d.txt": b"gamma\r",  # the CR becomes the LF that ends it
        "b/e.txt": b"",
        "bin.dat": b"abc\x00def",
        "m/n.txt": b"\r\nnu\xff\n",
    }
    for name, data in files.items():
        write(tmp_path / name, data)
    texts = [old_decode(files[k]) for k in sorted(files, key=lambda k: k.split("/"))]
    texts = [t for t in texts if t]
    want = "".join(t if t.endswith("\n") else t + "\n" for t in texts[:-1]) + texts[-1]
    with pytest.warns(CorpusWarning):
        corpus = open_corpus(tmp_path, 1)
    for chunk in (1, 2, 3, 64):
        assert "".join(corpus.pieces(chunk)) == want
    assert want == "alpha beta\ngamma\n\nnu\ufffd\nomega last"


# ------------------------------------------------------------------ special files


def run_isolated(
    code: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter with a time and address-space limit, so a
    read that blocks (a FIFO) or never ends (/dev/zero) fails the test instead
    of hanging it or eating the machine's memory."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
    )


READ_CORPUS = """
import sys, warnings
from cllm_spec.data import read_corpus
warnings.simplefilter("always")
warnings.showwarning = lambda m, *a, **k: print("warning:", m)
try:
    print("text:", repr(read_corpus(sys.argv[1])))
except Exception as exc:
    print("error:", type(exc).__name__, str(exc).splitlines()[0])
"""


def test_a_fifo_corpus_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    result = run_isolated(READ_CORPUS, str(fifo))
    assert result.stdout == (
        f"error: ConfigError corpus: {fifo} is a FIFO (named pipe), not a regular "
        "file\n"
    ), result.stderr


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_an_endless_device_corpus_is_refused_before_reading(device):
    result = run_isolated(READ_CORPUS, device)
    assert result.stdout == (
        f"error: ConfigError corpus: {device} is a character device, not a regular "
        "file\n"
    ), result.stderr


def test_special_files_in_a_directory_are_skipped_with_one_warning(tmp_path):
    write(tmp_path / "a.txt", b"alpha\n")
    os.mkfifo(tmp_path / "pipe.txt")
    os.symlink("/dev/zero", tmp_path / "zero.txt")
    result = run_isolated(READ_CORPUS, str(tmp_path))
    assert result.stdout.splitlines() == [
        f"warning: corpus: skipped 2 special file(s) under {tmp_path}: "
        "pipe.txt, zero.txt",
        "text: 'alpha\\n'",
    ], result.stderr
    assert list_corpus_files(tmp_path) == [tmp_path / "a.txt"]


def test_a_file_swapped_for_a_fifo_after_the_check_is_refused(tmp_path):
    code = """
import os, sys
from pathlib import Path
from cllm_spec.data.corpus import open_corpus
root = Path(sys.argv[1])
corpus = open_corpus(root)
(root / "a.txt").unlink()
os.mkfifo(root / "a.txt")
try:
    "".join(corpus.pieces())
except Exception as exc:
    print("error:", type(exc).__name__, str(exc).splitlines()[0])
"""
    write(tmp_path / "a.txt", b"alpha\n")
    result = run_isolated(code, str(tmp_path))
    assert result.stdout.startswith("error: ConfigError corpus: "), result.stderr
    assert "FIFO" in result.stdout


# --------------------------------------------------------------------------- dirs


def make_tree(root) -> None:
    """Files created out of order, so only sorting can give the expected text."""
    write(root / "sub" / "deeper" / "d.md", b"delta\n")
    write(root / "b.txt", b"bravo")  # no final newline: a separator is added
    write(root / "sub" / "c.txt", b"charlie\n")
    write(root / "a.txt", b"alpha\n")
    write(root / "a-z.txt", b"hyphen\n")


def test_a_directory_is_read_recursively_in_sorted_order(tmp_path):
    make_tree(tmp_path)
    # Path order compares components: "a-z.txt" < "a.txt" ('-' < '.'), and the
    # files of "sub" come after "b.txt".
    expected = "hyphen\nalpha\nbravo\ncharlie\ndelta\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_corpus(tmp_path) == expected
    names = [p.relative_to(tmp_path).as_posix() for p in list_corpus_files(tmp_path)]
    assert names == ["a-z.txt", "a.txt", "b.txt", "sub/c.txt", "sub/deeper/d.md"]


def test_the_last_file_keeps_its_own_ending(tmp_path):
    write(tmp_path / "a.txt", b"one\n")
    write(tmp_path / "b.txt", b"two")
    assert read_corpus(tmp_path) == "one\ntwo"


def test_hidden_files_and_directories_are_skipped(tmp_path):
    write(tmp_path / "a.txt", b"kept\n")
    write(tmp_path / ".hidden.txt", b"secret\n")
    write(tmp_path / ".git" / "config", b"[core]\n")
    write(tmp_path / "sub" / ".cache" / "x.txt", b"cached\n")
    assert read_corpus(tmp_path) == "kept\n"


def test_binary_files_are_skipped_with_one_warning(tmp_path):
    write(tmp_path / "a.txt", b"alpha\n")
    write(tmp_path / "img.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    write(tmp_path / "sub" / "blob.dat", b"text then \x00 zero")
    with pytest.warns(CorpusWarning) as record:
        text = read_corpus(tmp_path)
    assert text == "alpha\n"
    assert len(record) == 1
    message = str(record[0].message)
    assert "2 binary file(s)" in message
    assert "img.png" in message and "blob.dat" in message


def test_undecodable_file_in_a_directory_is_kept_with_a_warning(tmp_path):
    write(tmp_path / "a.txt", b"alpha\n")
    write(tmp_path / "b.txt", b"b\xffeta\n")
    with pytest.warns(CorpusWarning, match=r"b\.txt"):
        text = read_corpus(tmp_path)
    assert text == "alpha\nb\ufffdeta\n"


def test_a_directory_link_loop_terminates(tmp_path):
    write(tmp_path / "a.txt", b"alpha\n")
    try:
        os.symlink(tmp_path, tmp_path / "loop", target_is_directory=True)
    except OSError:
        pytest.skip("this file system does not support symbolic links")
    assert read_corpus(tmp_path) == "alpha\n"


@pytest.mark.parametrize(
    "files",
    [{}, {"a.txt": b""}, {"a.txt": b"\n\n", "b.txt": b" "}, {".hidden": b"words"}],
    ids=["no_files", "empty_file", "whitespace_files", "only_hidden"],
)
def test_a_directory_without_text_is_an_error(tmp_path, files):
    for name, data in files.items():
        write(tmp_path / name, data)
    with pytest.raises(EmptyInputError, match="no text"):
        read_corpus(tmp_path)


def test_a_directory_of_binary_files_is_an_error_after_the_warning(tmp_path):
    write(tmp_path / "a.bin", b"\x00\x01")
    with pytest.warns(CorpusWarning), pytest.raises(EmptyInputError):
        read_corpus(tmp_path)


# --------------------------------------------------------------------------- default


def test_the_default_corpus_ships_with_the_package():
    path = default_corpus_path()
    assert path.is_file()
    assert path.parent.name == "corpus"
    assert (path.parent / "SOURCE.md").is_file()


def test_the_default_corpus_matches_its_source_note():
    path = default_corpus_path()
    note = (path.parent / "SOURCE.md").read_text(encoding="utf-8")
    assert "public domain" in note
    recorded = re.search(r"SHA-256 \| `([0-9a-f]{64})`", note)
    assert recorded is not None, "SOURCE.md must record the file's SHA-256"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded.group(1)
    size = re.search(r"bytes \| ([0-9,]+)", note)
    assert size is not None
    assert path.stat().st_size == int(size.group(1).replace(",", ""))


def test_the_word_facts_in_the_source_note_are_true():
    note = (default_corpus_path().parent / "SOURCE.md").read_text(encoding="utf-8")
    n_words = re.search(r"words \(`str.split\(\)`\) \| ([0-9,]+)", note)
    entropy = re.search(r"word tokens \| ([0-9.]+) nats", note)
    assert n_words is not None and entropy is not None
    text = read_default_corpus()
    tok = WordTokenizer.train(text)
    ids = tok.encode(text)
    assert ids.size == int(n_words.group(1).replace(",", ""))
    p = np.bincount(ids) / ids.size
    p = p[p > 0]
    assert -(p * np.log(p)).sum() == pytest.approx(float(entropy.group(1)), abs=5e-4)


def test_the_default_corpus_is_real_prose_without_boilerplate():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = read_default_corpus()
    assert text.startswith("PRIDE AND PREJUDICE")
    assert "It is a truth universally acknowledged" in text
    assert "gutenberg" not in text.lower()  # header, footer and licence removed
    words = text.split()
    assert len(words) > 100_000
    tok = WordTokenizer.train(text)
    # A real novel has a large vocabulary dominated by function words.
    assert tok.vocab_size > 10_000
    assert set(tok.tokens[5:10]) >= {"the", "to", "of"}
