"""Data: tokenizers, corpus reading, ``dataset.bin`` and the train/val split.

The pipeline, on a whole text::

    text = read_corpus(path)                       # or read_default_corpus()
    tok = make_tokenizer("word", text)             # or "byte", "bpe"
    ids = tok.encode(text)                         # (N,) int32
    write_dataset_bin(dir / "dataset.bin", ids)    # the seed's layout

and the same in bounded memory, as ``cllm train`` runs it (same files)::

    corpus = open_corpus(path)                     # checks, warns, raises first
    tok = make_tokenizer_from_pieces("word", corpus.pieces())
    chunks = encode_pieces(tok, corpus.pieces())   # ids of safe-cut pieces
    write_dataset_stream(dir / "dataset.bin", chunks, vocab_size=tok.vocab_size)

then::

    ids = read_dataset_bin(dir / "dataset.bin")    # (N,) uint32, memory-mapped
    train, val = train_val_split(ids, 0.1, min_tokens=seq_len + 1)
    # then cllm_spec.batching.iter_epoch(train, B, T, seed=..., epoch=...)
"""

from cllm_spec.data.corpus import (
    Corpus,
    CorpusWarning,
    default_corpus_path,
    list_corpus_files,
    open_corpus,
    read_corpus,
    read_default_corpus,
)
from cllm_spec.data.dataset import (
    read_dataset_bin,
    train_val_split,
    write_dataset_bin,
    write_dataset_stream,
)
from cllm_spec.data.pieces import encode_pieces, regroup, safe_cut
from cllm_spec.data.tokenizers import (
    BOS_ID,
    EOS_ID,
    MASK_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    BpeTokenizer,
    ByteTokenizer,
    Tokenizer,
    WordTokenizer,
    make_tokenizer,
    make_tokenizer_from_pieces,
    read_vocab,
    tokenizer_from_dict,
    write_vocab,
)

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "MASK_ID",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "BpeTokenizer",
    "ByteTokenizer",
    "Corpus",
    "CorpusWarning",
    "Tokenizer",
    "WordTokenizer",
    "default_corpus_path",
    "encode_pieces",
    "list_corpus_files",
    "make_tokenizer",
    "make_tokenizer_from_pieces",
    "open_corpus",
    "read_corpus",
    "read_dataset_bin",
    "read_default_corpus",
    "read_vocab",
    "regroup",
    "safe_cut",
    "tokenizer_from_dict",
    "train_val_split",
    "write_dataset_bin",
    "write_dataset_stream",
    "write_vocab",
]
