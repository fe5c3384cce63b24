"""The fast fe fit (`fit_fe`: within transform, Cholesky OLS, AbsorbingLS's degrees of
freedom) against linearmodels' AbsorbingLS itself, on unbalanced data with singleton groups,
one or two absorbed columns, weights, clusters nested in the effect or not, with or without a
constant."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from replisynth.config.manifest import Checkpoint
from replisynth.core.errors import CheckpointError
from replisynth.fit.estimators import fit_checkpoint
from replisynth.fit.linear_models import absorbed_df, fit_fe, fit_fe_linearmodels
from replisynth.stats.design import build_design

TOL = 1e-8  # relative, coefficients and SEs


def make_data(n: int, groups: int, seed: int, names: tuple[str, str, str]) -> pd.DataFrame:
    """Unbalanced groups (geometric sizes) plus 5 singleton groups, a second effect with a few
    levels, regressors correlated with the effects, heteroskedastic noise, positive weights,
    clusters that nest the first effect (`nest`) and random ones (`rc`)."""
    a, b, x = names
    rng = np.random.default_rng(seed)
    g = np.minimum(rng.geometric(3.0 / groups, size=n), groups - 1)
    g[:5] = groups + np.arange(5)  # singleton levels
    t = rng.integers(0, 7, size=n)
    eff = rng.normal(size=groups + 5)[g] + 0.3 * t
    x1 = rng.normal(size=n) + 0.6 * eff
    x2 = rng.exponential(size=n) + 0.1 * t
    y = 1.5 + 0.5 * x1 - 0.25 * x2 + eff + rng.normal(size=n) * (0.5 + np.abs(x1))
    return pd.DataFrame(
        {
            a: [f"g{v}" for v in g],
            b: t,
            x: x1,
            "x2": x2,
            "f": rng.integers(0, 3, size=n),
            "y": y,
            "w": rng.uniform(0.3, 3.0, size=n),
            "nest": g // 4,
            "rc": rng.integers(0, 23, size=n),
        }
    )


def _cp(formula: str, absorb: tuple[str, ...], **kw: Any) -> Checkpoint:
    return Checkpoint(tag="fe", source="d", model="fe", formula=formula, absorb=absorb, **kw)


CASES = [
    # (n, groups, seed, names, formula, absorb, kw)
    (900, 40, 0, ("firm", "year", "x1"), "y ~ x1 + x2", ("firm",), {"vcov": "nonrobust"}),
    (1500, 80, 1, ("a", "b", "lnw"), "y ~ lnw + x2 + C(f)", ("a",), {"vcov": "HC0"}),
    (700, 25, 2, ("id", "t", "x"), "y ~ x + x2", ("id",), {"vcov": "HC1", "weights": "w"}),
    (1200, 60, 3, ("g", "yr", "z"), "y ~ z + x2", ("g",), {"vcov": "cluster:nest"}),
    (1200, 60, 4, ("g", "yr", "z"), "y ~ z + x2", ("g",), {"vcov": "cluster:rc"}),
    (1000, 50, 5, ("firm", "year", "x1"), "y ~ x1 + x2", ("firm", "year"), {"vcov": "HC1"}),
    (800, 30, 6, ("u", "v", "q"), "y ~ q * x2", ("u", "v"), {"vcov": "nonrobust", "weights": "w"}),
    (1100, 45, 7, ("u", "v", "q"), "y ~ q + x2", ("v", "u"), {"vcov": "cluster:nest"}),
    (900, 35, 8, ("p", "s", "k"), "y ~ 0 + k + x2", ("p",), {"vcov": "HC1"}),
    (
        900,
        35,
        9,
        ("p", "s", "k"),
        "y ~ 0 + k + x2",
        ("p", "s"),
        {"vcov": "cluster:rc", "weights": "w"},
    ),
]


def _reference_tight(d: Any, cp: Checkpoint) -> Any:
    """AbsorbingLS with a tight LSMR tolerance (its default HDFE/LSMR stop at ~1e-8, which
    for two absorbed columns is the reference's own error, not ours)."""
    from linearmodels.iv.absorbing import AbsorbingLS

    from replisynth.fit.linear_models import _cov

    absorb = pd.DataFrame(
        {f"a{j}": pd.Categorical(d.absorb[:, j]) for j in range(d.absorb.shape[1])}
    )
    w = None if d.weights is None else pd.Series(d.weights)
    cov_type, kw = _cov(cp, d)
    mod = AbsorbingLS(pd.Series(d.y), pd.DataFrame(d.X, columns=d.terms), absorb=absorb, weights=w)
    return mod.fit(
        cov_type=cov_type,
        method="lsmr",
        absorb_options={"atol": 1e-15, "btol": 1e-15, "maxiter": 100_000},
        **kw,
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{'+'.join(c[5])}-{c[6]['vcov']}-{c[2]}")
def test_fit_fe_matches_absorbingls(case: tuple) -> None:
    n, groups, seed, names, formula, absorb, kw = case
    df = make_data(n, groups, seed, names)
    cp = _cp(formula, absorb, **kw)
    d = build_design(df, cp)
    beta, se, df_resid, _ = fit_fe(d, cp, "fe")
    ref = fit_fe_linearmodels(d, cp, "fe") if len(absorb) == 1 else _reference_tight(d, cp)
    assert list(ref.params.index) == d.terms
    np.testing.assert_allclose(beta, ref.params.to_numpy(), rtol=TOL, atol=0)
    np.testing.assert_allclose(se, ref.std_errors.to_numpy(), rtol=TOL, atol=0)
    assert df_resid == ref.df_resid


def test_fit_checkpoint_fe_is_the_fast_fit_with_within_residual_scale() -> None:
    """fit_checkpoint's fe result is fit_fe's; its scale is sum(w e²)/resid_df of the within
    residual, as from AbsorbingLS's weighted residuals (its weights are divided by their mean)."""
    df = make_data(1300, 70, 11, ("shop", "wk", "price"))
    cp = _cp("y ~ price + x2", ("shop",), vcov="HC1", weights="w")
    d = build_design(df, cp)
    fit = fit_checkpoint(d, cp)
    ref = fit_fe_linearmodels(d, cp, "fe")
    np.testing.assert_allclose(fit.se, ref.std_errors.to_numpy(), rtol=TOL)
    we = np.asarray(ref.wresids, dtype="float64")
    expected = float(we @ we) * float(df["w"].mean()) / ref.df_resid
    assert fit.scale == pytest.approx(expected, rel=1e-9)


def test_absorbed_df_counts_singletons_and_nesting() -> None:
    """Every present level counts, singletons included; a clustered fit with the effect nested
    in the clusters counts none of its levels; a second effect adds its levels less one."""
    df = make_data(600, 20, 3, ("g", "t", "x"))
    lv = df["g"].nunique()
    one = build_design(df, _cp("y ~ x", ("g",), vcov="cluster:nest"))
    assert absorbed_df(one, has_const=True, clustered=False) == lv - 1
    assert absorbed_df(one, has_const=True, clustered=True) == 0
    rand = build_design(df, _cp("y ~ x", ("g",), vcov="cluster:rc"))
    assert absorbed_df(rand, has_const=True, clustered=True) == lv - 1
    two = build_design(df, _cp("y ~ x", ("g", "t")))
    assert absorbed_df(two, has_const=False, clustered=False) == lv + df["t"].nunique() - 1


def test_absorbed_regressor_is_named() -> None:
    df = make_data(500, 20, 4, ("g", "t", "x"))
    df["gconst"] = df["g"].str[1:].astype(float)
    cp = _cp("y ~ x + gconst", ("g",), vcov="HC1")
    with pytest.raises(CheckpointError, match="absorbed by them: gconst"):
        fit_fe(build_design(df, cp), cp, "fe")


@pytest.mark.parametrize(("absorb", "seed"), [(["region"], 3), (["region", "cl"], 8)])
def test_reused_within_transform_gives_the_same_fit(absorb: list[str], seed: int) -> None:
    """Under `reuse_within` a refit of the same fe design with another y reuses X's within
    transform (the cache is hit: demean sees y alone) and gives the fit of a fresh design to
    the demeaning tolerance; outside it nothing is kept."""
    from dataclasses import replace

    from conftest import make_people

    from replisynth.fit import linear_models as lm
    from replisynth.fit.estimators import fit_checkpoint
    from replisynth.stats.design import build_design

    df = make_people(700, seed=seed)
    df["cl"] = df["cluster"] % 7
    cp = Checkpoint(
        tag="f",
        source="p",
        model="fe",
        formula="y ~ x1 + x2",
        absorb=absorb,
        vcov="cluster:cluster",
    )
    d = build_design(df, cp)
    y2 = d.y + np.random.default_rng(seed).normal(size=len(d.y))
    widths: list[int] = []
    real = lm.demean

    def spy(M: np.ndarray, codes: np.ndarray, w: np.ndarray) -> np.ndarray:
        widths.append(1 if M.ndim == 1 else M.shape[1])
        return real(M, codes, w)

    lm.demean = spy
    try:
        with lm.reuse_within():
            fit_checkpoint(d, cp)
            again = fit_checkpoint(replace(d, y=y2), cp)
        assert widths == [1 + d.X.shape[1], 1]
        assert lm._REUSE.last is None
        fresh = fit_checkpoint(replace(build_design(df, cp), y=y2), cp)
    finally:
        lm.demean = real
    np.testing.assert_allclose(again.beta, fresh.beta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(again.se, fresh.se, rtol=1e-8, atol=1e-10)
