"""Tokenizers: word (the seed's), byte and bpe; vocab.txt; the stored form."""

from __future__ import annotations

import importlib.util
import json
import random
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cllm_spec.data import tokenizers as tk
from cllm_spec.data.tokenizers import (
    SPECIAL_TOKENS,
    BpeTokenizer,
    ByteTokenizer,
    Tokenizer,
    WordTokenizer,
    make_tokenizer,
    read_vocab,
    tokenizer_from_dict,
    write_vocab,
)
from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    IdRangeError,
    ShapeError,
    Unsupported,
)

HAS_TOKENIZERS = importlib.util.find_spec("tokenizers") is not None
needs_bpe = pytest.mark.skipif(
    not HAS_TOKENIZERS, reason="the optional package `tokenizers` is not installed"
)

# Counts after lower-casing: a 3, b 2, d 2, c 1. Sorted by count desc, then token
# asc, the vocabulary is a b d c (b before d: the tie is broken by the token).
SMALL_TEXT = "b a c\nA b\ta D d"
SMALL_TOKENS = [*SPECIAL_TOKENS, "a", "b", "d", "c"]
SMALL_COUNTS = [0, 0, 0, 0, 0, 3, 2, 2, 1]
SMALL_VOCAB_TXT = (
    b"<pad>\t0\n<unk>\t0\n<bos>\t0\n<eos>\t0\n<mask>\t0\na\t3\nb\t2\nd\t2\nc\t1\n"
)
SEED_VOCAB_TXT = (
    "<PAD>\t0\n<UNK>\t0\n<BOS>\t0\n<EOS>\t0\n<MASK>\t0\n"
    "programming\t2\nis\t3\nthe\t9\ntasks.\t2\n"
)
PROSE = (
    "It is a truth universally acknowledged, that a single man in possession "
    "of a good fortune, must be in want of a wife. However little known the "
    "feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding "
    "families, that he is considered the rightful property of some one or other "
    "of their daughters. "
) * 4


def small_word() -> WordTokenizer:
    return WordTokenizer.train(SMALL_TEXT)


def all_kinds() -> list[Tokenizer]:
    kinds: list[Tokenizer] = [small_word(), ByteTokenizer()]
    if HAS_TOKENIZERS:
        kinds.append(BpeTokenizer.train(PROSE, vocab_size=300))
    return kinds


# --------------------------------------------------------------------------- word


def test_word_vocabulary_golden():
    tok = small_word()
    assert list(tok.tokens) == SMALL_TOKENS
    assert list(tok.counts) == SMALL_COUNTS
    assert tok.vocab_size == 9


def test_word_vocabulary_does_not_depend_on_word_order():
    words = SMALL_TEXT.split()
    for seed in range(5):
        random.Random(seed).shuffle(words)
        assert WordTokenizer.train(" ".join(words)) == small_word()


def test_word_max_vocab_counts_the_specials_and_cuts_the_rarest():
    tok = WordTokenizer.train(SMALL_TEXT, max_vocab=7)
    assert list(tok.tokens) == [*SPECIAL_TOKENS, "a", "b"]


def test_word_min_count_drops_rare_words():
    tok = WordTokenizer.train(SMALL_TEXT, min_count=2)
    assert list(tok.tokens) == [*SPECIAL_TOKENS, "a", "b", "d"]


def test_word_special_spellings_are_not_counted_as_words():
    tok = WordTokenizer.train("<unk> x <PAD> x")
    assert list(tok.tokens) == [*SPECIAL_TOKENS, "x"]
    np.testing.assert_array_equal(tok.encode("<unk> x <pad>"), [1, 5, 0])


@pytest.mark.parametrize(
    "opts",
    [{"max_vocab": 5}, {"max_vocab": 0}, {"max_vocab": 2.5}, {"min_count": 0}],
    ids=["max_vocab_5", "max_vocab_0", "max_vocab_float", "min_count_0"],
)
def test_word_bad_options(opts):
    with pytest.raises(ConfigError):
        WordTokenizer.train(SMALL_TEXT, **opts)


@pytest.mark.parametrize("text", ["", "   \n\t  "], ids=["empty", "whitespace"])
def test_word_training_on_no_words_is_an_error(text):
    with pytest.raises(EmptyInputError, match="no words"):
        WordTokenizer.train(text)


def test_word_encode_golden():
    # a=5 b=6 d=7 c=8; "zebra" and "a." are unknown (punctuation stays attached).
    ids = small_word().encode("A  b\nzebra C a. d")
    assert ids.dtype == np.int32
    assert ids.shape == (6,)
    np.testing.assert_array_equal(ids, [5, 6, 1, 8, 1, 7])


