"""Batching: the Batch triple, split/merge, the epoch iterator, BatchQueue, BatchPool.

Batch
=====

A :class:`~cllm_spec.protocols.Batch` is the NamedTuple
``(input_ids, targets, mask)``::

    input_ids: (B, T) int32    token ids fed to the model
    targets:   (B, T) int32    the id the model must predict at each position
    mask:      (B, T) int32    1 where the position counts toward the loss, 0 = pad

Every id is ``>= 0`` (the upper bound ``< V`` is checked by the consumer, which
knows ``V``); padded positions hold any valid id, conventionally 0, with mask 0.
:func:`make_batch` validates and builds one; ``mask=None`` means "every position
counts" (ones). The arrays are stored as given, not copied.

Errors (:func:`validate_batch`): an argument that is not an int32 ndarray is a
``DTypeError`` (ids are never cast, so an int64 array is rejected rather than
silently narrowed); rank != 2 or shapes that differ is a ``ShapeError``; ``B == 0``
or ``T == 0`` is an ``EmptyInputError``; a negative id, or a mask value other than
0 and 1, is an ``IdRangeError``.

Split and merge
===============

``batch_split(batch, k) -> list[Batch]``: ``k`` batches of ``B // k`` rows each;
part ``i`` holds rows ``[i * B/k, (i + 1) * B/k)`` of every array, in order. ``k``
is an int >= 1 (else ``ConfigError``) and must divide ``B`` (else ``ShapeError``:
the original spread an uneven remainder round-robin; an uneven split would give
workers unequal loss weights, so we refuse it). The parts are copies: writing
into one never changes the input or another part.

``batch_merge(batches) -> Batch``: the rows of every batch concatenated in list
order, so ``batch_merge(batch_split(b, k))`` equals ``b`` bitwise. All parts must
share ``T`` (else ``ShapeError``); an empty list is an ``EmptyInputError``; a
member that is not a valid Batch raises what :func:`validate_batch` raises. The
result is a new array triple.

The epoch iterator
==================

A corpus is a 1-D integer array ``tokens: (N,)`` (int8..int64 or uint8..uint64;
every value must lie in ``[0, 2**31)`` so that it fits the int32 batch). It is cut
into non-overlapping windows of ``T + 1`` tokens that start at ``0, T, 2T, ...``
while ``start + T + 1 <= N``; consecutive windows share one boundary token, so
every token except possibly a tail shorter than one window is used once as an
input and once as a target. The number of windows is::

    W = (N - 1) // T                  (N >= T + 1)

Window ``s`` gives one row: ``input = tokens[s : s + T]``, ``target =
tokens[s + 1 : s + T + 1]`` (the next token), ``mask = 1``.

Order: epoch ``e`` of a run seeded with ``seed`` visits the windows in the order
``np.random.default_rng([seed, epoch]).permutation(W)`` (NumPy's PCG64 seeded by
the two-word entropy ``[seed, epoch]``), so the order is a pure function of
``(seed, epoch, N, T)``: the same arguments give the same bits on every machine
and every backend, each epoch gets its own order, and resuming at epoch ``e``
needs nothing but ``e``. Batch ``j`` holds the windows ``perm[j*B : (j+1)*B]``
in that order, so every window appears exactly once per epoch (except those in a
dropped tail).

Number of batches::

    num_batches = W // B              drop_last=True  (the default)
    num_batches = ceil(W / B)         drop_last=False (last batch has W mod B rows)

With ``drop_last=True`` the ``W mod B`` windows at the end of the permutation are
skipped this epoch (others are skipped next epoch, because the permutation
changes). With ``drop_last=False`` the last batch is yielded with fewer rows, never
padded.

Errors: ``batch_size``, ``seq_len`` not an int >= 1, ``seed``, ``epoch`` not an
int >= 0, ``drop_last`` not a bool: ``ConfigError``. ``tokens`` not an integer
ndarray: ``DTypeError``; not 1-D: ``ShapeError``; a value outside ``[0, 2**31)``:
``IdRangeError``. ``N < T + 1`` (not even one window) is an ``EmptyInputError``,
and so is ``drop_last=True`` with ``W < B`` (the epoch would be empty): an epoch
never yields nothing silently and never loops forever, the two ways the original
hung on tiny corpora. :func:`iter_epoch` raises all of these when it is called,
before the first batch is requested.

Relation to PyTorch: this is ``DataLoader(windows, batch_size=B, shuffle=True,
drop_last=...)`` with a per-epoch generator, with three deliberate deviations:
the permutation comes from NumPy, not ``torch.randperm`` (no torch dependency;
the order is specified by the formula above instead); ``drop_last`` defaults to
True (training wants a constant batch shape and equal weight per batch); and an
epoch with no batch is an error instead of an empty iteration.

BatchQueue
==========

``make_batch_queue(capacity)`` (a backend function) returns a bounded
multi-producer multi-consumer FIFO of Python objects. ``capacity`` is an int in
``[1, MAX_QUEUE_CAPACITY]`` (2**24; else ``ConfigError``); a queue never holds
more than ``capacity`` items. Every ``timeout`` is ``None`` (wait as long as
needed) or a number of seconds in ``[0, MAX_TIMEOUT]`` (1e9, about 31 years;
else ``ConfigError``); ``timeout=0`` never waits.

- ``put(item, timeout=None)``: appends ``item``, blocking while the queue is full.
  Raises ``QueueClosedError`` if the queue is closed, including for a producer
  that was blocked on a full queue when ``close()`` was called (it wakes at once);
  ``QueueTimeoutError`` (a ``TimeoutError``) if no room appeared within
  ``timeout``. ``None`` cannot be queued (``DTypeError``), because ``try_get``
  uses ``None`` to mean "empty".
- ``try_put(item) -> bool``: like ``put`` without waiting; ``False`` when full.
- ``get(timeout=None)``: removes and returns the oldest item, blocking while the
  queue is empty and open. After ``close()`` it keeps returning the remaining
  items in FIFO order, then raises ``QueueClosedError``; consumers blocked on an
  empty queue wake at once on close and raise. ``QueueTimeoutError`` on timeout.
- ``try_get() -> item | None``: ``None`` when empty and open; after close it
  drains like ``get`` and raises ``QueueClosedError`` once drained.
- ``close()``: idempotent, irreversible. ``closed``, ``capacity``, ``len(q)``.

Items are passed by reference (no copy). FIFO is global: items leave in the order
they entered, so each consumer sees the items of one producer in the order that
producer put them.

A call that raises leaves the queue unchanged: whatever step raised, including a
``KeyboardInterrupt`` (or any exception a signal handler raises) while the call
waits, no item is lost, none is delivered twice and later calls work. A get
that raised after it took its item puts it back at the head. A put that raised
after its item entered the queue takes it out again; only if a consumer has
already taken it (the exception arrived after the put took effect) does the
item stay delivered, and then the exception carries the note
:data:`PUT_TOOK_EFFECT` (``exc.__notes__``), so a caller that retries an
interrupted put can tell that it must not.

BatchPool
=========

``make_batch_pool(size, batch_size, seq_len)`` (a backend function) preallocates
``size`` Batches of shape ``(batch_size, seq_len)`` int32 (ids and targets 0, mask
1) and lends them out; all three arguments are ints >= 1 and the pool's arrays
take at most ``MAX_POOL_BYTES`` (1 GiB) together (else ``ConfigError``).

- ``acquire(timeout=None) -> PooledBatch``: lends a free batch with refcount 1,
  blocking while none is free; ``QueueTimeoutError`` on timeout,
  ``QueueClosedError`` if the pool is closed (waiters wake at once on close).
- ``try_acquire() -> PooledBatch | None``: ``None`` when none is free (counted as a
  miss); ``QueueClosedError`` when closed.
- ``retain(item)``: refcount + 1. ``release(item)``: refcount - 1; at 0 the slot
  returns to the pool and one waiter wakes. ``refcount(item)``: the handle's count,
  0 once it went back to the pool.
- Releasing or retaining a handle whose count is 0 (a double release, or a stale
  handle whose slot has since been lent again) is a ``RefCountError``. A handle
  from another pool, or any other object, is also a ``RefCountError`` ("not from
  this pool"): it is an ownership error like a double release, and the original
  silently ignored it.
- ``available`` (free slots), ``size``, ``closed``, ``close()`` (idempotent).
  ``retain``, ``release`` and ``refcount`` keep working after close, so holders can
  return what they hold.
- ``acquire`` and ``try_acquire`` that raise leave the pool unchanged (a slot
  lent before the exception returns to the head of the free list, and the
  counters are restored). ``release`` and ``retain`` never wait; one that raises
  has taken effect completely or not at all (``refcount`` tells which).
- ``stats() -> PoolStats(allocations, releases, hits, misses)``: successful
  acquires (both kinds), releases that returned a slot, acquires served without
  waiting, ``try_acquire`` calls that found nothing free.

A ``PooledBatch`` is a small frozen handle with ``.batch`` (a Batch whose arrays
the holder writes in place: the one documented mutation) and ``.slot`` (an int in
``[0, size)``). Every acquire makes a new handle: its identity (pool, slot and a
per-slot generation) ties its refcount to that one loan. The contents are not
cleared between loans; the holder overwrites all three arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from cllm_spec.checks import (
    as_array,
    expect_flag,
    expect_in_range,
    expect_nonnegative_int,
    expect_positive_int,
    expect_rank,
    expect_shape,
)
from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    IdRangeError,
    ShapeError,
)
from cllm_spec.protocols import Batch

INT32_LIMIT = 2**31  # ids must fit the int32 batch arrays
#: The longest timeout in seconds (about 31 years); None waits without limit.
MAX_TIMEOUT = 1e9
#: The largest queue capacity: far beyond any use, and allocatable up front.
MAX_QUEUE_CAPACITY = 2**24
#: The most memory a BatchPool may preallocate.
MAX_POOL_BYTES = 2**30

#: The note (``exc.__notes__``) of an exception that a put raised after its item
#: was queued and taken by a consumer: the put took effect, do not repeat it.
PUT_TOOK_EFFECT = (
    "put: the item was queued before this exception arrived and a consumer has "
    "taken it; do not put it again"
)


# -------------------------------------------------------------- validation ----
def _expect_int32(name: str, x: object) -> np.ndarray:
    arr = as_array(name, x)
    if arr.dtype != np.int32:
        raise DTypeError(
            f"{name}: expected int32, got {arr.dtype}",
            hint="batches hold int32 ids; convert with x.astype(np.int32)",
        )
    return arr


def validate_batch_arrays(
    input_ids: object, targets: object, mask: object | None
) -> None:
    """The checks of :func:`make_batch`: int32, (B, T), non-empty, valid values."""
    ids = _expect_int32("input_ids", input_ids)
    tgt = _expect_int32("targets", targets)
    expect_rank("input_ids", ids, 2)
    expect_shape("targets", tgt, ids.shape)
    if ids.size == 0:
        raise EmptyInputError(
            f"input_ids: a batch needs B >= 1 and T >= 1, got {ids.shape}"
        )
    for name, arr in (("input_ids", ids), ("targets", tgt)):
        if arr.min() < 0:
            raise IdRangeError(f"{name}: ids must be >= 0, found {int(arr.min())}")
    if mask is not None:
        m = _expect_int32("mask", mask)
        expect_shape("mask", m, ids.shape)
        bad = (m != 0) & (m != 1)
        if bad.any():
            raise IdRangeError(
                f"mask: values must be 0 or 1, found {int(m[bad][0])}",
                hint="mask is 1 where a position counts toward the loss, 0 for padding",
            )


def validate_batch(batch: object, name: str = "batch") -> Batch:
    """``batch`` is a :class:`Batch` whose arrays pass :func:`validate_batch_arrays`."""
    if not isinstance(batch, Batch):
        raise DTypeError(f"{name}: expected a Batch, got {type(batch).__name__}")
    validate_batch_arrays(batch.input_ids, batch.targets, batch.mask)
    return batch


def validate_timeout(timeout: object) -> float | None:
    """``timeout`` is None or a number of seconds in [0, MAX_TIMEOUT]."""
    if timeout is None:
        return None
    return expect_in_range("timeout", timeout, 0.0, MAX_TIMEOUT)


def validate_queue_capacity(capacity: object) -> int:
    """A queue's capacity is an int in [1, MAX_QUEUE_CAPACITY]."""
    value = expect_positive_int("capacity", capacity)
    if value > MAX_QUEUE_CAPACITY:
        raise ConfigError(
            f"capacity: expected at most {MAX_QUEUE_CAPACITY}, got {value}",
            hint="a batch queue needs room for a few batches per worker",
        )
    return value


