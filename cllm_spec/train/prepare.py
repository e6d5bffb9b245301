"""Data of a training run: corpus -> tokenizer -> ids -> run files -> train/val split.

``prepare_data(cfg, out_dir, tokenizer=None, *, write=True) -> RunData``

1. Open the corpus: ``data.corpus = "default"`` is the bundled corpus
   (:func:`cllm_spec.data.default_corpus_path`), anything else a file or a
   directory (:func:`cllm_spec.data.open_corpus`). A path that does not exist
   is a ``ConfigError`` naming ``data.corpus``, a FIFO or a device a
   ``ConfigError`` before it is read; a corpus without text is an
   ``EmptyInputError``.
2. Train the tokenizer ``data.tokenizer`` on it (word: at most
   ``data.vocab_size`` ids; bpe: a target of ``data.vocab_size`` ids; byte: 261
   ids), unless ``tokenizer`` is given (a resumed run reuses the checkpoint's).
3. Encode, and write into ``out_dir``::

       tokenizer.json   the tokenizer's ``to_dict()``
       dataset.bin      every token id, in corpus order (cllm_spec.data.dataset)
       dataset.json     {"n_tokens", "n_train", "n_val", "sha256", "corpus",
                         "tokenizer", "vocab_size", "unigram_entropy"}

   The ids are then mapped from ``dataset.bin`` (read-only), so training runs
   on exactly the bytes of the file. With ``write=False`` nothing is written and
   the ids stay in memory (as little-endian u32, the values the file would
   hold): the MPI ranks other than rank 0 prepare their data that way, so one
   run directory has one writer.
4. Split: the last ``round(val_fraction * N)`` tokens validate
   (:func:`cllm_spec.data.train_val_split` with ``min_tokens = seq_len + 1``),
   and the training part must hold at least ``batch_size`` windows of
   ``seq_len + 1`` tokens (:func:`cllm_spec.batching.num_batches`). Both checks
   raise ``EmptyInputError`` with a hint at once, so a tiny corpus never hangs.

``sha256`` fingerprints the token stream (its little-endian u32 bytes): a resumed
run checks it against the checkpoint's, so it cannot silently continue on
other data.

Streaming
=========

Nothing holds the corpus, its text or its ids whole (except the ids of
``write=False``): the corpus is read in pieces of ``chunk_bytes`` (1 MiB), which
are regrouped at cuts that are safe for the tokenizer
(:mod:`cllm_spec.data.pieces`), encoded and appended to ``dataset.bin`` one at a
time. The word tokenizer is trained and the corpus encoded in one pass: each
word is counted and numbered in order of first appearance, the numbers wait in
an unnamed temporary file in ``out_dir`` (4 bytes a word) and are mapped to ids
once the vocabulary is known. BPE trains on the pieces as an iterator, then
encodes them; ``byte`` needs no training. The
fingerprint and the token counts are taken while writing, and the counts of the
validation tail, read back with plain reads, are subtracted to get the training
split's. Memory is therefore bounded by the pieces, the tokenizer's tables and
the vocabulary, whatever the corpus size, and the files are byte for byte those
of encoding the whole text at once.

Unigram entropy
===============

``unigram_entropy(ids, V)`` is the entropy in nats of the empirical token
distribution of ``ids``::

    p_v = count_v / N          H = -sum_{v: p_v > 0} p_v ln p_v

It is the validation loss of the best model that ignores context (predicting
p for every position, measured on the same text), the yardstick a trained
model's loss is compared with. ``prepare_data`` computes it on the training split.

BatchStream
===========

``BatchStream(tokens, batch_size, seq_len, seed, epoch=0, index=0)`` yields the
micro-batches of :func:`cllm_spec.batching.iter_epoch` one after another, epoch
``e`` then ``e + 1`` and so on, forever. ``cursor`` is ``{"epoch": e, "batch":
j}``: ``j`` batches of epoch ``e`` have been taken. A stream built with that
cursor continues with exactly the batch the first would have yielded next,
which is what makes a resumed run bit-identical.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cllm_spec.batching import iter_epoch, num_batches
from cllm_spec.checks import expect_nonnegative_int
from cllm_spec.data import (
    Tokenizer,
    default_corpus_path,
    read_dataset_bin,
    train_val_split,
)
from cllm_spec.data.corpus import CHUNK_BYTES, Corpus, CorpusWarning, open_corpus
from cllm_spec.data.dataset import (
    ID_DTYPE,
    WrittenDataset,
    iter_dataset_range,
    write_dataset_stream,
)
from cllm_spec.data.pieces import encode_pieces, regroup
from cllm_spec.data.tokenizers import WordCounter, make_tokenizer_from_pieces
from cllm_spec.errors import CheckpointError, ConfigError, EmptyInputError
from cllm_spec.protocols import Batch
from cllm_spec.train.config import RunConfig

TOKENIZER_FILE = "tokenizer.json"
DATASET_FILE = "dataset.bin"
DATASET_INFO_FILE = "dataset.json"


@dataclass(frozen=True)
class RunData:
    tokenizer: Tokenizer
    train: np.ndarray  # (N_train,) uint32
    val: np.ndarray  # (N_val,) uint32
    sha256: str  # fingerprint of the whole token stream
    unigram_entropy: float  # nats per token, on the training split


#: ids per slice when counting or hashing an id array (bounded temporaries)
SLICE_TOKENS = 1 << 20


def unigram_entropy(ids: np.ndarray, vocab_size: int) -> float:
    """``-sum p_v ln p_v`` of the token frequencies of ``ids: (N,)``, N >= 1."""
    if ids.size == 0:
        raise EmptyInputError("unigram_entropy: no tokens")
    return entropy_of_counts(token_counts(ids, vocab_size))


def token_counts(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """``(max(V, max id + 1),) int64``: occurrences of each id, slice by slice."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, ids.size, SLICE_TOKENS):
        part = np.asarray(ids[start : start + SLICE_TOKENS], dtype=np.int64)
        counts = _add_counts(counts, np.bincount(part, minlength=vocab_size))
    return counts


