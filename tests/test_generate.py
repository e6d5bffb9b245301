"""generate(): cached decoding must equal the model's full forward, step by step.

The reference below is the definition in ``cllm_spec.generate``'s docstring,
written without caches: every step runs one full forward over the last
``block_size`` tokens of the growing sequence. The original project's
inference filled the logits with random numbers (bug 3); these tests fail for
any generation that does not run the real model over the real context.
"""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    IdRangeError,
    NonFiniteError,
    ShapeError,
)
from cllm_spec.generate import Decoder, generate, generate_batch
from cllm_spec.model import (
    ModelConfig,
    forward,
    init_params,
    param_count,
    param_views,
)
from cllm_spec.registry import get_backend
from cllm_spec.sampling import SamplingConfig, sample

BOS = 2
# untied: with random weights a tied head mostly echoes the input token
CFG = ModelConfig(
    vocab_size=37, n_embd=16, n_layer=2, n_head=2, block_size=8, tie_embeddings=False
)
GREEDY = SamplingConfig(greedy=True)
SAMPLED = SamplingConfig(temperature=1.0)


@pytest.fixture(scope="module")
def backend():
    return get_backend("numpy")


def random_params(cfg: ModelConfig, dtype=np.float64, seed: int = 0) -> np.ndarray:
    """The gpt2 init with every weight matrix and embedding scaled by 10 (std
    0.2), LayerNorms left at (1, 0): the logits then depend strongly on the
    context, so greedy decoding does not lock onto one token and a wrong
    context changes the output (on the plain init the tests would be weak)."""
    params = init_params(cfg, np.random.default_rng(seed), np.float64)
    for name, view in param_views(cfg, params).items():
        if ".ln_" not in name:
            view *= 10.0
    return params.astype(dtype)


def full_forward_logits(backend, cfg, params, seq) -> np.ndarray:
    """Next-token logits (V,) from one uncached forward over seq[-T_max:]."""
    ctx = np.asarray(seq[-cfg.block_size :], dtype=np.int64)[None, :]  # (1, T)
    logits, _, _ = forward(backend, cfg, params, ctx)  # (1, T, V)
    return logits[0, -1]


def reference_generate(backend, cfg, params, prompt, n, sampling, rng, eos_id):
    seq = [int(t) for t in prompt] or [BOS]
    out = []
    for _ in range(n):
        tok = int(sample(full_forward_logits(backend, cfg, params, seq), sampling, rng))
        if tok == eos_id:
            break
        seq.append(tok)
        out.append(tok)
    return out


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def ids(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# ------------------------------------------------------------ equivalence -----
@pytest.mark.parametrize("prompt_len", [1, 3, 8])
def test_greedy_equals_argmax_of_full_forward_at_every_step(backend, prompt_len):
    params = random_params(CFG)
    prompt = np.arange(5, 5 + prompt_len, dtype=np.int64)
    n = 3 * CFG.block_size  # crosses block_size: prefill, decode and sliding window
    got = generate(
        backend, CFG, params, prompt, n, GREEDY, np.random.default_rng(0), None
    )
    seq = list(prompt)
    for step, tok in enumerate(got):
        want = int(np.argmax(full_forward_logits(backend, CFG, params, seq)))
        assert tok == want, f"step {step}: generated {tok}, full forward argmax {want}"
        seq.append(tok)
    assert got.shape == (n,) and got.dtype == np.int64
    assert len(set(got.tolist())) >= 4, "degenerate model: the test would be weak"


@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_decoder_logits_equal_full_forward(backend, dtype, atol):
    # cached and full forwards differ only by rounding; measured max |diff| with
    # logits up to 2.7: 1.2e-15 (float64), 4.8e-7 (float32). A wrong context or
    # position changes the logits by ~1.
    params = random_params(CFG, dtype)
    rng = np.random.default_rng(1)
    seq = rng.integers(0, CFG.vocab_size, 30).tolist()
    decoder = Decoder(backend, CFG, params)
    got = decoder.feed(np.asarray(seq[:5]))
    for end in range(5, len(seq) + 1):
        want = full_forward_logits(backend, CFG, params, seq[:end])
        assert got.dtype == dtype and got.shape == (CFG.vocab_size,)
        np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=f"{end=}")
        assert decoder.context.tolist() == seq[:end][-CFG.block_size :]
        if end < len(seq):
            got = decoder.feed(np.asarray(seq[end : end + 1]))


