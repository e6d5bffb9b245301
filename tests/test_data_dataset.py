"""dataset.bin (the seed's layout, memory-mapped) and the train/validation split."""

from __future__ import annotations

import hashlib
import struct
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cllm_spec.batching import iter_epoch
from cllm_spec.data.corpus import read_corpus
from cllm_spec.data.dataset import (
    iter_dataset_range,
    read_dataset_bin,
    train_val_split,
    write_dataset_bin,
    write_dataset_stream,
)
from cllm_spec.data.tokenizers import ByteTokenizer, WordTokenizer
from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    IdRangeError,
    ShapeError,
)

# --------------------------------------------------------------------------- write


def test_write_exact_bytes(tmp_path):
    path = tmp_path / "dataset.bin"
    write_dataset_bin(path, np.array([1, 2, 70000, 2**32 - 1], dtype=np.int64))
    data = path.read_bytes()
    # Header: u64 little-endian 4; body: four u32 little-endian ids.
    assert data[:8] == b"\x04\x00\x00\x00\x00\x00\x00\x00"
    assert data[8:12] == b"\x01\x00\x00\x00"
    assert data[16:20] == b"\x70\x11\x01\x00"  # 70000 = 0x00011170
    assert data[20:] == b"\xff\xff\xff\xff"
    assert data == struct.pack("<Q4I", 4, 1, 2, 70000, 2**32 - 1)


def test_seed_sized_file_has_the_seed_layout(tmp_path):
    # The seed's data/checkpoints/dataset.bin: 546 tokens, 2192 bytes, header 0x222.
    path = tmp_path / "dataset.bin"
    write_dataset_bin(path, np.arange(546, dtype=np.int32))
    data = path.read_bytes()
    assert len(data) == 2192
    assert data[:8] == b"\x22\x02\x00\x00\x00\x00\x00\x00"
    assert struct.unpack_from("<3I", data, 8) == (0, 1, 2)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.int64])
def test_any_integer_dtype_is_written_as_u32(tmp_path, dtype):
    path = tmp_path / "dataset.bin"
    ids = np.array([5, 0, 255, 7], dtype=dtype)
    write_dataset_bin(path, ids)
    assert path.read_bytes() == struct.pack("<Q4I", 4, 5, 0, 255, 7)


@pytest.mark.parametrize(
    "ids, error",
    [
        ([1, 2, 3], DTypeError),
        (np.array([1.0, 2.0]), DTypeError),
        (np.array([[1, 2]], dtype=np.int32), ShapeError),
        (np.zeros(0, dtype=np.int32), EmptyInputError),
        (np.array([3, -1], dtype=np.int32), IdRangeError),
        (np.array([3, 2**32], dtype=np.int64), IdRangeError),
    ],
    ids=["list", "float", "rank2", "empty", "negative", "too_big"],
)
def test_write_rejects_bad_ids_and_leaves_no_file(tmp_path, ids, error):
    path = tmp_path / "dataset.bin"
    with pytest.raises(error):
        write_dataset_bin(path, ids)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "dataset.bin"
    write_dataset_bin(path, np.array([1, 2, 3], dtype=np.int32))
    write_dataset_bin(path, np.array([9], dtype=np.int32))
    assert [p.name for p in tmp_path.iterdir()] == ["dataset.bin"]
    assert path.read_bytes() == struct.pack("<QI", 1, 9)


# --------------------------------------------------------------------------- read


def test_stream_writes_the_file_of_the_whole_array_and_reports_it(tmp_path):
    ids = np.array([5, 0, 7, 7, 2, 5, 5, 1], dtype=np.int32)
    write_dataset_bin(tmp_path / "whole.bin", ids)
    chunks = [ids[:3], ids[3:3], ids[3:]]  # an empty chunk on the way is fine
    written = write_dataset_stream(tmp_path / "parts.bin", chunks, vocab_size=9)
    body = (tmp_path / "parts.bin").read_bytes()
    assert body == (tmp_path / "whole.bin").read_bytes()
    assert written.n_tokens == 8
    assert written.sha256 == hashlib.sha256(body[8:]).hexdigest()
    assert written.counts is not None
    assert written.counts.tolist() == np.bincount(ids, minlength=9).tolist()
    parts = list(iter_dataset_range(tmp_path / "parts.bin", 2, 7, chunk_tokens=2))
    assert [p.tolist() for p in parts] == [[7, 7], [2, 5], [5]]


