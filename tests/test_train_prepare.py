"""Run data: tokenizing into the run directory, the split, unigram entropy, and
the resumable batch stream."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import subprocess
import warnings

import numpy as np
import pytest

from cllm_spec.batching import iter_epoch
from cllm_spec.data import BpeTokenizer, read_corpus, read_dataset_bin, read_vocab
from cllm_spec.data.corpus import CHUNK_BYTES, CorpusWarning
from cllm_spec.errors import CheckpointError, ConfigError, EmptyInputError
from cllm_spec.train.config import load_config
from cllm_spec.train.prepare import (
    BatchStream,
    fingerprint,
    prepare_data,
    unigram_entropy,
)
from tests.test_data_corpus import run_isolated

TEXT = "the cat sat on the mat. the dog sat on the log.\n" * 40


def config(corpus, *extra):
    return load_config(
        None,
        [
            f"data.corpus={corpus}",
            "data.tokenizer=byte",
            "model.block_size=16",
            "train.seq_len=8",
            "train.batch_size=4",
            *extra,
        ],
    )


def test_unigram_entropy_golden():
    # counts 2, 1, 1 of N = 4: H = -(1/2 ln 1/2 + 2 * 1/4 ln 1/4) = 1.5 ln 2
    assert unigram_entropy(np.array([7, 7, 3, 5]), 10) == pytest.approx(
        1.5 * math.log(2)
    )
    # one symbol: no uncertainty; V equiprobable symbols: ln V
    assert unigram_entropy(np.array([4, 4, 4]), 5) == 0.0
    assert unigram_entropy(np.arange(8), 8) == pytest.approx(math.log(8))
    with pytest.raises(EmptyInputError):
        unigram_entropy(np.array([], dtype=np.int64), 3)


def test_prepare_writes_the_run_files(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "run"
    data = prepare_data(config(corpus), out)
    ids = read_dataset_bin(out / "dataset.bin")
    assert ids.tolist() == [5 + b for b in TEXT.encode()]  # byte ids are 5 + b
    info = json.loads((out / "dataset.json").read_text())
    n_val = round(0.1 * len(TEXT))
    assert (info["n_train"], info["n_val"]) == (len(TEXT) - n_val, n_val)
    assert data.train.tolist() == ids[: len(TEXT) - n_val].tolist()
    assert data.val.tolist() == ids[len(TEXT) - n_val :].tolist()
    assert json.loads((out / "tokenizer.json").read_text()) == {
        "kind": "byte",
        "version": 1,
    }
    assert info["sha256"] == data.sha256 == fingerprint(ids)
    counts = np.bincount(np.frombuffer(TEXT.encode(), np.uint8)[: info["n_train"]])
    p = counts[counts > 0] / info["n_train"]
    assert data.unigram_entropy == pytest.approx(float(-(p * np.log(p)).sum()))
    assert info["unigram_entropy"] == data.unigram_entropy


@pytest.mark.parametrize("text", ["", "   \n", "abc"])
def test_tiny_or_empty_corpus_is_a_clear_error(tmp_path, text):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(text)
    with pytest.raises(EmptyInputError) as info:
        prepare_data(config(corpus), tmp_path / "run")
    assert info.value.hint_text


def test_corpus_smaller_than_one_batch(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text(TEXT[:60])  # 48 train tokens: (48 - 1) // 8 = 5 windows < 8
    cfg = config(corpus, "train.batch_size=8", "data.val_fraction=0.2")
    with pytest.raises(EmptyInputError, match="batch_size=8"):
        prepare_data(cfg, tmp_path / "run")


def test_missing_corpus_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.corpus: no such file"):
        prepare_data(config(tmp_path / "nope.txt"), tmp_path / "run")


def test_word_vocab_too_small_names_the_field(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    cfg = config(corpus, "data.tokenizer=word", "data.vocab_size=3")
    with pytest.raises(ConfigError, match=r"^data\.vocab_size: "):
        prepare_data(cfg, tmp_path / "run")


def test_stream_crosses_epochs_in_iterator_order():
    tokens = np.arange(100, dtype=np.uint32)  # W = 99 // 8 = 12 windows: 3 batches
    stream = BatchStream(tokens, 4, 8, seed=3)
    got = stream.take(7)
    want = [
        *iter_epoch(tokens, 4, 8, seed=3, epoch=0),
        *iter_epoch(tokens, 4, 8, seed=3, epoch=1),
        *iter_epoch(tokens, 4, 8, seed=3, epoch=2),
    ][:7]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(a.targets, b.targets)
    assert stream.cursor == {"epoch": 2, "batch": 1}


@pytest.mark.parametrize("taken", [0, 2, 3, 5])
def test_stream_resumes_from_its_cursor(taken):
    tokens = np.arange(100, dtype=np.uint32)
    first = BatchStream(tokens, 4, 8, seed=3)
    first.take(taken)
    cursor = first.cursor
    second = BatchStream(
        tokens, 4, 8, seed=3, epoch=cursor["epoch"], index=cursor["batch"]
    )
    for a, b in zip(first.take(4), second.take(4), strict=True):
        np.testing.assert_array_equal(a.input_ids, b.input_ids)


def test_stream_rejects_a_cursor_beyond_the_epoch():
    tokens = np.arange(100, dtype=np.uint32)  # 3 batches per epoch
    with pytest.raises(CheckpointError, match="exceeds"):
        BatchStream(tokens, 4, 8, seed=3, epoch=0, index=4)


# ------------------------------------------------------------------ streaming ---
# The files that prepare_data wrote before it streamed (the whole text read,
# tokenized and written at once; computed with that code and pinned here), for
# two corpora full of edge cases. Streaming must give the same bytes for every
# piece size.

TRICKY = (
    "\ufeffThe Ο∆ΟΣ ΣΑΣ and ΣΊΣΥΦΟΣ: final sigma; İstanbul, Straße, ǅ.\r\n".encode()
    + b"caf\xe9 au lait \xe2\x82 cut \xff\xfe overlong \xc0\xaf end\r"
    + "no-break\u00a0space, line\u2028sep, info\x1csep, ".encode()
    + "nel\x85x, ideo\u3000sp.\r\r\n".encode()
    + "<unk> <PAD> <bos> <mask>  spaced    out\t\ttabs\n\n\n€ 𝄞 ünïcödé\r".encode()
)  # fmt: skip


def tricky_corpus() -> bytes:
    """A BOM, CR/CRLF, bad UTF-8 (also cut at the very end), Unicode whitespace,
    final sigma, specials' spellings, around 60,000 bytes of the bundled corpus."""
    from cllm_spec.data import read_default_corpus

    text = read_default_corpus()[:60_000].encode()
    return TRICKY + text[:30_000] + TRICKY + text[30_000:] + b"trailing\xe2\x82"


