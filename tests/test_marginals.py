"""Marginals: percentile grids, apportionment, frequency tables with suppression, the
released distribution's CDF/quantile function, exact quantile samples and raking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from replisynth.stats.marginals import (
    GRID,
    FrequencyTable,
    apportion,
    exact_quantile_sample,
    frequency_table,
    grid_cdf,
    percentile_grid,
    quantile_function,
    quantile_grid,
    rake_blocks,
    synthesis_shares,
)

# ---------------------------------------------------------------------------------------------
# percentile_grid (the percentile arithmetic; which blocks release it: test_grids_groups.py)


def _expected_grid(v: np.ndarray, trim: int) -> np.ndarray:
    q = np.percentile(v, np.arange(101), method="averaged_inverted_cdf")
    if trim:
        q[: trim + 1] = q[trim]
        q[100 - trim :] = q[100 - trim]
    return q


@pytest.mark.parametrize("trim", [0, 1, 2, 5])
@pytest.mark.parametrize("n", [200, 537, 5000])
def test_quantile_grid_is_averaged_inverted_cdf_with_trim(n: int, trim: int) -> None:
    rng = np.random.default_rng(n + trim)
    v = rng.lognormal(size=n)
    g = percentile_grid(v, trim)
    assert g.shape == (101,)
    np.testing.assert_array_equal(g, _expected_grid(v, trim))
    # q0..q_trim all equal q_trim, q_(100-trim)..q100 all equal q_(100-trim)
    assert np.all(g[: trim + 1] == g[trim])
    assert np.all(g[100 - trim :] == g[100 - trim])
    assert np.all(np.diff(g) >= 0)


def test_quantile_grid_without_trim_keeps_extremes() -> None:
    v = np.random.default_rng(3).normal(size=400)
    g = percentile_grid(v, 0)
    assert g[0] == v.min() and g[-1] == v.max()


def test_quantile_grid_matches_stata_on_a_hand_example() -> None:
    # averaged_inverted_cdf: n*p integer -> average of x(np) and x(np+1), else x(ceil(np))
    v = np.arange(1.0, 201.0)  # 1..200
    g = percentile_grid(v, 0)
    assert g[50] == pytest.approx(100.5)  # n p = 100 -> (x100 + x101)/2
    assert g[1] == pytest.approx(2.5)  # n p = 2 -> (x2 + x3)/2
    assert g[0] == 1.0 and g[100] == 200.0


@pytest.mark.parametrize("trim", [1, 2])
@pytest.mark.parametrize("n", [60, 99, 100, 250, 5000])
def test_quantile_grid_never_releases_raw_extremes(n: int, trim: int) -> None:
    """REFERENCE.md/marginals docstring: with trim > 0 the raw minimum and maximum never
    leave. Grids are released from as few as min_cell_size (50) values, so n in 50..99
    must be covered too."""
    rng = np.random.default_rng(100 * n + trim)
    v = rng.normal(size=n)  # continuous: all values distinct
    g = quantile_grid(v, trim)
    assert v.min() not in g
    assert v.max() not in g
    assert g[0] > v.min() and g[-1] < v.max()


@pytest.mark.parametrize("n", [50, 60, 99, 100, 150, 199])
def test_quantile_grid_small_samples_code_the_two_most_extreme_values(n: int) -> None:
    """Below 100/trim values the trim percentile would be an observed extreme: the coding
    then covers at least the two most extreme values on each side; the interior of the grid
    is still the plain percentile grid."""
    v = np.random.default_rng(n).normal(size=n)
    s = np.sort(v)
    g = percentile_grid(v, 1)
    q = np.percentile(v, np.arange(101), method="averaged_inverted_cdf")
    assert s[0] < s[1] <= g[0] <= s[2]
    assert s[-3] <= g[-1] <= s[-2] < s[-1]
    assert s[0] not in g and s[-1] not in g
    inner = (q > g[0]) & (q < g[-1])
    np.testing.assert_array_equal(g[inner], q[inner])
    np.testing.assert_array_equal(g, np.clip(q, g[0], g[-1]))
    assert np.all(np.diff(g) >= 0)


# ---------------------------------------------------------------------------------------------
# apportion


def test_apportion_hand_example() -> None:
    # quotas 3.15, 2.45, 1.40 -> floors 3, 2, 1 (6); one seat left -> largest remainder .45
    np.testing.assert_array_equal(apportion(np.array([0.45, 0.35, 0.20]), 7), [3, 3, 1])
    # quotas .75 .75 1.5 -> floors 0 0 1; two seats to the .75 remainders
    np.testing.assert_array_equal(apportion(np.array([0.25, 0.25, 0.5]), 3), [1, 1, 1])
    # counts as shares: 50/30/20 of 9 -> 4.5, 2.7, 1.8 -> 4,2,1 + remainders .5 .7 .8 -> 4,3,2
    np.testing.assert_array_equal(apportion(np.array([50, 30, 20]), 9), [4, 3, 2])


def test_apportion_ties_go_to_the_earlier_level() -> None:
    np.testing.assert_array_equal(apportion(np.array([1.0, 1.0, 1.0]), 2), [1, 1, 0])
    np.testing.assert_array_equal(apportion(np.array([1.0, 1.0, 1.0]), 10), [4, 3, 3])
    np.testing.assert_array_equal(apportion(np.array([1.0, 2.0, 1.0]), 2), [1, 1, 0])
    # floating-point ties (1/3 written three ways) still go to the earliest
    np.testing.assert_array_equal(
        apportion(np.array([1 / 3, 1 - 2 / 3, 0.1 + 0.2 + 1 / 3 - 0.3]), 4), [2, 1, 1]
    )
    np.testing.assert_array_equal(apportion(np.array([0.0, 1.0, 1.0, 0.0]), 1), [0, 1, 0, 0])


def test_apportion_sums_to_total_and_is_deterministic() -> None:
    rng = np.random.default_rng(11)
    for _ in range(300):
        k = int(rng.integers(1, 12))
        shares = rng.random(k) * (rng.random(k) > 0.2) + 1e-12
        total = int(rng.integers(0, 5000))
        a = apportion(shares, total)
        b = apportion(shares.copy(), total)
        assert a.dtype.kind == "i"
        np.testing.assert_array_equal(a, b)
        assert int(a.sum()) == total
        assert np.all(a >= 0)
        quota = shares / shares.sum() * total
        # Hamilton: each count is the floor or the ceiling of its quota
        assert np.all(a >= np.floor(quota - 1e-9)) and np.all(a <= np.ceil(quota + 1e-9))


def test_apportion_exact_when_quotas_are_whole() -> None:
    np.testing.assert_array_equal(apportion(np.array([100, 60, 40]), 200), [100, 60, 40])
    np.testing.assert_array_equal(apportion(np.array([0.1] * 10), 1000), [100] * 10)
    np.testing.assert_array_equal(apportion(np.array([1.0, 2.0]), 0), [0, 0])


# ---------------------------------------------------------------------------------------------
# frequency_table


def _series(counts: dict) -> pd.Series:
    vals = [k for k, c in counts.items() for _ in range(c)]
    return pd.Series(vals, dtype=object).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_frequency_table_nominal_keeps_suppressed_count() -> None:
    s = _series({"a": 100, "b": 60, "c": 10, "d": 5})
    s = pd.concat([s, pd.Series([np.nan] * 7, dtype=object)], ignore_index=True)
    t = frequency_table(s, min_cell=50, ordered=False)
    assert t.levels == ["a", "b"]
    assert t.counts == [100, 60]
    assert t.suppressed == 15
    assert t.suppressed_levels == 2
    assert t.pooled_levels == 0
    assert t.total == 175  # missing values are not counted
    assert "c" not in t.levels and "d" not in t.levels


def test_frequency_table_ordered_pools_into_nearest_released_level() -> None:
    s = pd.Series(np.repeat([1, 2, 3, 4, 5], [5, 100, 60, 10, 3])).sample(frac=1.0, random_state=1)
    t = frequency_table(s, min_cell=50, ordered=True, pool=True)
    assert t.levels == [2, 3]
    # 1 -> 2; 4 -> 3; 5 -> 3
    assert t.counts == [105, 73]
    assert t.pooled_levels == 3
    assert t.suppressed == 0
    assert t.total == 178 == len(s)
    for rare in (1, 4, 5):
        assert rare not in t.levels


def test_frequency_table_ordered_pooling_ties_go_down() -> None:
    s = pd.Series(np.repeat([1, 2, 3], [100, 10, 100]))
    t = frequency_table(s, min_cell=50, ordered=True, pool=True)
    assert t.levels == [1, 3]
    assert t.counts == [110, 100]


def test_frequency_table_ordered_respects_categorical_order() -> None:
    cats = ["low", "mid", "high"]
    s = pd.Series(
        pd.Categorical(
            np.repeat(["low", "mid", "high"], [70, 20, 80]), categories=cats, ordered=True
        )
    )
    t = frequency_table(s.astype(object), 50, ordered=True, order=cats, pool=True)
    assert t.levels == ["low", "high"]
    # 'mid' is equidistant: goes down to 'low'
    assert t.counts == [90, 80]


def test_frequency_table_ordered_without_pool_keeps_suppressed_count() -> None:
    s = pd.Series(np.repeat([1, 2, 3, 4], [5, 100, 60, 10]))
    t = frequency_table(s, min_cell=50, ordered=True, pool=False)
    assert t.levels == [2, 3]
    assert t.counts == [100, 60]
    assert t.suppressed == 15 and t.suppressed_levels == 2
    assert t.ordered


def test_frequency_table_all_levels_rare() -> None:
    s = pd.Series(np.repeat(["x", "y"], [10, 20]))
    t = frequency_table(s, min_cell=50, ordered=False)
    assert t.levels == [] and t.counts == []
    assert t.suppressed == 30 and t.suppressed_levels == 2


def test_frequency_table_round_trip() -> None:
    t = FrequencyTable(["a", "b"], [60, 70], False, suppressed=9, suppressed_levels=2)
    assert FrequencyTable.from_dict(t.to_dict()) == t


# ---------------------------------------------------------------------------------------------
# synthesis_shares


def test_synthesis_shares_spread_over_reference_levels() -> None:
    table = FrequencyTable(["a", "b"], [100, 60], False, suppressed=15, suppressed_levels=1)
    ref = FrequencyTable(["a", "b", "c", "d"], [300, 200, 50, 100], False)
    levels, shares = synthesis_shares(table, ref)
    assert levels == ["a", "b", "c", "d"]
    # 15 suppressed rows over c, d in proportion 50:100
    np.testing.assert_allclose(shares, np.array([100, 60, 5, 10]) / 175, rtol=1e-12)
    assert shares.sum() == pytest.approx(1.0, abs=1e-12)


def test_synthesis_shares_spread_over_own_levels() -> None:
    table = FrequencyTable(["a", "b"], [100, 60], False, suppressed=16, suppressed_levels=2)
    levels, shares = synthesis_shares(table)
    assert levels == ["a", "b"]
    np.testing.assert_allclose(shares, np.array([110, 66]) / 176, rtol=1e-12)


def test_synthesis_shares_ordered_reference_keeps_order() -> None:
    table = FrequencyTable([1, 4], [80, 90], True, suppressed=20, suppressed_levels=2)
    ref = FrequencyTable([1, 2, 3, 4], [200, 60, 60, 300], True)
    levels, shares = synthesis_shares(table, ref)
    assert levels == [1, 2, 3, 4]
    np.testing.assert_allclose(shares, np.array([80, 10, 10, 90]) / 190, rtol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_synthesis_shares_sum_to_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 8))
    counts = rng.integers(50, 500, size=k).tolist()
    table = FrequencyTable(
        list(range(k)), counts, bool(seed % 2), suppressed=int(rng.integers(0, 200))
    )
    levels, shares = synthesis_shares(table)
    assert len(levels) == len(shares) == k
    assert shares.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(shares > 0)


def test_synthesis_shares_no_suppression_is_plain_shares() -> None:
    t = FrequencyTable(["x", "y", "z"], [50, 150, 300], False)
    levels, shares = synthesis_shares(t)
    assert levels == ["x", "y", "z"]
    np.testing.assert_allclose(shares, [0.1, 0.3, 0.6], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# grid_cdf / quantile_function


def _strict_grid() -> np.ndarray:
    v = np.random.default_rng(5).gamma(2.0, 3.0, size=20000)
    g = quantile_grid(v, 1)
    g[0] = g[0] - 0.05  # make it strictly increasing at the trimmed ends
    g[1] = g[1] - 0.02
    g[99] = g[99] + 0.02
    g[100] = g[100] + 0.05
    assert np.all(np.diff(g) > 0)
    return g


def test_grid_cdf_inverts_quantile_function() -> None:
    g = _strict_grid()
    u = np.concatenate([np.random.default_rng(0).random(5000), GRID[1:-1], [1e-9, 0.5, 1 - 1e-9]])
    x = quantile_function(g, u)
    np.testing.assert_allclose(grid_cdf(g, x), u, atol=1e-12)
    # and the other way, on the support
    xs = np.linspace(g[0], g[-1], 3001)[1:-1]
    np.testing.assert_allclose(quantile_function(g, grid_cdf(g, xs)), xs, rtol=1e-12, atol=1e-12)
    # at the released points
    np.testing.assert_allclose(grid_cdf(g, g[:-1]), GRID[:-1], atol=1e-15)


def test_grid_cdf_outside_support() -> None:
    g = _strict_grid()
    np.testing.assert_array_equal(grid_cdf(g, np.array([g[0] - 1, -1e9])), [0.0, 0.0])
    np.testing.assert_array_equal(grid_cdf(g, np.array([g[-1], g[-1] + 1, 1e9])), [1.0, 1.0, 1.0])


def test_grid_cdf_is_right_continuous_at_atoms() -> None:
    g = np.concatenate([np.full(11, 5.0), np.linspace(5.5, 10.0, 90)])  # q0..q10 = 5: atom of .10
    assert grid_cdf(g, np.array([5.0]))[0] == pytest.approx(0.10)
    assert grid_cdf(g, np.array([4.999]))[0] == 0.0


def test_grid_cdf_integer_matches_rounded_draws() -> None:
    g = _strict_grid()
    rng = np.random.default_rng(42)
    draws = np.round(quantile_function(g, rng.random(200_000)))
    xs = np.arange(np.floor(g[0]) - 1, np.ceil(g[-1]) + 2)
    emp = (draws[:, None] <= xs[None, :]).mean(axis=0)
    F = grid_cdf(g, xs, integer=True)
    assert np.max(np.abs(emp - F)) < 0.01
    # non-integer arguments: P(round(X) <= 3.7) = P(round(X) <= 3)
    np.testing.assert_array_equal(grid_cdf(g, xs + 0.7, integer=True), F)
    assert F[0] == 0.0 and F[-1] == 1.0


# ---------------------------------------------------------------------------------------------
# exact_quantile_sample


def test_exact_quantile_sample_continuous() -> None:
    g = _strict_grid()
    n = 777
    x = exact_quantile_sample(g, n, integer=False)
    assert x.shape == (n,)
    assert np.all(np.diff(x) > 0)
    np.testing.assert_allclose(grid_cdf(g, x), (np.arange(n) + 0.5) / n, atol=1e-12)
    np.testing.assert_allclose(x, quantile_function(g, (np.arange(n) + 0.5) / n), rtol=0, atol=0)


def test_exact_quantile_sample_integer() -> None:
    g = _strict_grid()
    n = 1000
    x = exact_quantile_sample(g, n, integer=True)
    assert np.all(x == np.round(x))
    assert np.all(np.diff(x) >= 0)
    np.testing.assert_array_equal(x, np.round(exact_quantile_sample(g, n, integer=False)))
    # counts per integer value within one of n times the released mass
    vals, counts = np.unique(x, return_counts=True)
    mass = grid_cdf(g, vals, integer=True) - grid_cdf(g, vals - 1, integer=True)
    assert np.max(np.abs(counts - n * mass)) <= 1.0 + 1e-9


def test_exact_quantile_sample_percentiles_match_grid() -> None:
    g = _strict_grid()
    x = exact_quantile_sample(g, 10_000, integer=False)
    q = np.percentile(x, np.arange(1, 100), method="averaged_inverted_cdf")
    iqr = g[75] - g[25]
    assert np.max(np.abs(q - g[1:100])) / iqr < 0.01


# ---------------------------------------------------------------------------------------------
# rake_blocks


def test_rake_blocks_feasible() -> None:
    levels = ["a", "b", "c", "d", "e"]
    T = np.array(
        [
            [120.0, 40.0, 10.0, 80.0, 5.0],
            [60.0, 90.0, 30.0, 8.0, 70.0],
            [15.0, 100.0, 55.0, 65.0, 25.0],
        ]
    )
    # suppressed (< 50) cells per block; released ones are fixed
    sup = T < 50
    fixed = [{lev: T[b, j] for j, lev in enumerate(levels) if not sup[b, j]} for b in range(3)]
    free_mass = [float(T[b, sup[b]].sum()) for b in range(3)]
    free_levels = [[lev for j, lev in enumerate(levels) if sup[b, j]] for b in range(3)]
    col_totals = T.sum(axis=0)
    est = rake_blocks(levels, col_totals, fixed, free_mass, free_levels)
    E = np.vstack(est)
    # released cells unchanged, unreleased cells non-negative, free mass only where allowed
    np.testing.assert_array_equal(E[~sup], T[~sup])
    assert np.all(E >= 0)
    # row totals exact
    np.testing.assert_allclose(E.sum(axis=1), T.sum(axis=1), rtol=1e-12)
    # column totals approximately (the true table is a feasible solution)
    np.testing.assert_allclose(E.sum(axis=0), col_totals, rtol=1e-3)


def test_rake_blocks_only_allowed_levels_receive_mass() -> None:
    levels = [1, 2, 3, 4]
    fixed = [{1: 100.0, 2: 80.0}, {1: 90.0, 3: 70.0}]
    free_mass = [30.0, 25.0]
    free_levels = [[3, 4], [2, 4]]
    col_totals = np.array([190.0, 100.0, 85.0, 20.0])
    E = np.vstack(rake_blocks(levels, col_totals, fixed, free_mass, free_levels))
    assert E[0, 0] == 100.0 and E[0, 1] == 80.0 and E[1, 0] == 90.0 and E[1, 2] == 70.0
    np.testing.assert_allclose(E.sum(axis=1), [210.0, 185.0], rtol=1e-12)
    np.testing.assert_allclose(
        E.sum(axis=0), col_totals, rtol=1e-3
    )  # feasible (and unique): level 2 <- 20, 3 <- 15, 4 <- 15 + 5


def test_rake_blocks_infeasible_still_keeps_rows() -> None:
    levels = ["x", "y"]
    fixed = [{"x": 100.0}, {}]
    free_mass = [40.0, 60.0]
    free_levels = [["y"], ["x", "y"]]
    col_totals = np.array([100.0, 10.0])  # y cannot absorb block 0's 40
    E = np.vstack(rake_blocks(levels, col_totals, fixed, free_mass, free_levels))
    np.testing.assert_allclose(E.sum(axis=1), [140.0, 60.0], rtol=1e-12)
    assert E[0, 0] == 100.0
    assert np.all(E >= 0)
