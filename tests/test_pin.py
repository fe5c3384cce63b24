"""Layer 4: pinning released checkpoint coefficients on *different* data by moving only the
outcome on the estimation sample."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import make_people, manifest_for

from replisynth.config.manifest import Checkpoint, checkpoint_from_release, load_manifest
from replisynth.extract.checkpoints import capture_checkpoint
from replisynth.fit.estimators import fit_checkpoint
from replisynth.pin.pin import cross_block, ols_operator, pin_checkpoints, pin_order
from replisynth.stats.design import build_design

MANIFEST = load_manifest(manifest_for("people.csv"))  # standard SDC profile: min_cell_size 50


def _with_extras(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """make_people plus a rare dummy (30 ones: its coefficient is suppressed) and holes in x2."""
    rng = np.random.default_rng(seed)
    df = df.copy()
    rare = np.zeros(len(df), dtype=int)
    rare[rng.choice(len(df), 30, replace=False)] = 1
    df["rare"] = rare
    df.loc[rng.random(len(df)) < 0.05, "x2"] = np.nan
    return df


@pytest.fixture(scope="module")
def original() -> pd.DataFrame:
    return _with_extras(make_people(2000, seed=0), 10)


@pytest.fixture(scope="module")
def synthetic() -> pd.DataFrame:
    return _with_extras(make_people(1800, seed=1), 11)


def _cp(
    tag: str,
    formula: str,
    vcov: str = "nonrobust",
    weights: str | None = None,
    subset: str | None = None,
) -> Checkpoint:
    return Checkpoint(
        tag=tag,
        source="people",
        model="ols",
        formula=formula,
        vcov=vcov,
        weights=weights,
        subset=subset,
    )


def _capture(df: pd.DataFrame, *cps: Checkpoint) -> list[dict[str, Any]]:
    out = []
    for i, cp in enumerate(cps):
        rel, _ = capture_checkpoint(df, cp, MANIFEST, i)
        assert rel["status"] == "released"
        out.append(rel)
    return out


def _refit(df: pd.DataFrame, rel: dict[str, Any]):
    cp = checkpoint_from_release(rel)
    return fit_checkpoint(build_design(df, cp), cp)


def _assert_pinned(df: pd.DataFrame, rel: dict[str, Any], tol: float = 1e-8) -> None:
    fit = _refit(df, rel)
    pos = {t: j for j, t in enumerate(fit.terms)}
    n_checked = 0
    for t in rel["terms"]:
        if t.get("suppressed"):
            continue
        j = pos[t["term"]]
        assert abs(fit.beta[j] - t["beta"]) <= tol * fit.se[j], (
            rel["tag"],
            t["term"],
            fit.beta[j],
            t["beta"],
        )
        n_checked += 1
    assert n_checked >= 2


SINGLE = [
    _cp("plain", "y ~ x1 + x2 + female"),
    _cp("weighted", "y ~ x1 + x2 + female", weights="w"),
    _cp("subset", "y ~ x1 + age", subset="female == 1 and age >= 30"),
    _cp("factors", "y ~ x1*female + C(region) + I(x1**2)"),
    _cp("hc1", "y ~ x1 + x2 + C(region)", vcov="HC1"),
    _cp(
        "cluster", "y ~ x1 + x2 + female", vcov="cluster:cluster", weights="w", subset="educ >= 10"
    ),
]


@pytest.mark.parametrize("cp", SINGLE, ids=[c.tag for c in SINGLE])
def test_single_checkpoint_pins_exactly(
    original: pd.DataFrame, synthetic: pd.DataFrame, cp: Checkpoint
) -> None:
    (rel,) = _capture(original, cp)
    before = _refit(synthetic, rel)
    target = np.array([t["beta"] for t in rel["terms"]])
    assert np.max(np.abs(before.beta - target) / before.se) > 0.5  # the data really differ
    frames, results = pin_checkpoints({"people": synthetic}, [rel])
    out = frames["people"]
    assert len(results) == 1
    r = results[0]
    assert (r.source, r.outcome, r.tags, r.joint, r.status) == (
        "people",
        "y",
        (cp.tag,),
        False,
        "pinned",
    )
    _assert_pinned(out, rel)
    # only the outcome moved, only on the estimation sample
    sample = build_design(synthetic, checkpoint_from_release(rel)).index
    outside = synthetic.index.difference(sample)
    assert len(outside) > 0 or cp.tag == "factors"  # factors: every row is in the sample
    np.testing.assert_array_equal(
        out.loc[outside, "y"].to_numpy(), synthetic.loc[outside, "y"].to_numpy()
    )
    assert (out.loc[sample, "y"] != synthetic.loc[sample, "y"]).mean() > 0.9
    pd.testing.assert_frame_equal(out.drop(columns="y"), synthetic.drop(columns="y"))
    # the input frame is not modified
    assert synthetic["y"].equals(make_people(1800, seed=1)["y"])


def test_pin_leaves_missing_outcomes_missing(
    original: pd.DataFrame, synthetic: pd.DataFrame
) -> None:
    syn = synthetic.copy()
    syn.loc[syn.index[:25], "y"] = np.nan
    (rel,) = _capture(original, _cp("plain", "y ~ x1 + x2"))
    frames, _ = pin_checkpoints({"people": syn}, [rel])
    assert frames["people"]["y"].isna().sum() == 25
    assert frames["people"].loc[syn.index[:25], "y"].isna().all()
    _assert_pinned(frames["people"], rel)


def test_integer_outcome_is_pinned_as_float(
    original: pd.DataFrame, synthetic: pd.DataFrame
) -> None:
    (rel,) = _capture(original, _cp("age", "age ~ x1 + female"))
    frames, results = pin_checkpoints({"people": synthetic}, [rel])
    assert results[0].status == "pinned"
    assert frames["people"]["age"].dtype == np.float64
    _assert_pinned(frames["people"], rel)


def test_two_checkpoints_disjoint_subsets_pin_jointly(
    original: pd.DataFrame, synthetic: pd.DataFrame
) -> None:
    rels = _capture(
        original,
        _cp("men", "y ~ x1 + x2", subset="female == 0"),
        _cp("women", "y ~ x1 + x2 + C(region)", subset="female == 1", vcov="HC1"),
    )
    frames, results = pin_checkpoints({"people": synthetic}, rels)
    assert len(results) == 1
    r = results[0]
    assert r.joint is True
    assert r.tags == ("men", "women")
    assert r.status == "pinned"
    for rel in rels:
        _assert_pinned(frames["people"], rel)
    pd.testing.assert_frame_equal(frames["people"].drop(columns="y"), synthetic.drop(columns="y"))
    # rows in neither sample (missing x2, or missing region for the women) are untouched
    used = set()
    for rel in rels:
        used |= set(build_design(synthetic, checkpoint_from_release(rel)).index)
    outside = synthetic.index.difference(sorted(used))
    assert len(outside) > 0
    np.testing.assert_array_equal(frames["people"].loc[outside, "y"], synthetic.loc[outside, "y"])


def test_two_checkpoints_different_regressors_disjoint_samples(
    original: pd.DataFrame, synthetic: pd.DataFrame
) -> None:
    rels = _capture(
        original,
        _cp("young", "y ~ x1", subset="age < 40"),
        _cp("old", "y ~ x2 + female + x1:female", subset="age >= 40", weights="w"),
    )
    frames, results = pin_checkpoints({"people": synthetic}, rels)
    assert results[0].joint and results[0].status == "pinned"
    for rel in rels:
        _assert_pinned(frames["people"], rel)


def test_nested_checkpoints_with_extra_rows_pin_exactly(
    original: pd.DataFrame, synthetic: pd.DataFrame
) -> None:
    """The short regression also uses the rows where x2 is missing: the stacked constraints
    are consistent and both checkpoints pin exactly."""
    rels = _capture(original, _cp("short", "y ~ x1"), _cp("long", "y ~ x1 + x2 + female"))
    frames, results = pin_checkpoints({"people": synthetic}, rels)
    assert results[0].joint is True
    assert results[0].status == "pinned"
    for rel in rels:
        _assert_pinned(frames["people"], rel)


def test_nested_checkpoints_on_one_sample_are_a_least_squares_compromise(
    original: pd.DataFrame, synthetic: pd.DataFrame
) -> None:
    """Nested regressors on the same sample: the short regression's fit is implied by the
    long one's on the synthetic regressors, so both targets cannot hold in general."""
    rels = _capture(original, _cp("short", "y ~ x1 + female"), _cp("long", "y ~ x1 + female + age"))
    frames, results = pin_checkpoints({"people": synthetic}, rels)
    assert results[0].joint is True
    assert results[0].status == "approximate"
    assert "inconsistent" in results[0].note
    # still much closer to the targets than before pinning
    for rel in rels:
        target = np.array([t["beta"] for t in rel["terms"]])
        before = _refit(synthetic, rel)
        after = _refit(frames["people"], rel)
        assert np.max(np.abs(after.beta - target) / after.se) < np.max(
            np.abs(before.beta - target) / before.se
        )