def test_stream_rejects_ids_outside_the_vocabulary_and_leaves_no_file(tmp_path):
    chunks = iter([np.array([1, 2]), np.array([3, 9])])
    with pytest.raises(IdRangeError, match=r"\[0, 9\), found 9"):
        write_dataset_stream(tmp_path / "d.bin", chunks, vocab_size=9)
    with pytest.raises(EmptyInputError):
        write_dataset_stream(tmp_path / "d.bin", [np.zeros(0, np.int32)])
    assert list(tmp_path.iterdir()) == []


def test_range_outside_the_file_is_a_shape_error(tmp_path):
    write_dataset_bin(tmp_path / "d.bin", np.arange(4))
    with pytest.raises(ShapeError, match="outside"):
        list(iter_dataset_range(tmp_path / "d.bin", 2, 5))


def test_read_is_a_read_only_memory_map(tmp_path):
    path = tmp_path / "dataset.bin"
    path.write_bytes(struct.pack("<Q3I", 3, 7, 0, 2**32 - 1))
    ids = read_dataset_bin(path)
    assert isinstance(ids, np.memmap)
    assert ids.dtype == np.uint32 and ids.shape == (3,)
    np.testing.assert_array_equal(ids, [7, 0, 2**32 - 1])
    with pytest.raises(ValueError, match="read-only"):
        ids[0] = 1


@given(hnp.arrays(np.uint32, st.integers(1, 64)))
def test_write_read_round_trip(tmp_path_factory, ids):
    path = tmp_path_factory.mktemp("rt") / "dataset.bin"
    write_dataset_bin(path, ids)
    back = read_dataset_bin(path)
    np.testing.assert_array_equal(back, ids)
    assert path.stat().st_size == 8 + 4 * ids.size


GARBLED = {
    "zero_bytes": (b"", ShapeError, "truncated"),
    "short_header": (b"\x01\x00\x00", ShapeError, "truncated"),
    "header_only_says_one": (struct.pack("<Q", 1), ShapeError, "header says 1"),
    "body_cut": (struct.pack("<Q2I", 3, 1, 2), ShapeError, "header says 3"),
    "body_cut_mid_id": (struct.pack("<Q2I", 2, 1, 2)[:-1], ShapeError, "header"),
    "trailing_bytes": (struct.pack("<Q3I", 2, 1, 2, 3), ShapeError, "header says 2"),
    "huge_count": (struct.pack("<Q2I", 2**64 - 1, 1, 2), ShapeError, "has 16 bytes"),
    "count_zero_body": (struct.pack("<Q2I", 0, 1, 2), ShapeError, "header says 0"),
    "empty_dataset": (struct.pack("<Q", 0), EmptyInputError, "no tokens"),
}


@pytest.mark.parametrize("case", list(GARBLED))
def test_read_rejects_truncated_or_garbled_files(tmp_path, case):
    content, error, fragment = GARBLED[case]
    path = tmp_path / "dataset.bin"
    path.write_bytes(content)
    with pytest.raises(error, match=fragment) as info:
        read_dataset_bin(path)
    assert "dataset.bin" in str(info.value)


def test_read_checks_ids_against_the_vocabulary(tmp_path):
    path = tmp_path / "dataset.bin"
    path.write_bytes(struct.pack("<Q3I", 3, 1, 9, 2))
    np.testing.assert_array_equal(read_dataset_bin(path, vocab_size=10), [1, 9, 2])
    with pytest.raises(IdRangeError):
        read_dataset_bin(path, vocab_size=9)
    with pytest.raises(ConfigError):
        read_dataset_bin(path, vocab_size=0)


def test_read_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_dataset_bin(tmp_path / "dataset.bin")


# --------------------------------------------------------------------------- split


def test_split_is_contiguous_with_the_tail_for_validation():
    ids = np.arange(1000, dtype=np.int32)
    train, val = train_val_split(ids, 0.1, min_tokens=65)
    assert train.size == 900 and val.size == 100
    np.testing.assert_array_equal(train, np.arange(900))
    np.testing.assert_array_equal(val, np.arange(900, 1000))
    # Views, not copies: a memory-mapped corpus stays on disk.
    assert np.shares_memory(train, ids) and np.shares_memory(val, ids)