def validate_queue_item(item: object) -> None:
    """Anything but None can be queued (None is try_get's "empty")."""
    if item is None:
        raise DTypeError(
            "None cannot be queued",
            hint="try_get returns None for an empty queue; queue a sentinel object",
        )


def validate_pool_args(
    size: object, batch_size: object, seq_len: object
) -> tuple[int, int, int]:
    """``size``, ``batch_size`` and ``seq_len`` of a pool are ints >= 1 whose
    three int32 arrays per batch take at most MAX_POOL_BYTES together."""
    args = (
        expect_positive_int("size", size),
        expect_positive_int("batch_size", batch_size),
        expect_positive_int("seq_len", seq_len),
    )
    nbytes = 3 * 4 * math.prod(args)
    if nbytes > MAX_POOL_BYTES:
        raise ConfigError(
            f"pool of {args[0]} batches of {args[1]} x {args[2]}: {nbytes} bytes "
            f"exceed {MAX_POOL_BYTES}",
            hint="a pool needs a few batches, not a dataset's worth",
        )
    return args


# ------------------------------------------------------------------- batch ----
def make_batch(
    input_ids: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None
) -> Batch:
    """Validate and build a Batch; ``mask=None`` is all ones. No copy is made."""
    validate_batch_arrays(input_ids, targets, mask)
    if mask is None:
        mask = np.ones(input_ids.shape, dtype=np.int32)
    return Batch(input_ids, targets, mask)


