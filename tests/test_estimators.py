"""Golden tests of checkpoint fits: replisynth's design + fit against statsmodels called
directly on a design matrix built here by hand (no formula machinery), so both the sample
(subset, listwise deletion, weights) and the numbers are checked."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from conftest import make_people

from replisynth.config.manifest import Checkpoint
from replisynth.core.errors import CheckpointError
from replisynth.fit.estimators import fit_checkpoint
from replisynth.stats.design import build_design, collinear_terms, estimation_sample, used_columns

Column = Callable[[pd.DataFrame], np.ndarray]

# formulaic term name -> how to build the column by hand
HAND: dict[str, Column] = {
    "Intercept": lambda d: np.ones(len(d)),
    "x1": lambda d: d["x1"].to_numpy(float),
    "x2": lambda d: d["x2"].to_numpy(float),
    "female": lambda d: d["female"].to_numpy(float),
    "age": lambda d: d["age"].to_numpy(float),
    "income": lambda d: d["income"].to_numpy(float),
    "C(region)[T.b]": lambda d: (d["region"] == "b").to_numpy(float),
    "C(region)[T.c]": lambda d: (d["region"] == "c").to_numpy(float),
    "C(region)[T.d]": lambda d: (d["region"] == "d").to_numpy(float),
    "C(educ)[T.12]": lambda d: (d["educ"] == 12).to_numpy(float),
    "x1:female": lambda d: (d["x1"] * d["female"]).to_numpy(float),
    "I(x1 ** 2)": lambda d: (d["x1"] ** 2).to_numpy(float),
}


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    """make_people with holes in the outcome, a regressor, the weights and the cluster id."""
    df = make_people(1500, seed=3)
    rng = np.random.default_rng(99)
    df.loc[rng.random(len(df)) < 0.05, "y"] = np.nan
    df.loc[rng.random(len(df)) < 0.04, "x2"] = np.nan
    df["w"] = df["w"].where(rng.random(len(df)) >= 0.03)
    df["cluster"] = df["cluster"].astype("float64").where(rng.random(len(df)) >= 0.03)
    df.loc[rng.random(len(df)) < 0.02, "region"] = None
    return df


def _cp(
    formula: str, vcov: str = "nonrobust", weights: str | None = None, subset: str | None = None
) -> Checkpoint:
    return Checkpoint(
        tag="t",
        source="people",
        model="ols",
        formula=formula,
        vcov=vcov,
        weights=weights,
        subset=subset,
    )


def _reference(
    df: pd.DataFrame, terms: list[str], vcov: str, weights: str | None, mask: np.ndarray
) -> tuple[pd.Index, dict[str, float], dict[str, float], float]:
    sample = df.loc[mask]
    X = np.column_stack([HAND[t](sample) for t in terms])
    y = sample["y"].to_numpy(float)
    model = sm.WLS(y, X, weights=sample[weights].to_numpy(float)) if weights else sm.OLS(y, X)
    if vcov.startswith("cluster:"):
        groups = pd.factorize(sample[vcov.split(":", 1)[1]])[0]
        res = model.fit(cov_type="cluster", cov_kwds={"groups": groups})
    else:
        res = model.fit(cov_type=vcov)
    return (
        sample.index,
        dict(zip(terms, res.params, strict=True)),
        dict(zip(terms, res.bse, strict=True)),
        float(res.scale),
    )


def _complete(df: pd.DataFrame, cols: list[str]) -> np.ndarray:
    return df[cols].notna().all(axis=1).to_numpy()


CASES = [
    # formula, vcov, weights, subset, extra columns read (for the hand-made sample)
    ("y ~ x1 + x2", "nonrobust", None, None),
    ("y ~ x1 + x2", "HC0", None, None),
    ("y ~ x1 + x2", "HC1", None, None),
    ("y ~ x1 + x2", "HC2", None, None),
    ("y ~ x1 + x2", "HC3", None, None),
    ("y ~ x1 + x2", "cluster:cluster", None, None),
    ("y ~ x1 + x2 + female", "nonrobust", "w", None),
    ("y ~ x1 + x2 + female", "HC1", "w", None),
    ("y ~ x1 + x2 + female", "HC3", "w", None),
    ("y ~ x1 + x2 + female", "cluster:cluster", "w", None),
    ("y ~ x1 + age", "HC1", None, "female == 1 and age >= 30"),
    ("y ~ x1 + x2 + C(region) + x1:female + I(x1**2)", "nonrobust", None, None),
    ("y ~ x1 + x2 + C(region) + x1:female + I(x1**2)", "HC2", "w", "age < 60"),
    ("y ~ x1 + x2 + C(region) + x1:female + I(x1**2)", "cluster:cluster", None, "educ >= 10"),
    ("y ~ x1 + income", "HC3", None, None),
]


@pytest.mark.parametrize(("formula", "vcov", "weights", "subset"), CASES)
def test_fit_matches_statsmodels(
    data: pd.DataFrame, formula: str, vcov: str, weights: str | None, subset: str | None
) -> None:
    cp = _cp(formula, vcov, weights, subset)
    d = build_design(data, cp)
    fit = fit_checkpoint(d, cp)
    # the expected sample: subset, then every used variable non-missing (listwise), w > 0
    mask = np.ones(len(data), dtype=bool)
    if subset:
        mask &= data.eval(subset).to_numpy()
    mask &= _complete(data, used_columns(cp))
    idx, beta, se, scale = _reference(data, fit.terms, vcov, weights, mask)
    assert list(d.index) == list(idx)
    assert fit.n == int(mask.sum()) == len(d.y)
    assert set(fit.terms) <= set(HAND)
    for j, t in enumerate(fit.terms):
        assert fit.beta[j] == pytest.approx(beta[t], rel=1e-10, abs=1e-13), t
        assert fit.se[j] == pytest.approx(se[t], rel=1e-10), t
    assert fit.resid_df == pytest.approx(fit.n - len(fit.terms))
    assert fit.scale == pytest.approx(scale, rel=1e-10)


def test_used_columns() -> None:
    cp = _cp("y ~ x1 + C(region) + x1:female + I(x1**2)", "cluster:cluster", "w")
    assert used_columns(cp) == ["cluster", "female", "region", "w", "x1", "y"]


def test_sample_excludes_missing_and_subset_rows(data: pd.DataFrame) -> None:
    cp = _cp("y ~ x1 + x2", "cluster:cluster", "w", "age >= 40")
    s = estimation_sample(data, cp)
    want = data.index[
        (data["age"] >= 40) & data[["y", "x1", "x2", "w", "cluster"]].notna().all(axis=1)
    ]
    assert list(s.index) == list(want)
    # rows missing in a column the checkpoint does not use stay in
    assert data.loc[s.index, "income"].isna().any()
    assert data.loc[s.index, "region"].isna().any()
    # every excluded row is outside the subset or misses a used variable
    out = data.index.difference(s.index)
    bad = (data.loc[out, "age"] < 40) | data.loc[out, ["y", "x1", "x2", "w", "cluster"]].isna().any(
        axis=1
    )
    assert bad.all()


def test_zero_weights_leave_the_sample_negative_ones_are_an_error(data: pd.DataFrame) -> None:
    """Stata's aweights: a zero weight drops the row; a negative one is an error (it used to
    be dropped without a word)."""
    df = data.copy()
    df.loc[df.index[:30], "w"] = 0.0
    cp = _cp("y ~ x1", weights="w")
    d = build_design(df, cp)
    assert np.all(d.weights > 0)
    assert not set(df.index[:30]) & set(d.index)
    assert len(d.y) == int((df[["y", "x1", "w"]].notna().all(axis=1) & (df["w"] > 0)).sum())
    df.loc[df.index[30:40], "w"] = -1.0
    with pytest.raises(CheckpointError, match="weights column 'w' has 10 negative value"):
        build_design(df, cp)


def test_weights_scale_invariance(data: pd.DataFrame) -> None:
    """Stata's aweights are rescaled to sum to N; WLS must not depend on the scale."""
    df = data.copy()
    df["w10"] = df["w"] * 10
    for vcov in ("nonrobust", "HC1", "cluster:cluster"):
        a = fit_checkpoint(
            build_design(df, _cp("y ~ x1 + x2", vcov, "w")), _cp("y ~ x1 + x2", vcov, "w")
        )
        b = fit_checkpoint(
            build_design(df, _cp("y ~ x1 + x2", vcov, "w10")), _cp("y ~ x1 + x2", vcov, "w10")
        )
        np.testing.assert_allclose(a.beta, b.beta, rtol=1e-10)
        np.testing.assert_allclose(a.se, b.se, rtol=1e-10)


