"""The statistics of tier 1: the one-sample KS test against a released (possibly rounded,
possibly mixed, possibly atomic) distribution, and the percentile gap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from replisynth.stats.marginals import (
    exact_quantile_sample,
    grid_cdf,
    quantile_function,
    quantile_grid,
)
from replisynth.verify.verify import ks_test, percentile_gap


def _strict_grid(seed: int = 0) -> np.ndarray:
    g = quantile_grid(np.random.default_rng(seed).gamma(2.0, 3.0, size=20000), 1)
    g[0] -= 0.05
    g[100] += 0.05
    assert np.all(np.diff(g) > 0)
    return g


def _int_grid() -> np.ndarray:
    """A released grid of an integer-valued column with few distinct values (many ties)."""
    return quantile_grid(np.random.default_rng(1).normal(5.0, 2.0, size=20000), 1)


@pytest.mark.parametrize(("seed", "n"), [(0, 500), (1, 60), (2, 3000), (3, 5000)])
def test_ks_matches_scipy_for_a_continuous_grid(seed: int, n: int) -> None:
    g = _strict_grid()
    rng = np.random.default_rng(seed)
    # half from the grid, half perturbed, so D is not always tiny
    v = quantile_function(g, rng.random(n)) * np.where(rng.random(n) < 0.5, 1.0, 1.05)
    D, p = ks_test(v, [(1.0, g)], integer=False)
    ref = stats.kstest(v, lambda x: grid_cdf(g, x), method="exact")
    assert D == pytest.approx(ref.statistic, abs=1e-9)
    assert p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


def test_ks_mixture_matches_scipy() -> None:
    g1 = _strict_grid(0)
    g2 = _strict_grid(1) + 4.0
    rng = np.random.default_rng(7)
    v = np.concatenate(
        [quantile_function(g1, rng.random(700)), quantile_function(g2, rng.random(300))]
    )
    D, p = ks_test(v, [(700.0, g1), (300.0, g2)], integer=False)
    ref = stats.kstest(v, lambda x: 0.7 * grid_cdf(g1, x) + 0.3 * grid_cdf(g2, x), method="exact")
    assert D == pytest.approx(ref.statistic, abs=1e-9)
    assert p == pytest.approx(ref.pvalue, rel=1e-6)
    assert p > 0.01
    # weights are normalised: (0.7, 0.3) is the same reference
    assert ks_test(v, [(0.7, g1), (0.3, g2)], integer=False) == pytest.approx((D, p), rel=1e-12)


def test_ks_p_values_are_uniform_for_samples_from_the_grid() -> None:
    g = _strict_grid()
    ps = []
    for s in range(40):
        v = quantile_function(g, np.random.default_rng(100 + s).random(1000))
        ps.append(ks_test(v, [(1.0, g)], integer=False)[1])
    ps = np.asarray(ps)
    assert np.mean(ps <= 0.05) <= 0.15
    assert 0.3 < ps.mean() < 0.7


def test_ks_integer_grid_large_p_where_scipy_is_wrong() -> None:
    g = _int_grid()
    ps, scipy_ps = [], []
    for s in range(20):
        v = np.round(quantile_function(g, np.random.default_rng(s).random(2000)))
        assert len(np.unique(v)) < 20  # heavy ties
        D, p = ks_test(v, [(1.0, g)], integer=True)
        ps.append(p)
        # scipy's continuous test against the same (step) CDF counts every atom as a gap
        scipy_ps.append(stats.kstest(v, lambda x: grid_cdf(g, x, integer=True)).pvalue)
    assert min(ps) > 0.05
    assert max(scipy_ps) < 1e-6


def test_ks_exact_integer_sample_has_tiny_d() -> None:
    g = _int_grid()
    n = 4000
    v = exact_quantile_sample(g, n, integer=True)
    D, p = ks_test(v, [(1.0, g)], integer=True)
    assert D <= 1.0 / n + 1e-12
    assert p == pytest.approx(1.0, abs=1e-6)
    # continuous: F(x_i) = (i - 0.5)/n exactly, so D = 1/(2n)
    gc = _strict_grid()
    D, p = ks_test(exact_quantile_sample(gc, n, integer=False), [(1.0, gc)], integer=False)
    assert D == pytest.approx(0.5 / n, abs=1e-12)


def test_ks_grid_with_atoms() -> None:
    """trim 5 makes q0..q5 one value: the released distribution has an atom of .05 there.
    Samples from it must pass; scipy's continuous test would reject them."""
    g = quantile_grid(np.random.default_rng(4).normal(size=20000), 5)
    assert g[0] == g[5] and g[95] == g[100]
    ps = []
    for s in range(10):
        v = quantile_function(g, np.random.default_rng(50 + s).random(3000))
        ps.append(ks_test(v, [(1.0, g)], integer=False)[1])
    assert min(ps) > 0.01
    assert stats.kstest(v, lambda x: grid_cdf(g, x)).pvalue < 1e-6


