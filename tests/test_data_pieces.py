"""Safe cuts: text encoded (and tokenizers trained) in pieces gives exactly the
tokens of the whole text, for every tokenizer and wherever the pieces end."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cllm_spec.data.pieces import encode_pieces, regroup, safe_cut
from cllm_spec.data.tokenizers import (
    BpeTokenizer,
    ByteTokenizer,
    WordCounter,
    WordTokenizer,
    make_tokenizer,
    make_tokenizer_from_pieces,
)
from cllm_spec.errors import EmptyInputError

needs_bpe = pytest.mark.skipif(
    importlib.util.find_spec("tokenizers") is None,
    reason="the optional package `tokenizers` is not installed",
)

# Whitespace of every kind str.split knows (\x1c-\x1f are whitespace to Python,
# not to Unicode), capital sigma (lower() depends on its neighbours), a
# contraction, digits, punctuation, a special's spelling, multi-byte characters.
ATOMS = [
    "a", "b", "A", "Σ", "ς", "İ", "é", "€", "𝄞", "1", "23", "!", ".", "'", "'s",
    "<unk>", "<PAD>", " ", "  ", "\n", "\t", "\r", "\x1c", "\x85", "\u00a0",
    "\u2028", "\u3000", "ΟΔΟΣ", "don't",
]  # fmt: skip
texts = st.lists(st.sampled_from(ATOMS), max_size=40).map("".join)


def split_at(text: str, cuts: list[int]) -> list[str]:
    """``text`` cut at the given positions (any, in any order)."""
    points = sorted({min(c, len(text)) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[i:j] for i, j in zip(bounds, bounds[1:], strict=False)]


pieces_of = st.tuples(texts, st.lists(st.integers(0, 200), max_size=12)).map(
    lambda tc: (tc[0], split_at(*tc))
)


def concat(arrays) -> list[int]:
    return [int(i) for a in arrays for i in a]


@pytest.mark.parametrize(
    ("kind", "text", "cut"),
    [
        ("byte", "ab cd", 5),
        ("word", "ab cd", 3),  # after the last whitespace: "cd" may go on
        ("word", "ab cd ", 6),
        ("word", "abcd", 0),
        ("word", "ab\u00a0cd", 3),
        ("bpe", "ab  cd", 2),  # before the run: "  cd" gives " " and " cd"
        ("bpe", "ab cd ", 5),
        ("bpe", "ab\x1c cd", 0),  # \x1c is not whitespace to the library
        ("bpe", "abcd", 0),
    ],
)
def test_safe_cut_examples(kind, text, cut):
    assert safe_cut(kind, text) == cut


def is_safe(kind: str, text: str, i: int) -> bool:
    """The documented rule: may ``text`` be cut before ``text[i]``?"""
    if kind == "word":
        return text[i - 1].isspace()
    if kind == "bpe":
        return text[i] in " \n" and not text[i - 1].isspace()
    return True


@pytest.mark.parametrize("kind", ["byte", "word", "bpe"])
@settings(max_examples=200, derandomize=True, deadline=None)
@given(case=pieces_of)
def test_regroup_keeps_the_text_and_ends_pieces_at_safe_cuts(kind, case):
    text, pieces = case
    out = list(regroup(kind, pieces))
    assert "".join(out) == text
    assert all(p for p in out)
    ends = np.cumsum([len(p) for p in out])[:-1]
    assert all(is_safe(kind, text, int(i)) for i in ends)


WORD = WordTokenizer.train(" ".join(ATOMS) + " a a b Σ σ ς ΟΔΟΣ ΟΔΟς", max_vocab=20)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(case=pieces_of)
def test_word_pieces_encode_and_train_as_the_whole_text(case):
    text, pieces = case
    assert concat(encode_pieces(WORD, pieces)) == WORD.encode(text).tolist()
    if text.split():
        assert WordTokenizer.train_from_pieces(pieces, 12) == WordTokenizer.train(
            text, 12
        )
    else:
        with pytest.raises(EmptyInputError):
            WordTokenizer.train_from_pieces(pieces)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(case=pieces_of)
def test_word_counter_numbers_map_to_the_ids_of_the_whole_text(case):
    # One pass: count and number the words, map the numbers once the
    # vocabulary is known; the same tokenizer and ids as train, then encode.
    text, pieces = case
    counter = WordCounter(max_vocab=12)
    numbers = [counter.add(p) for p in regroup("word", pieces)]
    if not text.split():
        with pytest.raises(EmptyInputError):
            counter.tokenizer()
        return
    tok, remap = counter.tokenizer()
    assert tok == WordTokenizer.train(text, 12)
    assert concat(remap[n] for n in numbers) == tok.encode(text).tolist()


def test_final_sigma_is_lowered_as_in_the_whole_text():
    # "Σ" lowers to "ς" at the end of a word and to "σ" inside one: a cut inside
    # "ΟΔΟΣ" would change the word, so no piece may end there.
    text = "ΟΔΟΣ ΣΑΣ"
    assert text.lower().split() == ["οδος", "σας"]
    for cut in range(len(text) + 1):
        pieces = [text[:cut], text[cut:]]
        tok = WordTokenizer.train_from_pieces(pieces)
        assert tok.tokens[5:] == ("οδος", "σας")


@settings(max_examples=100, derandomize=True, deadline=None)
@given(case=pieces_of)
def test_byte_pieces_encode_as_the_whole_text(case):
    text, pieces = case
    tok = ByteTokenizer()
    assert concat(encode_pieces(tok, pieces)) == tok.encode(text).tolist()


@needs_bpe
@settings(max_examples=150, derandomize=True, deadline=None)
@given(case=pieces_of)
def test_bpe_pieces_encode_as_the_whole_text(bpe, case):
    text, pieces = case
    assert concat(encode_pieces(bpe, pieces)) == bpe.encode(text).tolist()


@needs_bpe
@settings(max_examples=25, derandomize=True, deadline=None)
@given(case=pieces_of)
def test_bpe_trained_on_pieces_is_the_bpe_of_the_whole_text(case):
    text, pieces = case
    if not text.strip():
        with pytest.raises(EmptyInputError):
            BpeTokenizer.train_from_pieces(pieces, 300)
        return
    whole = BpeTokenizer.train(text * 3, 300)
    assert BpeTokenizer.train_from_pieces([*pieces, *pieces, *pieces], 300) == whole


@pytest.fixture(scope="module")
def bpe():
    if importlib.util.find_spec("tokenizers") is None:
        pytest.skip("the optional package `tokenizers` is not installed")
    return BpeTokenizer.train(" ".join(ATOMS * 3) + " ab ab ab a'b 1 2 3", 300)


@pytest.mark.parametrize("kind", ["byte", "word"])
def test_make_tokenizer_from_pieces_is_make_tokenizer(kind):
    text = "The cat sat.\nThe dog sat on the mat; the cat did not.\n" * 3
    pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
    assert make_tokenizer_from_pieces(kind, pieces) == make_tokenizer(kind, text)


def test_a_piece_without_a_safe_cut_is_carried_until_one_comes():
    pieces = ["abc", "def", "ghi jk", "l"]
    assert list(regroup("word", pieces)) == ["abcdefghi ", "jkl"]
    ids = concat(encode_pieces(WORD, pieces))
    assert np.array_equal(ids, WORD.encode("abcdefghi jkl"))