def batch_split(batch: Batch, k: int) -> list[Batch]:
    """``k`` copies of consecutive row ranges of ``B // k`` rows, in order."""
    validate_batch(batch)
    k = expect_positive_int("k", k)
    rows = batch.input_ids.shape[0]
    if rows % k:
        raise ShapeError(
            f"batch_split: B={rows} is not divisible by k={k}",
            hint="choose k dividing the batch size, or merge/split to a multiple of k",
        )
    per = rows // k
    return [
        Batch(*(a[i * per : (i + 1) * per].copy() for a in batch))  # (B/k, T)
        for i in range(k)
    ]


def batch_merge(batches: Sequence[Batch]) -> Batch:
    """The rows of ``batches`` concatenated in order (all share ``T``)."""
    if len(batches) == 0:
        raise EmptyInputError("batch_merge: expected at least one batch, got none")
    for i, b in enumerate(batches):
        validate_batch(b, f"batches[{i}]")
    seq = batches[0].input_ids.shape[1]
    for i, b in enumerate(batches):
        if b.input_ids.shape[1] != seq:
            raise ShapeError(
                f"batch_merge: batches[{i}] has T={b.input_ids.shape[1]}, "
                f"batches[0] has T={seq}"
            )
    return Batch(
        *(np.concatenate(arrays, axis=0) for arrays in zip(*batches, strict=True))
    )


