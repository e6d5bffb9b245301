"""Group allocation over workers, and the cut of a batch into group micro-batches."""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec.errors import ConfigError, DTypeError, EmptyInputError, ShapeError
from cllm_spec.parallel import (
    N_GROUPS,
    Allocation,
    Strategy,
    allocate_groups,
    group_row_ranges,
    split_rows,
)
from cllm_spec.parallel.split import split_groups
from cllm_spec.protocols import Batch

# ============================================================ allocation ====
# Written out by hand from the rule "worker t owns g with g mod n == t" (n < 12)
# and "worker t owns group t" (n >= 12).
HAND_TABLES = {
    1: ((0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11),),
    2: ((0, 2, 4, 6, 8, 10), (1, 3, 5, 7, 9, 11)),
    3: ((0, 3, 6, 9), (1, 4, 7, 10), (2, 5, 8, 11)),
    4: ((0, 4, 8), (1, 5, 9), (2, 6, 10), (3, 7, 11)),
    5: ((0, 5, 10), (1, 6, 11), (2, 7), (3, 8), (4, 9)),
    7: ((0, 7), (1, 8), (2, 9), (3, 10), (4, 11), (5,), (6,)),
    11: ((0, 11), (1,), (2,), (3,), (4,), (5,), (6,), (7,), (8,), (9,), (10,)),
    12: tuple((g,) for g in range(12)),
    13: tuple((g,) for g in range(12)) + ((),),
}


@pytest.mark.parametrize("n", sorted(HAND_TABLES))
def test_hand_checked_tables(n):
    alloc = allocate_groups(n)
    assert alloc.groups == HAND_TABLES[n]
    expected_owner = [
        next(t for t, owned in enumerate(HAND_TABLES[n]) if g in owned)
        for g in range(12)
    ]
    assert list(alloc.group_to_worker) == expected_owner


def test_group_to_worker_hand_values():
    assert allocate_groups(5).group_to_worker == (0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1)
    assert allocate_groups(24).group_to_worker == tuple(range(12))


def test_seed_group_counts_per_worker():
    # The original's test_thread_allocation: 12 / 6 / 3 / 2 / 1 / 1 groups per
    # worker for 1, 2, 4, 6, 12, 24 workers, extra workers getting 0.
    for n, per_worker in ((1, 12), (2, 6), (4, 3), (6, 2), (12, 1), (24, 1)):
        counts = [len(g) for g in allocate_groups(n).groups]
        assert counts == [per_worker] * min(n, 12) + [0] * max(n - 12, 0)


@pytest.mark.parametrize("n", range(1, 25))
def test_invariant_for_1_to_24_workers(n):
    alloc = allocate_groups(n)
    assert alloc.n_workers == n and len(alloc.groups) == n
    assert alloc.strategy is (Strategy.ONE_TO_ONE if n >= 12 else Strategy.ROUND_ROBIN)
    owned = [g for groups in alloc.groups for g in groups]
    assert sorted(owned) == list(range(N_GROUPS))  # each group exactly once
    for t, groups in enumerate(alloc.groups):
        assert list(groups) == sorted(groups)
        assert alloc.groups_of(t) == groups
        for g in groups:
            assert alloc.worker_of(g) == t == alloc.group_to_worker[g]
        if n < 12:
            assert list(groups) == list(range(t, 12, n))
            assert len(groups) == 12 // n + (1 if t < 12 % n else 0)
        else:
            assert groups == ((t,) if t < 12 else ())
    assert alloc.idle_workers == tuple(range(12, n))
    assert alloc.active_workers == tuple(range(min(n, 12)))
    alloc.validate()


def test_load_balance():
    assert allocate_groups(12).load_balance == 1.0
    assert allocate_groups(24).load_balance == 1.0  # idle workers do not count
    assert allocate_groups(5).load_balance == pytest.approx(2 / 3)
    assert allocate_groups(7).load_balance == 0.5
    assert allocate_groups(6).load_balance == 1.0


@pytest.mark.parametrize("bad", [0, -1, 2.0, "3", True, None])
def test_bad_worker_counts(bad):
    with pytest.raises(ConfigError):
        allocate_groups(bad)


def test_queries_out_of_range():
    alloc = allocate_groups(3)
    for bad in (-1, 3, True):
        with pytest.raises(ConfigError):
            alloc.groups_of(bad)
    for bad in (-1, 12, 1.0):
        with pytest.raises(ConfigError):
            alloc.worker_of(bad)


