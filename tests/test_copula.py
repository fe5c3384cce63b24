"""Rank correlations, latent calibration, the Gaussian copula with exact marginals, swap
refinement, and the end-to-end recovery of a target Spearman matrix through extract ->
synthesize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import release_of
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from replisynth.stats.copula import (
    correlated_normals,
    fill_by_rank,
    nominal_values,
    ordered_values,
    rank_order,
)
from replisynth.stats.correlations import (
    _COARSE,
    ATOM_MASS,
    R_GRID,
    Margin,
    _invert_pair_coarse,
    expected_spearman,
    invert_curve,
    invert_pair,
    latent_correlation,
    latent_matrix,
    nearest_correlation,
    pct_ranks,
    spearman_curve,
    spearman_matrix,
    tie_atoms,
)
from replisynth.stats.marginals import exact_quantile_sample, quantile_grid
from replisynth.synthesize.plan import expected_counts, source_plan
from replisynth.synthesize.refine import SAMPLE_ROWS, SwapSettings, refine_swaps
from replisynth.synthesize.synthesize import synthesize_source

CONT = Margin(None)
BIN = Margin((0.7, 0.3))
BIN2 = Margin((0.6, 0.4))
TER = Margin((0.2, 0.5, 0.3))
PAIRS = {"cont-cont": (CONT, CONT), "cont-bin": (CONT, BIN), "bin-ter": (BIN2, TER)}


def _discretise(z: np.ndarray, m: Margin) -> np.ndarray:
    """Level index of a latent normal under the margin's thresholds (continuous: itself)."""
    if not m.discrete:
        return z
    tau = special.ndtri(np.cumsum(m.probs)[:-1])
    return np.searchsorted(tau, z)


