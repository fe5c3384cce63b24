"""Model families fe, re and iv: our fit wrapper against linearmodels and statsmodels (golden),
pinning on different data (exact to 1e-6 SE, alone and in shared-outcome groups), residual
scaling, manifest validation, and the whole pipeline to tier 4."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import capture_released, manifest_for, refit_terms, run_pipeline

from replisynth.config.manifest import Checkpoint, checkpoint_from_release, load_manifest
from replisynth.core.errors import CheckpointError, ManifestError
from replisynth.extract.checkpoints import capture_checkpoint
from replisynth.fit.estimators import fit_checkpoint
from replisynth.fit.linear_models import demean, linear_operator, residual
from replisynth.pin.pin import pin_checkpoints
from replisynth.stats.design import build_design, split_iv_formula, used_columns

MANIFEST = load_manifest(manifest_for("people.csv"))  # standard SDC profile: min_cell_size 50
PIN_TOL = 1e-6  # |beta_synthetic - beta_target| / SE_synthetic after pinning


def make_panel(entities: int = 200, periods: int = 6, seed: int = 0) -> pd.DataFrame:
    """A balanced panel with an endogenous regressor.

    True model: y = 1 + 0.5*x1 - 0.3*x2 + 0.7*xe + 0.2*[f=1] + 0.4*[f=2] + a_i + u, with
    a_i ~ N(0, 1) the entity effect (x1 = N(0,1) + 0.5 a_i, so x1 is correlated with it),
    u ~ N(0, 1); xe = 0.8 z1 + 0.5 z2 + 0.5 u + N(0, 1) is endogenous, z1, z2 ~ N(0, 1) are
    valid instruments; x2 ~ N(0,1); f uniform on {0, 1, 2}; w analytic weights U(0.5, 2);
    `ent` 0..entities-1, `yr` 0..periods-1, `cl` clusters of 4 entities, `rc` 30 clusters
    drawn at random (not nesting the entities).
    """
    rng = np.random.default_rng(seed)
    n = entities * periods
    ent = np.repeat(np.arange(entities), periods)
    a = rng.normal(size=entities)[ent]
    x1 = rng.normal(size=n) + 0.5 * a
    x2 = rng.normal(size=n)
    f = rng.integers(0, 3, n)
    z1, z2, u = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    xe = 0.8 * z1 + 0.5 * z2 + 0.5 * u + rng.normal(size=n)
    y = 1 + 0.5 * x1 - 0.3 * x2 + 0.7 * xe + np.array([0.0, 0.2, 0.4])[f] + a + u
    return pd.DataFrame(
        {
            "y": y,
            "x1": x1,
            "x2": x2,
            "xe": xe,
            "z1": z1,
            "z2": z2,
            "f": f,
            "ent": ent,
            "yr": np.tile(np.arange(periods), entities),
            "w": rng.uniform(0.5, 2.0, n),
            "cl": ent // 4,
            "rc": rng.integers(0, 30, n),
        }
    )


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return make_panel(200, 6, seed=0)


@pytest.fixture(scope="module")
def other_panel() -> pd.DataFrame:
    """Different data from the same process (fewer entities): the synthetic stand-in."""
    return make_panel(180, 6, seed=1)


def _cp(tag: str, model: str, formula: str, **kw: Any) -> Checkpoint:
    return Checkpoint(tag=tag, source="people", model=model, formula=formula, **kw)


def _fit(df: pd.DataFrame, cp: Checkpoint):
    return fit_checkpoint(build_design(df, cp), cp)


# ---------------------------------------------------------------------------------------------
# golden: our wrapper against linearmodels' own formula interfaces and statsmodels


LM_COV = {
    "nonrobust": {"cov_type": "unadjusted"},
    "HC0": {"cov_type": "robust", "debiased": False},
    "HC1": {"cov_type": "robust"},  # linearmodels' panel "robust" is debiased by default
    "cluster:rc": {"cov_type": "clustered", "group_debias": True},
}
SM_COV = {
    "nonrobust": {"cov_type": "nonrobust"},
    "HC0": {"cov_type": "HC0"},
    "HC1": {"cov_type": "HC1"},
}


def _panel_reference(cls: type, formula: str, panel: pd.DataFrame, vcov: str):
    """linearmodels' panel estimator `cls` on (ent, yr) under the vcov's linearmodels
    arguments (cluster: by the random clusters `rc`)."""
    p = panel.set_index(["ent", "yr"], drop=False)
    kw = dict(LM_COV[vcov])
    if vcov.startswith("cluster"):
        kw["clusters"] = p["rc"]
    return cls.from_formula(formula, p).fit(**kw)


@pytest.mark.parametrize("vcov", ["nonrobust", "HC0", "HC1", "cluster:rc"])
def test_fe_matches_panelols_and_dummy_ols(panel: pd.DataFrame, vcov: str) -> None:
    """One-way FE equals statsmodels OLS with entity dummies (slopes and SEs: FWL holds for
    the sandwich too; clusters that do not nest the entities) and PanelOLS with entity effects
    (which counts the effects in its df even when not debiased, so not for HC0)."""
    import statsmodels.formula.api as smf
    from linearmodels.panel import PanelOLS

    fit = _fit(panel, _cp("fe", "fe", "y ~ x1 + x2 + C(f)", entity="ent", vcov=vcov))
    sm_cov = SM_COV.get(vcov) or {"cov_type": "cluster", "cov_kwds": {"groups": panel["rc"]}}
    dummies = smf.ols("y ~ x1 + x2 + C(f) + C(ent)", panel).fit(**sm_cov)
    slopes = fit.terms[1:]
    np.testing.assert_allclose(fit.beta[1:], dummies.params[slopes].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(fit.se[1:], dummies.bse[slopes].to_numpy(), rtol=1e-7)
    assert fit.resid_df == pytest.approx(dummies.df_resid)
    if vcov == "HC0":
        return
    ref = _panel_reference(PanelOLS, "y ~ 1 + x1 + x2 + C(f) + EntityEffects", panel, vcov)
    assert list(ref.params.index) == fit.terms
    np.testing.assert_allclose(fit.beta, ref.params.to_numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fit.se, ref.std_errors.to_numpy(), rtol=1e-8)


def test_fe_two_way_with_weights_matches_dummy_wls(panel: pd.DataFrame) -> None:
    """Two absorbed columns with analytic weights: slopes and HC1 SEs of WLS with both sets
    of dummies (alternating projections converge to the exact within transform)."""
    import statsmodels.formula.api as smf

    fit = _fit(
        panel, _cp("fe2", "fe", "y ~ x1 + x2", absorb=("ent", "yr"), weights="w", vcov="HC1")
    )
    ref = smf.wls("y ~ x1 + x2 + C(ent) + C(yr)", panel, weights=panel["w"]).fit(cov_type="HC1")
    np.testing.assert_allclose(fit.beta[1:], ref.params[["x1", "x2"]].to_numpy(), rtol=1e-7)
    np.testing.assert_allclose(fit.se[1:], ref.bse[["x1", "x2"]].to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("vcov", ["nonrobust", "HC0", "HC1", "cluster:rc"])
def test_re_matches_randomeffects(panel: pd.DataFrame, vcov: str) -> None:
    from linearmodels.panel import RandomEffects

    fit = _fit(panel, _cp("re", "re", "y ~ x1 + x2 + C(f)", entity="ent", time="yr", vcov=vcov))
    ref = _panel_reference(RandomEffects, "y ~ 1 + x1 + x2 + C(f)", panel, vcov)
    assert list(ref.params.index) == fit.terms
    np.testing.assert_allclose(fit.beta, ref.params.to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(fit.se, ref.std_errors.to_numpy(), rtol=1e-8)
    vd = ref.variance_decomposition
    assert fit.extra["sigma2_u"] == pytest.approx(vd["Effects"]) and fit.extra[
        "sigma2_e"
    ] == pytest.approx(vd["Residual"])


def _iv2sls_cov(vcov: str, clusters: pd.Series) -> dict[str, Any]:
    """IV2SLS's fit keywords for a checkpoint vcov, as linear_models maps them (nonrobust, HC1
    and cluster debiased, HC0 not)."""
    return {
        "nonrobust": {"cov_type": "unadjusted", "debiased": True},
        "HC0": {"cov_type": "robust"},
        "HC1": {"cov_type": "robust", "debiased": True},
        "cluster:rc": {"cov_type": "clustered", "clusters": clusters, "debiased": True},
    }[vcov]


@pytest.mark.parametrize("vcov", ["nonrobust", "HC0", "HC1", "cluster:rc"])
@pytest.mark.parametrize(
    "formula", ["y ~ 1 + x1 + C(f) + [xe ~ z1 + z2]", "y ~ 1 + x2 + [xe + x1 ~ z1 + z2]"]
)
def test_iv_matches_iv2sls(panel: pd.DataFrame, formula: str, vcov: str) -> None:
    """Term names, coefficients and SEs equal IV2SLS.from_formula with the vcov mapping of
    linear_models (nonrobust/HC1/cluster debiased, HC0 not)."""
    from linearmodels.iv import IV2SLS

    fit = _fit(panel, _cp("iv", "iv", formula, vcov=vcov))
    ref = IV2SLS.from_formula(formula, panel).fit(**_iv2sls_cov(vcov, panel["rc"]))
    ref_params = ref.params.rename({"1": "Intercept"})
    assert sorted(ref_params.index) == sorted(fit.terms)
    np.testing.assert_allclose(fit.beta, ref_params[fit.terms].to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(
        fit.se, ref.std_errors.rename({"1": "Intercept"})[fit.terms].to_numpy(), rtol=1e-8
    )


def test_iv_with_weights_matches_iv2sls(panel: pd.DataFrame) -> None:
    from linearmodels.iv import IV2SLS

    fit = _fit(
        panel,
        _cp("iv", "iv", "y ~ 1 + x1 + [xe ~ z1 + z2]", weights="w", vcov="HC1", subset="f >= 1"),
    )
    sub = panel[panel["f"] >= 1]
    ref = IV2SLS.from_formula("y ~ 1 + x1 + [xe ~ z1 + z2]", sub, weights=sub["w"]).fit(
        cov_type="robust", debiased=True
    )
    np.testing.assert_allclose(fit.beta, ref.params.to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(fit.se, ref.std_errors.to_numpy(), rtol=1e-8)
    assert fit.n == len(sub)


@pytest.mark.parametrize("weights", [None, "w"])
@pytest.mark.parametrize("vcov", ["nonrobust", "HC0", "HC1", "cluster:rc"])
@pytest.mark.parametrize(
    "formula",
    ["y ~ inc + inc2 + C(f) + [xe ~ zbig + z2]", "y ~ x2 + [xe + inc ~ z1 + z2 + zbig]"],
)
def test_iv_with_badly_scaled_columns_matches_iv2sls(
    panel: pd.DataFrame, formula: str, vcov: str, weights: str | None
) -> None:
    """Regressors and instruments in units 10^4-10^6 times the intercept's (incomes, their
    squares) are fitted, not refused as a singular first stage, and agree with IV2SLS to
    1e-9 SE in coefficients and 1e-8 in SEs."""
    from linearmodels.iv import IV2SLS

    rng = np.random.default_rng(5)
    df = panel.assign(inc=5e4 + 2e4 * panel["x1"])
    df = df.assign(inc2=df["inc"] ** 2 / 1e3, zbig=rng.normal(size=len(df)) * 1e5 + 3e6 + df["inc"])
    kw = {"weights": weights} if weights else {}
    fit = _fit(df, _cp("iv", "iv", formula, vcov=vcov, **kw))
    lm_formula = formula.replace("~ ", "~ 1 + ", 1)
    ref = IV2SLS.from_formula(lm_formula, df, weights=df[weights] if weights else None).fit(
        **_iv2sls_cov(vcov, df["rc"])
    )
    se = ref.std_errors.rename({"1": "Intercept"})[fit.terms].to_numpy()
    beta = ref.params.rename({"1": "Intercept"})[fit.terms].to_numpy()
    assert np.max(np.abs(fit.beta - beta) / se) < 1e-9
    np.testing.assert_allclose(fit.se, se, rtol=1e-8)


def test_iv_exactly_identified_by_the_regressor_is_ols(panel: pd.DataFrame) -> None:
    """Instrumenting x1 by itself gives OLS, with statsmodels' nonrobust and cluster SEs."""
    import statsmodels.formula.api as smf

    for vcov, kw in (
        ("nonrobust", {}),
        ("cluster:rc", {"cov_type": "cluster", "cov_kwds": {"groups": panel["rc"]}}),
    ):
        panel2 = panel.assign(x1copy=panel["x1"])
        fit = _fit(panel2, _cp("iv", "iv", "y ~ x2 + [x1 ~ x1copy]", vcov=vcov))
        ref = smf.ols("y ~ x2 + x1", panel).fit(**kw)
        np.testing.assert_allclose(fit.beta, ref.params[fit.terms].to_numpy(), rtol=1e-10)
        np.testing.assert_allclose(fit.se, ref.bse[fit.terms].to_numpy(), rtol=1e-8)