def make_corpus(root, name):
    if name == "file":
        path = root / "mixed.txt"
        path.write_bytes(tricky_corpus())
        return path
    tree = root / "tree"
    for rel, data in [
        ("z.txt", b"omega last"),
        ("a.txt", b"alpha beta"),
        ("b/c.txt", b"\xef\xbb\xbf"),
        ("b/d.txt", b"gamma\r"),
        ("b/e.txt", b""),
        ("bin.dat", b"abc\x00def"),
        (".hidden.txt", b"hidden words"),
        ("m/mixed.txt", tricky_corpus()),
        ("m/n.txt", b"\r\nnu\n"),
    ]:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    return tree


# (corpus, tokenizer): SHA-256 of dataset.bin and of tokenizer.json, then the
# fields of dataset.json (its "corpus", the path, aside).
BEFORE_STREAMING = {
    ("file", "byte"): (
        "b9a6e946f39e37e070dc8cae034320492cd8f14ea85043bdeceb757e6c110d8a",
        "5c0f6b90368ebb28cb40cec3adb8f099e4097c659090c01e9f1761fc98b732a2",
        {
            "tokenizer": "byte",
            "vocab_size": 261,
            "n_tokens": 60526,
            "n_train": 54473,
            "n_val": 6053,
            "sha256": (
                "b231e34225ccfe974d5e1f63d2d576393103fc8b03de944043806059c7fc6411"
            ),
            "unigram_entropy": 3.136446721252359,
        },
    ),
    ("file", "word"): (
        "663d42c154ebb5e7291aab0cea068ec847a8a704ff772108bf9cfc1fce29ffd0",
        "159f541c605f13ff2ad88615290870ca75f849859db40e51399d207b1d206a31",
        {
            "tokenizer": "word",
            "vocab_size": 300,
            "n_tokens": 10845,
            "n_train": 9761,
            "n_val": 1084,
            "sha256": (
                "d1cc7a2cfe35687dde6a284a9673454359fd3bc21d0915d5cbee7f050b2d9c38"
            ),
            "unigram_entropy": 3.909790970345401,
        },
    ),
    ("tree", "byte"): (
        "42ebb004ad8fabe176610d7bd6edbda651599cb538802bab02b727e575250ce0",
        "5c0f6b90368ebb28cb40cec3adb8f099e4097c659090c01e9f1761fc98b732a2",
        {
            "tokenizer": "byte",
            "vocab_size": 261,
            "n_tokens": 60558,
            "n_train": 54502,
            "n_val": 6056,
            "sha256": (
                "6d9c5c0cd0b8d198a69485a582991c61b0d7a317b9b201609a4c59165a7d1edc"
            ),
            "unigram_entropy": 3.1365101215589846,
        },
    ),
    ("tree", "word"): (
        "f82ac1b36dc054d40b3c1d4baf3817c2eb57d974b82175a1343980ebd16fecba",
        "bca92815c80444004715f1e06adaae7edc920a311f6522d73b2f38696d08265a",
        {
            "tokenizer": "word",
            "vocab_size": 300,
            "n_tokens": 10851,
            "n_train": 9766,
            "n_val": 1085,
            "sha256": (
                "eb97363e288ac69157cae84eb6625ccdfa1335ea144d3eff8d184216983fd3d3"
            ),
            "unigram_entropy": 3.908768117149158,
        },
    ),
}


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_quietly(cfg, out, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorpusWarning)
        return prepare_data(cfg, out, **kw)