def _mc_spearman(r: float, a: Margin, b: Margin, n: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    z1 = rng.standard_normal(n)
    z2 = r * z1 + np.sqrt(1 - r * r) * rng.standard_normal(n)
    return float(stats.spearmanr(_discretise(z1, a), _discretise(z2, b))[0])


# ---------------------------------------------------------------------------------------------
# spearman_matrix


def test_spearman_matrix_matches_pandas_pairwise() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4))
    X[:, 1] = np.round(X[:, 1] + X[:, 0])  # ties
    X[rng.random(500) < 0.1, 2] = np.nan
    X[rng.random(500) < 0.2, 3] = np.nan
    want = pd.DataFrame(X).corr(method="spearman").to_numpy()
    np.testing.assert_allclose(spearman_matrix(X), want, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# calibration


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("r", [-0.6, 0.3, 0.8])
def test_expected_spearman_matches_monte_carlo(pair: str, r: float) -> None:
    a, b = PAIRS[pair]
    mc = _mc_spearman(r, a, b, 400_000, seed=int(1000 * (r + 1)) + len(pair))
    assert expected_spearman(r, a, b) == pytest.approx(mc, abs=0.01)
    assert expected_spearman(r, b, a) == pytest.approx(mc, abs=0.01)
    curve = spearman_curve(a, b, np.array([r]))[0]
    assert curve == pytest.approx(mc, abs=0.01)
    assert curve == pytest.approx(expected_spearman(r, a, b), abs=1e-8)


def _zero_inflated(z: np.ndarray) -> np.ndarray:
    """Hours-like: 0 for the lowest 27% (not working), a top code at the upper 7%."""
    return np.where(z < -0.6, 0.0, np.minimum(z + 2.0, 3.5))


@pytest.mark.parametrize("r", [-0.7, 0.3, 0.9, 0.99])
@pytest.mark.parametrize("other", ["binary", "continuous", "count"])
def test_mixed_margin_calibration_matches_monte_carlo(r: float, other: str) -> None:
    """A continuous column with mass points (zero hours, a top code) is calibrated with its
    ties: the expected Spearman correlation matches simulation within 0.004, in either
    argument order and against a binary, a continuous or a mixed (count) column, where the
    atomless calibration is off by more than twice that at strong correlations."""
    rng = np.random.default_rng(int(100 * (r + 1)) + len(other))
    n = 400_000
    z1 = rng.standard_normal(n)
    z2 = r * z1 + np.sqrt(1 - r * r) * rng.standard_normal(n)
    x = _zero_inflated(z1)
    a = Margin(None, tie_atoms(np.sort(x)))
    masses = [hi - lo for lo, hi in a.atoms]
    assert a.mixed and np.allclose(masses, [special.ndtr(-0.6), 1 - special.ndtr(1.5)], atol=0.003)
    if other == "binary":
        y = (z2 > -0.6).astype(float)
        b = Margin((float(np.mean(y == 0)), float(np.mean(y == 1))))
    elif other == "continuous":
        y, b = z2, CONT
    else:
        y = np.round(np.exp(0.4 * z2))
        b = Margin(None, tie_atoms(np.sort(y)))
        assert b.mixed
    mc = float(stats.spearmanr(x, y)[0])
    assert expected_spearman(r, a, b) == pytest.approx(mc, abs=0.004)
    assert expected_spearman(r, b, a) == pytest.approx(mc, abs=0.004)
    assert spearman_curve(b, a, np.array([r]))[0] == pytest.approx(mc, abs=0.004)
    if abs(r) >= 0.9:
        assert abs(spearman_curve(CONT, b, np.array([r]))[0] - mc) > 0.008


def test_tie_atoms_keeps_runs_that_matter() -> None:
    """Runs of at least ATOM_MASS of the rows are atoms (as u-intervals) when their sum of
    p^3 reaches ATOM_EFFECT; no ties, small ties and a constant column give none."""
    n = 10_000
    v = np.sort(np.concatenate([np.zeros(3000), np.linspace(1, 2, n - 3000)]))
    assert tie_atoms(v) == ((0.0, 0.3),)
    assert tie_atoms(np.linspace(0, 1, n)) == ()
    ints = np.sort(np.arange(n) % 40).astype(float)  # 40 values of 2.5%: sum p^3 = 6e-4
    assert tie_atoms(ints) == ()
    assert len(tie_atoms(np.sort(np.arange(n) % 8).astype(float))) == 8  # 8 values of 12.5%
    assert tie_atoms(np.full(n, 5.0)) == ()
    few = np.sort(np.concatenate([np.zeros(int(ATOM_MASS * n) - 1), np.linspace(1, 2, n)]))
    assert tie_atoms(few) == ()


@pytest.mark.parametrize("pair", ["bin-mixed", "ter-cont", "mixed-mixed", "bin-ter"])
def test_invert_pair_equals_inverting_the_whole_curve(pair: str) -> None:
    """The bracketed inversion gives the latent correlation of the full-grid inversion."""
    mixed = Margin(None, ((0.0, 0.26), (0.93, 1.0)))
    a, b = {
        "bin-mixed": (BIN, mixed),
        "ter-cont": (TER, CONT),
        "mixed-mixed": (mixed, Margin(None, ((0.0, 0.1), (0.5, 0.6)))),
        "bin-ter": (BIN2, TER),
    }[pair]
    curve = spearman_curve(a, b)
    for rho in np.linspace(-0.99, 0.99, 23):
        assert invert_pair(a, b, float(rho)) == pytest.approx(
            invert_curve(curve, float(rho)), abs=1e-12
        )


@settings(max_examples=40, deadline=None)
@given(p=st.floats(0.05, 0.95), q=st.floats(0.05, 0.95), at=st.floats(0.02, 0.9))
def test_invert_pair_reproduces_targets_of_two_binaries(p: float, q: float, at: float) -> None:
    """Two binaries: a Spearman target inside the curve's range on the inner grid (a zero
    target among them: the pairs of one nominal column's indicators, which stay independent)
    is reproduced, although the curve's quadrature at the grid's ends (±0.9999) is not
    monotone there; the stretch search gives the coarse bracketing's value where the coarse
    curve is monotone."""
    a, b = Margin((p, 1.0 - p)), Margin((q, 1.0 - q))
    inner = spearman_curve(a, b, R_GRID[1:-1])
    for rho in (0.0, float(inner[0] + at * (inner[-1] - inner[0]))):
        r = invert_pair(a, b, rho)
        assert float(spearman_curve(a, b, np.array([r]))[0]) == pytest.approx(rho, abs=2e-3)
        coarse = spearman_curve(a, b, R_GRID[_COARSE])
        if np.all(np.diff(coarse) > 0):
            assert r == _invert_pair_coarse(a, b, rho)


@pytest.mark.parametrize("r", [-0.95, -0.6, 0.0, 0.3, 0.8, 0.99])
def test_expected_spearman_continuous_is_closed_form(r: float) -> None:
    want = 6.0 / np.pi * np.arcsin(r / 2.0)
    assert expected_spearman(r, CONT, CONT) == pytest.approx(want, abs=1e-7)
    assert spearman_curve(CONT, CONT, np.array([r]))[0] == pytest.approx(want, abs=1e-14)


def test_spearman_curve_is_monotone_and_vectorised() -> None:
    rs = np.linspace(-0.99, 0.99, 41)
    for a, b in PAIRS.values():
        c = spearman_curve(a, b, rs)
        assert np.all(np.diff(c) > 0)
        np.testing.assert_allclose(c, [expected_spearman(r, a, b) for r in rs], atol=1e-8)
        assert abs(spearman_curve(a, b, np.array([0.0]))[0]) < 1e-10


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("rho", [-0.4, -0.1, 0.2, 0.5])
def test_latent_correlation_inverts_expected_spearman(pair: str, rho: float) -> None:
    a, b = PAIRS[pair]
    r = latent_correlation(rho, a, b)
    assert -1 < r < 1
    assert expected_spearman(r, a, b) == pytest.approx(rho, abs=1e-6)
    if pair == "cont-cont":
        assert r == pytest.approx(2 * np.sin(np.pi * rho / 6), abs=1e-14)
    else:  # ties attenuate rank correlation: the latent correlation is larger in size
        assert abs(r) > abs(rho)


def test_latent_correlation_clips_unattainable_targets() -> None:
    # two binaries with different shares cannot reach Spearman 0.99
    r = latent_correlation(0.99, BIN, BIN2)
    assert r == pytest.approx(0.999)
    assert latent_correlation(float("nan"), BIN, BIN2) == 0.0


def test_latent_matrix_uses_closed_form_and_curves() -> None:
    S = np.array([[1.0, 0.3, 0.2], [0.3, 1.0, np.nan], [0.2, np.nan, 1.0]])
    R = latent_matrix(S, [CONT, CONT, BIN])
    assert R[0, 1] == pytest.approx(2 * np.sin(np.pi * 0.3 / 6))
    assert expected_spearman(R[0, 2], CONT, BIN) == pytest.approx(0.2, abs=1e-3)
    assert R[1, 2] == pytest.approx(0.0, abs=1e-3)  # NaN target treated as 0
    np.testing.assert_array_equal(R, R.T)


# ---------------------------------------------------------------------------------------------
# nearest correlation


def test_nearest_correlation_repairs_an_indefinite_matrix() -> None:
    A = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]])
    assert np.linalg.eigvalsh(A).min() < -0.5
    R = nearest_correlation(A)
    np.testing.assert_allclose(R, R.T, atol=0)
    np.testing.assert_allclose(np.diag(R), 1.0, atol=1e-12)
    assert np.linalg.eigvalsh(R).min() > 0
    np.linalg.cholesky(R)
    assert np.all(np.abs(R) <= 1.0 + 1e-12)
    # it is a repair, not a replacement: closer to A than the identity is
    assert np.linalg.norm(R - A) < np.linalg.norm(np.eye(3) - A)
    # Higham's solution for this matrix keeps the sign pattern
    assert np.all(np.sign(R[np.triu_indices(3, 1)]) == np.sign(A[np.triu_indices(3, 1)]))