def _add_counts(total: np.ndarray, more: np.ndarray) -> np.ndarray:
    if more.size > total.size:  # an id >= vocab_size: bincount grew
        total = np.concatenate([total, np.zeros(more.size - total.size, np.int64)])
    total[: more.size] += more
    return total


def entropy_of_counts(counts: np.ndarray) -> float:
    """``-sum p_v ln p_v`` with ``p = counts / counts.sum()`` (counts not all 0)."""
    p = counts[counts > 0] / int(counts.sum())  # (V',) float64
    return float(-(p * np.log(p)).sum())


def fingerprint(ids: np.ndarray) -> str:
    """SHA-256 of the ids as little-endian u32 bytes."""
    digest = hashlib.sha256()
    for start in range(0, ids.size, SLICE_TOKENS):
        part = np.ascontiguousarray(ids[start : start + SLICE_TOKENS], dtype="<u4")
        digest.update(part.data)
    return digest.hexdigest()


def open_run_corpus(corpus: str, chunk_bytes: int = CHUNK_BYTES) -> Corpus:
    """The checked corpus named by ``data.corpus`` ("default": the bundled one)."""
    path = default_corpus_path() if corpus == "default" else Path(corpus)
    try:
        return open_corpus(path, chunk_bytes)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"data.corpus: no such file or directory: {path}",
            hint="pass a text file or a directory, or 'default' for the bundled corpus",
        ) from exc


def read_run_corpus(corpus: str) -> str:
    """The text named by ``data.corpus`` ("default" is the bundled corpus)."""
    return "".join(open_run_corpus(corpus).pieces())


def train_tokenizer(cfg: RunConfig, text: str) -> Tokenizer:
    """The tokenizer ``data.tokenizer`` trained on ``text``."""
    return train_tokenizer_from_pieces(cfg, [text])


def train_tokenizer_from_pieces(cfg: RunConfig, pieces: Iterable[str]) -> Tokenizer:
    """The tokenizer ``data.tokenizer`` trained on the text of ``pieces``."""
    kind = cfg.data.tokenizer
    opts: dict[str, Any] = {}
    if kind == "word":
        opts["max_vocab"] = cfg.data.vocab_size
    elif kind == "bpe":
        opts["vocab_size"] = cfg.data.vocab_size
    try:
        return make_tokenizer_from_pieces(kind, pieces, **opts)
    except ConfigError as exc:  # e.g. max_vocab too small: name the field
        raise ConfigError(f"data.vocab_size: {exc.message}") from exc