def test_shared_sample_residual_is_scaled_jointly(
    original: pd.DataFrame, synthetic: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints sharing rows get one factor on the residual orthogonal to all their
    constraints: the coefficients do not move (compared with the run without it) and the
    residual variances come to the released ones. Here the synthetic y is noisier than the
    original by a factor 2, so without the joint scaling the SEs would be about twice too big."""
    import replisynth.pin.pin as pin

    noisy = synthetic.assign(
        y=synthetic["y"]
        + 2.0 * np.random.default_rng(9).normal(size=len(synthetic)) * synthetic["y"].std()
    )
    rels = _capture(
        original, _cp("short", "y ~ x1 + female"), _cp("long", "y ~ x1 + female + age", vcov="HC1")
    )
    frames, results = pin_checkpoints({"people": noisy}, rels)
    assert "scaled by" in results[0].note and "joint" in results[0].note
    monkeypatch.setattr(pin, "_match_joint_residual_scale", lambda *a, **k: None)
    plain, _ = pin_checkpoints({"people": noisy}, rels)
    for rel in rels:
        scaled, unscaled = _refit(frames["people"], rel), _refit(plain["people"], rel)
        np.testing.assert_allclose(
            scaled.beta, unscaled.beta, rtol=0, atol=1e-9 * float(np.max(unscaled.se))
        )
        assert abs(scaled.scale / rel["scale"] - 1) < 0.05 < abs(unscaled.scale / rel["scale"] - 1)
        ratio = scaled.se / np.array([t["se"] for t in rel["terms"]])
        assert np.all((ratio > 0.8) & (ratio < 1.25)), ratio


def test_dependency_order(original: pd.DataFrame, synthetic: pd.DataFrame) -> None:
    # the y checkpoint uses x2 as a regressor; x2 is itself an outcome: x2 must be pinned first
    rels = _capture(
        original,
        _cp("y_on_x2", "y ~ x1 + x2 + female"),
        _cp("x2_on_x1", "x2 ~ x1 + age"),
    )
    assert pin_order(rels) == [("people", "x2"), ("people", "y")]
    frames, results = pin_checkpoints({"people": synthetic}, rels)
    assert [r.outcome for r in results] == ["x2", "y"]
    assert all(r.status == "pinned" and not r.joint for r in results)
    for rel in rels:
        _assert_pinned(frames["people"], rel)
    pd.testing.assert_frame_equal(
        frames["people"].drop(columns=["y", "x2"]), synthetic.drop(columns=["y", "x2"])
    )


def test_pin_order_manifest_order_without_dependencies() -> None:
    cps = [
        {"source": "s", "outcome": "a", "columns": ["a", "z"]},
        {"source": "s", "outcome": "b", "columns": ["b", "z"]},
        {"source": "t", "outcome": "a", "columns": ["a", "b"]},
        {"source": "s", "outcome": "a", "columns": ["a", "w"]},
    ]
    assert pin_order(cps) == [("s", "a"), ("s", "b"), ("t", "a")]
    # s.a uses s.b -> b first; t.a uses t.b, which is no outcome in t
    cps[0]["columns"] = ["a", "b"]
    assert pin_order(cps) == [("s", "b"), ("s", "a"), ("t", "a")]


def test_suppressed_term_is_left_free(original: pd.DataFrame, synthetic: pd.DataFrame) -> None:
    (rel,) = _capture(original, _cp("rare", "y ~ x1 + x2 + rare"))
    sup = [t for t in rel["terms"] if t.get("suppressed")]
    assert len(sup) == 1 and sup[0]["term"] is None and "beta" not in sup[0]
    j_rare = sup[0]["position"]
    before = _refit(synthetic, rel)
    frames, results = pin_checkpoints({"people": synthetic}, [rel])
    assert results[0].status == "pinned"
    after = _refit(frames["people"], rel)
    assert after.terms[j_rare] == "rare"
    # the released terms hit their targets, the suppressed one is not moved at all
    _assert_pinned(frames["people"], rel)
    assert after.beta[j_rare] == pytest.approx(before.beta[j_rare], abs=1e-10 * before.se[j_rare])


def test_suppressed_indicator_constant_in_synthetic_data_is_left_out(
    original: pd.DataFrame, synthetic: pd.DataFrame
) -> None:
    """SDC pools the rare level of `rare` (30 ones < min_cell_size) away, so the synthetic
    column is all 0 and the full design singular (jobtraining: grant_1). Its coefficient is
    suppressed, so pin and verify leave the column out and the released terms still pin."""
    from replisynth.core.errors import CheckpointError
    from replisynth.verify.verify import tier4

    (rel,) = _capture(original, _cp("rare", "y ~ x1 + x2 + rare"))
    syn = synthetic.assign(rare=0)
    cp = checkpoint_from_release(rel)
    with pytest.raises(CheckpointError, match="collinear with the others: rare"):
        fit_checkpoint(build_design(syn, cp), cp)
    frames, results = pin_checkpoints({"people": syn}, [rel])
    assert results[0].status == "pinned"
    released = {t["term"] for t in rel["terms"] if not t.get("suppressed")}
    d = build_design(frames["people"], cp, released=released)
    assert "rare" not in d.terms and d.X.shape[1] == len(released)
    fit = fit_checkpoint(d, cp)
    for t in rel["terms"]:
        if not t.get("suppressed"):
            j = fit.terms.index(t["term"])
            assert abs(fit.beta[j] - t["beta"]) <= 1e-8 * fit.se[j]

    class _Bundle:
        checkpoints = [rel]

    out = tier4(_Bundle(), {"people": frames["people"]})["rare"]
    assert out["passed"] and out["status"] == "verified" and out["max_dbeta_se"] < 1e-8
    # a released term that is constant is not dropped: the design stays singular and says so
    d_keep = build_design(syn.assign(x2=1.0), cp, released=released)
    assert "x2" in d_keep.terms and "rare" not in d_keep.terms


def test_unreleased_checkpoints_are_ignored(
    original: pd.DataFrame, synthetic: pd.DataFrame
) -> None:
    (rel,) = _capture(original, _cp("plain", "y ~ x1"))
    rejected = {**rel, "status": "rejected"}
    frames, results = pin_checkpoints({"people": synthetic}, [rejected])
    assert results == []
    pd.testing.assert_frame_equal(frames["people"], synthetic)


def test_checkpoint_release_format(original: pd.DataFrame) -> None:
    (rel,) = _capture(
        original,
        _cp("w", "y ~ x1 + C(region)", vcov="cluster:cluster", weights="w", subset="age > 20"),
    )
    cp = checkpoint_from_release(rel)
    assert cp.vcov == "cluster:cluster" and cp.cluster == "cluster"
    assert cp.weights == "w" and cp.subset == "age > 20"
    assert rel["outcome"] == "y"
    assert rel["columns"] == ["cluster", "region", "w", "x1", "y"]
    fit = _refit(original, rel)
    np.testing.assert_allclose([t["beta"] for t in rel["terms"]], fit.beta, rtol=1e-12)
    np.testing.assert_allclose([t["se"] for t in rel["terms"]], fit.se, rtol=1e-12)
    assert rel["n"] == fit.n


def test_joint_pin_with_a_shuffled_index(original: pd.DataFrame, synthetic: pd.DataFrame) -> None:
    syn = synthetic.sample(frac=1.0, random_state=3)
    syn.index = np.random.default_rng(0).permutation(np.arange(10_000, 10_000 + len(syn)))
    rels = _capture(
        original,
        _cp("men", "y ~ x1 + x2", subset="female == 0"),
        _cp("women", "y ~ x1 + age", subset="female == 1"),
    )
    frames, results = pin_checkpoints({"people": syn}, rels)
    assert results[0].joint and results[0].status == "pinned"
    for rel in rels:
        _assert_pinned(frames["people"], rel)
    assert list(frames["people"].index) == list(syn.index)


def test_dependency_order_includes_subset_columns(
    original: pd.DataFrame, synthetic: pd.DataFrame
) -> None:
    """The y checkpoint's sample is defined by x2, which is the outcome of another
    checkpoint: x2 must be pinned first, or pinning x2 afterwards changes y's estimation
    sample and undoes its pin."""
    rels = _capture(
        original,
        _cp("y_if_x2", "y ~ x1", subset="x2 > 0"),
        _cp("x2_on_x1", "x2 ~ x1 + age"),
    )
    assert pin_order(rels) == [("people", "x2"), ("people", "y")]
    frames, results = pin_checkpoints({"people": synthetic}, rels)
    assert all(r.status == "pinned" for r in results)
    for rel in rels:
        _assert_pinned(frames["people"], rel)


def test_pinned_status_is_truthful_when_the_subset_reads_the_outcome(
    original: pd.DataFrame, synthetic: pd.DataFrame
) -> None:
    """A subset on the outcome itself (a truncated sample): moving y moves rows in and out
    of the sample. Either the refit hits the targets, or the outcome is not reported as
    exactly 'pinned'."""
    (rel,) = _capture(original, _cp("trunc", "y ~ x1 + x2", subset="y > 0.5"))
    syn = synthetic.assign(
        y=1.0 + 0.5 * (synthetic["y"] - 1.0) - 0.4 * synthetic["x1"]
    )  # far from the targets
    frames, results = pin_checkpoints({"people": syn}, [rel])
    fit = _refit(frames["people"], rel)
    target = np.array([t["beta"] for t in rel["terms"]])
    exact = bool(np.all(np.abs(fit.beta - target) <= 1e-8 * fit.se))
    assert exact or results[0].status != "pinned", (results[0], (fit.beta - target) / fit.se)


@pytest.mark.parametrize("cp", SINGLE[:4], ids=[c.tag for c in SINGLE[:4]])
def test_factored_operator_matches_statsmodels(synthetic: pd.DataFrame, cp: Checkpoint) -> None:
    """A y = G^-1 B'y is statsmodels' OLS/WLS fit; A' lam equals the dense operator's."""
    import statsmodels.api as sm

    d = build_design(synthetic, cp)
    op = ols_operator(d)
    ref = (
        (sm.OLS(d.y, d.X) if d.weights is None else sm.WLS(d.y, d.X, weights=d.weights))
        .fit()
        .params
    )
    np.testing.assert_allclose(op.apply(d.y), ref, rtol=1e-10, atol=1e-12)
    W = np.ones(len(d.y)) if d.weights is None else d.weights
    dense = np.linalg.solve((d.X.T * W) @ d.X, d.X.T * W)
    lam = np.random.default_rng(0).normal(size=d.X.shape[1])
    np.testing.assert_allclose(op.adjoint(lam), dense.T @ lam, rtol=1e-9, atol=1e-12)


def test_cross_block_is_the_dense_product_over_shared_rows(synthetic: pd.DataFrame) -> None:
    """A_a A_b' over the rows both samples hold (overlapping, differently ordered samples,
    one weighted) equals the product of the dense k × n operators placed at the data rows."""
    ca = _cp("a", "y ~ x1 + x2 + female", weights="w", subset="age >= 30")
    cb = _cp("b", "y ~ x1 + C(region)", subset="age < 50")
    da, db = (
        build_design(synthetic, ca),
        build_design(synthetic.sample(frac=1.0, random_state=3), cb),
    )
    ra, rb = synthetic.index.get_indexer(da.index), synthetic.index.get_indexer(db.index)
    assert 0 < len(np.intersect1d(ra, rb)) < min(len(ra), len(rb))

    def placed(d, rows) -> np.ndarray:
        W = np.ones(len(d.y)) if d.weights is None else d.weights
        M = np.zeros((d.X.shape[1], len(synthetic)))
        M[:, rows] = np.linalg.solve((d.X.T * W) @ d.X, d.X.T * W)
        return M

    dense = placed(da, ra) @ placed(db, rb).T
    np.testing.assert_allclose(
        cross_block(ols_operator(da), ra, ols_operator(db), rb), dense, rtol=1e-9, atol=1e-15
    )
    np.testing.assert_allclose(
        cross_block(ols_operator(da), ra, ols_operator(da), ra),
        placed(da, ra) @ placed(da, ra).T,
        rtol=1e-9,
        atol=1e-15,
    )


@pytest.mark.parametrize(
    "specs",
    [
        [("short", "y ~ x1 + female", "nonrobust"), ("long", "y ~ x1 + female + age", "HC1")],
        [("one", "y ~ x1 + age", "HC1")],
    ],
)
def test_reused_designs_give_the_same_bytes_as_rebuilding(
    original: pd.DataFrame, synthetic: pd.DataFrame, specs: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's designs are built once and reused across passes, scaling and shaping (y
    re-read from the column): the pinned frames and records equal those of rebuilding every
    design with formulaic each time, bit for bit."""
    import replisynth.pin.pin as pin

    rels = _capture(original, *[_cp(t, f, vcov=v) for t, f, v in specs])
    frames, results = pin_checkpoints({"people": synthetic}, rels)
    monkeypatch.setattr(pin._Designs, "_reusable", staticmethod(lambda c: False))
    again, results_again = pin_checkpoints({"people": synthetic}, rels)
    pd.testing.assert_frame_equal(frames["people"], again["people"], check_exact=True)
    assert results == results_again