@pytest.mark.parametrize(
    ("groups", "owners", "why"),
    [
        (((0, 1, 2, 3, 4, 5), (6, 7, 8, 9, 10)), (0,) * 6 + (1,) * 6, "no worker"),
        (((0, 1, 2, 3, 4, 5, 6), (6, 7, 8, 9, 10, 11)), (0,) * 7 + (1,) * 5, "owned"),
        (((1, 0, 2, 3, 4, 5), (6, 7, 8, 9, 10, 11)), (0,) * 6 + (1,) * 6, "unsorted"),
        (((0, 1, 2, 3, 4, 5), (6, 7, 8, 9, 10, 11)), (1,) * 6 + (0,) * 6, "disagree"),
        (((0, 1, 2, 3, 4, 5), (6, 7, 8, 9, 10, 12)), (0,) * 6 + (1,) * 6, "group 12"),
        (((0, 1, 2, 3, 4, 5), (6, 7, 8, 9, 10, 11)), (0,) * 6 + (1,) * 5, "entries"),
    ],
)
def test_an_invalid_allocation_cannot_be_built(groups, owners, why):
    with pytest.raises(ConfigError, match=why):
        Allocation(2, Strategy.ROUND_ROBIN, groups, owners)


def test_wrong_number_of_group_lists():
    with pytest.raises(ConfigError, match="group lists"):
        Allocation(3, Strategy.ROUND_ROBIN, allocate_groups(2).groups, (0, 1) * 6)


# ================================================================= split ====
def test_row_ranges_hand_values():
    # B = 16: q, r = 1, 4 -> groups 0..3 get 2 rows, groups 4..11 one row.
    assert group_row_ranges(16, 12) == [
        (0, 2), (2, 4), (4, 6), (6, 8), (8, 9), (9, 10),
        (10, 11), (11, 12), (12, 13), (13, 14), (14, 15), (15, 16),
    ]  # fmt: skip
    assert (
        group_row_ranges(5, 12)
        == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)] + [(5, 5)] * 7
    )
    assert group_row_ranges(24, 12) == [(2 * g, 2 * g + 2) for g in range(12)]


@pytest.mark.parametrize("b", [1, 5, 11, 12, 13, 16, 30, 100])
def test_row_ranges_cover_every_row_once(b):
    ranges = group_row_ranges(b, 12)
    rows = [r for lo, hi in ranges for r in range(lo, hi)]
    assert rows == list(range(b))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_split_batch_keeps_type_and_rows():
    ids = np.arange(5 * 3, dtype=np.int32).reshape(5, 3)
    batch = Batch(ids, ids + 100, np.ones_like(ids))
    parts = split_rows(batch, 12)
    assert len(parts) == 12
    assert parts[5:] == [None] * 7
    for g in range(5):
        assert isinstance(parts[g], Batch)
        np.testing.assert_array_equal(parts[g].input_ids, ids[g : g + 1])
        np.testing.assert_array_equal(parts[g].targets, ids[g : g + 1] + 100)


def test_split_plain_array_and_tuple():
    x = np.arange(26.0).reshape(13, 2)
    parts = split_rows(x, 12)
    np.testing.assert_array_equal(parts[0], x[0:2])
    np.testing.assert_array_equal(np.concatenate(parts), x)
    pair = split_rows((x, x[:, 0]), 12)
    assert type(pair[3]) is tuple
    np.testing.assert_array_equal(pair[3][1], x[4:5, 0])


@pytest.mark.parametrize(
    ("batch", "error"),
    [
        ([np.zeros((3, 2))], DTypeError),
        ((np.zeros((3, 2)), [1, 2, 3]), DTypeError),
        ((np.zeros((3, 2)), np.zeros((4, 2))), ShapeError),
        (np.float64(1.0), DTypeError),
        (np.zeros(()), ShapeError),
        (np.zeros((0, 4)), EmptyInputError),
        ((), EmptyInputError),
    ],
)
def test_split_rejects_bad_batches(batch, error):
    with pytest.raises(error):
        split_rows(batch, 12)


def test_split_rejects_bad_group_counts():
    with pytest.raises(ConfigError):
        split_rows(np.zeros((3, 2)), 0)
    with pytest.raises(ConfigError):
        group_row_ranges(0, 12)


def test_split_groups_checks_what_every_engine_relies_on():
    """The thread coordinator and the MPI ranks cut micro-batches through one
    check: a split_fn must give n_groups parts, not all of them empty."""
    batch = np.arange(24).reshape(12, 2)
    parts = split_groups(split_rows, batch, 0, N_GROUPS)
    assert len(parts) == N_GROUPS
    with pytest.raises(ShapeError, match="12 group micro-batches for micro-batch 3"):
        split_groups(lambda b, k: split_rows(b, k)[:11], batch, 3, N_GROUPS)
    with pytest.raises(ShapeError, match="got dict"):
        split_groups(lambda b, k: {}, batch, 0, N_GROUPS)
    with pytest.raises(EmptyInputError, match="micro-batch 1: every group is empty"):
        split_groups(lambda b, k: [None] * k, batch, 1, N_GROUPS)