def prepare_data(
    cfg: RunConfig,
    out_dir: Path,
    tokenizer: Tokenizer | None = None,
    *,
    write: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
) -> RunData:
    """Tokenize the corpus, write the run's data files, split (module docstring)."""
    with warnings.catch_warnings():
        if not write:  # the writing rank has said it already: one warning a run
            warnings.simplefilter("ignore", CorpusWarning)
        corpus = open_run_corpus(cfg.data.corpus, chunk_bytes)
    with ExitStack() as stack:
        if write:
            out_dir.mkdir(parents=True, exist_ok=True)
        if tokenizer is not None:
            tok = tokenizer
            chunks = encode_pieces(tok, corpus.pieces(chunk_bytes))
        elif cfg.data.tokenizer == "word":  # counted and encoded in one pass
            scratch = stack.enter_context(
                tempfile.TemporaryFile(dir=out_dir if write else None)
            )
            tok, chunks = _count_and_number_words(cfg, corpus, chunk_bytes, scratch)
        else:
            tok = train_tokenizer_from_pieces(cfg, corpus.pieces(chunk_bytes))
            chunks = encode_pieces(tok, corpus.pieces(chunk_bytes))
        try:
            if write:
                path = out_dir / DATASET_FILE
                written = write_dataset_stream(path, chunks, vocab_size=tok.vocab_size)
                tok_json = json.dumps(tok.to_dict()) + "\n"
                (out_dir / TOKENIZER_FILE).write_text(tok_json)
                stored = read_dataset_bin(path)  # ids < V were checked while writing
            else:
                stored, written = _collect(chunks, tok.vocab_size)
        except EmptyInputError as exc:
            raise EmptyInputError(
                f"data.corpus: the {tok.kind} tokenizer found no tokens in the corpus",
                hint="use a larger corpus or another tokenizer",
            ) from exc
    train, val = train_val_split(
        stored, cfg.data.val_fraction, min_tokens=cfg.train.seq_len + 1
    )
    # Raises EmptyInputError now if an epoch could not fill one batch.
    num_batches(train.size, cfg.train.batch_size, cfg.train.seq_len)
    assert written.counts is not None  # written with vocab_size
    val_counts = (
        _file_counts(out_dir / DATASET_FILE, train.size, stored.size, tok.vocab_size)
        if write
        else token_counts(val, tok.vocab_size)
    )
    entropy = entropy_of_counts(written.counts - val_counts)
    data = RunData(tok, train, val, written.sha256, entropy)
    info = {
        "corpus": cfg.data.corpus,
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "n_tokens": int(stored.size),
        "n_train": int(train.size),
        "n_val": int(val.size),
        "sha256": data.sha256,
        "unigram_entropy": data.unigram_entropy,
    }
    if write:
        (out_dir / DATASET_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return data


def _collect(
    chunks: Iterable[np.ndarray], vocab_size: int
) -> tuple[np.ndarray, WrittenDataset]:
    """The ids of ``chunks`` in memory, with what writing them would report."""
    parts = [np.ascontiguousarray(c, dtype=ID_DTYPE) for c in chunks]
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=ID_DTYPE)
    if ids.size == 0:
        raise EmptyInputError("ids: a dataset needs at least one token")
    return ids, WrittenDataset(
        int(ids.size), fingerprint(ids), token_counts(ids, vocab_size)
    )


def _count_and_number_words(
    cfg: RunConfig, corpus: Corpus, chunk_bytes: int, scratch: BinaryIO
) -> tuple[Tokenizer, Iterator[np.ndarray]]:
    """The word tokenizer of the corpus, and its ids, from one pass over the text.

    Each word is numbered in order of first appearance while it is counted
    (:class:`cllm_spec.data.tokenizers.WordCounter`); the numbers wait in
    ``scratch`` (4 bytes a word) until the vocabulary is known, then are mapped
    to ids chunk by chunk. Same ids as training first and encoding after, with
    the text split and looked up once instead of twice.
    """
    try:
        counter = WordCounter(cfg.data.vocab_size)
    except ConfigError as exc:
        raise ConfigError(f"data.vocab_size: {exc.message}") from exc
    for text in regroup("word", corpus.pieces(chunk_bytes)):
        scratch.write(counter.add(text).data)
    tok, remap = counter.tokenizer()
    scratch.seek(0)

    def ids() -> Iterator[np.ndarray]:
        while data := scratch.read(4 * SLICE_TOKENS):
            yield remap[np.frombuffer(data, dtype=np.uint32)]

    return tok, ids()


def _file_counts(path: Path, start: int, stop: int, vocab_size: int) -> np.ndarray:
    """Occurrences of each id among ids ``[start, stop)`` of ``dataset.bin``."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for part in iter_dataset_range(path, start, stop):
        counts += np.bincount(part, minlength=vocab_size)
    return counts


class BatchStream:
    """Micro-batches of consecutive epochs, resumable from a cursor (module doc)."""

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        *,
        seed: int,
        epoch: int = 0,
        index: int = 0,
    ) -> None:
        self._tokens = tokens
        self._batch_size = batch_size
        self._seq_len = seq_len
        self._seed = seed
        self.epoch = expect_nonnegative_int("data_cursor.epoch", epoch)
        self.index = expect_nonnegative_int("data_cursor.batch", index)
        per_epoch = num_batches(tokens.size, batch_size, seq_len)
        if self.index > per_epoch:
            raise CheckpointError(
                f"data_cursor.batch={index} exceeds the {per_epoch} batches of an "
                "epoch of this data",
                hint="resume with the corpus, batch_size and seq_len of the run",
            )
        self._batches: Iterator[Batch] = itertools.islice(
            self._open(self.epoch), self.index, None
        )

    def _open(self, epoch: int) -> Iterator[Batch]:
        return iter_epoch(
            self._tokens, self._batch_size, self._seq_len, seed=self._seed, epoch=epoch
        )

    @property
    def cursor(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.index}

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        batch = next(self._batches, None)
        if batch is None:  # epoch done: the next one has its own order
            self.epoch += 1
            self.index = 0
            self._batches = self._open(self.epoch)
            batch = next(self._batches)
        self.index += 1
        return batch

    def take(self, count: int) -> list[Batch]:
        """The next ``count`` micro-batches."""
        return [next(self) for _ in range(count)]


__all__ = [
    "DATASET_FILE",
    "DATASET_INFO_FILE",
    "TOKENIZER_FILE",
    "BatchStream",
    "RunData",
    "entropy_of_counts",
    "fingerprint",
    "open_run_corpus",
    "prepare_data",
    "read_run_corpus",
    "token_counts",
    "train_tokenizer",
    "train_tokenizer_from_pieces",
    "unigram_entropy",
]