def test_iv_terms_are_exogenous_then_endogenous_with_factor_endogenous(panel: pd.DataFrame) -> None:
    d = build_design(panel, _cp("iv", "iv", "y ~ x2 + C(f) + [xe + I(x1 ** 2) ~ z1 + z2 + z1:z2]"))
    assert d.terms == ["Intercept", "x2", "C(f)[T.1]", "C(f)[T.2]", "xe", "I(x1 ** 2)"]
    assert d.n_exog == 4 and d.instruments == ["z1", "z2", "z1:z2"]
    np.testing.assert_array_equal(d.Z[:, :4], d.X[:, :4])


def test_iv_intercept_follows_formulaic_not_linearmodels(panel: pd.DataFrame) -> None:
    """As in every replisynth formula the intercept is implicit (linearmodels' IV parser
    needs an explicit 1); `0 +` removes it."""
    assert build_design(panel, _cp("iv", "iv", "y ~ x2 + [xe ~ z1]")).terms == [
        "Intercept",
        "x2",
        "xe",
    ]
    assert build_design(panel, _cp("iv", "iv", "y ~ 0 + x2 + [xe ~ z1]")).terms == ["x2", "xe"]


def test_split_iv_formula() -> None:
    assert split_iv_formula("y ~ 1 + w1 + w2 + [x1 + x2 ~ z1 + z2]") == (
        "y ~ 1 + w1 + w2",
        "x1 + x2",
        "z1 + z2",
    )
    assert split_iv_formula("y ~ [x ~ z] + w") == ("y ~ w", "x", "z")
    assert split_iv_formula("y ~ [x ~ z]") == ("y ~ 1", "x", "z")


