"""The math of one training step: gradients, the update, the evaluation.

One optimizer step
==================
With ``k = train.grad_accum`` micro-batches of ``B = train.batch_size``
sequences of ``T = train.seq_len`` tokens taken in order from the epoch
iterator (:class:`cllm_spec.train.prepare.BatchStream`), and ``s`` the 0-based
step, every micro-batch ``m`` is cut into the 12 symmetry groups
(:func:`cllm_spec.parallel.split_rows`: contiguous row ranges, the first
``B mod 12`` one row longer, empty groups skipped), and with ``n_mg`` the
tokens of group ``g`` of micro-batch ``m`` (:mod:`cllm_spec.parallel.reduction`)::

    l_mg, g_mg = forward/backward of group g of micro-batch m   (sum over n_mg)
    G_m        = grad_tree_reduce([g_mg for g, in group order])
    G          = grad_tree_reduce([G_1, ..., G_k])
    N          = sum of the n_mg                             (= k*B*T)
    loss       = fsum(l_mg) / N
    g          = grad_scale(G, 1 / N)
    g, norm    = clip_grad_norm(g, clip_norm)                (clip_norm = 0: none)
    params     = <optim.name>_step(params, g, lr=lr_at(s, schedule), ...)

Read top to bottom: :func:`group_gradients` is one group's forward/backward
(the summed loss ``l_mg`` and its gradient ``g_mg``), :func:`group_gradients_many`
the same for a worker's groups of one micro-batch in one pass over their rows
where the backend can (:mod:`cllm_spec.model_groups`: the same bits, far fewer
kernel calls), :func:`group_step_gradients`
the whole step's loss and gradient by the group split, in the calling thread, and
:func:`apply_update` the clip and the optimizer step. The step engines
(:mod:`cllm_spec.train.engines`) hand the same groups to worker threads or MPI
ranks and reduce them in the same order, so they give the same bits. The same
tokens in one unsplit forward/backward (:func:`compute_step_gradients`, the
textbook form, kept for reference) agree up to float rounding only.

Evaluation
==========
:func:`evaluate` runs validation micro-batches (a fixed, seeded choice of
windows, the same at every evaluation). The validation loss is the
token-weighted mean cross-entropy, ``val_ppl = exp(val_loss)``, ``val_acc`` the
argmax token accuracy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from cllm_spec import checks, model_groups
from cllm_spec.batching import iter_epoch
from cllm_spec.errors import ConfigError, NonFiniteError
from cllm_spec.metrics import perplexity, token_accuracy
from cllm_spec.model import (
    CheckedParams,
    ModelConfig,
    backward,
    checked_params,
    forward,
    forward_loss,
    mask_targets,
)
from cllm_spec.parallel import (
    N_GROUPS,
    GroupResult,
    finish_step,
    reduce_groups,
    split_rows,
)
from cllm_spec.protocols import Batch
from cllm_spec.train.config import RunConfig
from cllm_spec.train.state import optimizer_hyperparameters, optimizer_step


class DivergedError(NonFiniteError):
    """Training produced a non-finite loss, gradient or parameter."""

    hint = (
        "lower optim.lr or set train.clip_norm, then resume from the last "
        "checkpoint (or start again)"
    )


class EvalResult(NamedTuple):
    loss: float
    perplexity: float
    accuracy: float
    tokens: int


# ---------------------------------------------------------------- one step ---
def group_gradients(
    backend: Any, cfg: ModelConfig, params: np.ndarray | CheckedParams, batch: Batch
) -> tuple[np.ndarray, float, int]:
    """The parallel engines' ``grad_fn`` for one group micro-batch.

    Returns ``(d(summed loss)/d params, summed loss, n)`` with ``n`` the
    batch's counted tokens (:mod:`cllm_spec.parallel.reduction`): the model's
    loss with ``loss_reduction="sum"``, so no pass scales a mean back up. Runs
    on worker threads, so it sets its own floating-point error state (numpy's
    is per thread); a non-finite loss raises DivergedError before the
    backward. ``params`` may be the step's
    :class:`~cllm_spec.model.CheckedParams`, so that the groups of one step
    scan the weights for NaN once, not twice per group.
    """
    n = int(np.count_nonzero(batch.mask))
    if n == 0:  # nothing counts: the mean is 0/0, the sum is 0
        flat = params.flat if isinstance(params, CheckedParams) else params
        return np.zeros_like(flat), 0.0, 0
    # Overflow shows up as inf or NaN, which is checked and reported.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        targets = _group_targets(batch, n)
        loss, cache = forward_loss(
            backend, cfg, params, batch.input_ids, targets, loss_reduction="sum"
        )
        assert loss is not None  # targets were given
        if not math.isfinite(loss):
            raise DivergedError(f"loss {loss}")
        return backward(backend, cfg, params, cache), loss, n


def group_gradients_many(
    backend: Any,
    cfg: ModelConfig,
    params: np.ndarray | CheckedParams,
    batches: Sequence[Batch],
) -> list[tuple[np.ndarray, float, int]]:
    """:func:`group_gradients` of each batch, with the bits of one call per
    batch, in one forward and backward over all their rows where the backend
    allows (:mod:`cllm_spec.model_groups`): the per-row work then runs once
    instead of once per group. Raises DivergedError on the first batch (in
    order) whose loss is not finite, as the calls one by one would.
    """
    counts = [int(np.count_nonzero(b.mask)) for b in batches]
    live = [i for i, n in enumerate(counts) if n > 0]
    shapes = [_shape(batches[i]) for i in live]
    t = shapes[0][1] if shapes and shapes[0] else 0
    rows = [shape[0] if shape else 0 for shape in shapes]
    if (
        len(live) < 2
        or any(shape is None or shape[1] != t for shape in shapes)
        or not model_groups.supports(backend, rows, t)
    ):  # one by one, where the model's validation says what is wrong, if anything
        return [group_gradients(backend, cfg, params, b) for b in batches]
    ids = np.concatenate([batches[i].input_ids for i in live])
    targets = np.concatenate([_group_targets(batches[i], counts[i]) for i in live])
    bounds = np.cumsum([0, *rows])
    groups = [(int(bounds[j]), int(bounds[j + 1])) for j in range(len(live))]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        done = model_groups.group_losses_and_gradients(
            backend, cfg, params, ids, targets, groups
        )
    results: list[tuple[np.ndarray, float, int]] = []
    by_batch = dict(zip(live, done, strict=True))
    for i, batch in enumerate(batches):
        if i not in by_batch:
            results.append(group_gradients(backend, cfg, params, batch))
            continue
        loss, grad = by_batch[i]
        if not math.isfinite(loss):
            raise DivergedError(f"loss {loss}")
        results.append((grad, loss, counts[i]))
    return results


def _shape(batch: Batch) -> tuple[int, int] | None:
    """``(rows, T)`` when ids, targets and mask are 2-D arrays of that shape."""
    arrays = (batch.input_ids, batch.targets, batch.mask)
    if not all(isinstance(a, np.ndarray) and a.ndim == 2 for a in arrays):
        return None
    shape = batch.input_ids.shape
    if batch.targets.shape != shape or batch.mask.shape != shape:
        return None
    return int(shape[0]), int(shape[1])


def _group_targets(batch: Batch, n: int) -> np.ndarray:
    """The batch's targets, with IGNORE_INDEX where its mask is 0; ``n`` is
    the mask's count: a group whose every position counts (the usual case)
    needs no masking pass."""
    if n == batch.mask.size:
        return batch.targets
    return mask_targets(batch.targets, batch.mask)


def group_step_gradients(
    backend: Any, cfg: ModelConfig, params: np.ndarray, batches: Sequence[Batch]
) -> tuple[float, np.ndarray]:
    """Mean loss and mean gradient ``(P,)`` of one step by the group split, in
    the calling thread: the bits every engine and worker count produce."""
    micro_sums: list[np.ndarray] = []
    results: list[GroupResult] = []
    checked = checked_params(backend, cfg, params)
    for m, batch in enumerate(batches):
        mine = [
            GroupResult(m, g, *group_gradients(backend, cfg, checked, part))
            for g, part in enumerate(split_rows(batch, N_GROUPS))
            if part is not None
        ]
        micro_sums.append(reduce_groups(backend, mine))
        results.extend(mine)
    if not results:
        raise ConfigError("batches: a step needs at least one micro-batch")
    grad, loss, _ = finish_step(backend, micro_sums, results)
    return loss, grad


def apply_update(
    backend: Any,
    run: RunConfig,
    params: np.ndarray,
    grads: np.ndarray,
    opt_state: Any,
    lr: float,
    decay_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, Any, float]:
    """Clip ``grads`` (when ``train.clip_norm > 0``) and take one optimizer step,
    decaying only where ``decay_mask`` is True (None: every parameter).

    Returns the new params, the new state and the gradient norm before clipping.
    """
    if run.train.clip_norm > 0:
        grads, norm = backend.clip_grad_norm(grads, run.train.clip_norm)
    else:
        norm = backend.grad_global_norm(grads)
    if not math.isfinite(norm):
        raise DivergedError(f"gradient norm {norm}")
    new_params, new_state = optimizer_step(
        backend,
        run.optim.name,
        params,
        grads,
        opt_state,
        lr,
        optimizer_hyperparameters(run.optim),
        decay_mask,
    )
    try:
        scan = getattr(backend, "all_finite", None)  # else one sum, not a mask of P
        checks.expect_finite("params", new_params, scan)
    except NonFiniteError as exc:
        raise DivergedError("the update made parameters NaN or inf") from exc
    return new_params, new_state, float(norm)


# ---------------------------------------------------------- the textbook form ---
def compute_step_gradients(
    backend: Any, cfg: ModelConfig, params: np.ndarray, batches: Sequence[Batch]
) -> tuple[float, np.ndarray]:
    """Mean loss and mean gradient ``(P,)`` over the micro-batches of one step,
    each micro-batch in one unsplit forward/backward.

    The textbook form of a step (``cllm train`` runs :func:`group_step_gradients`'
    math instead; the two agree up to float rounding). Raises DivergedError as
    soon as a micro-batch's loss is not finite (its backward is skipped).
    """
    total = 0.0
    acc: np.ndarray | None = None
    for i, batch in enumerate(batches):
        targets = mask_targets(batch.targets, batch.mask)
        loss, cache = forward_loss(backend, cfg, params, batch.input_ids, targets)
        assert loss is not None  # targets were given
        if not math.isfinite(loss):
            raise DivergedError(f"loss {loss} on micro-batch {i}")
        grads = backward(backend, cfg, params, cache)
        acc = grads if acc is None else backend.grad_accumulate(acc, grads)
        total += loss
    if acc is None:
        raise ConfigError("batches: a step needs at least one micro-batch")
    if len(batches) > 1:
        acc = backend.grad_scale(acc, 1.0 / len(batches))
    return total / len(batches), acc


# -------------------------------------------------------------- evaluation ---
def evaluate(
    backend: Any,
    cfg: ModelConfig,
    params: np.ndarray,
    tokens: np.ndarray,
    batch_size: int,
    seq_len: int,
    *,
    seed: int,
    max_batches: int | None = None,
) -> EvalResult:
    """Token-weighted loss, perplexity and accuracy over validation batches."""
    batches: Iterator[Batch] = iter_epoch(
        tokens, batch_size, seq_len, seed=seed, epoch=0, drop_last=False
    )
    if max_batches is not None:
        batches = itertools.islice(batches, max_batches)
    loss_sum = correct = 0.0
    count = 0
    for batch in batches:
        targets = mask_targets(batch.targets, batch.mask)
        logits, loss, _ = forward(backend, cfg, params, batch.input_ids, targets)
        assert loss is not None
        n = int(batch.mask.sum())
        flat = logits.reshape(-1, cfg.vocab_size)  # (B*T, V)
        loss_sum += loss * n
        correct += token_accuracy(flat, targets.reshape(-1)) * n
        count += n
    mean = loss_sum / count
    return EvalResult(mean, perplexity(mean), correct / count, count)


__all__ = [
    "DivergedError",
    "EvalResult",
    "apply_update",
    "compute_step_gradients",
    "evaluate",
    "group_gradients",
    "group_step_gradients",
]