@pytest.mark.parametrize("chunk", [1, 7, 4096, CHUNK_BYTES])
@pytest.mark.parametrize(("name", "kind"), sorted(BEFORE_STREAMING))
def test_streamed_files_are_the_files_of_before(tmp_path, name, kind, chunk):
    corpus = make_corpus(tmp_path, name)
    cfg = config(corpus, f"data.tokenizer={kind}", "data.vocab_size=300")
    out = tmp_path / "run"
    data = prepare_quietly(cfg, out, chunk_bytes=chunk)
    dataset_sha, tokenizer_sha, info = BEFORE_STREAMING[name, kind]
    assert sha256_of(out / "dataset.bin") == dataset_sha
    assert sha256_of(out / "tokenizer.json") == tokenizer_sha
    written = json.loads((out / "dataset.json").read_text())
    assert written.pop("corpus") == str(corpus)
    assert written == info
    assert (data.sha256, data.unigram_entropy) == (
        info["sha256"],
        info["unigram_entropy"],
    )


@pytest.mark.skipif(
    importlib.util.find_spec("tokenizers") is None,
    reason="the optional package `tokenizers` is not installed",
)
@pytest.mark.parametrize("name", ["file", "tree"])
def test_streamed_bpe_is_the_bpe_of_the_whole_text(tmp_path, name):
    # The library's JSON may change between its versions: compare with training
    # on the whole text (what prepare_data did before) instead of pinning bytes.
    corpus = make_corpus(tmp_path, name)
    cfg = config(corpus, "data.tokenizer=bpe", "data.vocab_size=400")
    data = prepare_quietly(cfg, tmp_path / "run", chunk_bytes=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorpusWarning)
        text = read_corpus(corpus)
    whole = BpeTokenizer.train(text, 400)
    assert data.tokenizer == whole
    ids = read_dataset_bin(tmp_path / "run" / "dataset.bin")
    assert ids.tolist() == whole.encode(text).tolist()


