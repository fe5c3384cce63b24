"""Inference fidelity: residual shaping to the released standard errors (pin/se_shape.py, and
pin._shape_residuals through pin_checkpoints). The tilting solver on its own; the sandwich
contributions against statsmodels; then ols (HC1, HC3, weighted HC2), fe clustered and iv HC1
on data whose plain synthetic residual misses the released SEs by more than 25%, checked
against statsmodels / linearmodels fits of the shaped data with the coefficients still pinned."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import capture_released, manifest_for

from replisynth.config.manifest import Checkpoint, load_manifest
from replisynth.pin.pin import pin_checkpoints
from replisynth.pin.se_shape import (
    WEIGHT_BOUNDS,
    leverage,
    sandwich_contributions,
    tilt,
    tilt_toward,
)

MANIFEST = load_manifest(manifest_for("people.csv"))
PIN_TOL = 1e-8  # |beta_synthetic - beta_target| / SE_target after shaping
BAND = (0.95, 1.05)  # every shaped SE ratio


# ---------------------------------------------------------------------------------------------
# the tilting solver


def _contributions(m: int = 2000, k: int = 6, seed: int = 0) -> np.ndarray:
    """Skewed non-negative contributions with a common heavy-tailed unit factor (like e_i^2)."""
    rng = np.random.default_rng(seed)
    return rng.exponential(size=(m, k)) * rng.lognormal(sigma=1.0, size=(m, 1))


@pytest.mark.parametrize("lo,hi", [(0.8, 1.25), (0.6, 1.0), (1.0, 1.6), (0.5, 2.0)])
def test_tilt_reaches_feasible_targets(lo: float, hi: float) -> None:
    a = _contributions()
    T = a.sum(axis=0) * np.random.default_rng(1).uniform(lo, hi, a.shape[1])
    res = tilt(a, T)
    assert res.feasible and res.fraction == 1.0
    np.testing.assert_allclose(a.T @ res.weights, T, rtol=1e-8)
    np.testing.assert_allclose(res.reached, 1.0, atol=1e-8)
    assert (
        WEIGHT_BOUNDS[0] - 1e-12 <= res.weights.min()
        and res.weights.max() <= WEIGHT_BOUNDS[1] + 1e-12
    )
    # exponential family: log w = u' lambda wherever no bound binds (u = a / column means)
    inside = (res.weights > WEIGHT_BOUNDS[0] * 1.001) & (res.weights < WEIGHT_BOUNDS[1] * 0.999)
    u = a / a.mean(axis=0)
    np.testing.assert_allclose(np.log(res.weights[inside]), u[inside] @ res.lam, atol=1e-9)


def test_tilt_at_the_current_values_leaves_weights_at_one() -> None:
    a = _contributions()
    res = tilt(a, a.sum(axis=0))
    assert res.feasible
    np.testing.assert_allclose(res.weights, 1.0, atol=1e-12)


def test_tilt_reports_conflicting_targets() -> None:
    """Two identical columns cannot reach different targets: reported infeasible, and
    tilt_toward moves both the same share of the way without overshooting either."""
    a = _contributions(k=1)
    a2 = np.column_stack([a[:, 0], a[:, 0]])
    T = a2.sum(axis=0) * np.array([1.0, 2.0])
    assert not tilt(a2, T).feasible
    res = tilt_toward(a2, T)
    assert not res.feasible and res.fraction == 0.0
    np.testing.assert_allclose(res.weights, 1.0)


def test_tilt_reports_targets_beyond_the_weight_bounds() -> None:
    """A variance 10 times the current one, the others kept, needs weights above the cap of
    25 (an LP with the same box agrees): infeasible;
    tilt_toward gets part of the way, every column no further from its target than before,
    all weights inside the bounds."""
    a = _contributions(k=3)
    F = a.sum(axis=0)
    T = F * np.array([10.0, 1.0, 0.9])
    res = tilt_toward(a, T)
    assert not res.feasible and 0.3 < res.fraction < 1.0
    before = np.abs(np.log(F / T))
    after = np.abs(np.log(res.reached))
    assert np.all(after <= before + 1e-9)
    np.testing.assert_allclose(np.log(res.reached), (1 - res.fraction) * np.log(F / T), atol=1e-6)
    assert (
        res.weights.min() >= WEIGHT_BOUNDS[0] - 1e-12
        and res.weights.max() <= WEIGHT_BOUNDS[1] + 1e-12
    )
    # with the box widened the same targets are reachable: the bound was what bound
    assert tilt(a, T, bounds=(1e-3, 1e3)).feasible


def test_tilt_reports_an_unmovable_column() -> None:
    a = _contributions(k=2)
    a[:, 1] = 0.0
    res = tilt(a, np.array([a[:, 0].sum() * 1.1, 1.0]))
    assert not res.feasible and res.reached[1] == 0.0
    assert res.reached[0] == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("seed", range(12))
def test_tilt_toward_skips_only_tilts_that_cannot_be_feasible(seed: int, monkeypatch) -> None:
    """The reach check (`_out_of_reach`) only skips tilts that would report infeasible: the
    result equals the one with every tilt run, over targets inside, at and beyond the
    bounds, per-unit bounds, and columns with no contribution."""
    from replisynth.pin import se_shape

    rng = np.random.default_rng(seed)
    m, k = int(rng.integers(8, 400)), int(rng.integers(1, 5))
    a = _contributions(m, k, seed)
    if seed % 4 == 3:
        a[:, -1] = 0.0  # a term with no contribution
    F = a.sum(axis=0)
    T = F * np.exp(rng.normal(0.0, [0.05, 0.6, 2.0][seed % 3], size=k))
    lo = rng.uniform(0.04, 1.0, m) if seed % 2 else WEIGHT_BOUNDS[0]
    hi = rng.choice([1.0, 25.0], m) if seed % 5 == 0 else WEIGHT_BOUNDS[1]
    fast = tilt_toward(a, T, (lo, hi))
    monkeypatch.setattr(se_shape, "_out_of_reach", lambda *args: False)
    every = tilt_toward(a, T, (lo, hi))
    assert fast.feasible == every.feasible and fast.fraction == every.fraction
    np.testing.assert_array_equal(fast.weights, every.weights)
    np.testing.assert_array_equal(fast.reached, every.reached)


@pytest.mark.parametrize("seed", range(16))
def test_the_separation_certificate_changes_no_verdict(seed: int, monkeypatch) -> None:
    """`_separated` ends a tilt early only where no weights in the bounds can meet the
    targets: tilt_toward gives the same weights, sums and fraction with the certificate as
    without it (jointly conflicting targets, each inside its own column's reach, included),
    and a conflicting tilt stops in a few Newton steps instead of all 200."""
    from replisynth.pin import se_shape

    rng = np.random.default_rng(seed)
    m, k = int(rng.integers(8, 3000)), int(rng.integers(2, 6))
    a = _contributions(m, k, seed)
    if seed % 3 == 0:  # two nearly equal columns asked to move apart: conflicting targets
        a[:, 1] = a[:, 0] * rng.uniform(0.98, 1.02, m)
    F = a.sum(axis=0)
    T = F * np.exp(rng.normal(0.0, [0.05, 0.4, 1.0, 2.0][seed % 4], size=k))
    lo = rng.uniform(0.04, 1.0, m) if seed % 2 else WEIGHT_BOUNDS[0]
    hi = WEIGHT_BOUNDS[1]
    fast = tilt_toward(a, T, (lo, hi))
    quick = tilt(a, T, (lo, hi))
    monkeypatch.setattr(se_shape, "_separated", lambda *args: False)
    every = tilt_toward(a, T, (lo, hi))
    slow = tilt(a, T, (lo, hi))
    assert fast.feasible == every.feasible and fast.fraction == every.fraction
    np.testing.assert_array_equal(fast.weights, every.weights)
    np.testing.assert_array_equal(fast.reached, every.reached)
    assert quick.feasible == slow.feasible
    if not slow.feasible and slow.iterations == 200:
        assert quick.iterations < 50


def test_conflicting_targets_inside_each_columns_reach_stop_early() -> None:
    """Two columns that are nearly the same sum cannot be moved apart by a factor of 3, though
    each target alone is reachable: the tilt says so after a few steps."""
    a = _contributions(m=3000, k=2, seed=4)
    a[:, 1] = a[:, 0]
    T = a.sum(axis=0) * np.array([1.5, 0.5])
    res = tilt(a, T)
    assert not res.feasible and res.iterations < 50


def test_the_reach_check_is_left_out_for_negative_contributions() -> None:
    """The column sums' range [sum lo a, sum hi a] holds for a >= 0 only: with negative
    contributions a target above sum hi a can still be met (low weights where a < 0), and
    tilt_toward reaches it instead of calling it out of reach."""
    a = _contributions(m=60, k=1, seed=7)
    a[:30, 0] *= -0.2
    target = np.array([(WEIGHT_BOUNDS[1] * a[:, 0]).sum() * 1.05])
    res = tilt_toward(a, target)
    assert res.feasible and res.reached[0] == pytest.approx(1.0, abs=1e-7)


def test_tilt_toward_runs_no_tilt_when_no_step_can_be_feasible(monkeypatch) -> None:
    """Weights capped at 1 cannot raise a column's sum: every point of the path beyond the
    start is out of reach, and no Newton solve is run for it (each ran all its iterations)."""
    from replisynth.pin import se_shape

    calls: list[int] = []
    real = se_shape.tilt
    monkeypatch.setattr(se_shape, "tilt", lambda *a, **k: calls.append(1) or real(*a, **k))
    a = _contributions(k=3)
    res = tilt_toward(a, a.sum(axis=0) * np.array([1.1, 1.0, 1.0]), (0.04, 1.0))
    assert not res.feasible and res.fraction == 0.0 and np.all(res.weights == 1.0)
    assert calls == []


# ---------------------------------------------------------------------------------------------
# sandwich contributions against statsmodels


def _hetero(n: int, seed: int, hetero: bool = True) -> pd.DataFrame:
    """y = 1 + 0.5 x1 - 0.3 x2 + 0.4 d + 0.2 x1:d + u, x1, x2 ~ N(0,1) with corr 0.4,
    d ~ Bernoulli(0.3), w ~ U(0.5, 2); u ~ N(0, exp(1.2 x1) (1 + 2 d)) when `hetero`
    (variance rising with x1, tripled for d = 1), else N(0, 1.9) (about the same overall
    variance): what a synthetic draw that does not know the heteroskedasticity gives."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = 0.4 * x1 + rng.normal(scale=np.sqrt(1 - 0.16), size=n)
    d = rng.binomial(1, 0.3, n)
    sd = np.sqrt(np.exp(1.2 * x1) * (1 + 2 * d)) if hetero else np.sqrt(1.9)
    y = 1 + 0.5 * x1 - 0.3 * x2 + 0.4 * d + 0.2 * x1 * d + sd * rng.normal(size=n)
    return pd.DataFrame(
        {
            "y": y,
            "x1": x1,
            "x2": x2,
            "d": d,
            "w": rng.uniform(0.5, 2.0, n),
            "g": rng.integers(0, 60, n),
        }
    )


@pytest.mark.parametrize("vcov", ["HC0", "HC1", "HC2", "HC3", "cluster"])
@pytest.mark.parametrize("weighted", [False, True])
def test_sandwich_contributions_sum_to_statsmodels(vcov: str, weighted: bool) -> None:
    """sum of the unit contributions times the small-sample constant = statsmodels' variance."""
    import statsmodels.api as sm

    df = _hetero(800, 0)
    X = sm.add_constant(df[["x1", "x2", "d"]].to_numpy())
    w = df["w"].to_numpy() if weighted else None
    mod = sm.WLS(df["y"], X, weights=w) if weighted else sm.OLS(df["y"], X)
    res = (
        mod.fit(cov_type="cluster", cov_kwds={"groups": df["g"]})
        if vcov == "cluster"
        else mod.fit(cov_type=vcov)
    )
    W = np.ones(len(df)) if w is None else w
    A = np.linalg.solve((X * W[:, None]).T @ X, (X * W[:, None]).T)
    e = df["y"].to_numpy() - X @ A @ df["y"].to_numpy()
    n, k = X.shape
    p = {"HC2": 1, "HC3": 2}.get(vcov, 0)
    a = sandwich_contributions(
        A, e, df["g"].to_numpy() if vcov == "cluster" else None, p, leverage(X, w) if p else None
    )
    G = df["g"].nunique()
    const = {"HC1": n / (n - k), "cluster": G / (G - 1) * (n - 1) / (n - k)}.get(vcov, 1.0)
    np.testing.assert_allclose(const * a.sum(axis=0), np.asarray(res.bse) ** 2, rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# through the pin: ols, fe clustered, iv


def _cp(tag: str, model: str, formula: str, **kw: Any) -> Checkpoint:
    return Checkpoint(tag=tag, source="people", model=model, formula=formula, **kw)


def _ratios_and_gaps(
    se: np.ndarray, beta: np.ndarray, terms: list[str], rel: dict[str, Any]
) -> tuple[np.ndarray, float]:
    """(SE_synthetic / SE_target per released term, max |dbeta| / SE_target)."""
    pos = {t: j for j, t in enumerate(terms)}
    r, g = [], []
    for t in rel["terms"]:
        j = pos[t["term"]]
        r.append(se[j] / t["se"])
        g.append(abs(beta[j] - t["beta"]) / t["se"])
    return np.asarray(r), max(g)


def _sm_fit(df: pd.DataFrame, cp: Checkpoint) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """statsmodels' own formula fit (not our wrapper) under the checkpoint's vcov."""
    import statsmodels.formula.api as smf

    kw: dict[str, Any] = {"cov_type": cp.vcov}
    if cp.cluster:
        kw = {"cov_type": "cluster", "cov_kwds": {"groups": df[cp.cluster]}}
    mod = smf.wls(cp.formula, df, weights=df[cp.weights]) if cp.weights else smf.ols(cp.formula, df)
    res = mod.fit(**kw)
    return np.asarray(res.bse), np.asarray(res.params), list(res.params.index)


OLS_CASES = [
    _cp("hc1", "ols", "y ~ x1 + x2 + d + x1:d", vcov="HC1"),
    _cp("hc3", "ols", "y ~ x1 + x2 + d + x1:d", vcov="HC3"),
    _cp("hc2_weighted", "ols", "y ~ x1 + x2 + d", vcov="HC2", weights="w"),
    _cp("cluster", "ols", "y ~ x1 + x2 + d", vcov="cluster:g"),
]


@pytest.mark.parametrize("cp", OLS_CASES, ids=lambda c: c.tag)
def test_ols_shaped_ses_match_the_release(cp: Checkpoint) -> None:
    original = _hetero(3000, 0, hetero=True)
    synthetic = _hetero(2500, 1, hetero=False)
    (rel,) = capture_released(original, MANIFEST, cp)
    se0, b0, terms = _sm_fit(synthetic, cp)
    r0, _ = _ratios_and_gaps(se0, b0, terms, rel)
    assert np.max(np.abs(np.log(r0))) > np.log(1.25), r0  # a plain draw misses by more than 25%
    frames, results = pin_checkpoints({"people": synthetic}, [rel])
    assert results[0].status == "pinned", results[0].note
    assert "residuals shaped to the released SEs" in results[0].note
    se, b, terms = _sm_fit(frames["people"], cp)
    r, gap = _ratios_and_gaps(se, b, terms, rel)
    assert gap <= PIN_TOL
    assert np.all((r >= BAND[0]) & (r <= BAND[1])), r
    rep = results[0].detail["se_shape"][cp.tag]
    assert rep["feasible"] and rep["after"] < 1e-3 and rep["before"] > np.log(1.25)
    # only the outcome moved
    pd.testing.assert_frame_equal(frames["people"].drop(columns="y"), synthetic.drop(columns="y"))


def test_nonrobust_keeps_the_scalar_scale_only() -> None:
    """nonrobust SEs are sigma [(X'X)^-1]_jj^1/2: the residual fixes only sigma, no shaping."""
    cp = _cp("nr", "ols", "y ~ x1 + x2 + d", vcov="nonrobust")
    (rel,) = capture_released(_hetero(3000, 0), MANIFEST, cp)
    _, results = pin_checkpoints({"people": _hetero(2500, 1, hetero=False)}, [rel])
    assert "residuals scaled" in results[0].note and "shaped" not in results[0].note
    assert "se_shape" not in results[0].detail


@pytest.mark.slow
def test_unreachable_ses_are_reported_not_forced() -> None:
    """A released SE 12 times what the design can give next to unchanged others needs
    variance weights beyond the cap: the note says so, weights stay in the bounds, no ratio
    ends further from 1 than before, and the pin stays exact."""
    cp = _cp("hc1", "ols", "y ~ x1 + x2 + d", vcov="HC1")
    synthetic = _hetero(2500, 1, hetero=False)
    (rel,) = capture_released(synthetic, MANIFEST, cp)  # the synthetic data's own SEs ...
    rel["terms"][2]["se"] *= 12.0  # ... but x2's released 12 times larger
    se0, b0, terms = _sm_fit(synthetic, cp)
    r0, _ = _ratios_and_gaps(se0, b0, terms, rel)
    frames, results = pin_checkpoints({"people": synthetic}, [rel])
    rep = results[0].detail["se_shape"]["hc1"]
    assert not rep["feasible"] and "not reachable" in results[0].note
    assert WEIGHT_BOUNDS[0] * (1 - 1e-9) <= rep["weight_min"] and rep[
        "weight_max"
    ] <= WEIGHT_BOUNDS[1] * (1 + 1e-9)
    se, b, terms = _sm_fit(frames["people"], cp)
    r, gap = _ratios_and_gaps(se, b, terms, rel)
    assert gap <= PIN_TOL
    assert np.max(np.abs(np.log(r))) < np.max(np.abs(np.log(r0)))
    assert rep["after"] == pytest.approx(np.max(np.abs(np.log(r))), rel=1e-6)


def _cluster_panel(entities: int, periods: int, seed: int, slopes: bool) -> pd.DataFrame:
    """Panel with entity effects a_i ~ N(0,1): y = 0.5 x1 - 0.3 x2 + a_i + b_i x1 + u,
    x1 = N(0,1) + 0.5 a_i, x2 ~ N(0,1), u ~ N(0, 1); b_i ~ N(0, 0.6^2) random slopes when
    `slopes` (the residual of the fixed-effects fit is correlated with x1 inside an entity,
    so clustered SEs of x1 are large), else 0 with u ~ N(0, 1.2) (the synthetic stand-in)."""
    rng = np.random.default_rng(seed)
    n = entities * periods
    ent = np.repeat(np.arange(entities), periods)
    a = rng.normal(size=entities)[ent]
    x1 = rng.normal(size=n) + 0.5 * a
    x2 = rng.normal(size=n)
    b = rng.normal(scale=0.6, size=entities)[ent] if slopes else 0.0
    u = rng.normal(scale=1.0 if slopes else 1.2, size=n)
    y = 0.5 * x1 - 0.3 * x2 + a + b * x1 + u
    return pd.DataFrame(
        {"y": y, "x1": x1, "x2": x2, "ent": ent, "yr": np.tile(np.arange(periods), entities)}
    )


@pytest.mark.parametrize("absorb", [("ent",), ("ent", "yr")], ids=["one_way", "two_way"])
def test_fe_clustered_shaped_ses_match_linearmodels(absorb: tuple[str, ...]) -> None:
    from linearmodels.iv.absorbing import AbsorbingLS

    cp = _cp("fe", "fe", "y ~ x1 + x2", absorb=absorb, vcov="cluster:ent")
    original = _cluster_panel(300, 6, 0, slopes=True)
    synthetic = _cluster_panel(260, 6, 1, slopes=False)
    (rel,) = capture_released(original, MANIFEST, cp)

    def lm(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
        exog = df[["x1", "x2"]].assign(Intercept=1.0)[["Intercept", "x1", "x2"]]
        cats = pd.DataFrame({c: pd.Categorical(df[c]) for c in absorb})
        res = AbsorbingLS(df["y"], exog, absorb=cats).fit(
            cov_type="clustered", clusters=df["ent"].to_numpy(), debiased=True
        )
        return np.asarray(res.std_errors), np.asarray(res.params), list(res.params.index)

    r0, _ = _ratios_and_gaps(*lm(synthetic), rel)
    assert np.max(np.abs(np.log(r0))) > np.log(1.25), r0
    frames, results = pin_checkpoints({"people": synthetic}, [rel])
    assert results[0].status == "pinned", results[0].note
    r, gap = _ratios_and_gaps(*lm(frames["people"]), rel)
    assert gap <= PIN_TOL
    assert np.all((r >= BAND[0]) & (r <= BAND[1])), (r, results[0].note)
    rep = results[0].detail["se_shape"]["fe"]
    assert rep["unit_kind"] == "clusters" and rep["units"] == 260


def _iv_data(n: int, seed: int, hetero: bool) -> pd.DataFrame:
    """y = 1 + 0.5 x1 + 0.7 xe + u, xe = 0.8 z1 + 0.5 z2 + 0.5 v + N(0,1) endogenous
    (u = v + e), z1, z2, x1 ~ N(0,1); v ~ N(0,1); e ~ N(0, exp(1.2 (z1 + x1))) when `hetero`
    (the structural error's variance rising with the instrument and x1), else N(0, 2)."""
    rng = np.random.default_rng(seed)
    z1, z2, x1, v = (rng.normal(size=n) for _ in range(4))
    xe = 0.8 * z1 + 0.5 * z2 + 0.5 * v + rng.normal(size=n)
    e = rng.normal(size=n) * (np.exp(0.6 * (z1 + x1)) if hetero else np.sqrt(2.0))
    y = 1 + 0.5 * x1 + 0.7 * xe + v + e
    return pd.DataFrame({"y": y, "x1": x1, "xe": xe, "z1": z1, "z2": z2})


def test_iv_hc1_shaped_ses_match_linearmodels() -> None:
    from linearmodels.iv import IV2SLS

    cp = _cp("iv", "iv", "y ~ x1 + [xe ~ z1 + z2]", vcov="HC1")
    (rel,) = capture_released(_iv_data(3000, 0, True), MANIFEST, cp)
    synthetic = _iv_data(2600, 1, False)

    def lm(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
        res = IV2SLS.from_formula("y ~ 1 + x1 + [xe ~ z1 + z2]", df).fit(
            cov_type="robust", debiased=True
        )
        return (
            np.asarray(res.std_errors),
            np.asarray(res.params),
            ["Intercept", *list(res.params.index[1:])],
        )

    r0, _ = _ratios_and_gaps(*lm(synthetic), rel)
    assert np.max(np.abs(np.log(r0))) > np.log(1.25), r0
    frames, results = pin_checkpoints({"people": synthetic}, [rel])
    r, gap = _ratios_and_gaps(*lm(frames["people"]), rel)
    assert gap <= PIN_TOL
    assert np.all((r >= BAND[0]) & (r <= BAND[1])), (r, results[0].note)


def test_shaping_is_deterministic_and_moves_only_the_sample_outcome() -> None:
    """No randomness: two pins give identical frames; rows outside the estimation sample
    keep their outcome."""
    cp = _cp("fe", "fe", "y ~ x1 + x2", absorb=("ent",), vcov="cluster:ent", subset="yr >= 1")
    (rel,) = capture_released(_cluster_panel(300, 6, 0, slopes=True), MANIFEST, cp)
    synthetic = _cluster_panel(260, 6, 1, slopes=False)
    a, ra = pin_checkpoints({"people": synthetic}, [rel])
    b, _ = pin_checkpoints({"people": synthetic}, [rel])
    assert "shaped" in ra[0].note
    pd.testing.assert_frame_equal(a["people"], b["people"])
    outside = synthetic["yr"] < 1
    np.testing.assert_array_equal(a["people"].loc[outside, "y"], synthetic.loc[outside, "y"])
    assert not np.allclose(a["people"].loc[~outside, "y"], synthetic.loc[~outside, "y"])