# ----------------------------------------------------------- epoch windows ----
def _validate_epoch_args(
    n_tokens: object,
    batch_size: object,
    seq_len: object,
    seed: object,
    epoch: object,
    drop_last: object,
) -> tuple[int, int, int, int, int, bool]:
    n = expect_nonnegative_int("n_tokens", n_tokens)
    b = expect_positive_int("batch_size", batch_size)
    t = expect_positive_int("seq_len", seq_len)
    s = expect_nonnegative_int("seed", seed)
    e = expect_nonnegative_int("epoch", epoch)
    d = expect_flag("drop_last", drop_last)
    windows = num_windows(n, t)
    if d and windows < b:
        raise EmptyInputError(
            f"the corpus has {n} tokens = {windows} window(s) of seq_len+1={t + 1}, "
            f"fewer than batch_size={b}: with drop_last=True the epoch would be empty",
            hint="lower batch_size or seq_len, pass drop_last=False, or add data",
        )
    return n, b, t, s, e, d


def num_windows(n_tokens: int, seq_len: int) -> int:
    """``W = (N - 1) // T``; a corpus of fewer than ``T + 1`` tokens is an error."""
    n = expect_nonnegative_int("n_tokens", n_tokens)
    t = expect_positive_int("seq_len", seq_len)
    if n < t + 1:
        raise EmptyInputError(
            f"the corpus has {n} tokens; one window needs seq_len+1 = {t + 1}",
            hint="use a shorter seq_len or a larger corpus",
        )
    return (n - 1) // t