def test_used_columns_include_instruments_and_effects() -> None:
    assert used_columns(_cp("iv", "iv", "y ~ w + [x ~ z1 + z2]")) == ["w", "x", "y", "z1", "z2"]
    assert used_columns(_cp("fe", "fe", "y ~ x", absorb=("firm", "year"))) == [
        "firm",
        "x",
        "y",
        "year",
    ]
    assert used_columns(_cp("re", "re", "y ~ x", entity="nr", time="year")) == [
        "nr",
        "x",
        "y",
        "year",
    ]


def test_under_identified_iv_is_a_checkpoint_error(panel: pd.DataFrame) -> None:
    with pytest.raises(CheckpointError, match="under-identified"):
        build_design(panel, _cp("iv", "iv", "y ~ x2 + [xe + x1 ~ z1]"))


def test_regressor_absorbed_by_the_effects_is_named(panel: pd.DataFrame) -> None:
    df = panel.assign(const_in_ent=panel["ent"] % 7)
    with pytest.raises(CheckpointError, match="absorbed by them: const_in_ent"):
        _fit(df, _cp("fe", "fe", "y ~ x1 + const_in_ent", absorb=("ent",)))


@pytest.mark.parametrize(
    "cp",
    [
        _cp("fe", "fe", "y ~ x1 + x2 + C(f)", absorb=("ent",)),
        _cp("fe2", "fe", "y ~ x1 + x2", absorb=("ent", "yr"), weights="w"),
        _cp("re", "re", "y ~ x1 + x2", entity="ent", weights="w"),
        _cp("iv", "iv", "y ~ x1 + [xe ~ z1 + z2]", weights="w"),
    ],
    ids=lambda c: c.tag,
)
def test_operator_reproduces_the_fit_and_inverts_the_design(
    panel: pd.DataFrame, cp: Checkpoint
) -> None:
    """beta_hat = A y (the pin's premise) and A X = I (why y + X Delta is an exact step)."""
    d = build_design(panel, cp)
    fit = fit_checkpoint(d, cp)
    A = linear_operator(d, cp)
    assert np.max(np.abs(A @ d.y - fit.beta) / fit.se) < 1e-6
    np.testing.assert_allclose(A @ d.X, np.eye(len(fit.beta)), atol=1e-8)