def test_decoder_feeds_chunks_past_the_window(backend):
    params = random_params(CFG)
    seq = np.arange(10, 30, dtype=np.int64)
    decoder = Decoder(backend, CFG, params)
    decoder.feed(seq[:6])
    got = decoder.feed(seq[6:11])  # 6 + 5 > block_size: refilled from scratch
    want = full_forward_logits(backend, CFG, params, seq[:11].tolist())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    assert decoder.context.tolist() == seq[3:11].tolist()


def test_sampling_equals_the_reference_and_is_reproducible(backend):
    params = random_params(CFG, seed=3)
    cfg = SamplingConfig(temperature=0.9, top_k=20, top_p=0.95)
    prompt = ids(7, 8, 9)
    a = generate(backend, CFG, params, prompt, 25, cfg, np.random.default_rng(5), None)
    b = generate(backend, CFG, params, prompt, 25, cfg, np.random.default_rng(5), None)
    c = generate(backend, CFG, params, prompt, 25, cfg, np.random.default_rng(6), None)
    ref = reference_generate(
        backend, CFG, params, prompt, 25, cfg, np.random.default_rng(5), None
    )
    assert a.tolist() == b.tolist() == ref
    assert a.tolist() != c.tolist()


def test_one_draw_per_token_and_none_when_greedy(backend):
    params = random_params(CFG)
    rng = np.random.default_rng(11)
    generate(backend, CFG, params, ids(4, 5), 12, SAMPLED, rng, None)
    expected = np.random.default_rng(11)
    expected.random(12)
    assert rng.random() == expected.random()
    rng = np.random.default_rng(11)
    generate(backend, CFG, params, ids(4, 5), 12, GREEDY, rng, None)
    assert rng.random() == np.random.default_rng(11).random()


# ------------------------------------------------------------------ batches -----
# The C backend runs decoding on its own path (few-row linear, attention over
# the cache in place, fused blocks), so the batch tests run on both backends.
BACKENDS = ["numpy", "c"]


@pytest.mark.parametrize("name", BACKENDS)
def test_batch_rows_follow_the_full_forward_of_their_prompts(name):
    be = get_backend(name)
    params = random_params(CFG, np.float32)
    prompts = np.array([[5, 6, 7], [1, 2, 3], [30, 9, 9]], dtype=np.int64)
    n = 2 * CFG.block_size  # prefill, decoding steps and the sliding window
    rows = generate_batch(be, CFG, params, prompts, n, GREEDY, _rng(), None)
    assert [r.shape for r in rows] == [(n,)] * 3
    for prompt, row in zip(prompts, rows, strict=True):
        seq = prompt.tolist()
        for step, tok in enumerate(row.tolist()):
            logits = full_forward_logits(be, CFG, params, seq)
            # float32 rounding may only swap near-ties of the argmax
            assert logits[tok] >= logits.max() - 1e-4, f"{name} step {step}"
            seq.append(tok)
    assert len({tuple(r) for r in rows}) == 3, "rows must differ: the test is weak"


@pytest.mark.parametrize("name", BACKENDS)
def test_batch_decoder_logits_equal_full_forward(name):
    be = get_backend(name)
    params = random_params(CFG, np.float32)
    seqs = np.random.default_rng(2).integers(0, CFG.vocab_size, (2, 14))
    decoder = Decoder(be, CFG, params, batch=2)
    got = decoder.feed(seqs[:, :4])
    for end in range(4, seqs.shape[1] + 1):
        assert got.shape == (2, CFG.vocab_size) and got.dtype == np.float32
        for b in range(2):
            want = full_forward_logits(be, CFG, params, seqs[b, :end].tolist())
            np.testing.assert_allclose(got[b], want, rtol=0, atol=1e-4)
        assert decoder.context.tolist() == seqs[:, :end][:, -CFG.block_size :].tolist()
        if end < seqs.shape[1]:
            got = decoder.feed(seqs[:, end : end + 1])