@pytest.mark.parametrize(
    "n, fraction, n_val",
    [(10, 0.25, 2), (30, 0.25, 8), (10, 0.5, 5), (7, 0.3, 2), (1001, 0.1, 100)],
)
def test_split_sizes_round_half_to_even(n, fraction, n_val):
    # 10*0.25 = 2.5 -> 2 and 30*0.25 = 7.5 -> 8 (ties to even); 7*0.3 = 2.1 -> 2;
    # 1001*0.1 = 100.1 -> 100.
    train, val = train_val_split(np.arange(n), fraction, min_tokens=2)
    assert (train.size, val.size) == (n - n_val, n_val)


def test_zero_fraction_means_no_validation():
    ids = np.arange(5, dtype=np.uint32)
    train, val = train_val_split(ids, 0.0, min_tokens=5)
    assert train.size == 5 and val.size == 0 and val.dtype == ids.dtype


@pytest.mark.parametrize(
    "n, fraction, min_tokens",
    [(0, 0.1, 2), (1, 0.0, 2), (4, 0.0, 5), (9, 0.5, 5), (100, 0.01, 2), (6, 0.9, 2)],
)
def test_split_of_a_too_small_corpus_is_a_clear_error(n, fraction, min_tokens):
    with pytest.raises(EmptyInputError, match="corpus too small") as info:
        train_val_split(np.arange(n), fraction, min_tokens=min_tokens)
    assert f"{n} tokens" in info.value.message


@pytest.mark.parametrize(
    "fraction, min_tokens",
    [
        (1.0, 2),
        (-0.1, 2),
        (float("nan"), 2),
        ("0.1", 2),
        (0.1, 1),
        (0.1, 0),
        (0.1, True),
    ],
)
def test_split_rejects_bad_hyperparameters(fraction, min_tokens):
    with pytest.raises(ConfigError):
        train_val_split(np.arange(100), fraction, min_tokens=min_tokens)


@pytest.mark.parametrize(
    "ids, error",
    [
        ([1, 2, 3], DTypeError),
        (np.ones(4), DTypeError),
        (np.ones((2, 2), int), ShapeError),
    ],
    ids=["list", "float", "rank2"],
)
def test_split_rejects_bad_ids(ids, error):
    with pytest.raises(error):
        train_val_split(ids, 0.1, min_tokens=2)


# --------------------------------------------------------------------------- pipeline


def test_memory_mapped_split_feeds_the_epoch_iterator(tmp_path):
    path = tmp_path / "dataset.bin"
    write_dataset_bin(path, np.arange(1, 201, dtype=np.int32))
    train, val = train_val_split(read_dataset_bin(path), 0.2, min_tokens=9)
    assert (train.size, val.size) == (160, 40)
    batches = list(iter_epoch(train, 4, 8, seed=0, epoch=0, drop_last=True))
    # (160 - 1) // 8 = 19 windows -> 4 full batches of 4.
    assert len(batches) == 4
    inputs = np.concatenate([b.input_ids for b in batches])
    assert inputs.max() <= 160  # nothing from the validation tail
    np.testing.assert_array_equal(
        batches[0].targets[:, :-1], batches[0].input_ids[:, 1:]
    )


def run_with_timeout(fn, seconds=10.0):
    """Run ``fn`` in a thread; fail if it has not returned within ``seconds``."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed back to the test thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"hung for more than {seconds} s"
    return outcome


@pytest.mark.parametrize("text", ["a", "ab", "abc", "a b c"])
def test_a_corpus_under_four_characters_fails_fast(tmp_path, text):
    # The seed sized its buffer total_chars / 4 = 0 here and doubled it forever.
    path = tmp_path / "tiny.txt"
    path.write_text(text)

    def pipeline():
        corpus = read_corpus(path)
        tok = WordTokenizer.train(corpus)
        ids = tok.encode(corpus)
        write_dataset_bin(tmp_path / "dataset.bin", ids)
        stored = read_dataset_bin(tmp_path / "dataset.bin")
        return train_val_split(stored, 0.1, min_tokens=17)

    outcome = run_with_timeout(pipeline)
    assert isinstance(outcome.get("error"), EmptyInputError)
    assert "corpus too small" in str(outcome["error"])


def test_a_byte_level_tiny_corpus_also_fails_fast(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("hi!")

    def pipeline():
        ids = ByteTokenizer().encode(read_corpus(path))
        return train_val_split(ids, 0.0, min_tokens=4)

    outcome = run_with_timeout(pipeline)
    assert isinstance(outcome.get("error"), EmptyInputError)
