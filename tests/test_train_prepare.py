"""Run data: tokenizing into the run directory, the split, unigram entropy, and
the resumable batch stream."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cllm_spec.batching import iter_epoch
from cllm_spec.data import read_dataset_bin
from cllm_spec.errors import CheckpointError, ConfigError, EmptyInputError
from cllm_spec.train.config import load_config
from cllm_spec.train.prepare import (
    BatchStream,
    fingerprint,
    prepare_data,
    unigram_entropy,
)

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