@pytest.mark.parametrize("name", BACKENDS)
def test_batch_of_one_is_generate_for_any_sampling(name):
    be = get_backend(name)
    params = random_params(CFG, np.float32, seed=3)
    cfg = SamplingConfig(temperature=0.9, top_k=20, top_p=0.95)
    prompt = ids(7, 8, 9)
    one = generate(be, CFG, params, prompt, 20, cfg, np.random.default_rng(5), None)
    [row] = generate_batch(
        be, CFG, params, prompt[None], 20, cfg, np.random.default_rng(5), None
    )
    assert row.tolist() == one.tolist()


def test_batch_draws_one_double_per_row_per_step_and_stops_rows_at_eos(backend):
    params = random_params(CFG)
    prompts = np.array([[4, 5], [6, 7]], dtype=np.int64)
    free = generate_batch(backend, CFG, params, prompts, 10, GREEDY, _rng(), None)
    # an eos first produced by row 1 at step >= 2 and never by row 0
    step = next(
        i
        for i, t in enumerate(free[1].tolist())
        if i >= 2 and t not in free[1][:i] and t not in free[0]
    )
    eos = int(free[1][step])
    got = generate_batch(backend, CFG, params, prompts, 10, GREEDY, _rng(), eos)
    assert got[0].tolist() == free[0].tolist()  # the other row goes on
    assert got[1].tolist() == free[1][:step].tolist()
    rng = np.random.default_rng(11)
    generate_batch(backend, CFG, params, prompts, 6, SAMPLED, rng, None)
    expected = np.random.default_rng(11)
    expected.random(2 * 6)
    assert rng.random() == expected.random()


@pytest.mark.parametrize(
    "prompts, error",
    [
        (ids(1, 2), ShapeError),  # rank 1: generate's prompt
        (np.zeros((0, 3), dtype=np.int64), EmptyInputError),
        (np.array([[1, 2], [3, 37]]), IdRangeError),
    ],
    ids=["rank", "no-rows", "id-range"],
)
def test_batch_bad_prompts_raise_typed_errors(backend, prompts, error):
    with pytest.raises(error):
        generate_batch(
            backend, CFG, random_params(CFG), prompts, 3, GREEDY, _rng(), None
        )


def test_decoder_feed_checks_the_batch(backend):
    decoder = Decoder(backend, CFG, random_params(CFG), batch=2)
    for bad in (ids(1, 2), np.zeros((3, 1), dtype=np.int64), np.zeros((2, 0))):
        with pytest.raises(ShapeError):
            decoder.feed(bad)
    with pytest.raises(ConfigError):
        Decoder(backend, CFG, random_params(CFG), batch=0)


@pytest.mark.parametrize(
    "bad", [np.array([[1.7], [2.0]]), np.array([[True], [False]]), [[1.5], [2.5]]]
)
def test_decoder_feed_refuses_ids_that_are_not_integers(backend, bad):
    # a cast to int64 would have fed token 1 for 1.7, silently
    decoder = Decoder(backend, CFG, random_params(CFG), batch=2)
    with pytest.raises(DTypeError, match="integer token ids"):
        decoder.feed(bad)
    assert decoder.context.shape == (2, 0)
    decoder.feed([[1], [2]])  # lists of ints are ids
    assert decoder.context.tolist() == [[1], [2]]


# ----------------------------------------------------------------- stopping -----
def test_eos_stops_and_is_not_returned(backend):
    params = random_params(CFG)
    prompt = ids(5, 6, 7)
    free = generate(
        backend, CFG, params, prompt, 20, GREEDY, np.random.default_rng(0), None
    )
    # a token first generated at step >= 3, so the stop cuts a real prefix
    first = next(i for i, t in enumerate(free.tolist()) if i >= 3 and t not in free[:i])
    eos = int(free[first])
    got = generate(
        backend, CFG, params, prompt, 20, GREEDY, np.random.default_rng(0), eos
    )
    assert got.tolist() == free[:first].tolist()
    assert eos not in got.tolist()


def test_eos_never_sampled_runs_to_max_new_tokens(backend):
    params = random_params(CFG)
    free = generate(backend, CFG, params, ids(5), 15, GREEDY, _rng(), None)
    unused = next(t for t in range(CFG.vocab_size) if t not in free.tolist())
    got = generate(backend, CFG, params, ids(5), 15, GREEDY, _rng(), unused)
    assert got.tolist() == free.tolist()