def test_hc1_is_nonrobust_scaled_by_hand(data: pd.DataFrame) -> None:
    """Independent of statsmodels: OLS beta by the normal equations, HC1 sandwich by hand."""
    cp = _cp("y ~ x1 + x2 + female", "HC1")
    d = build_design(data, cp)
    fit = fit_checkpoint(d, cp)
    X, y = d.X, d.y
    n, k = X.shape
    XtX_inv = np.linalg.inv(X.T @ X)
    beta = XtX_inv @ X.T @ y
    e = y - X @ beta
    meat = (X * e[:, None] ** 2).T @ X
    V = XtX_inv @ meat @ XtX_inv * n / (n - k)
    np.testing.assert_allclose(fit.beta, beta, rtol=1e-10)
    np.testing.assert_allclose(fit.se, np.sqrt(np.diag(V)), rtol=1e-10)
    assert fit.scale == pytest.approx(e @ e / (n - k), rel=1e-10)


def test_recovers_true_coefficients_on_a_large_sample() -> None:
    df = make_people(40_000, seed=1)
    cp = _cp("y ~ x1 + x2 + female + x1:female + C(region)", "HC1")
    fit = fit_checkpoint(build_design(df, cp), cp)
    truth = {
        "Intercept": 1.0,
        "x1": 0.5,
        "x2": -0.3,
        "female": 0.2,
        "x1:female": 0.1,
        "C(region)[T.b]": 0.3,
        "C(region)[T.c]": -0.2,
        "C(region)[T.d]": 0.1,
    }
    for j, t in enumerate(fit.terms):
        assert abs(fit.beta[j] - truth[t]) < 4 * fit.se[j], t


