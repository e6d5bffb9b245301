"""Token sampling: temperature, top-k and top-p (nucleus) filtering, greedy decoding.

Pure NumPy and backend-agnostic: the functions take the logits a backend's
forward produced and return filtered logits, probabilities or token ids.
``logits: (V,) or (B, V) float32|float64`` with V >= 1 and B >= 1; every row is
handled independently (no Python loop over rows). All arithmetic after
validation is float64; ``filter_logits`` and ``probabilities`` return the
input's dtype and shape, ``sample`` returns ``int64`` ids of shape
``logits.shape[:-1]`` (``()`` for ``(V,)``, ``(B,)`` for ``(B, V)``).

Order of operations (Hugging Face ``generate``'s warper order: temperature,
top-k, top-p)::

    m      = max_v x_v                           (row max, subtracted for stability)
    s      = (x - m) / T                         (T = temperature > 0)
    keep   = top_k_keep(s, k)  &  top_p_keep(s masked by top-k, p)
    f_v    = s_v if keep_v else -inf
    probs  = softmax(f) = exp(f - max f) / sum exp(f - max f)

so the nucleus is taken on the tempered distribution (a higher temperature
flattens it and lets more tokens in) and after top-k (top-p renormalises over
the top-k survivors). ``filter_logits`` is ``keep`` on the raw logits (no
temperature) and returns ``x_v`` where kept, ``-inf`` elsewhere.

Top-k (``k`` an int in [1, V] or None)::

    t_k         = the k-th largest value of the row (counted with multiplicity)
    top_k_keep  = x >= t_k

Every token equal to the k-th value is kept, as Hugging Face's ``TopKLogitsWarper``
does (it removes ``x < t_k``), so ties at the k-th value keep more than k tokens:
``[1, 2, 2, 2, 0]`` with k = 2 keeps ids 1, 2, 3. With distinct values exactly the
k largest are kept, wherever they lie in the vocabulary.

Top-p (``p`` a float in (0, 1] or None), with ``q`` the softmax of the row
(after top-k) sorted in descending order of logit and ``c_r = q_0 + ... + q_r``::

    r*          = min { r : c_r >= p - SLACK }     (the smallest nucleus prefix)
    t_p         = the logit at sorted position r*
    top_p_keep  = x >= t_p

so the kept set is the smallest prefix of the sorted distribution whose mass
reaches ``p``, plus every token tied with its last member. The top token is
always kept (r* >= 0); p = 1.0 keeps every token, like None (Hugging Face only
installs its top-p warper for p < 1). Golden: probabilities [0.5, 0.3, 0.15,
0.05] with p = 0.8 keep 2 tokens (0.5 + 0.3 reaches 0.8), with p = 0.81 keep 3.

Sampling (``sample``): ``greedy`` returns the argmax of the raw logits, the
lowest id among tied maxima, and draws nothing from ``rng`` (filters and
temperature never remove the argmax, so they cannot change it). Otherwise,
for a (B, V) batch, ``u = rng.random(B)`` (B consecutive doubles in [0, 1),
row b uses the b-th; one double for a (V,) row) and row b returns the smallest
id v with ``cdf_b[v] > u_b * cdf_b[V-1]``, ``cdf_b`` being the cumulative sum of
the row's float64 weights ``exp(f - max f)``: inverse-CDF sampling. Exactly one
double per row is drawn whatever V, T, k and p are, so a seed gives one fixed
sequence of ids for a fixed distribution, and tokens of probability 0
(filtered out) are never returned.

Memory: a decoding step samples from V logits per row, so ``sample`` copies
them at most once: greedy reads the logits in place (validation included: one
max reduction per row, with no temporary of the vocabulary's size unless
something is wrong); otherwise one float64 copy is made and tempered,
filtered, exponentiated and summed in place (top-k and top-p add their own
selection arrays: a partition or a sort of the kept logits).

Deviations
----------
- ``top_k > V`` is a ConfigError; Hugging Face clamps it to V. A top-k larger
  than the vocabulary is a configuration mistake (for example a model trained
  with a smaller tokenizer than intended), not something to absorb silently.
- Top-p ties: tokens tied with the last member of the nucleus are all kept.
  Hugging Face keeps a subset of them chosen by ``torch.sort``, which is not
  stable, so its result is unspecified there; a value threshold makes the kept
  set independent of the token order (permuting the vocabulary permutes it).
- ``SLACK = 1e-9``: a prefix whose float64 mass falls short of ``p`` by at most
  1e-9 counts as reaching it. The rounding error of the float64 cumulative sum
  is below V * 2**-52, about 1.1e-11 for V = 50257, so a boundary that is exact
  in real arithmetic (p = 0.8 with 0.5 + 0.3 above) lands on its exact side
  instead of on the side the rounding picks; a real shortfall larger than 1e-9
  extends the nucleus as usual. (A float32 logit such as ``log(0.3)`` is itself
  off by ~1e-8, so exact boundaries are only meaningful for float64 logits.)
- The draw is not ``torch.multinomial``'s (the generator is NumPy's), so a
  seed gives different ids than PyTorch with the same seed.
- As the temperature goes to 0 the distribution tends to the argmax, but to
  the uniform distribution over tied maxima, not to greedy's lowest id.

Errors (checked before any arithmetic): logits not an ndarray or not
float32/float64 -> DTypeError; rank not 1 or 2 -> ShapeError; V == 0 or B == 0
-> EmptyInputError; NaN or +inf anywhere, or a row with no finite entry ->
NonFiniteError (-inf is allowed: it marks a banned token, and it is what
``filter_logits`` returns, so its output can be passed back in). ``temperature``
not a finite number > 0, ``top_k`` not None or an int in [1, V], ``top_p`` not
None or a number in (0, 1], ``greedy`` not a bool, ``config`` not a
SamplingConfig, ``rng`` not a ``numpy.random.Generator`` -> ConfigError whose
message starts with the field name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cllm_spec import checks
from cllm_spec.errors import ConfigError, NonFiniteError

SLACK = 1e-9  # see "Deviations": absorbs float64 rounding at an exact top-p boundary


# ------------------------------------------------------------------ validation ---
def validate_temperature(temperature: object) -> float:
    """``temperature`` is a finite number > 0."""
    return checks.expect_in_range(
        "temperature", temperature, 0.0, math.inf, lo_open=True
    )


def validate_top_k(top_k: object, vocab_size: int | None = None) -> int | None:
    """``top_k`` is None or an int >= 1 (and <= ``vocab_size`` when given)."""
    if top_k is None:
        return None
    k = checks.expect_positive_int("top_k", top_k)
    if vocab_size is not None and k > vocab_size:
        raise ConfigError(f"top_k: expected <= the vocab size {vocab_size}, got {k}")
    return k


def validate_top_p(top_p: object) -> float | None:
    """``top_p`` is None or a number in (0, 1]."""
    if top_p is None:
        return None
    return checks.expect_in_range("top_p", top_p, 0.0, 1.0, lo_open=True)


def validate_greedy(greedy: object) -> bool:
    """``greedy`` is a bool (numpy's bool too); 0 and 1 are not accepted."""
    if not isinstance(greedy, bool | np.bool_):
        raise ConfigError(f"greedy: expected a bool, got {type(greedy).__name__}")
    return bool(greedy)


def validate_logits(logits: object) -> np.ndarray:
    """``logits: (V,) or (B, V) float32|float64``, nonempty, no NaN or +inf, and
    at least one finite entry per row."""
    x = checks.expect_float("logits", logits)
    checks.expect_rank("logits", x, (1, 2))
    checks.expect_nonempty("logits", x)
    # one pass, no temporary of the vocabulary's size: a row's max is NaN if
    # the row has a NaN, +inf if it has +inf, -inf if it has no finite entry
    if np.isfinite(x.max(axis=-1)).all():
        return x
    nan = int(np.count_nonzero(np.isnan(x)))
    if nan:
        raise NonFiniteError(f"logits: {nan} NaN value(s)")
    pos_inf = int(np.count_nonzero(np.isposinf(x)))
    if pos_inf:
        raise NonFiniteError(f"logits: {pos_inf} +inf value(s)")
    dead = ~np.isfinite(x).any(axis=-1)
    if np.any(dead):
        rows = np.flatnonzero(dead)
        raise NonFiniteError(
            f"logits: {rows.size} row(s) with no finite entry (first: {int(rows[0])})",
            hint="at least one token per row must be allowed (finite logit)",
        )
    return x


def validate_filter_logits(
    logits: object, top_k: object, top_p: object
) -> tuple[np.ndarray, int | None, float | None]:
    """The checks of :func:`filter_logits`; returns the normalised arguments."""
    x = validate_logits(logits)
    return x, validate_top_k(top_k, x.shape[-1]), validate_top_p(top_p)


def validate_probabilities(
    logits: object, temperature: object, top_k: object, top_p: object
) -> tuple[np.ndarray, float, int | None, float | None]:
    """The checks of :func:`probabilities`; returns the normalised arguments."""
    x, k, p = validate_filter_logits(logits, top_k, top_p)
    return x, validate_temperature(temperature), k, p


def validate_sample(
    logits: object, config: object, rng: object
) -> tuple[np.ndarray, SamplingConfig, np.random.Generator]:
    """The checks of :func:`sample`, top_k against this V included."""
    x = validate_logits(logits)
    if not isinstance(config, SamplingConfig):
        raise ConfigError(
            f"config: expected a SamplingConfig, got {type(config).__name__}"
        )
    validate_top_k(config.top_k, x.shape[-1])
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(
            f"rng: expected a numpy.random.Generator, got {type(rng).__name__}",
            hint="pass np.random.default_rng(seed)",
        )
    return x, config, rng


@dataclass(frozen=True)
class SamplingConfig:
    """How ``sample`` picks a token (see the module docstring for the math).

    ``top_k`` is checked against V when sampling (V is not known here).
    """

    temperature: float = 1.0  # > 0; 1 leaves the distribution unchanged
    top_k: int | None = None  # None: no top-k filter
    top_p: float | None = None  # None (or 1.0): no nucleus filter
    greedy: bool = False  # argmax, lowest id on ties; draws nothing from rng

    def __post_init__(self) -> None:
        # normalised to plain Python types so configs compare and print plainly
        object.__setattr__(self, "temperature", validate_temperature(self.temperature))
        object.__setattr__(self, "top_k", validate_top_k(self.top_k))
        object.__setattr__(self, "top_p", validate_top_p(self.top_p))
        object.__setattr__(self, "greedy", validate_greedy(self.greedy))


# ------------------------------------------------------------------- filtering ---
def _top_k_keep(x: np.ndarray, k: int) -> np.ndarray:
    """``x >= t_k`` with ``t_k`` the k-th largest value of each row; x: (B, V)."""
    # partition on -x puts the k-th largest at index k - 1 in O(V)
    kth = -np.partition(-x, k - 1, axis=-1)[:, k - 1 : k]  # (B, 1)
    return x >= kth  # (B, V)


def _top_p_keep(x: np.ndarray, p: float) -> np.ndarray:
    """``x >= t_p``, the smallest nucleus of mass >= p plus ties; x: (B, V)
    float64 with -inf for removed tokens and a finite entry in every row."""
    desc = -np.sort(-x, axis=-1)  # (B, V) descending, -inf last
    weights = np.exp(desc - desc[:, :1])  # the max goes first: exp(0) = 1
    cum = np.cumsum(weights, axis=-1)  # (B, V)
    reached = cum >= (p - SLACK) * cum[:, -1:]  # (B, V) normalised mass >= p
    # the last position is the fallback only if rounding left every c_r < p
    cut = np.where(reached.any(axis=-1), reached.argmax(axis=-1), x.shape[-1] - 1)
    threshold = np.take_along_axis(desc, cut[:, None], axis=-1)  # (B, 1)
    return x >= threshold  # (B, V)


def _keep(x: np.ndarray, top_k: int | None, top_p: float | None) -> np.ndarray:
    """The kept set of each row of ``x: (B, V) float64`` (top-k, then top-p)."""
    keep = np.ones(x.shape, dtype=bool)
    if top_k is not None:
        keep &= _top_k_keep(x, top_k)
    if top_p is not None and top_p < 1.0:
        keep &= _top_p_keep(np.where(keep, x, -np.inf), top_p)
    return keep


def filter_logits(
    logits: np.ndarray, top_k: int | None = None, top_p: float | None = None
) -> np.ndarray:
    """``x_v`` where token v survives top-k then top-p, ``-inf`` elsewhere.

    ``logits: (V,) or (B, V) float`` -> same shape and dtype; no temperature.
    """
    x, k, p = validate_filter_logits(logits, top_k, top_p)
    rows = x.reshape(-1, x.shape[-1])  # (B, V), a view: x is never written
    keep = _keep(rows.astype(np.float64), k, p)  # the upcast is exact
    out = np.where(keep, rows, np.array(-np.inf, dtype=x.dtype))  # (B, V)
    return out.reshape(x.shape)


def _weights(
    rows: np.ndarray, temperature: float, top_k: int | None, top_p: float | None
) -> np.ndarray:
    """Unnormalised float64 probabilities ``exp(f - max f)`` of ``rows: (B, V)``.

    The float64 copy of ``rows`` is the only array of the vocabulary's size
    made here without filters; every later step works in place on it.
    """
    w = rows.astype(np.float64)  # (B, V); the upcast is exact
    # subtracting the max first keeps (x - m) / T <= 0, so a tiny T cannot
    # overflow to +inf; the max token gets exactly exp(0) = 1
    w -= w.max(axis=-1, keepdims=True)
    w /= temperature
    if top_k is not None or (top_p is not None and top_p < 1.0):
        w[~_keep(w, top_k, top_p)] = -np.inf  # filtered tokens weigh exp(-inf) = 0
    np.exp(w, out=w)
    return w


def probabilities(
    logits: np.ndarray,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> np.ndarray:
    """``softmax(filter(x / T))``: the distribution ``sample`` draws from.

    ``logits: (V,) or (B, V) float`` -> same shape and dtype, rows summing to 1,
    exactly 0 outside the kept set. Computed in float64, then cast.
    """
    x, t, k, p = validate_probabilities(logits, temperature, top_k, top_p)
    probs = _weights(x.reshape(-1, x.shape[-1]), t, k, p)  # (B, V)
    probs /= probs.sum(axis=-1, keepdims=True)  # sum >= 1: the max weighs 1
    return probs.astype(x.dtype, copy=False).reshape(x.shape)


# -------------------------------------------------------------------- sampling ---
def sample(
    logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator
) -> np.ndarray:
    """Token ids drawn from ``probabilities(logits, ...)`` (or the argmax).

    ``logits: (V,) or (B, V) float`` -> ids ``logits.shape[:-1]`` int64. Draws
    exactly ``B`` doubles (one for (V,)) from ``rng``, none when greedy.
    """
    x, cfg, gen = validate_sample(logits, config, rng)
    return _draw(x.reshape(-1, x.shape[-1]), cfg, gen).reshape(x.shape[:-1])


def draw(
    logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator
) -> np.ndarray:
    """:func:`sample` for a caller that checked ``config`` and ``rng`` and holds
    float logits of rank 1 or 2 (a decoding loop: :mod:`cllm_spec.generate`
    checks its sampling once per call, not once per token).

    The logits are still checked, as ``sample`` checks them (a model's output
    can overflow); greedily within the argmax's own pass: a row's first argmax
    is its first NaN if it has one, else its first +inf, else its max, so that
    value is finite exactly when ``validate_logits`` passes the row.
    """
    rows = logits.reshape(-1, logits.shape[-1])  # (B, V)
    if config.greedy and rows.shape[0] == 1:
        # one sequence, the common case: Python scalars in place of B-sized
        # arrays. Each array operation costs microseconds more than its
        # arithmetic, and ten times that when a large model's step has just
        # streamed its weights through the CPU's caches.
        top = int(rows[0].argmax())  # first maximum: lowest id
        if not math.isfinite(rows[0, top]):
            validate_logits(logits)  # raises, naming what is wrong
        return np.array([top] if logits.ndim == 2 else top, dtype=np.int64)
    if config.greedy:
        best: np.ndarray = np.argmax(rows, axis=-1)  # (B,) first maximum: lowest id
        if not np.isfinite(rows[np.arange(rows.shape[0]), best]).all():
            validate_logits(logits)  # raises, naming what is wrong
        return best.astype(np.int64).reshape(logits.shape[:-1])
    validate_logits(logits)
    return _draw(rows, config, rng).reshape(logits.shape[:-1])


def _draw(
    rows: np.ndarray, cfg: SamplingConfig, gen: np.random.Generator
) -> np.ndarray:
    """The ids ``(B,) int64`` of checked ``rows: (B, V)`` (module docstring)."""
    if cfg.greedy:
        best: np.ndarray = np.argmax(rows, axis=-1)  # first maximum: lowest id
        return best.astype(np.int64)
    w = _weights(rows, cfg.temperature, cfg.top_k, cfg.top_p)  # (B, V)
    u = gen.random((rows.shape[0],))  # (B,) row b uses the b-th double
    # u * total can round up to total; never step past the last kept token
    last_kept = rows.shape[-1] - 1 - np.argmax(w[:, ::-1] > 0.0, axis=-1)
    cdf = np.cumsum(w, axis=-1, out=w)  # (B, V), in place of the weights
    target = u[:, None] * cdf[:, -1:]  # (B, 1) in [0, total)
    ids: np.ndarray = np.count_nonzero(cdf <= target, axis=-1)  # first cdf_v > target
    ids = np.minimum(ids, last_kept)
    return ids.astype(np.int64)


__all__ = [
    "SLACK",
    "SamplingConfig",
    "draw",
    "filter_logits",
    "probabilities",
    "sample",
    "validate_filter_logits",
    "validate_greedy",
    "validate_logits",
    "validate_probabilities",
    "validate_sample",
    "validate_temperature",
    "validate_top_k",
    "validate_top_p",
]