def test_zero_new_tokens_is_empty(backend):
    rng = _rng()
    got = generate(backend, CFG, random_params(CFG), ids(5), 0, SAMPLED, rng, None)
    assert got.shape == (0,) and got.dtype == np.int64
    assert rng.random() == _rng().random()


# ------------------------------------------------------------ long contexts -----
def test_sliding_window_equals_recomputing_the_last_window(backend):
    params = random_params(CFG, seed=4)
    prompt = np.arange(3, 3 + CFG.block_size, dtype=np.int64)  # cache full at once
    n = 4 * CFG.block_size
    got = generate(backend, CFG, params, prompt, n, SAMPLED, _rng(), None)
    ref = reference_generate(backend, CFG, params, prompt, n, SAMPLED, _rng(), None)
    assert got.tolist() == ref


def test_long_prompt_keeps_its_last_block_size_tokens(backend):
    params = random_params(CFG)
    rng = np.random.default_rng(2)
    long_prompt = rng.integers(0, CFG.vocab_size, 3 * CFG.block_size)
    tail = long_prompt[-CFG.block_size :]
    other_head = np.concatenate([(long_prompt[:-8] + 1) % CFG.vocab_size, tail])
    runs = [
        generate(backend, CFG, params, p, 10, SAMPLED, _rng(), None).tolist()
        for p in (long_prompt, tail, other_head)
    ]
    assert runs[0] == runs[1] == runs[2]
    # and the token just before the window matters once it is inside it
    shorter = long_prompt[-(CFG.block_size - 1) :]
    moved = generate(backend, CFG, params, shorter, 10, GREEDY, _rng(), None)
    kept = generate(backend, CFG, params, tail, 10, GREEDY, _rng(), None)
    assert moved.tolist() != kept.tolist()


def test_empty_prompt_starts_from_bos(backend):
    params = random_params(CFG)
    empty = np.zeros(0, dtype=np.int64)
    got = generate(backend, CFG, params, empty, 12, SAMPLED, _rng(), None)
    from_bos = generate(backend, CFG, params, ids(BOS), 12, SAMPLED, _rng(), None)
    assert got.tolist() == from_bos.tolist()


def test_int32_prompt_and_float32_params(backend):
    params = random_params(CFG, np.float32)
    prompt = np.array([5, 9, 11], dtype=np.int32)
    got = generate(backend, CFG, params, prompt, 12, GREEDY, _rng(), None)
    ref = reference_generate(backend, CFG, params, prompt, 12, GREEDY, _rng(), None)
    assert got.tolist() == ref


def test_inputs_not_mutated(backend):
    params = random_params(CFG)
    prompt = ids(5, 6, 7, 8, 9, 10, 11, 12, 13)
    p0, t0 = params.copy(), prompt.copy()
    generate(backend, CFG, params, prompt, 20, SAMPLED, _rng(), None)
    np.testing.assert_array_equal(params, p0)
    np.testing.assert_array_equal(prompt, t0)


# -------------------------------------------------------------- bad inputs -----
def _bad_cases():
    v = CFG.vocab_size
    return [
        ("prompt float", dict(prompt=np.array([1.0, 2.0])), DTypeError),
        ("prompt list", dict(prompt=[1, 2]), DTypeError),
        ("prompt rank 2", dict(prompt=np.array([[1, 2]])), ShapeError),
        ("prompt id >= V", dict(prompt=ids(1, v)), IdRangeError),
        ("prompt id < 0", dict(prompt=ids(-1)), IdRangeError),
        ("n negative", dict(n=-1), ConfigError),
        ("n float", dict(n=2.0), ConfigError),
        ("sampling dict", dict(sampling={"greedy": True}), ConfigError),
        ("top_k > V", dict(sampling=SamplingConfig(top_k=v + 1)), ConfigError),
        ("rng seed int", dict(rng=0), ConfigError),
        ("eos_id = V", dict(eos_id=v), IdRangeError),
        ("eos_id bool", dict(eos_id=True), ConfigError),
        ("params int", dict(params=np.zeros(param_count(CFG), np.int64)), DTypeError),
        ("params short", dict(params=np.zeros(5)), ShapeError),
        ("params NaN", dict(params=np.full(param_count(CFG), np.nan)), NonFiniteError),
        ("cfg dict", dict(cfg=CFG.to_dict()), ConfigError),
    ]