def test_demean_two_way_is_a_projection(panel: pd.DataFrame) -> None:
    """The two-way within transform is idempotent and leaves no group mean in either effect."""
    codes = panel[["ent", "yr"]].to_numpy()
    w = panel["w"].to_numpy()
    M = demean(panel[["x1", "x2"]].to_numpy(), codes, w)
    np.testing.assert_allclose(demean(M, codes, w), M, atol=1e-10)
    for j in range(2):
        sums = pd.DataFrame(M * w[:, None]).groupby(codes[:, j]).sum().to_numpy()
        assert np.abs(sums).max() < 1e-8


# ---------------------------------------------------------------------------------------------
# pinning


def _capture(df: pd.DataFrame, *cps: Checkpoint) -> list[dict[str, Any]]:
    return capture_released(df, MANIFEST, *cps)


def _gaps(df: pd.DataFrame, rel: dict[str, Any]) -> tuple[float, list[float]]:
    """(max |dbeta| / SE_synthetic, SE_synthetic / SE_target per term) of the refit."""
    terms = refit_terms(df, rel)
    assert len(terms) >= 2
    return max(t[0] for t in terms), [t[2] for t in terms]


SINGLE = [
    _cp("fe_entity", "fe", "y ~ x1 + x2 + C(f)", entity="ent"),
    _cp("fe_two_way", "fe", "y ~ x1 + x2", absorb=("ent", "yr"), weights="w", vcov="cluster:cl"),
    _cp("fe_subset", "fe", "y ~ x1*x2 + I(x1 ** 2)", absorb=("ent",), subset="yr >= 2", vcov="HC1"),
    _cp("re", "re", "y ~ x1 + x2 + C(f)", entity="ent", time="yr"),
    _cp(
        "re_weighted",
        "re",
        "y ~ x1 + x2",
        entity="ent",
        weights="w",
        vcov="cluster:ent",
        subset="f >= 1",
    ),
    _cp("iv_over", "iv", "y ~ 1 + x1 + [xe ~ z1 + z2]", vcov="HC1"),
    _cp(
        "iv_two_endog",
        "iv",
        "y ~ x2 + C(f) + [xe + x1 ~ z1 + z2 + I(z1 * z2)]",
        weights="w",
        vcov="cluster:cl",
    ),
    _cp("iv_just", "iv", "y ~ x1 + [xe ~ z1]", subset="yr <= 3", vcov="HC0"),
]