def test_ks_integer_grid_with_plateaus() -> None:
    """Count data: the grid itself sits on integers with flat stretches."""
    g = quantile_grid(np.random.default_rng(0).poisson(3, 20000).astype(float), 1)
    assert np.all(g == np.round(g)) and len(np.unique(g)) < 15
    ps = [
        ks_test(
            np.round(quantile_function(g, np.random.default_rng(s).random(3000))), [(1.0, g)], True
        )[1]
        for s in range(10)
    ]
    assert min(ps) > 0.05
    D, p = ks_test(exact_quantile_sample(g, 3000, integer=True), [(1.0, g)], True)
    assert D < 1e-9 and p == pytest.approx(1.0)
    D, p = ks_test(
        np.round(quantile_function(g, np.random.default_rng(1).random(3000))) + 1, [(1.0, g)], True
    )
    assert p < 1e-10


def test_ks_interior_atom() -> None:
    """A mass point inside the support (20% of the values equal 0.5)."""
    d = np.random.default_rng(2).normal(size=20000)
    d[np.random.default_rng(3).random(20000) < 0.2] = 0.5
    g = quantile_grid(d, 1)
    assert (g == 0.5).sum() >= 15
    ps = [
        ks_test(quantile_function(g, np.random.default_rng(s).random(3000)), [(1.0, g)], False)[1]
        for s in range(10)
    ]
    assert min(ps) > 0.01
    D, _ = ks_test(exact_quantile_sample(g, 3000, integer=False), [(1.0, g)], False)
    assert D <= 0.5 / 3000 + 1e-12
    # a sample without the atom is rejected
    v = np.random.default_rng(4).normal(size=3000)
    assert ks_test(v, [(1.0, g)], False)[1] < 1e-6


@pytest.mark.parametrize("integer", [False, True])
def test_ks_rejects_a_shifted_sample(integer: bool) -> None:
    g = _int_grid() if integer else _strict_grid()
    iqr = g[75] - g[25]
    v = quantile_function(g, np.random.default_rng(8).random(2000)) + 0.3 * iqr
    if integer:
        v = np.round(v)
    D, p = ks_test(v, [(1.0, g)], integer=integer)
    assert D > 0.05
    assert p < 1e-6