@pytest.mark.parametrize(
    "kwargs, error", [c[1:] for c in _bad_cases()], ids=[c[0] for c in _bad_cases()]
)
def test_bad_inputs_raise_typed_errors(backend, kwargs, error):
    args = dict(
        cfg=CFG,
        params=random_params(CFG),
        prompt=ids(5),
        n=3,
        sampling=SAMPLED,
        rng=_rng(),
        eos_id=None,
    )
    args.update(kwargs)
    with pytest.raises(error):
        generate(
            backend,
            args["cfg"],
            args["params"],
            args["prompt"],
            args["n"],
            args["sampling"],
            args["rng"],
            args["eos_id"],
        )


def test_empty_prompt_without_bos_in_vocab(backend):
    cfg = ModelConfig(vocab_size=2, n_embd=4, n_layer=1, n_head=1, block_size=4)
    empty = np.zeros(0, dtype=np.int64)
    with pytest.raises(EmptyInputError):
        generate(backend, cfg, random_params(cfg), empty, 3, SAMPLED, _rng(), None)


@pytest.mark.parametrize("entry", ["generate", "generate_batch", "stream", "beam"])
def test_one_call_scans_the_weights_for_nan_once(backend, monkeypatch, entry):
    """The finite scan of the params is O(P): on a production model it costs
    as much as a 16-token prompt's forward, so a call makes it once (the
    Decoder reuses the checked params) and no decoding step repeats it."""
    from cllm_spec import checks
    from cllm_spec.beam import beam_search
    from cllm_spec.generate import generate_stream

    scanned = []
    plain = checks.expect_finite

    def counting(name, x, scan=None):
        if name == "params":
            scanned.append(x.size)
        plain(name, x, scan)

    monkeypatch.setattr(checks, "expect_finite", counting)
    params = random_params(CFG)
    prompt = ids(5, 6)
    if entry == "generate":
        out = generate(backend, CFG, params, prompt, 4, GREEDY, _rng(), None)
    elif entry == "generate_batch":
        out = generate_batch(
            backend, CFG, params, prompt[None], 4, GREEDY, _rng(), None
        )
    elif entry == "stream":
        stream = generate_stream(
            backend, CFG, params, prompt[None], 4, GREEDY, _rng(), None
        )
        out = [tok for tok, _ in stream]
    else:
        out = beam_search(backend, CFG, params, prompt, 4, 2, None)
    assert len(out) > 0
    assert scanned == [param_count(CFG)]


def test_feed_next_is_feed_past_the_window(backend):
    # the generation loop's step: the same logits as feed, slides included
    params = random_params(CFG)
    toks = np.random.default_rng(8).integers(0, CFG.vocab_size, (2, 14))
    plain, sampled = Decoder(backend, CFG, params, 2), Decoder(backend, CFG, params, 2)
    np.testing.assert_array_equal(sampled.feed(toks[:, :3]), plain.feed(toks[:, :3]))
    for i in range(3, toks.shape[1]):  # past block_size = 8: the window slides
        want = plain.feed(toks[:, i : i + 1])
        np.testing.assert_array_equal(sampled.feed_next(toks[:, i]), want)
        np.testing.assert_array_equal(sampled.context, plain.context)


@pytest.mark.parametrize(
    "toks, error",
    [
        (np.array([3, 4, 5]), ShapeError),  # three tokens for two sequences
        (np.array([[3], [4]]), ShapeError),  # (B, 1), not (B,)
        (np.array([3.0, 4.0]), DTypeError),
        (np.array([3, CFG.vocab_size]), IdRangeError),
    ],
)
def test_feed_next_checks_what_it_was_not_given(backend, toks, error):
    decoder = Decoder(backend, CFG, random_params(CFG), batch=2)
    decoder.feed(np.array([[1, 2], [3, 4]]))
    with pytest.raises(error):
        decoder.feed_next(toks)
    assert decoder.context.tolist() == [[1, 2], [3, 4]]