def test_nearest_correlation_leaves_a_pd_matrix_unchanged() -> None:
    A = np.array(
        [[1.0, 0.3, -0.2, 0.5], [0.3, 1.0, 0.1, 0.2], [-0.2, 0.1, 1.0, -0.4], [0.5, 0.2, -0.4, 1.0]]
    )
    assert np.linalg.eigvalsh(A).min() > 0
    np.testing.assert_array_equal(nearest_correlation(A), A)


# ---------------------------------------------------------------------------------------------
# copula sampling


def _pd_matrix() -> np.ndarray:
    return np.array(
        [[1.0, 0.4, -0.3, 0.6], [0.4, 1.0, 0.2, 0.1], [-0.3, 0.2, 1.0, -0.5], [0.6, 0.1, -0.5, 1.0]]
    )


@pytest.mark.parametrize("n", [6, 50, 3000])
def test_correlated_normals_exact_sample_correlation(n: int) -> None:
    R = _pd_matrix()
    Z = correlated_normals(R, n, np.random.default_rng(n), exact=True)
    assert Z.shape == (n, 4)
    np.testing.assert_allclose(np.corrcoef(Z, rowvar=False), R, atol=1e-10)
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(Z.std(axis=0, ddof=1), 1.0, atol=1e-10)


def test_correlated_normals_not_exact_is_approximate() -> None:
    R = _pd_matrix()
    Z = correlated_normals(R, 20000, np.random.default_rng(1), exact=False)
    C = np.corrcoef(Z, rowvar=False)
    assert np.max(np.abs(C - R)) < 0.03
    assert np.max(np.abs(C - R)) > 1e-6  # really a sample, not whitened


def test_correlated_normals_is_seeded() -> None:
    R = _pd_matrix()
    a = correlated_normals(R, 100, np.random.default_rng(3))
    b = correlated_normals(R, 100, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)


def test_identity_gives_independent_margins() -> None:
    n = 5000
    Z = correlated_normals(np.eye(3), n, np.random.default_rng(9), exact=True)
    g = quantile_grid(np.random.default_rng(1).lognormal(size=2000), 1)
    cont = fill_by_rank(Z[:, 0], exact_quantile_sample(g, n, integer=False))
    ordv = ordered_values(Z[:, 1], [1000, 2500, 1500])
    binv = ordered_values(Z[:, 2], [3500, 1500])
    S = spearman_matrix(np.column_stack([cont, ordv, binv]).astype("float64"))
    assert np.max(np.abs(S[np.triu_indices(3, 1)])) < 3 / np.sqrt(n)


def test_fill_by_rank_and_ordered_values_keep_exact_marginals() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(size=1000)
    vals = np.sort(rng.gamma(2, size=1000))
    x = fill_by_rank(z, vals)
    np.testing.assert_array_equal(np.sort(x), vals)
    assert stats.spearmanr(x, z)[0] == pytest.approx(1.0)
    codes = ordered_values(z, [100, 600, 300])
    np.testing.assert_array_equal(np.bincount(codes), [100, 600, 300])
    # lowest z get the lowest level
    assert z[codes == 0].max() < z[codes == 1].min()
    assert z[codes == 1].max() < z[codes == 2].min()