def test_ks_empty_sample() -> None:
    assert ks_test(np.array([]), [(1.0, _strict_grid())], integer=False) == (0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# percentile gap


def test_percentile_gap_zero_for_the_grid_itself() -> None:
    g = _strict_grid()
    assert percentile_gap(g, g) == 0.0


def test_percentile_gap_of_a_shift_in_iqr_units() -> None:
    g = _strict_grid()
    iqr = g[75] - g[25]
    for shift in (0.1, 0.5):
        assert percentile_gap(g + shift * iqr, g) == pytest.approx(shift, rel=1e-9)
        assert percentile_gap(g - shift * iqr, g) == pytest.approx(shift, rel=1e-9)


def test_percentile_gap_small_for_a_large_sample_from_the_grid() -> None:
    g = _strict_grid()
    v = quantile_function(g, np.random.default_rng(0).random(50_000))
    assert percentile_gap(v, g) < 0.05
    assert percentile_gap(exact_quantile_sample(g, 10_000, integer=False), g) < 0.01


def test_percentile_gap_ignores_values_beyond_released_extremes() -> None:
    g = _strict_grid()
    v = exact_quantile_sample(g, 10_000, integer=False)
    v_wide = v.copy()
    v_wide[0] = g[0] - 1000.0  # a raw extreme the release top/bottom coded
    v_wide[-1] = g[-1] + 1000.0
    assert percentile_gap(v_wide, g) == pytest.approx(percentile_gap(v, g), abs=1e-12)


def test_percentile_gap_degenerate_iqr() -> None:
    g = np.concatenate([np.zeros(90), np.linspace(1.0, 2.0, 11)])  # IQR 0: falls back to range
    assert percentile_gap(g + 0.2, g) == pytest.approx(0.2 / 2.0)
    assert percentile_gap(np.array([]), g) == 0.0


# ---------------------------------------------------------------------------------------------
# the fast KS path gives the values of the direct formulation bit for bit


def _ks_reference(values: np.ndarray, components: list, integer: bool) -> float:
    """The KS statistic as first written: every reference CDF through `grid_cdf` at every
    distinct value, left limits by searching each value in the grid."""
    from replisynth.stats.marginals import GRID

    def left(g: np.ndarray, x: np.ndarray, F: np.ndarray) -> np.ndarray:
        if integer:
            return grid_cdf(g, np.ceil(x) - 1.0, integer=True)
        idx = np.searchsorted(g, x, side="left") - 1
        out = F.copy()
        j = np.clip(idx + 1, 0, len(g) - 1)
        atom = (idx + 1 < len(g)) & (idx + 1 >= 0) & (g[j] == x)
        out[atom] = GRID[j[atom]]
        return out

    x = np.sort(np.asarray(values, dtype="float64"))
    n = len(x)
    ws = np.asarray([w for w, _ in components], dtype="float64")
    ws = ws / ws.sum()
    first = np.concatenate([[0], np.flatnonzero(x[1:] != x[:-1]) + 1])
    uniq = x[first]
    last = np.append(first[1:], n)
    cdfs = [grid_cdf(np.asarray(g, dtype="float64"), uniq, integer) for _, g in components]
    Fu = sum(w * c for w, c in zip(ws, cdfs, strict=True))
    Flu = sum(
        w * left(np.asarray(g, dtype="float64"), uniq, c)
        for w, c, (_, g) in zip(ws, cdfs, components, strict=True)
    )
    return float(max(np.max(last / n - Fu), np.max(Flu - first / n), 0.0))


def _flat_grid(seed: int) -> np.ndarray:
    """A grid with flat stretches (atoms) from a variable with heavy point masses."""
    rng = np.random.default_rng(seed)
    v = np.where(rng.random(20000) < 0.3, 0.0, rng.lognormal(2.0, 1.0, 20000))
    v[rng.random(20000) < 0.1] = 12.5
    return quantile_grid(v, 1)


@pytest.mark.parametrize("seed", range(6))
def test_ks_fast_path_is_bit_identical_to_the_direct_formulation(seed: int) -> None:
    from replisynth.stats.marginals import grid_cdf_sorted

    rng = np.random.default_rng(seed)
    grids = [_strict_grid(seed), _flat_grid(seed), _int_grid() + seed]
    n = int(rng.integers(50, 20000))
    for integer in (False, True):
        for k in (1, 2, 3):
            comps = [(float(rng.integers(1, 1000)), grids[(seed + j) % 3]) for j in range(k)]
            # values from the grids (hitting grid points and atoms exactly), rounded, and off
            # the support on both sides
            v = np.concatenate(
                [
                    quantile_function(comps[0][1], rng.random(n)),
                    rng.choice(comps[-1][1], n // 3),
                    np.round(quantile_function(comps[-1][1], rng.random(n // 4))),
                    comps[0][1][0] - rng.random(5),
                    comps[0][1][-1] + rng.random(5),
                ]
            )
            D, _ = ks_test(v, comps, integer)
            assert D == _ks_reference(v, comps, integer)
        xs = np.sort(np.concatenate([rng.normal(10, 8, n), grids[seed % 3], grids[1]]))
        for g in grids:
            assert np.array_equal(grid_cdf_sorted(g, xs), grid_cdf(g, xs))


def test_verdict_does_not_depend_on_the_thread_count(tmp_path) -> None:
    """Columns (tier 1) and strata (tier 3) are checked on parallel threads; tiers.json is the
    same bytes with one thread and with two."""
    from conftest import make_people, manifest_for, run_pipeline

    from replisynth.core.parallel import set_threads, threads
    from replisynth.disclosure.bundle import load_bundle
    from replisynth.io.files import dumps_json, read_json
    from replisynth.verify.verify import verify
    from replisynth.workflow.pipeline import read_synthetic

    p = tmp_path / "people.csv"
    make_people(3000, seed=5).to_csv(p, index=False)
    raw = manifest_for(p, strata=["female"], categorical=["region"])
    raw["checkpoints"] = [
        {"tag": "m", "source": "people", "formula": "y ~ x1 + age", "model": "ols"}
    ]
    tiers = run_pipeline(raw, tmp_path / "out")
    assert len(tiers["sources"]["people"]["strata"]["strata"]) >= 2
    root = tmp_path / "out" / "t"
    b = load_bundle(root / "bundle")
    frames, labels = read_synthetic({"people": root / "synthetic" / "people.parquet"})
    before = threads()
    try:
        out = []
        for n in (1, 2):
            set_threads(n)
            out.append(dumps_json(verify(b, frames, labels)))
    finally:
        set_threads(before)
    assert out[0] == out[1] == dumps_json(read_json(root / "verify" / "tiers.json"))