def test_operator_rows_equal_the_dense_operator_and_stay_cached() -> None:
    """`Operator.rows_t(at)` is the rows `at` of A = G^-1 B' (OLS/WLS and fe), and the support
    step's stacked rows are built once per group while only y moves (same object, same
    values as a fresh build)."""
    from conftest import make_people

    from replisynth.config.manifest import Checkpoint
    from replisynth.pin.pin import _Designs, _operator, _stacked
    from replisynth.stats.design import build_design

    df = make_people(900, seed=13)
    for cp in (
        Checkpoint(tag="w", source="p", model="ols", formula="y ~ x1 + x2", weights="w"),
        Checkpoint(tag="f", source="p", model="fe", formula="y ~ x1 + x2", absorb=["region"]),
    ):
        d = build_design(df, cp)
        A = _operator(d, cp)
        at = [d.terms.index("x2"), d.terms.index("x1")]
        np.testing.assert_allclose(A.rows_t(at), A.dense()[at].T, rtol=1e-10, atol=1e-14)
    c = {
        "tag": "o",
        "source": "p",
        "model": "ols",
        "formula": "y ~ x1 + x2",
        "vcov": "HC1",
        "outcome": "y",
        "columns": ["y", "x1", "x2"],
        "status": "released",
        "terms": [
            {"term": "x1", "beta": 0.4, "se": 0.03},
            {"term": "x2", "beta": -0.2, "se": 0.04},
        ],
    }
    designs = _Designs()
    first = _stacked(df, [c], designs)
    df["y"] = df["y"] + 0.5 * df["x1"]
    again = _stacked(df, [c], designs)
    fresh = _stacked(df, [c], _Designs())
    assert first is not None and again is not None and fresh is not None
    assert again[0] is first[0]
    np.testing.assert_allclose(again[0], fresh[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(again[1], fresh[1], rtol=1e-12, atol=1e-12)
    assert not np.allclose(again[1], first[1])