def test_rank_order_is_the_stable_argsort() -> None:
    """The quicksort shortcut gives the stable sort's indices, with ties, NaN and -0.0 too."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal(20_000)
    cases = [
        z,
        np.round(z, 1),
        np.where(np.arange(len(z)) % 97 == 0, np.nan, z),
        np.concatenate([[0.0, -0.0], z, [-0.0]]),
        z[:1],
        z[:0],
        np.arange(50),
    ]
    for x in cases:
        np.testing.assert_array_equal(rank_order(x), np.argsort(x, kind="stable"))


def test_nominal_values_exact_counts() -> None:
    rng = np.random.default_rng(5)
    Z = rng.normal(size=(900, 2))
    counts = [300, 200, 400]
    codes = nominal_values(Z, counts, baseline=2, dim_levels=[0, 1])
    np.testing.assert_array_equal(np.bincount(codes, minlength=3), counts)
    # level 1 (smaller count, filled first) takes the largest utilities of its column
    assert Z[codes == 1, 1].min() >= np.sort(Z[:, 1])[-200]


@pytest.mark.parametrize(
    "margin", [BIN, TER, Margin((0.1, 0.2, 0.3, 0.25, 0.15))], ids=["bin", "ter", "five"]
)
@pytest.mark.parametrize("rho", [-0.5, 0.4])
def test_copula_reaches_calibrated_spearman_with_discrete_margin(
    margin: Margin, rho: float
) -> None:
    n = 40_000
    r = latent_correlation(rho, CONT, margin)
    Z = correlated_normals(np.array([[1.0, r], [r, 1.0]]), n, np.random.default_rng(17), exact=True)
    counts = np.round(np.asarray(margin.probs) * n).astype(int)
    counts[-1] += n - counts.sum()
    codes = ordered_values(Z[:, 1], counts.tolist())
    assert stats.spearmanr(Z[:, 0], codes)[0] == pytest.approx(rho, abs=0.02)


# ---------------------------------------------------------------------------------------------
# refine_swaps


def _structural_zero(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two binaries that are never both 1 (mutually exclusive categories), a continuous
    column related to both with 10% missing. Returns the data and a scrambled start."""
    rng = np.random.default_rng(seed)
    cat = rng.choice(3, p=[0.3, 0.3, 0.4], size=n)
    a = (cat == 0).astype(float)
    b = (cat == 1).astype(float)
    c = rng.normal(size=n) + 1.0 * a - 0.8 * b
    c[rng.random(n) < 0.1] = np.nan
    X0 = np.column_stack([a, b, c])
    X = X0.copy()
    X[:, 0] = rng.permutation(a)
    X[:, 1] = rng.permutation(b)
    return X0, X


def _apply(X: np.ndarray, perms: list[np.ndarray], units: list[list[int]]) -> np.ndarray:
    Y = X.copy()
    for dims, p in zip(units, perms, strict=True):
        Y[:, dims] = X[p][:, dims]
    return Y


def test_refine_swaps_fixes_structural_zero() -> None:
    X0, X = _structural_zero()
    T = spearman_matrix(X0)
    assert T[0, 1] < -0.4
    units = [[0], [1], [2]]
    before = np.nanmax(np.abs(spearman_matrix(X) - T))
    perms = refine_swaps(X, [np.arange(len(X))], [T], None, units, np.random.default_rng(1))
    Y = _apply(X, perms, units)
    after = np.nanmax(np.abs(spearman_matrix(Y) - T))
    assert before > 0.3
    assert after < 0.02
    assert after < before
    for j, p in enumerate(perms):
        np.testing.assert_array_equal(np.sort(p), np.arange(len(X)))  # a permutation
        np.testing.assert_array_equal(
            np.sort(Y[:, j]), np.sort(X[:, j])
        )  # same multiset (NaN last)
        np.testing.assert_array_equal(
            np.isnan(Y[:, j]), np.isnan(X[:, j])
        )  # missing positions kept