@pytest.mark.parametrize("kind", ["byte", "word"])
def test_ranks_that_do_not_write_get_the_same_data(tmp_path, kind):
    corpus = make_corpus(tmp_path, "tree")
    cfg = config(corpus, f"data.tokenizer={kind}", "data.vocab_size=300")
    written = prepare_quietly(cfg, tmp_path / "run", chunk_bytes=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the writing rank warned: these stay quiet
        kept = prepare_data(cfg, tmp_path / "r2", written.tokenizer, write=False)
    assert not (tmp_path / "r2").exists()
    assert (kept.sha256, kept.unigram_entropy) == (
        written.sha256,
        written.unigram_entropy,
    )
    assert np.array_equal(kept.train, written.train)
    assert np.array_equal(kept.val, written.val)
    alone = prepare_quietly(cfg, tmp_path / "r3", write=False, chunk_bytes=64)
    assert alone.tokenizer == written.tokenizer  # trained without a run dir
    assert alone.sha256 == written.sha256
    assert not (tmp_path / "r3").exists()


def run_limited(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter that cannot hang the test or eat memory."""
    return run_isolated(code, *args, timeout=120)


PEAK_GROWTH = """
import resource, sys
from pathlib import Path
from cllm_spec.train.config import load_config
from cllm_spec.train.prepare import prepare_data
corpus, kind, out = sys.argv[1:]
cfg = load_config(None, [f"data.corpus={corpus}", f"data.tokenizer={kind}"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prepare_data(cfg, Path(out))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.parametrize("kind", ["byte", "word"])
def test_preparing_a_large_corpus_takes_bounded_memory(tmp_path, kind):
    # 32 MiB of prose. Before streaming this took 14-16x the corpus in memory
    # (about 480 MiB); now the pieces (1 MiB), their ids and the tokenizer's
    # tables: a few tens of MiB, whatever the size of the corpus.
    from cllm_spec.data import default_corpus_path

    unit = default_corpus_path().read_bytes()
    corpus = tmp_path / "big.txt"
    size = 32 << 20
    with corpus.open("wb") as fh:
        for _ in range(size // len(unit) + 1):
            fh.write(unit)
    result = run_limited(PEAK_GROWTH, str(corpus), kind, str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    growth_mib = int(result.stdout) / 1024  # ru_maxrss is in KiB on Linux
    assert growth_mib < 80, f"peak RSS grew by {growth_mib:.0f} MiB"
    assert (tmp_path / "run" / "dataset.bin").stat().st_size > size // 8


SPECIAL_PATH = """
import sys
from pathlib import Path
from cllm_spec.data import read_dataset_bin, read_vocab
from cllm_spec.train.config import load_config
from cllm_spec.train.prepare import prepare_data
what, path, out = sys.argv[1:]
try:
    if what == "corpus":
        prepare_data(load_config(None, [f"data.corpus={path}"]), Path(out))
    elif what == "dataset":
        read_dataset_bin(path)
    else:
        read_vocab(path)
except Exception as exc:
    print(type(exc).__name__, str(exc).splitlines()[0])
"""


@pytest.mark.parametrize("what", ["corpus", "dataset", "vocab"])
@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "/dev/urandom"])
def test_special_files_are_refused_without_reading(tmp_path, what, special):
    path = special
    if special == "fifo":
        path = str(tmp_path / "pipe")
        os.mkfifo(path)
    result = run_limited(SPECIAL_PATH, what, path, str(tmp_path / "run"))
    kind = "a FIFO (named pipe)" if special == "fifo" else "a character device"
    assert result.stdout.startswith("ConfigError "), result.stdout + result.stderr
    assert f"{path} is {kind}, not a regular file" in result.stdout
    assert not (tmp_path / "run").exists()


def test_read_vocab_still_reads_a_regular_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("<pad>\t0\n<unk>\t0\n<bos>\t0\n<eos>\t0\n<mask>\t0\nthe\t3\n")
    assert read_vocab(path).tokens[5:] == ("the",)