def num_batches(
    n_tokens: int,
    batch_size: int,
    seq_len: int,
    *,
    drop_last: bool = True,
) -> int:
    """Batches per epoch: ``W // B`` with drop_last, else ``ceil(W / B)``."""
    _, b, t, _, _, d = _validate_epoch_args(
        n_tokens, batch_size, seq_len, 0, 0, drop_last
    )
    windows = num_windows(n_tokens, t)
    return windows // b if d else -(-windows // b)


def epoch_windows(
    n_tokens: int,
    batch_size: int,
    seq_len: int,
    *,
    seed: int,
    epoch: int,
    drop_last: bool = True,
) -> list[np.ndarray]:
    """The window starts of each batch of one epoch: a list of (B_j,) int64 arrays.

    ``starts = T * default_rng([seed, epoch]).permutation(W)``, cut into chunks of
    ``B``; the short tail chunk is dropped when ``drop_last``.
    """
    n, b, t, s, e, d = _validate_epoch_args(
        n_tokens, batch_size, seq_len, seed, epoch, drop_last
    )
    windows = num_windows(n, t)
    starts = t * np.random.default_rng([s, e]).permutation(windows).astype(np.int64)
    count = windows // b if d else -(-windows // b)
    return [starts[j * b : (j + 1) * b] for j in range(count)]


def _validate_tokens(tokens: object) -> np.ndarray:
    arr = as_array("tokens", tokens)
    if arr.dtype.kind not in "iu":
        raise DTypeError(f"tokens: expected an integer array, got {arr.dtype}")
    expect_rank("tokens", arr, 1)
    if arr.size and (arr.min() < 0 or arr.max() >= INT32_LIMIT):
        bad = arr[(arr < 0) | (arr >= INT32_LIMIT)]
        raise IdRangeError(
            f"tokens: ids must lie in [0, 2**31), found {int(bad[0])}",
            hint="token ids are non-negative and fit in int32",
        )
    return arr


def _gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> Batch:
    index = starts[:, None] + np.arange(seq_len + 1)[None, :]  # (B, T+1)
    windows = tokens[index].astype(np.int32)  # (B, T+1)
    inputs = np.ascontiguousarray(windows[:, :-1])  # (B, T)
    targets = np.ascontiguousarray(windows[:, 1:])  # (B, T)
    return Batch(inputs, targets, np.ones_like(inputs))


def iter_epoch(
    tokens: np.ndarray,
    batch_size: int,
    seq_len: int,
    *,
    seed: int,
    epoch: int,
    drop_last: bool = True,
) -> Iterator[Batch]:
    """Yield the Batches of one epoch (see the module docstring for the contract).

    Arguments are validated here, eagerly; the returned iterator only gathers.
    """
    arr = _validate_tokens(tokens)
    plan = epoch_windows(
        arr.shape[0], batch_size, seq_len, seed=seed, epoch=epoch, drop_last=drop_last
    )
    t = int(seq_len)
    return (_gather(arr, starts, t) for starts in plan)


__all__ = [
    "INT32_LIMIT",
    "Batch",
    "batch_merge",
    "batch_split",
    "epoch_windows",
    "iter_epoch",
    "make_batch",
    "num_batches",
    "num_windows",
    "validate_batch",
    "validate_batch_arrays",
    "validate_pool_args",
    "validate_queue_capacity",
    "validate_queue_item",
    "validate_timeout",
]