@pytest.mark.parametrize("cp", SINGLE, ids=lambda c: c.tag)
def test_single_checkpoint_pins_exactly(
    panel: pd.DataFrame, other_panel: pd.DataFrame, cp: Checkpoint
) -> None:
    (rel,) = _capture(panel, cp)
    before, _ = _gaps(other_panel, rel)
    frames, results = pin_checkpoints({"people": other_panel}, [rel])
    assert before > 1e-3  # the other data starts away from the target
    assert results[0].status == "pinned", results[0].note
    gap, ratios = _gaps(frames["people"], rel)
    assert gap < PIN_TOL
    # same process, similar size: SEs in the inference-fidelity band (each term for the
    # nonrobust vcov; robust and clustered SEs are noisier, so their median)
    if cp.vcov == "nonrobust":
        assert all(0.8 <= r <= 1.25 for r in ratios), ratios
    assert 0.8 <= float(np.median(ratios)) <= 1.25, ratios
    # only the outcome moved, and only on the estimation sample
    moved = frames["people"].drop(columns="y").compare(other_panel.drop(columns="y"))
    assert moved.empty
    outside = other_panel.index.difference(build_design(other_panel, cp).index)
    np.testing.assert_array_equal(frames["people"].loc[outside, "y"], other_panel.loc[outside, "y"])


@pytest.mark.parametrize("cp", [c for c in SINGLE if c.model in ("fe", "iv")], ids=lambda c: c.tag)
def test_residual_scale_matches_the_release(
    panel: pd.DataFrame, other_panel: pd.DataFrame, cp: Checkpoint
) -> None:
    """fe and iv: after the pin the refit's residual variance is the released one, and the
    rescaled residual left the coefficients where the pin put them."""
    (rel,) = _capture(panel, cp)
    noisy = other_panel.assign(
        y=other_panel["y"] + np.random.default_rng(3).normal(scale=2.0, size=len(other_panel))
    )
    frames, results = pin_checkpoints({"people": noisy}, [rel])
    assert "residuals scaled" in results[0].note
    fit = _fit(frames["people"], checkpoint_from_release(rel))
    assert fit.scale == pytest.approx(rel["scale"], rel=1e-8)
    assert _gaps(frames["people"], rel)[0] < PIN_TOL


def test_residual_is_invisible_to_the_operator(panel: pd.DataFrame) -> None:
    for cp in (SINGLE[1], SINGLE[6]):
        d = build_design(panel, cp)
        r = residual(d, cp, fit_checkpoint(d, cp).beta)
        assert np.abs(linear_operator(d, cp) @ r).max() < 1e-8