def test_word_encode_empty_text_gives_empty_int32():
    ids = small_word().encode("  \n")
    assert ids.dtype == np.int32
    assert ids.shape == (0,)


def test_word_decode_joins_with_spaces_and_drops_control_tokens():
    tok = small_word()
    assert tok.decode([2, 5, 0, 1, 6, 4, 3]) == "a <unk> b"
    assert tok.decode(np.array([8, 7], dtype=np.int64)) == "c d"
    assert tok.decode([]) == ""


@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=20), st.data())
def test_word_round_trip_normalises_case_and_whitespace(words, data):
    seps = [data.draw(st.sampled_from([" ", "\n", "\t", "  \r\n"])) for _ in words]
    text = "".join(w.upper() + s for w, s in zip(words, seps, strict=True))
    tok = small_word()
    assert tok.decode(tok.encode(text)) == " ".join(words)


@given(st.text(min_size=1).filter(lambda t: t.split() != []))
def test_word_trained_on_any_text_round_trips_it(text):
    words = text.lower().split()
    tok = WordTokenizer.train(text)
    ids = tok.encode(text)
    assert ids.shape == (len(words),)
    # Every word is in the vocabulary, so <unk> appears only where the text says so.
    assert 1 not in ids.tolist() or "<unk>" in words
    expected = " ".join(
        w for w in words if w not in ("<pad>", "<bos>", "<eos>", "<mask>")
    )
    assert tok.decode(ids) == expected


def test_word_constructor_rejects_bad_vocabularies():
    with pytest.raises(ConfigError, match="ids 0-4"):
        WordTokenizer(["a", *SPECIAL_TOKENS], [0] * 6)
    with pytest.raises(ConfigError, match="duplicate"):
        WordTokenizer([*SPECIAL_TOKENS, "a", "a"], [0] * 7)
    with pytest.raises(ConfigError, match="whitespace"):
        WordTokenizer([*SPECIAL_TOKENS, "a b"], [0] * 6)
    with pytest.raises(ConfigError, match="lower-case"):
        WordTokenizer([*SPECIAL_TOKENS, "Ab"], [0] * 6)
    with pytest.raises(ConfigError, match="count"):
        WordTokenizer([*SPECIAL_TOKENS, "a"], [0, 0, 0, 0, 0, -1])
    with pytest.raises(ConfigError, match="counts"):
        WordTokenizer([*SPECIAL_TOKENS, "a"], [0] * 5)


# --------------------------------------------------------------------------- vocab.txt


def test_write_vocab_exact_bytes(tmp_path):
    path = tmp_path / "vocab.txt"
    write_vocab(path, small_word())
    assert path.read_bytes() == SMALL_VOCAB_TXT


def test_vocab_round_trip(tmp_path):
    path = tmp_path / "vocab.txt"
    tok = small_word()
    write_vocab(path, tok)
    back = read_vocab(path)
    assert back == tok
    assert back.to_dict() == tok.to_dict()


