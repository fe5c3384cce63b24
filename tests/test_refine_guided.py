"""The swap refinement's guided proposals, its stop rule for large views and its float32
views (synthesize/refine.py; docs/method.md, "Swap refinement")."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from replisynth.stats.correlations import spearman_matrix
from replisynth.synthesize.refine import (
    SwapSettings,
    _Proposals,
    _Swapper,
    _SweepStop,
    _view,
    _view_sums_wide,
    direction,
    guided_pairs,
    refine_swaps,
    view_sums,
)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(2, 400),
    share=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
    with_z=st.booleans(),
)
def test_guided_pairs_are_disjoint_and_pair_high_with_low(
    size: int, share: float, seed: int, with_z: bool
) -> None:
    rng = np.random.default_rng(seed)
    pool = rng.choice(10 * size, size, replace=False)
    half = size // 2
    k = int(half * share)
    z = rng.normal(size=2 * k) if with_z else None
    r, s = guided_pairs(pool, z, k)
    assert len(r) == len(s) == half
    both = np.concatenate([r, s])
    assert len(np.unique(both)) == len(both)  # disjoint: one swap per row
    assert set(both) <= set(pool)
    if z is None:
        np.testing.assert_array_equal(r, pool[:half])
        np.testing.assert_array_equal(s, pool[half : 2 * half])
    elif k:
        zr = dict(zip(pool[: 2 * k], z, strict=True))
        high, low = [zr[x] for x in r[:k]], [zr[x] for x in s[:k]]
        assert min(high) >= max(low)  # the k highest against the k lowest
        assert high == sorted(high, reverse=True) and low == sorted(low)


def _scrambled_zero(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two exclusive indicators and a continuous column related to both (8% missing); the
    target is their Spearman matrix, the start has the indicators scrambled."""
    rng = np.random.default_rng(seed)
    cat = rng.choice(3, p=[0.25, 0.35, 0.4], size=n)
    a, b = (cat == 0).astype(float), (cat == 1).astype(float)
    c = rng.normal(size=n) + 1.2 * a - 0.7 * b
    c[rng.random(n) < 0.08] = np.nan
    X0 = np.column_stack([a, b, c])
    X = X0.copy()
    X[:, 0], X[:, 1] = rng.permutation(a), rng.permutation(b)
    return X0, X


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), n=st.integers(2000, 5000))
def test_guided_pairs_gain_more_than_random_pairs(seed: int, n: int) -> None:
    """Pairs of the highest and lowest u + h are scored as better swaps (exact change of the
    squared error) than random pairs of the same pool, and most of them improve it."""
    X0, X = _scrambled_zero(n, seed)
    T = spearman_matrix(X0)
    rows = np.arange(n)[~np.isnan(X[:, 2])]  # unit dim 2 moves only where it is present
    v = _view(X, np.arange(n), T, n)
    pool = np.random.default_rng(seed).choice(rows, 2 * (len(rows) // 4), replace=False)
    out = np.array([0, 1])
    z = direction(pool, [2], out, [v])
    assert z is not None
    half = len(pool) // 2
    guided = _Proposals(v, *guided_pairs(pool, z, half), [2], out).gain()
    random = _Proposals(v, *guided_pairs(pool, None, 0), [2], out).gain()
    assert guided.mean() < min(random.mean(), 0.0)
    assert np.mean(guided < 0) > np.mean(random < 0)
    assert guided[: half // 10].sum() < random.sum()  # its best tenth gains more than all


def test_direction_is_none_without_a_targeted_error() -> None:
    """A unit whose pairs are untargeted has no direction (its pairs are random, as before);
    targeted, the same unit has one."""
    X0, X = _scrambled_zero(1500, 2)
    T = spearman_matrix(X0)
    T[0, 1:] = T[1:, 0] = np.nan
    v = _view(X, np.arange(1500), T, 1500)
    assert direction(np.arange(200), [0], np.array([1, 2]), [v]) is None
    v = _view(X, np.arange(1500), spearman_matrix(X0), 1500)
    assert direction(np.arange(200), [0], np.array([1, 2]), [v]) is not None


def test_large_views_stop_once_within_comfort() -> None:
    """Every view large: the sweeps end at the first check within `comfort`, however much a
    sweep still gains; otherwise a sweep that gains more than `settle_gain` is followed by
    another."""
    knobs = SwapSettings(tol=0.004, comfort=0.035)
    err = np.zeros((3, 3))
    err[0, 1] = err[1, 0] = 0.03
    assert _SweepStop(knobs, large=True).done([err], 0)
    small = _SweepStop(knobs, large=False)
    assert not small.done([err * 2], 0)
    assert not small.done([err], 1)  # gained 75%: not settled yet
    assert not _SweepStop(knobs, large=True).done([err * 1.5], 0)  # 0.045 > comfort


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(3, 200_000), d=st.integers(2, 6), seed=st.integers(0, 100))
def test_float32_view_sums_are_the_float64_sums(rows: int, d: int, seed: int) -> None:
    """Sums of float32 scores accumulated in float64 by chunks equal the float64 sums of the
    same (rounded) values."""
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(rows, d)).astype(np.float32) / np.sqrt(rows)
    miss = np.array([0, d - 1])
    Pm = (rng.random((rows, 2)) < 0.9).astype(np.float64)
    U[Pm[:, 0] == 0, 0] = 0.0
    U[Pm[:, 1] == 0, d - 1] = 0.0
    wide = _view_sums_wide(U, Pm, miss)
    exact = view_sums(U.astype(np.float64), Pm, miss)
    for got, want in zip(wide, exact, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_refine_swaps_with_guided_pools_is_deterministic() -> None:
    """Pools smaller than the block (guided share near 1), two strata and the source view:
    the same seed gives the same permutations; the refinement keeps each group's values."""
    X0, X = _scrambled_zero(8000, 7)
    groups = [np.arange(0, 5000), np.arange(5000, 8000)]
    targets = [spearman_matrix(X0[g]) for g in groups]
    knobs = SwapSettings(max_pairs=64)
    runs = [
        refine_swaps(
            X,
            groups,
            targets,
            spearman_matrix(X0),
            [[0], [1], [2]],
            np.random.default_rng(3),
            knobs,
        )
        for _ in range(2)
    ]
    for p, q in zip(*runs, strict=True):
        np.testing.assert_array_equal(p, q)
        for g in groups:
            assert set(p[g]) == set(g)
    Y = X.copy()
    for j, p in enumerate(runs[0]):
        Y[:, j] = X[p, j]
    before = np.nanmax(np.abs(spearman_matrix(X) - spearman_matrix(X0)))
    after = np.nanmax(np.abs(spearman_matrix(Y) - spearman_matrix(X0)))
    assert after < 0.05 < before


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 1000), target=st.floats(0.1, 0.9))
def test_a_pair_without_common_rows_leaves_the_refinement_as_untargeted(
    seed: int, target: float
) -> None:
    """A targeted pair with fewer than 3 rows where both dims are present (a column missing
    on the whole block) has no correlation, and swaps never change where values are missing:
    the sweeps go exactly as if that pair were not targeted, instead of chasing it."""
    X0, X = _scrambled_zero(600, seed)
    X = np.column_stack([X, np.where(np.arange(600) < 300, np.nan, X0[:, 2])])
    groups = [np.arange(0, 300), np.arange(300, 600)]
    free = [
        np.pad(spearman_matrix(X0[g]), ((0, 1), (0, 1)), constant_values=np.nan) for g in groups
    ]
    reached = [t.copy() for t in free]
    reached[0][0, 3] = reached[0][3, 0] = target  # block 0 has no value of dim 3
    views = [_view(X, g, t, 600) for g, t in zip(groups, reached, strict=True)]
    assert views[0].M[0, 3] == 0.0 and views[1].M[0, 3] == 0.0
    runs = [
        refine_swaps(X, groups, t, None, [[0], [1], [2]], np.random.default_rng(seed))
        for t in (free, reached)
    ]
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_block_whose_batches_fail_waits_longer_each_time() -> None:
    """Blocks already at their targets (every swap worsens them): a failed batch makes the
    block wait 1 sweep, a second failure 3 (BACKOFF caps the wait), and the permutations
    never change."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(200, 3))
    groups = [np.arange(0, 100), np.arange(100, 200)]
    views = [_view(X, g, spearman_matrix(X[g]), 200) for g in groups]
    swapper = _Swapper(X, views, None, rng, SwapSettings(), None)
    perms = [np.arange(200)]
    states = []
    for _ in range(8):
        assert not swapper.move([0], [0], perms)
        states.append(swapper.fails[((0,), 0)])
    assert states == [(1, 1), (1, 0), (2, 3), (2, 2), (2, 1), (2, 0), (3, 3), (3, 2)]
    assert swapper.fails[((0,), 1)] == states[-1]
    np.testing.assert_array_equal(perms[0], np.arange(200))