def test_re_pin_step_keeps_the_variance_components(
    panel: pd.DataFrame, other_panel: pd.DataFrame
) -> None:
    """The step y + X Delta leaves the within and between residuals, hence theta, unchanged:
    the fixed point is reached by the first step."""
    from replisynth.pin.pin import _pin_pass

    cp = SINGLE[3]
    (rel,) = _capture(panel, cp)
    df = other_panel.copy()
    before = _fit(df, cp)
    gap, _ = _pin_pass(df, [rel], "y", [])
    after = _fit(df, cp)
    assert gap > 1e-3 and _gaps(df, rel)[0] < PIN_TOL
    assert after.extra["sigma2_u"] == pytest.approx(before.extra["sigma2_u"], rel=1e-8)
    assert after.extra["sigma2_e"] == pytest.approx(before.extra["sigma2_e"], rel=1e-8)
    assert set(rel["extra"]) == {"sigma2_u", "sigma2_e", "rho"}


@pytest.mark.parametrize("cp", [c for c in SINGLE if c.model == "re"], ids=lambda c: c.tag)
def test_re_pin_matches_the_released_variance_components(
    panel: pd.DataFrame, other_panel: pd.DataFrame, cp: Checkpoint
) -> None:
    """Synthetic data without entity effects (sigma2_u = 0) gets the released sigma2_u and
    sigma2_e, with the coefficients still pinned."""
    (rel,) = _capture(panel, cp)
    rng = np.random.default_rng(8)
    flat = other_panel.assign(
        y=1 + 0.5 * other_panel["x1"] + rng.normal(scale=0.5, size=len(other_panel))
    )
    assert _fit(flat, cp).extra["sigma2_u"] < 0.1 * rel["extra"]["sigma2_u"]
    frames, results = pin_checkpoints({"people": flat}, [rel])
    assert results[0].status == "pinned" and "scaled" in results[0].note
    fit = _fit(frames["people"], cp)
    assert fit.extra["sigma2_u"] == pytest.approx(rel["extra"]["sigma2_u"], rel=1e-8)
    assert fit.extra["sigma2_e"] == pytest.approx(rel["extra"]["sigma2_e"], rel=1e-8)
    assert _gaps(frames["people"], rel)[0] < PIN_TOL


GROUPS = {
    "two_iv_one_outcome": [
        _cp("iv_a", "iv", "y ~ 1 + x1 + [xe ~ z1 + z2]", subset="f == 0"),
        _cp("iv_b", "iv", "y ~ x2 + [xe ~ z1]", subset="f >= 1"),
    ],
    "two_iv_overlapping": [
        _cp("iv_a", "iv", "y ~ 1 + x1 + [xe ~ z1 + z2]", subset="yr <= 3"),
        _cp("iv_b", "iv", "y ~ x2 + [xe ~ z2]", subset="yr >= 2", vcov="HC1"),
    ],
    "iv_and_ols": [
        _cp("iv", "iv", "y ~ 1 + x1 + [xe ~ z1 + z2]", subset="f <= 1"),
        _cp("ols", "ols", "y ~ x1 + x2", subset="f >= 1"),
    ],
    "fe_and_ols": [
        _cp("fe", "fe", "y ~ x1 + x2", absorb=("ent",), subset="yr <= 3"),
        _cp("ols", "ols", "y ~ x1 + xe", subset="yr >= 2"),
    ],
    "re_and_iv": [
        _cp("re", "re", "y ~ x1 + x2", entity="ent", subset="f <= 1"),
        _cp("iv", "iv", "y ~ x2 + [xe ~ z1 + z2]", subset="f == 2"),
    ],
}


@pytest.mark.parametrize("name", list(GROUPS))
def test_shared_outcome_groups_pin_jointly(
    panel: pd.DataFrame, other_panel: pd.DataFrame, name: str
) -> None:
    rels = _capture(panel, *GROUPS[name])
    frames, results = pin_checkpoints({"people": other_panel}, rels)
    assert len(results) == 1 and results[0].joint and results[0].status == "pinned", results[0].note
    for rel in rels:
        assert _gaps(frames["people"], rel)[0] < PIN_TOL, rel["tag"]