def test_refine_swaps_units_move_together_and_stay_in_groups() -> None:
    X0, X = _structural_zero(seed=3)
    n = len(X)
    # a and b are the indicators of one nominal column: they move together, so they stay
    # exclusive; their own pair is untargeted
    X[:, :2] = X0[:, :2][np.random.default_rng(2).permutation(n)]
    T = spearman_matrix(X0)
    T[0, 1] = T[1, 0] = np.nan
    groups = [np.arange(0, n // 2), np.arange(n // 2, n)]
    targets = [spearman_matrix(X0[g]) for g in groups]
    for t in targets:
        t[0, 1] = t[1, 0] = np.nan
    units = [[0, 1], [2]]
    perms = refine_swaps(X, groups, targets, T, units, np.random.default_rng(4))
    Y = _apply(X, perms, units)
    assert not np.any((Y[:, 0] == 1) & (Y[:, 1] == 1))
    for g in groups:
        for j in range(3):
            np.testing.assert_array_equal(np.sort(Y[g, j]), np.sort(X[g, j]))
        for p in perms:
            assert set(p[g]) == set(g)
    before = np.nanmax(np.abs(spearman_matrix(X) - T))
    after = np.nanmax(np.abs(spearman_matrix(Y) - T))
    assert after < before and after < 0.03
    np.testing.assert_array_equal(np.isnan(Y), np.isnan(X))


def test_refine_swaps_chases_an_or_of_two_indicators() -> None:
    """c = a or b with a 11% and b 7% ones and a, b nearly exclusive (MEPS: blhisp = black or
    hisp, Spearman(a, c) = 0.73): random single-column swaps stall in a local optimum, so
    the usual stopping rule left |error| = 0.14 > the tier-2 tolerance; past it, sweeps go on
    while a pair is off by more than `far`, also moving (a, b) together, and end close to it.
    Guided pairs (along the errors' direction) leave the local optimum without the chase."""
    rng = np.random.default_rng(5)
    n = 6000
    cat = rng.choice(3, p=[0.11, 0.07, 0.82], size=n)
    a, b = (cat == 0).astype(float), (cat == 1).astype(float)
    c = np.maximum(a, b)
    X0 = np.column_stack([a, b, c, rng.normal(size=n) + a])
    T = spearman_matrix(X0)
    X = np.column_stack([rng.permutation(col) for col in X0.T])
    units = [[0], [1], [2], [3]]
    quick = _apply(
        X,
        refine_swaps(
            X,
            [np.arange(n)],
            [T],
            None,
            units,
            np.random.default_rng(2),
            SwapSettings(far=1.0, guided=0.0),
        ),
        units,
    )
    guided = _apply(
        X,
        refine_swaps(
            X, [np.arange(n)], [T], None, units, np.random.default_rng(2), SwapSettings(far=1.0)
        ),
        units,
    )
    full = _apply(
        X, refine_swaps(X, [np.arange(n)], [T], None, units, np.random.default_rng(2)), units
    )
    err_quick = np.nanmax(np.abs(spearman_matrix(quick) - T))
    err_full = np.nanmax(np.abs(spearman_matrix(full) - T))
    assert err_full <= 0.045 < 0.1 < err_quick  # inside the tier-2 tolerance (0.05)
    assert np.nanmax(np.abs(spearman_matrix(guided) - T)) <= 0.045
    for j in range(4):
        np.testing.assert_array_equal(np.sort(full[:, j]), np.sort(X[:, j]))


def test_penalty_hard_wall_past_the_tier2_tolerance() -> None:
    """The cross-moment alignment's Spearman guard: soft past tau, stiff past HARD_WALL, so
    trading a pair from 0.04 to 0.055 costs far more than any moment gain of order 1."""
    from replisynth.synthesize.refine import HARD_WALL, penalty

    def cost(err: float) -> float:
        # one pair: C is the correlation itself when A = 0, Q = 1 (unit-norm scores)
        one = np.ones((1, 1))
        blk = (np.full((1, 1), err), 0 * one, 0 * one, one, one, 1e9 * one, 0 * one, one)
        return float(penalty(blk, 0.0, 0.0, 0.0, 0.03, 100.0))

    assert HARD_WALL < 0.05
    assert cost(0.02) == pytest.approx(0.02**2)
    assert cost(0.04) == pytest.approx(0.04**2 + 100 * 0.01**2)
    assert cost(0.055) - cost(0.04) > 1.0


def test_refine_swaps_no_targets_is_identity() -> None:
    _, X = _structural_zero(n=200)
    T = np.full((3, 3), np.nan)
    perms = refine_swaps(X, [np.arange(200)], [T], None, [[0], [1], [2]], np.random.default_rng(0))
    for p in perms:
        np.testing.assert_array_equal(p, np.arange(200))


# ---------------------------------------------------------------------------------------------
# end to end: extract -> synthesize


TARGET = np.array(
    [
        [1.0, 0.3, -0.5, 0.7],
        [0.3, 1.0, 0.2, 0.4],
        [-0.5, 0.2, 1.0, -0.3],
        [0.7, 0.4, -0.3, 1.0],
    ]
)


def _release(df: pd.DataFrame, tmp_path: Path, **source_keys: object) -> tuple[dict, pd.DataFrame]:
    release, data, _log = release_of(df, tmp_path, **source_keys)
    return release, data


def test_target_spearman_recovered_at_20000(tmp_path: Path) -> None:
    n = 20_000
    R = 2 * np.sin(np.pi * TARGET / 6)
    rng = np.random.default_rng(1)
    Z = rng.multivariate_normal(np.zeros(4), R, size=n)
    df = pd.DataFrame(
        {
            "pid": np.arange(1, n + 1),
            "a": Z[:, 0],
            "b": np.exp(Z[:, 1]),
            "c": stats.norm.cdf(Z[:, 2]) * 10,
            "d": stats.gamma.ppf(stats.norm.cdf(Z[:, 3]), 2.0),
        }
    )
    release, data = _release(df, tmp_path)
    assert [d["kind"] for d in release["dims"]] == ["continuous"] * 4
    released = np.asarray(release["blocks"]["all"]["spearman"], dtype="float64")
    syn = synthesize_source(release, seed=7)
    assert len(syn) == n
    S = spearman_matrix(syn[["a", "b", "c", "d"]].to_numpy(dtype="float64"))
    assert np.max(np.abs(S - released)) < 0.02
    assert np.max(np.abs(S - TARGET)) < 0.02
    # marginals: the synthetic column is the exact quantile sample of the released grid
    for col in "abcd":
        grid = release["blocks"]["all"]["marginals"][col]["grid"]
        np.testing.assert_allclose(
            np.sort(syn[col].to_numpy()), exact_quantile_sample(np.asarray(grid), n, False)
        )
    # the same seed gives the same data
    pd.testing.assert_frame_equal(syn, synthesize_source(release, seed=7))


def _mixed_frame(n: int, seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    R = np.array([[1, 0.6, 0.5, 0.3], [0.6, 1, 0.2, 0.0], [0.5, 0.2, 1, 0.1], [0.3, 0.0, 0.1, 1]])
    Z = rng.multivariate_normal(np.zeros(4), R, size=n)
    x = np.exp(Z[:, 0])
    x[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame(
        {
            "pid": np.arange(1, n + 1),
            "x": x,
            "b": (Z[:, 1] > 0.4).astype(int),
            "o": np.digitize(Z[:, 2], [-1.2, -0.3, 0.5, 1.3]) + 1,
            "region": np.where(Z[:, 3] > 0.8, "north", np.where(Z[:, 3] > -0.2, "south", "west")),
        }
    )


def _counts(s: pd.Series) -> dict:
    return {
        (k if isinstance(k, str) else int(k)): int(v) for k, v in s.dropna().value_counts().items()
    }


@pytest.mark.parametrize("rows", [None, 7331, 1234])
def test_exact_categorical_counts(tmp_path: Path, rows: int | None) -> None:
    df = _mixed_frame(5000)
    release, data = _release(df, tmp_path)
    syn = synthesize_source(release, seed=11, rows=rows)
    n = rows or len(df)
    assert len(syn) == n
    plan = source_plan(release, n)
    for col in ("b", "o", "region"):
        want = {k: v for k, v in expected_counts(plan, col).items() if v}
        assert _counts(syn[col]) == want
        assert sum(want.values()) == n
        if rows is None:  # no suppression, all rows: the original counts exactly
            assert _counts(syn[col]) == _counts(data[col])
    # missing share of the continuous column: released share x rows, rounded half up
    assert int(syn["x"].isna().sum()) == int(np.floor(data["x"].isna().sum() * n / len(df) + 0.5))


def test_binary_and_ordinal_keep_spearman_with_continuous(tmp_path: Path) -> None:
    df = _mixed_frame(8000, seed=5)
    release, data = _release(df, tmp_path)
    syn = synthesize_source(release, seed=3)
    cols = ["x", "b", "o"]
    S_orig = spearman_matrix(data[cols].to_numpy(dtype="float64"))
    S_syn = spearman_matrix(syn[cols].to_numpy(dtype="float64"))
    assert S_orig[0, 1] > 0.3 and S_orig[0, 2] > 0.3  # a real signal to keep
    assert abs(S_syn[0, 1] - S_orig[0, 1]) < 0.03
    assert abs(S_syn[0, 2] - S_orig[0, 2]) < 0.03
    assert abs(S_syn[1, 2] - S_orig[1, 2]) < 0.03
    # nominal indicators against the continuous column
    for lev in ("north", "south"):
        so = stats.spearmanr(data["x"], data["region"] == lev, nan_policy="omit")[0]
        ss = stats.spearmanr(syn["x"], syn["region"] == lev, nan_policy="omit")[0]
        assert abs(so - ss) < 0.03


def test_suppressed_levels_never_appear_and_counts_follow_plan(tmp_path: Path) -> None:
    df = _mixed_frame(3000, seed=8)
    df.loc[df.index[:20], "region"] = "island"  # a rare nominal category (< 50)
    release, data = _release(df, tmp_path)
    table = release["blocks"]["all"]["marginals"]["region"]["table"]
    # 20 suppressed rows would almost be known: the smallest released level joins them (linked tables)
    assert (
        "island" not in table["levels"]
        and table["suppressed"] >= 50
        and table["suppressed_levels"] == 2
    )
    syn = synthesize_source(release, seed=1)
    assert "island" not in set(syn["region"].dropna())
    plan = source_plan(release, len(syn))
    assert _counts(syn["region"]) == {k: v for k, v in expected_counts(plan, "region").items() if v}
    assert int(syn["region"].notna().sum()) == len(df)


def _large_view(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A continuous and a binary column drawn with Spearman ~0.5, and a target off by `shift`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    z[:, 1] = 0.6 * z[:, 0] + 0.8 * z[:, 1]
    X = np.column_stack([z[:, 0], (z[:, 1] > 0).astype(float)])
    T = spearman_matrix(X)
    T[0, 1] = T[1, 0] = T[0, 1] + shift
    return X, T


def test_refine_swaps_leaves_a_large_view_within_comfort_as_drawn() -> None:
    """A view of at least 1/tol² rows whose (sampled) error is within `comfort` is not swapped
    at all; off by more than `comfort`, the same view is refined towards its target; and a
    small view is refined whatever its error (its draw is noisier than the release)."""
    tol = 0.004
    n = (
        max(SAMPLE_ROWS, int(np.ceil(1 / tol**2))) + 10_000
    )  # large, and judged on a sample of its rows
    X, T = _large_view(n, 0.02, seed=4)
    perms = refine_swaps(
        X,
        [np.arange(n)],
        [T],
        None,
        [[0], [1]],
        np.random.default_rng(0),
        SwapSettings(tol=tol, comfort=0.035),
    )
    assert all(np.array_equal(p, np.arange(n)) for p in perms)
    X, T = _large_view(n, 0.06, seed=4)
    perms = refine_swaps(
        X,
        [np.arange(n)],
        [T],
        None,
        [[0], [1]],
        np.random.default_rng(0),
        SwapSettings(tol=tol, comfort=0.035),
    )
    after = spearman_matrix(_apply(X, perms, [[0], [1]]))[0, 1]
    assert abs(after - T[0, 1]) < 0.035 < abs(spearman_matrix(X)[0, 1] - T[0, 1])
    Xs, Ts = _large_view(4000, 0.02, seed=4)
    perms = refine_swaps(
        Xs,
        [np.arange(4000)],
        [Ts],
        None,
        [[0], [1]],
        np.random.default_rng(0),
        SwapSettings(tol=tol, comfort=0.035),
    )
    assert abs(spearman_matrix(_apply(Xs, perms, [[0], [1]]))[0, 1] - Ts[0, 1]) < 0.01


def test_refine_swaps_sweep_budget_stops_inside_the_comfort_band() -> None:
    """With the budget (stop once every error is within `comfort` and a sweep gains less than
    `settle_gain`), the refinement ends inside the band having made fewer swaps than without it."""
    X0, X = _structural_zero(n=6000, seed=5)
    T = spearman_matrix(X0)
    units = [[0], [1], [2]]
    free = refine_swaps(
        X,
        [np.arange(len(X))],
        [T],
        None,
        units,
        np.random.default_rng(1),
        SwapSettings(tol=0.0, comfort=0.0, max_pairs=64),
    )
    kept = refine_swaps(
        X,
        [np.arange(len(X))],
        [T],
        None,
        units,
        np.random.default_rng(1),
        SwapSettings(tol=0.0, comfort=0.03, settle_gain=0.5, max_pairs=64),
    )
    err_free = np.nanmax(np.abs(spearman_matrix(_apply(X, free, units)) - T))
    err_kept = np.nanmax(np.abs(spearman_matrix(_apply(X, kept, units)) - T))
    moved_free = sum(int(np.sum(p != np.arange(len(X)))) for p in free)
    moved_kept = sum(int(np.sum(p != np.arange(len(X)))) for p in kept)
    assert err_kept <= 0.03
    assert moved_kept < moved_free
    assert err_free <= err_kept


@pytest.mark.parametrize("seed", [5, 11])
def test_refine_swaps_stops_on_the_decisive_pairs(seed: int, monkeypatch) -> None:
    """A steering-only pair (like one with a missingness indicator, which tier 2 does not
    decide on) that is far off does not keep the sweeps going: with `decisive` the
    refinement stops sooner, the decisive pairs inside the tier-2 tolerance; judged on every
    pair, it goes on until the steering pair is reached too."""
    import replisynth.synthesize.refine as refine_mod

    rng = np.random.default_rng(seed)
    n = 3000
    a = rng.normal(size=n)
    X0 = np.column_stack(
        [a, a + rng.normal(size=n), rng.random(n) < 0.3, rng.random(n) < 0.2]
    ).astype(float)
    T = spearman_matrix(X0)
    T[0, 3] = T[3, 0] = 0.6  # the fixed dim 3 only steers; far from its start
    X = np.column_stack([rng.permutation(X0[:, j]) for j in range(3)] + [X0[:, 3]])
    units = [[0], [1], [2]]
    value = np.array([True, True, True, False])
    sweeps: list[int] = []
    done = refine_mod._SweepStop.done

    def counted(self, errs, sweep):
        sweeps.append(sweep)
        return done(self, errs, sweep)

    monkeypatch.setattr(refine_mod._SweepStop, "done", counted)
    runs = {}
    for name, decisive in (("all", None), ("value", value[:, None] & value[None, :])):
        sweeps.clear()
        perms = refine_swaps(
            X,
            [np.arange(n)],
            [T],
            None,
            units,
            np.random.default_rng(2),
            settings=SwapSettings(guided=0.0),  # random pairs: guided ones reach it at once
            decisive=decisive,
        )
        err = np.abs(spearman_matrix(_apply(X, perms, units)) - T)
        runs[name] = (len(sweeps), float(np.nanmax(err[np.ix_(value, value)])), err[0, 3])
    assert runs["value"][0] < runs["all"][0]
    assert runs["value"][1] <= 0.05 and runs["all"][1] <= 0.05
    assert runs["all"][2] <= 0.05 < runs["value"][2]


def test_synthesis_does_not_depend_on_the_thread_count(tmp_path: Path) -> None:
    """Blocks prepared on threads, columns scored and filled on threads: the same bytes with
    one thread or two (stratified source: per-block views and the shared source view)."""
    from conftest import make_people

    import replisynth.core.parallel as parallel

    release, _ = _release(
        make_people(n=6000, seed=3), tmp_path, strata=["female"], categorical=["region"]
    )
    assert len(release["blocks"]) == 3  # the source and two strata
    runs = []
    try:
        for k in (1, 2):
            parallel.set_threads(k)
            runs.append(synthesize_source(release, seed=11))
    finally:
        parallel.set_threads(1)
    pd.testing.assert_frame_equal(runs[0], runs[1], check_exact=True)


def test_number_levels_as_floats_give_the_object_path_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Categorical columns whose levels are plain numbers travel as float64 through sampling,
    refinement and dtype restore; the frame equals the one the object arrays give."""
    from conftest import make_people

    import replisynth.synthesize.synthesize as syn

    release, _ = _release(
        make_people(n=3000, seed=4), tmp_path, strata=["female"], categorical=["region"]
    )
    plan = source_plan(release, int(release["rows"]))
    assert {"female", "educ"} <= syn.numeric_level_columns(
        plan, release
    )  # region's levels are text
    fast = synthesize_source(release, seed=5)
    with monkeypatch.context() as m:
        m.setattr(syn, "numeric_level_columns", lambda plan, release: set())
        slow = synthesize_source(release, seed=5)
    pd.testing.assert_frame_equal(fast, slow, check_exact=True)


def test_large_blocks_within_comfort_are_not_refined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two strata of 70,000 rows with a zero-inflated column: the calibrated copula draws
    every block (and the source view) within the comfort band, so synthesis never builds the
    refinement's views; the same release at 6,000 rows per stratum is refined."""
    import replisynth.synthesize.synthesize as syn_mod

    def frame(n: int) -> pd.DataFrame:
        rng = np.random.default_rng(3)
        z = rng.normal(size=(n, 3))
        z[:, 1] = 0.5 * z[:, 0] + np.sqrt(0.75) * z[:, 1]
        hours = np.where(z[:, 1] < -0.5, 0.0, np.round(38 + 4 * z[:, 1], 1))  # 31% zeros
        return pd.DataFrame(
            {
                "pid": np.arange(1, n + 1),
                "x": z[:, 0],
                "hours": hours,
                "female": (z[:, 2] > 0).astype(int),
                "y": z[:, 0] + rng.normal(size=n),
            }
        )

    calls: list[int] = []
    real = syn_mod.refine_swaps

    def spy(X, *a, **k):
        calls.append(len(X))
        return real(X, *a, **k)

    monkeypatch.setattr(syn_mod, "refine_swaps", spy)
    release, _ = _release(frame(140_000), tmp_path, strata=["female"])
    out = synthesize_source(release, seed=5)
    assert calls == []
    cols = [d["column"] for d in release["dims"]]
    S = spearman_matrix(out[cols].to_numpy(dtype="float64"))
    T = np.asarray(release["blocks"]["all"]["spearman"], dtype="float64")
    assert np.nanmax(np.abs(S - T)) < 0.035
    (tmp_path / "small").mkdir()
    release_small, _ = _release(frame(12_000), tmp_path / "small", strata=["female"])
    synthesize_source(release_small, seed=5)
    assert calls == [12_000]


@pytest.mark.parametrize("seed,n,d", [(1, 40, 5), (7, 113, 9), (12, 9, 3)])
def test_view_presence_differences_read_the_right_columns(seed: int, n: int, d: int) -> None:
    """A view's presence differences P[r] - P[s] over any dims, and its per-proposal split
    into dims with and without missing values, match the presence of X itself."""
    from replisynth.synthesize.refine import _Proposals, _view

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    holes = rng.choice(d, size=max(1, d // 2), replace=False)
    for j in holes:
        X[rng.random(n) < 0.3, j] = np.nan
    rows = np.sort(rng.choice(n, size=n - n // 4, replace=False))
    v = _view(X, rows, np.zeros((d, d)), n)
    r, s = rows[: len(rows) // 2], rows[len(rows) // 2 : 2 * (len(rows) // 2)]
    out = rng.permutation(d)[: d - 1]
    present = (~np.isnan(X)).astype(float)
    want = present[r][:, out] - present[s][:, out]
    assert np.array_equal(v.dP(v.pos[r], v.pos[s], out), want)
    props = _Proposals(v, r, s, [int(np.setdiff1d(np.arange(d), out)[0])], out)
    has_missing = np.isnan(X[rows][:, out]).any(axis=0)
    assert np.array_equal(props.om, np.flatnonzero(has_missing))
    assert np.array_equal(props.dPm, want[:, has_missing])


@pytest.mark.parametrize("kind", ["codes", "normal", "rounded", "wide_integers", "scaled"])
@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_pct_ranks_equal_pandas(kind: str, missing: float) -> None:
    """`pct_ranks` gives pandas' rank(pct=True) bit for bit (the pin's kept relations read
    it in place of pandas), ties and missing values included."""
    rng = np.random.default_rng(len(kind) + int(10 * missing))
    n = 3_001
    x = {
        "codes": lambda: rng.integers(0, 5, n).astype(float),
        "normal": lambda: rng.normal(size=n),
        "rounded": lambda: np.round(rng.normal(size=n), 1),
        "wide_integers": lambda: rng.integers(-(10**7), 10**7, n).astype(float),
        "scaled": lambda: rng.exponential(size=n) * 1e9,
    }[kind]()
    x[rng.random(n) < missing] = np.nan
    expected = pd.Series(x).rank(pct=True).to_numpy()
    np.testing.assert_array_equal(pct_ranks(x), expected)
    assert np.isnan(pct_ranks(np.full(4, np.nan))).all()