@pytest.mark.parametrize("vcov", ["nonrobust", "HC1", "HC3"])
def test_ols_fit_on_an_ill_conditioned_polynomial_matches_statsmodels(vcov: str) -> None:
    """ols_fit solves through the Gram matrix: on an uncentred cubic in age (cond(X) ~ 4e6,
    so cond(X'X) ~ 1e12), weighted, it still gives statsmodels' beta, SE and scale."""
    from replisynth.fit.estimators import ols_fit

    rng_ = np.random.default_rng(7)
    n = 200_000
    age = rng_.uniform(18, 70, n)
    X = np.column_stack([np.ones(n), age, age**2, age**3, rng_.integers(0, 2, n)])
    w = rng_.uniform(0.5, 2.0, n)
    y = X @ np.array([1.0, 0.05, -0.001, 1e-5, 0.3]) + rng_.normal(size=n) * (1 + 0.01 * age)
    assert np.linalg.cond(X) > 1e5
    ref = sm.WLS(y, X, weights=w).fit(cov_type=vcov)
    beta, se, df_resid, scale = ols_fit(y, X, w, vcov)
    np.testing.assert_allclose(beta, ref.params, rtol=1e-9)
    assert np.max(np.abs(beta - ref.params) / ref.bse) < 1e-9
    np.testing.assert_allclose(se, ref.bse, rtol=1e-9)
    assert scale == pytest.approx(ref.scale, rel=1e-10)
    assert df_resid == n - X.shape[1]


# ---------------------------------------------------------------------------------------------
# collinearity


def test_collinear_terms_names_a_duplicated_column(data: pd.DataFrame) -> None:
    df = data.copy()
    df["x1b"] = 2.0 * df["x1"] - 1.0
    cp = _cp("y ~ x1 + x2 + x1b")
    d = build_design(df, cp)
    bad = collinear_terms(d.X, d.terms)
    assert len(bad) == 1 and bad[0] in {"Intercept", "x1", "x1b"}
    with pytest.raises(CheckpointError, match="collinear") as exc:
        fit_checkpoint(d, cp)
    assert bad[0] in str(exc.value)


def test_collinear_terms_exact_duplicate_and_full_rank() -> None:
    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(200), rng.normal(size=200), rng.normal(size=200)])
    assert collinear_terms(X, ["Intercept", "a", "b"]) == []
    Xd = np.column_stack([X, X[:, 1]])
    bad = collinear_terms(Xd, ["Intercept", "a", "b", "a_copy"])
    assert len(bad) == 1 and bad[0] in {"a", "a_copy"}
    # a full set of dummies with an intercept: one of them is named
    g = rng.integers(0, 3, size=200)
    D = np.column_stack([np.ones(200)] + [(g == k).astype(float) for k in range(3)])
    bad = collinear_terms(D, ["Intercept", "g0", "g1", "g2"])
    assert len(bad) == 1


def test_design_errors_are_checkpoint_errors(data: pd.DataFrame) -> None:
    with pytest.raises(CheckpointError, match="selects no rows"):
        build_design(data, _cp("y ~ x1", subset="age > 1000"))
    with pytest.raises(CheckpointError, match="names .no_such_column., not a column of the data"):
        build_design(data, _cp("y ~ x1", subset="no_such_column > 1"))
    with pytest.raises(CheckpointError, match="no row has all"):
        build_design(data.assign(x1=np.nan), _cp("y ~ x1"))
    cp = _cp("y ~ x1 + x2 + C(region) + x1:female + I(x1**2) + age + female")
    with pytest.raises(CheckpointError, match="not identified"):
        fit_checkpoint(build_design(data.dropna().iloc[:6], cp), cp)


def test_collinear_terms_fast_path_agrees_with_pivoted_qr() -> None:
    """The Gram-eigenvalue shortcut answers [] only where the pivoted QR does: well-posed
    designs, and near-collinear ones (cond 1e6-1e12) go to the QR and are judged there."""
    from scipy.linalg import qr

    from replisynth.stats.design import collinear_terms

    def by_qr(X: np.ndarray, tol: float = 1e-9) -> list[int]:
        s = np.sqrt((X**2).sum(0))
        R, piv = qr(X / s, mode="r", pivoting=True)
        d = np.abs(np.diag(R))
        return sorted(piv[int(np.sum(d > tol * d.max())) :])

    rng_ = np.random.default_rng(3)
    base = rng_.normal(size=(5000, 4))
    for eps in (1.0, 1e-3, 1e-6, 1e-8, 1e-11, 0.0):
        X = np.column_stack([base, base[:, 0] + base[:, 1] + eps * rng_.normal(size=5000)])
        names = [f"x{j}" for j in range(X.shape[1])]
        assert collinear_terms(X, names) == [names[j] for j in by_qr(X)], eps
    X = np.column_stack([base, base[:, 2]])
    assert collinear_terms(X, ["a", "b", "c", "d", "e"]) in (["c"], ["e"])