def test_disjoint_group_matches_each_residual_variance(
    panel: pd.DataFrame, other_panel: pd.DataFrame
) -> None:
    """One outcome, disjoint samples (fe on early years, re on late ones): each checkpoint's
    residual variance (re: variance components) is matched on its own rows, all still pinned."""
    cps = [
        _cp("fe", "fe", "y ~ x1 + x2", absorb=("ent", "yr"), subset="yr <= 2"),
        _cp("re", "re", "y ~ x1 + x2 + C(f)", entity="ent", subset="yr >= 3"),
    ]
    rels = _capture(panel, *cps)
    frames, results = pin_checkpoints({"people": other_panel}, rels)
    assert (
        results[0].status == "pinned"
        and "fe: residuals scaled" in results[0].note
        and "re: residuals scaled" in results[0].note
    )
    fe, re_ = (_fit(frames["people"], cp) for cp in cps)
    assert fe.scale == pytest.approx(rels[0]["scale"], rel=1e-8)
    assert re_.extra["sigma2_u"] == pytest.approx(rels[1]["extra"]["sigma2_u"], rel=1e-8)
    assert all(_gaps(frames["people"], rel)[0] < PIN_TOL for rel in rels)


def test_pin_is_deterministic(panel: pd.DataFrame, other_panel: pd.DataFrame) -> None:
    rels = _capture(panel, *GROUPS["two_iv_overlapping"])
    a, _ = pin_checkpoints({"people": other_panel}, rels)
    b, _ = pin_checkpoints({"people": other_panel}, rels)
    pd.testing.assert_frame_equal(a["people"], b["people"])


# ---------------------------------------------------------------------------------------------
# manifest


def _manifest(**cp: Any) -> dict[str, Any]:
    raw = manifest_for("people.csv")
    raw["checkpoints"] = [{"tag": "c", "source": "people", **cp}]
    return raw


@pytest.mark.parametrize(
    ("cp", "pattern"),
    [
        (
            {"model": "fe", "formula": "y ~ x"},
            r"checkpoints\[0\]\.absorb: model fe needs 1 or 2 columns",
        ),
        (
            {"model": "fe", "formula": "y ~ x", "absorb": ["a", "b", "c"]},
            r"checkpoints\[0\]\.absorb: model fe absorbs 1 or 2",
        ),
        (
            {"model": "fe", "formula": "y ~ x", "absorb": ["a"], "entity": "e"},
            r"checkpoints\[0\]: model fe takes either absorb",
        ),
        (
            {"model": "re", "formula": "y ~ x"},
            r"checkpoints\[0\]\.entity: model re needs the panel unit",
        ),
        (
            {"model": "re", "formula": "y ~ x", "entity": "e", "absorb": ["a"]},
            r"checkpoints\[0\]\.absorb: only model fe",
        ),
        (
            {"model": "iv", "formula": "y ~ x + z"},
            r"checkpoints\[0\]\.formula: model iv needs one \[endogenous ~ instruments\]",
        ),
        (
            {"model": "ols", "formula": "y ~ w + [x ~ z]"},
            r"checkpoints\[0\]\.formula: a \[x ~ z\] part is only read by model iv",
        ),
        (
            {"model": "iv", "formula": "y ~ w + [x ~ z]", "vcov": "HC3"},
            r"checkpoints\[0\]\.vcov: HC3 is not available for model iv",
        ),
        (
            {"model": "ols", "formula": "y ~ x", "entity": "e"},
            r"checkpoints\[0\]\.entity: only models re and fe",
        ),
        (
            {"model": "ols", "formula": "y ~ x", "time": "t"},
            r"checkpoints\[0\]\.time: a time column needs an entity",
        ),
    ],
)
def test_family_keys_are_validated(cp: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ManifestError, match=pattern):
        load_manifest(_manifest(**cp))


def test_family_manifests_load() -> None:
    for cp in (
        {"model": "fe", "formula": "y ~ x", "absorb": ["a", "b"], "vcov": "cluster:a"},
        {"model": "fe", "formula": "y ~ x", "entity": "e", "time": "t"},
        {"model": "re", "formula": "y ~ x", "entity": "e", "time": "t"},
        {
            "model": "iv",
            "formula": "y ~ 1 + w1 + w2 + [x1 + x2 ~ z1 + z2]",
            "weights": "w",
            "vcov": "HC1",
        },
    ):
        m = load_manifest(_manifest(**cp))
        assert m.checkpoints[0].model == cp["model"]


# ---------------------------------------------------------------------------------------------
# the whole pipeline