def test_read_seed_vocab_keeps_line_order_and_maps_upper_case_specials(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text(SEED_VOCAB_TXT.replace("\n", "\r\n"), newline="")
    tok = read_vocab(path)
    assert list(tok.tokens[:5]) == list(SPECIAL_TOKENS)
    # Ids follow the file's line order (the seed's first-seen order), not counts.
    np.testing.assert_array_equal(tok.encode("The tasks. is programming"), [7, 8, 6, 5])
    assert tok.counts[7] == 9


def _specials_then(*lines: str) -> bytes:
    head = "".join(f"{s}\t0\n" for s in SPECIAL_TOKENS)
    return (head + "".join(lines)).encode()


MALFORMED = {
    "no_tab": (_specials_then("a 3\n"), 6, "token<TAB>count"),
    "two_tabs": (_specials_then("a\t3\t1\n"), 6, "token<TAB>count"),
    "empty_token": (_specials_then("a\t1\n", "\t2\n"), 7, "non-empty"),
    "space_in_token": (_specials_then("a b\t1\n"), 6, "whitespace"),
    "upper_case": (_specials_then("Word\t1\n"), 6, "lower-case"),
    "negative_count": (_specials_then("a\t-1\n"), 6, "non-negative"),
    "text_count": (_specials_then("a\tmany\n"), 6, "non-negative"),
    "no_count": (_specials_then("a\t\n"), 6, "non-negative"),
    "duplicate": (_specials_then("a\t1\n", "b\t1\n", "a\t1\n"), 8, "line 6"),
    "blank_line": (_specials_then("a\t1\n", "\n", "b\t1\n"), 7, "token<TAB>count"),
    "wrong_special": (b"<pad>\t0\n<unk>\t0\n<eos>\t0\n", 3, "'<bos>'"),
    "not_utf8": (_specials_then("a\t1\n") + b"caf\xe9\t1\n", 7, "UTF-8"),
    "too_few_lines": (b"<pad>\t0\n<unk>\t0\n", None, "five specials"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_read_vocab_rejects_malformed_lines_naming_the_line(tmp_path, case):
    content, lineno, fragment = MALFORMED[case]
    path = tmp_path / "vocab.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_vocab(path)
    message = info.value.message
    assert fragment in message
    if lineno is not None:
        assert f"vocab.txt:{lineno}:" in message


def test_read_vocab_of_an_empty_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"")
    with pytest.raises(EmptyInputError):
        read_vocab(path)


def test_write_vocab_needs_a_word_tokenizer(tmp_path):
    with pytest.raises(DTypeError):
        write_vocab(tmp_path / "vocab.txt", ByteTokenizer())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- byte


def test_byte_encode_golden():
    # "A" = 0x41 = 65, " " = 32, "é" = C3 A9 = 195 169 in UTF-8; id = 5 + byte.
    ids = ByteTokenizer().encode("A é")
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [70, 37, 200, 174])


def test_byte_vocab_size():
    assert ByteTokenizer().vocab_size == 261


def test_byte_decode_drops_control_and_replaces_bad_utf8():
    tok = ByteTokenizer()
    assert tok.decode([2, 70, 0, 37, 3, 4]) == "A "
    # 0xC3 alone is a cut-off two-byte character; <unk> is an unknown character.
    assert tok.decode([200]) == "\ufffd"
    assert tok.decode([70, 1, 70]) == "A\ufffdA"
    # <unk> splits the stream: C3 | A9 are two broken pieces, not one "é".
    assert tok.decode([200, 1, 174]) == "\ufffd\ufffd\ufffd"


@given(st.text())
def test_byte_round_trip_is_lossless(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.min(initial=5) >= 5 and ids.max(initial=5) < 261
    assert tok.decode(ids) == text


# --------------------------------------------------------------------------- common


@pytest.mark.parametrize("tok", all_kinds(), ids=lambda t: t.kind)
def test_specials_hold_ids_0_to_4_in_every_kind(tok):
    assert isinstance(tok, Tokenizer)
    if isinstance(tok, WordTokenizer):
        assert list(tok.tokens[:5]) == list(SPECIAL_TOKENS)
    elif isinstance(tok, BpeTokenizer):
        lib = tok._tok
        assert [lib.token_to_id(s) for s in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    # Decoding the control specials gives nothing, in every kind.
    assert tok.decode([0, 2, 3, 4]) == ""


@pytest.mark.parametrize("tok", all_kinds(), ids=lambda t: t.kind)
def test_to_dict_round_trips_exactly_through_json(tok):
    d = tok.to_dict()
    stored = json.loads(json.dumps(d))
    back = tokenizer_from_dict(stored)
    assert type(back) is type(tok)
    assert back.to_dict() == d
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(d, sort_keys=True)
    np.testing.assert_array_equal(back.encode(PROSE), tok.encode(PROSE))


@pytest.mark.parametrize("tok", all_kinds(), ids=lambda t: t.kind)
def test_decode_rejects_bad_ids(tok):
    with pytest.raises(IdRangeError):
        tok.decode([tok.vocab_size])
    with pytest.raises(IdRangeError):
        tok.decode([-1])
    with pytest.raises(DTypeError):
        tok.decode(np.array([1.0, 2.0]))
    with pytest.raises(ShapeError):
        tok.decode(np.array([[5, 6]]))


@pytest.mark.parametrize("tok", all_kinds(), ids=lambda t: t.kind)
def test_encode_rejects_non_text(tok):
    with pytest.raises(DTypeError):
        tok.encode(b"bytes")


BAD_DICTS = {
    "not_a_dict": ["word"],
    "unknown_kind": {"kind": "sentencepiece", "version": 1},
    "word_bad_version": {**small_word().to_dict(), "version": 2},
    "word_bool_version": {**small_word().to_dict(), "version": True},
    "word_extra_key": {**small_word().to_dict(), "extra": 1},
    "word_missing_counts": {"kind": "word", "version": 1, "tokens": SMALL_TOKENS},
    "word_tokens_not_list": {"kind": "word", "version": 1, "tokens": "a", "counts": []},
    "word_no_specials": {"kind": "word", "version": 1, "tokens": ["a"], "counts": [1]},
    "byte_extra_key": {"kind": "byte", "version": 1, "offset": 5},
}


@pytest.mark.parametrize("case", list(BAD_DICTS))
def test_from_dict_rejects_malformed_dicts(case):
    with pytest.raises(ConfigError):
        tokenizer_from_dict(BAD_DICTS[case])


def test_from_dict_of_the_wrong_class():
    with pytest.raises(ConfigError, match="kind"):
        WordTokenizer.from_dict(ByteTokenizer().to_dict())


def test_make_tokenizer_dispatches_and_passes_options():
    assert make_tokenizer("word", SMALL_TEXT, max_vocab=7) == WordTokenizer.train(
        SMALL_TEXT, max_vocab=7
    )
    assert isinstance(make_tokenizer("byte", "anything"), ByteTokenizer)


@pytest.mark.parametrize(
    "kind, opts",
    [("sentencepiece", {}), ("word", {"vocab_size": 10}), ("byte", {"max_vocab": 9})],
)
def test_make_tokenizer_rejects_unknown_kinds_and_options(kind, opts):
    with pytest.raises(ConfigError):
        make_tokenizer(kind, SMALL_TEXT, **opts)


# --------------------------------------------------------------------------- bpe


def test_bpe_without_the_library_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes the import fail
    with pytest.raises(Unsupported) as info:
        make_tokenizer("bpe", PROSE, vocab_size=300)
    assert "pip install cllm[bpe]" in str(info.value)
    with pytest.raises(Unsupported):
        BpeTokenizer.from_dict({"kind": "bpe", "version": 1, "tokenizer_json": "{}"})


@needs_bpe
def test_bpe_vocab_size_and_merges():
    tok = BpeTokenizer.train(PROSE, vocab_size=300)
    assert 261 < tok.vocab_size <= 300
    ids = tok.encode(PROSE)
    assert ids.dtype == np.int32 and ids.ndim == 1
    # Merges must shorten the text compared with one id per byte.
    assert ids.size < len(PROSE.encode("utf-8"))


@needs_bpe
def test_bpe_training_is_deterministic():
    a = BpeTokenizer.train(PROSE, vocab_size=300)
    b = BpeTokenizer.train(PROSE, vocab_size=300)
    assert a.to_dict() == b.to_dict()


@needs_bpe
@given(st.text(max_size=60))
def test_bpe_round_trip_is_lossless_and_never_emits_specials(text):
    tok = _bpe_for_properties()
    ids = tok.encode(text)
    assert ids.size == 0 or ids.min() >= 5
    assert tok.decode(ids) == text


@needs_bpe
def test_bpe_special_spellings_in_text_stay_text():
    tok = _bpe_for_properties()
    text = "a <pad> b <eos>"
    ids = tok.encode(text)
    assert not np.isin(ids, [0, 1, 2, 3, 4]).any()
    assert tok.decode(ids) == text
    assert tok.decode([2, *ids.tolist(), 3]) == text


_BPE_CACHE: list[BpeTokenizer] = []


def _bpe_for_properties() -> BpeTokenizer:
    if not _BPE_CACHE:
        _BPE_CACHE.append(BpeTokenizer.train(PROSE, vocab_size=300))
    return _BPE_CACHE[0]


@needs_bpe
def test_bpe_bad_options():
    with pytest.raises(ConfigError, match="261"):
        BpeTokenizer.train(PROSE, vocab_size=260)
    with pytest.raises(ConfigError):
        BpeTokenizer.train(PROSE, vocab_size=300, min_frequency=0)
    with pytest.raises(EmptyInputError):
        BpeTokenizer.train("  \n", vocab_size=300)


@needs_bpe
def test_bpe_from_dict_rejects_foreign_or_garbled_json():
    import tokenizers as lib

    foreign = lib.Tokenizer(lib.models.BPE())
    foreign.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = lib.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=list(reversed(SPECIAL_TOKENS)),
        show_progress=False,
    )
    foreign.train_from_iterator([PROSE], trainer)
    with pytest.raises(ConfigError, match="special '<pad>' must have id 0"):
        BpeTokenizer(foreign.to_str())
    with pytest.raises(ConfigError, match="unreadable"):
        tk.tokenizer_from_dict({"kind": "bpe", "version": 1, "tokenizer_json": "{nope"})