@pytest.mark.parametrize("family", ["fe", "re", "iv"])
def test_pipeline_reaches_tier4(tmp_path, family: str) -> None:
    """Extract, synthesize, pin and verify through the CLI code path: tier 4, pinned terms at
    Δβ/SE ≈ 0 under the synthetic SE and the released SE."""
    df = make_panel(150, 6, seed=4).drop(columns=["cl"])
    df.insert(0, "pid", np.arange(1, len(df) + 1))
    path = tmp_path / "panel.csv"
    df.to_csv(path, index=False)
    raw = manifest_for(path, panel={"entity": "ent", "time": "yr"}, groups=["rc"])
    raw["verify"] = {"tier": 4}
    cps = {
        "fe": [
            {
                "tag": "fe",
                "model": "fe",
                "formula": "y ~ x1 + x2",
                "absorb": ["ent"],
                "vcov": "cluster:ent",
            },
            {
                "tag": "fe2",
                "model": "fe",
                "formula": "y ~ x1 + xe",
                "absorb": ["ent", "yr"],
                "vcov": "HC1",
                "subset": "f >= 1",
            },
        ],
        "re": [
            {
                "tag": "re",
                "model": "re",
                "formula": "y ~ x1 + x2 + C(f)",
                "entity": "ent",
                "time": "yr",
                "vcov": "cluster:ent",
            }
        ],
        "iv": [
            {"tag": "iv", "model": "iv", "formula": "y ~ 1 + x1 + [xe ~ z1 + z2]", "vcov": "HC1"},
            {"tag": "ols", "model": "ols", "formula": "y ~ x1 + x2", "subset": "f >= 1"},
        ],
    }[family]
    raw["checkpoints"] = [{"source": "people", **c} for c in cps]
    tiers = run_pipeline(raw, tmp_path / "out")
    assert tiers["tier_met"] == 4, tiers
    for c in cps:
        res = tiers["checkpoints"][c["tag"]]
        assert (
            res["passed"] and res["max_dbeta_se"] < PIN_TOL and res["max_dbeta_se_target"] < PIN_TOL
        ), res


def test_panel_skeleton_moves_entities_not_periods() -> None:
    """The panel skeleton re-assigns entity ids: the time column (and so its correlations) is
    untouched, periods are distinct within every entity, entity sizes are kept."""
    from replisynth.synthesize.synthesize import _panel

    rng = np.random.default_rng(0)
    n = 1200
    df = pd.DataFrame(
        {
            "e": np.repeat(np.arange(150), 8)[rng.permutation(n)],
            "t": np.tile(np.arange(1980, 1988), 150)[rng.permutation(n)],
        }
    )
    out = _panel(df.copy(), "e", "t")
    pd.testing.assert_series_equal(out["t"], df["t"])
    assert (out.groupby("e")["t"].nunique() == 8).all()
    assert sorted(out.groupby("e").size()) == sorted(df.groupby("e").size())


def test_resid_df_gate_counts_the_absorbed_effects() -> None:
    """26 men × 2 periods: OLS has 50 residual df, the entity-FE model 25 (the effects use
    25), so a 30-df gate releases the first and rejects the second."""
    df = make_panel(26, 2, seed=5)
    m = load_manifest({**manifest_for("people.csv"), "sdc": {"min_resid_df": 30}})
    ols, _ = capture_checkpoint(df, _cp("ols", "ols", "y ~ x1"), m, 0)
    fe, log = capture_checkpoint(df, _cp("fe", "fe", "y ~ x1", entity="ent"), m, 1)
    assert ols["status"] == "released" and ols["resid_df"] == 50
    assert fe["status"] == "rejected" and "min_resid_df=30" in fe["reason"]


def test_rare_indicator_is_suppressed_and_left_free_by_the_pin(
    panel: pd.DataFrame, other_panel: pd.DataFrame
) -> None:
    def with_rare(df: pd.DataFrame, seed: int) -> pd.DataFrame:
        rare = np.zeros(len(df), dtype=int)
        rare[np.random.default_rng(seed).choice(len(df), 30, replace=False)] = 1
        return df.assign(rare=rare)

    cp = _cp("iv", "iv", "y ~ x1 + rare + [xe ~ z1 + z2]")
    (rel,) = _capture(with_rare(panel, 1), cp)
    sup = [t for t in rel["terms"] if t.get("suppressed")]
    assert len(sup) == 1 and sup[0]["term"] is None and sup[0]["position"] == 2
    frames, results = pin_checkpoints({"people": with_rare(other_panel, 2)}, [rel])
    assert results[0].status == "pinned"
    assert _gaps(frames["people"], rel)[0] < PIN_TOL
