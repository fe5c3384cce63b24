"""The linear pin inside the outcome's released support: no values beyond the released bounds
or of the wrong sign, exact zeros kept, integer outcomes kept integer, the missing pattern of
the draw kept, the released marginal kept close; checkpoints exact (integer: within the
stated tolerance). Each property is also shown to fail under the unbounded pin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import capture_released, refit_terms, release_of
from hypothesis import given, settings
from hypothesis import strategies as st

from replisynth.config.manifest import Checkpoint, load_manifest
from replisynth.pin.pin import pin_checkpoints
from replisynth.pin.support import (
    INTEGER_TOL,
    bounded_min_norm,
    out_of_support,
    repair_gap,
    round_to_lattice,
    support_of,
)
from replisynth.verify.verify import ks_test

OUT_OF_SUPPORT = 0.005  # the goal: at most 0.5% of rows outside the released support


def _people(n: int, seed: int, names: dict[str, str], slope: float) -> pd.DataFrame:
    """Survey-like rows: earnings with ~30% structural zeros (the non-employed), positive
    income, a 0-100 rate, an integer birth weight, hours missing when not employed (and for
    ~8% of the employed). `slope` scales every outcome's dependence on educ (a draw with
    another slope needs a real pin)."""
    r = np.random.default_rng(seed)
    educ = np.clip(np.round(12 + 2.5 * r.normal(size=n)), 6, 20)
    age = r.integers(20, 65, size=n).astype(float)
    female = r.binomial(1, 0.5, n)
    emp = (r.normal(size=n) + 0.2 * (educ - 12) + 0.5 > 0).astype(int)
    e = educ - 12
    earn = np.where(emp == 1, np.exp(9 + slope * 0.08 * e - 0.2 * female + r.normal(0, 0.7, n)), 0)
    hours = np.where(
        emp == 1, np.round(np.clip(36 + slope * e - 4 * female + r.normal(0, 8, n), 5, 80)), np.nan
    )
    hours[(emp == 1) & (r.random(n) < 0.08)] = np.nan
    income = np.exp(9.5 + slope * 0.06 * e + r.normal(0, 0.8, n))
    rate = np.clip(50 + slope * 4 * e + r.normal(0, 25, n), 0, 100)
    bw = np.round(3300 + slope * 40 * e - 50 * female + r.normal(0, 500, n)).astype(int)
    cols = {
        "pid": np.arange(1, n + 1),
        "educ": educ,
        "age": age,
        "female": female,
        "employed": emp,
        names["earn"]: earn,
        names["hours"]: hours,
        names["income"]: income,
        names["rate"]: rate,
        names["bw"]: bw,
    }
    return pd.DataFrame(cols)


CASES = [
    (
        1500,
        3,
        {"earn": "earn", "hours": "hours", "income": "income", "rate": "rate", "bw": "bwght"},
    ),
    (
        6000,
        11,
        {"earn": "labinc", "hours": "hrs", "income": "hhinc", "rate": "pass_rate", "bw": "bw_g"},
    ),
]


@pytest.fixture(scope="module", params=CASES, ids=[f"n{c[0]}" for c in CASES])
def case(request: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    n, seed, names = request.param
    orig = _people(n, seed, names, slope=1.0)
    release, data, _ = release_of(orig, tmp_path_factory.mktemp("sup"))
    manifest = load_manifest(
        {
            "name": "t",
            "seed": 1,
            "sources": {"people": {"path": "x.csv"}},
            "checkpoints": [],
            "verify": {"tier": 0},
        }
    )
    cps = [
        Checkpoint(
            tag=f"cp_{k}",
            source="people",
            model="ols",
            vcov=v,
            formula=f"{names[k]} ~ educ + age + female",
        )
        for k, v in [
            ("earn", "HC1"),
            ("hours", "nonrobust"),
            ("income", "HC3"),
            ("rate", "nonrobust"),
            ("bw", "HC1"),
        ]
    ]
    rels = capture_released(data, manifest, *cps)
    draw = _people(n, seed + 100, names, slope=0.4)  # the synthetic draw: a weaker relation
    old, _ = pin_checkpoints({"people": draw}, rels, seed=5)
    new, res = pin_checkpoints({"people": draw}, rels, seed=5, releases={"people": release})
    return {
        "names": names,
        "release": release,
        "rels": rels,
        "draw": draw,
        "old": old["people"],
        "new": new["people"],
        "results": res,
    }


def _share_out(df: pd.DataFrame, col: str, release: dict[str, Any]) -> float:
    sup = support_of(release, col)
    assert sup is not None
    return float(out_of_support(pd.to_numeric(df[col]).to_numpy(dtype="float64"), sup).mean())


@pytest.mark.parametrize("key", ["earn", "income", "rate", "hours", "bw"])
def test_pinned_outcome_stays_in_the_released_support(case: dict[str, Any], key: str) -> None:
    col = case["names"][key]
    assert _share_out(case["new"], col, case["release"]) <= OUT_OF_SUPPORT
    if key in ("earn", "bw", "hours"):  # the unbounded pin: negatives, or decimals
        assert _share_out(case["old"], col, case["release"]) > 10 * OUT_OF_SUPPORT


def test_structural_zeros_stay_zero_and_nothing_turns_negative(case: dict[str, Any]) -> None:
    col = case["names"]["earn"]
    zero = case["draw"][col] == 0
    assert zero.mean() > 0.2
    assert (case["new"].loc[zero, col] == 0).all()
    assert (case["new"][col] >= 0).all()
    assert (case["old"][col] < 0).mean() > 0.1  # the unbounded pin spread the zeros
    assert (case["old"].loc[zero, col] == 0).mean() < 0.01


def test_checkpoints_exact_and_integers_within_the_stated_tolerance(case: dict[str, Any]) -> None:
    integer = {case["names"]["bw"], case["names"]["hours"]}
    for rel in case["rels"]:
        worst = max(z for _, z, _ in refit_terms(case["new"], rel))
        assert worst <= (INTEGER_TOL if rel["outcome"] in integer else 1e-6), (rel["tag"], worst)
    assert all(r.status == "pinned" for r in case["results"])
    for r in case["results"]:  # what the pin report carries: aggregates, nothing row-level
        sup = r.detail["support"]
        assert sup["outside_after"] <= OUT_OF_SUPPORT * len(case["draw"])
        assert set(sup) >= {"outside_before", "mass_rows", "integer_gap_se"}
        assert sup["integer"] == (r.outcome in integer)
        if r.outcome in integer:
            assert sup["integer_gap_se"] <= INTEGER_TOL


def test_integer_outcomes_stay_integer(case: dict[str, Any]) -> None:
    bw, hrs = case["names"]["bw"], case["names"]["hours"]
    assert case["new"][bw].dtype == np.int64  # released logical type integer
    assert case["old"][bw].dtype == np.float64
    assert (case["old"][bw] % 1 != 0).mean() > 0.9
    h = case["new"][hrs].dropna()
    assert (h == np.round(h)).all()
    assert h.between(support_of(case["release"], hrs).lo, support_of(case["release"], hrs).hi).all()


def test_missing_pattern_of_the_draw_is_kept(case: dict[str, Any]) -> None:
    hrs = case["names"]["hours"]
    np.testing.assert_array_equal(case["new"][hrs].isna(), case["draw"][hrs].isna())
    off = case["draw"]["employed"] == 0
    assert case["new"].loc[off, hrs].isna().all()


@pytest.mark.parametrize("key", ["earn", "hours", "bw"])
def test_marginal_stays_close_to_the_release(case: dict[str, Any], key: str) -> None:
    col = case["names"][key]
    grid = np.asarray(case["release"]["blocks"]["all"]["marginals"][col]["grid"])
    integer = support_of(case["release"], col).lattice is not None

    def ks(df: pd.DataFrame) -> float:  # tier 1's statistic against the released grid
        v = pd.to_numeric(df[col]).to_numpy(dtype="float64")
        return ks_test(v[~np.isnan(v)], [(1.0, grid)], integer)[0]

    assert ks(case["new"]) <= max(ks(case["old"]), 0.05) + 1e-12
    if key == "earn":
        assert ks(case["old"]) > 0.2 > ks(case["new"]) * 2


def test_unchanged_rows_outside_the_samples(case: dict[str, Any]) -> None:
    rest = [c for c in case["draw"].columns if c not in {r["outcome"] for r in case["rels"]}]
    pd.testing.assert_frame_equal(case["new"][rest], case["draw"][rest])


# --- the array steps ------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(200, 3000), k=st.integers(1, 4))
def test_bounded_min_norm_meets_constraints_inside_the_box(seed: int, n: int, k: int) -> None:
    r = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), r.normal(size=(n, k - 1))]) if k > 1 else np.ones((n, 1))
    V = X @ np.linalg.inv(X.T @ X)  # A' of OLS
    z = r.uniform(0, 10, n)
    D = V.T @ r.uniform(-0.3, 0.3, n) * 5  # reachable by moves well inside the box
    free = r.random(n) > 0.2
    delta, ok = bounded_min_norm(V, D, z, free, 0.0, 10.0)
    assert ok
    np.testing.assert_allclose(V.T @ delta, D, atol=1e-9 * max(1.0, np.abs(D).max()))
    assert np.all(z + delta >= 0.0) and np.all(z + delta <= 10.0)
    assert np.all(delta[~free] == 0.0)


def test_bounded_min_norm_at_scale_and_reports_infeasible() -> None:
    r = np.random.default_rng(50_000)
    n = 50_000
    X = np.column_stack([np.ones(n), r.normal(size=n), r.normal(size=n)])
    V = X @ np.linalg.inv(X.T @ X)
    z = r.uniform(0, 1, n)
    delta, ok = bounded_min_norm(V, V.T @ (0.1 * X[:, 1]), z, np.ones(n, bool), 0.0, 1.0)
    assert ok and (z + delta).min() >= 0 and (z + delta).max() <= 1
    # a mean of 2 on values in [0, 1] is out of reach
    _, ok = bounded_min_norm(V, V.T @ np.full(n, 2.0), z, np.ones(n, bool), 0.0, 1.0)
    assert not ok


def test_rounding_is_unbiased_and_repair_closes_the_gap() -> None:
    r = np.random.default_rng(8)
    n = 4000
    X = np.column_stack([np.ones(n), r.normal(size=n)])
    se = 0.5 / np.sqrt(n)
    V = X @ np.linalg.inv(X.T @ X) / se  # constraints in units of an LPM-like SE
    y = r.uniform(0, 1, n)
    lattice = np.array([0.0, 1.0])
    yr = round_to_lattice(y, np.arange(n), lattice, r)
    assert set(np.unique(yr)) <= {0.0, 1.0}
    gap = -V.T @ (yr - y)
    assert np.max(np.abs(gap)) > 0.1  # plain rounding misses by a visible share of an SE
    fixed, rest = repair_gap(yr, np.arange(n), V, gap, lattice)
    assert set(np.unique(fixed)) <= {0.0, 1.0}
    assert np.max(np.abs(rest)) <= 0.01
    np.testing.assert_allclose(V.T @ (fixed - y), -rest, atol=1e-9)


def test_support_of_reads_bounds_mass_points_and_lattice(tmp_path: Path) -> None:
    r = np.random.default_rng(2)
    n = 3000
    df = pd.DataFrame(
        {
            "pid": np.arange(n),
            "wealth": np.where(r.random(n) < 0.3, 0.0, r.lognormal(10, 1, n)),
            "score": r.integers(0, 13, n),
            "grade": r.normal(50, 10, n),
        }
    )
    release, _, _ = release_of(df, tmp_path, continuous=["score"])
    w = support_of(release, "wealth")
    assert w is not None and w.lo == 0.0 and w.mass == (0.0,) and w.lattice is None
    s = support_of(release, "score")
    assert s is not None and s.lattice is not None and s.integer_dtype
    assert s.lo >= 0 and s.hi <= 12 and np.all(s.lattice == np.round(s.lattice))
    g = support_of(release, "grade")
    assert g is not None and g.mass == () and g.lo < 30 < 70 < g.hi
    assert support_of(release, "nope") is None


def _zeros_panel(entities: int, periods: int, seed: int, slope: float) -> pd.DataFrame:
    """A panel: x varies within entities; y >= 0 with ~30% exact zeros, y = exp(slope x +
    entity effect + noise) otherwise."""
    r = np.random.default_rng(seed)
    n = entities * periods
    ent = np.repeat(np.arange(entities), periods)
    x = r.normal(size=n) + r.normal(size=entities)[ent]
    y = np.exp(1 + slope * x + r.normal(0, 0.5, entities)[ent] + r.normal(0, 0.6, n))
    y[r.random(n) < 0.3] = 0.0
    return pd.DataFrame(
        {"pid": np.arange(1, n + 1), "ent": ent, "yr": np.tile(np.arange(periods), entities),
         "x": x, "z": r.normal(size=n), "spend": y}
    )  # fmt: skip


@pytest.mark.parametrize("model", ["fe", "nested"])
def test_fe_and_compromise_pins_keep_support_and_coefficients(model: str, tmp_path: Path) -> None:
    orig = _zeros_panel(300, 5, 21, slope=0.4)
    release, data, _ = release_of(orig, tmp_path)
    manifest = load_manifest(
        {"name": "t", "seed": 1, "sources": {"people": {"path": "x.csv"}}, "checkpoints": [],
         "verify": {"tier": 0}}
    )  # fmt: skip
    if model == "fe":
        cps = [Checkpoint(tag="fe", source="people", model="fe", formula="spend ~ 0 + x + z",
                          entity="ent", vcov="cluster:ent")]  # fmt: skip
    else:  # nested on one sample: inconsistent, a least-squares compromise
        cps = [Checkpoint(tag=t, source="people", model="ols", formula=f)
               for t, f in [("short", "spend ~ x"), ("long", "spend ~ x + z")]]  # fmt: skip
    rels = capture_released(data, manifest, *cps)
    draw = _zeros_panel(300, 5, 22, slope=0.1)
    old, res_old = pin_checkpoints({"people": draw}, rels, seed=2)
    new, res_new = pin_checkpoints({"people": draw}, rels, seed=2, releases={"people": release})
    assert [r.status for r in res_new] == [r.status for r in res_old]
    assert res_new[0].status == ("pinned" if model == "fe" else "approximate")
    y_old, y_new = old["people"]["spend"], new["people"]["spend"]
    assert (y_old < 0).mean() > 0.05  # the unbounded pin leaves the support
    assert _share_out(new["people"], "spend", release) <= OUT_OF_SUPPORT
    zero = draw["spend"] == 0
    assert (y_new[zero] == 0).all()
    for rel in rels:  # exact pins stay exact; a compromise keeps its coefficients
        a = np.array([b for b, _, _ in _betas(old["people"], rel)])
        b = np.array([b for b, _, _ in _betas(new["people"], rel)])
        se = np.array([s for _, s, _ in _betas(old["people"], rel)])
        assert np.max(np.abs(a - b) / se) <= 1e-6, rel["tag"]


def _betas(df: pd.DataFrame, rel: dict[str, Any]) -> list[tuple[float, float, str]]:
    from replisynth.config.manifest import checkpoint_from_release
    from replisynth.fit.estimators import fit_checkpoint
    from replisynth.stats.design import build_design

    cp = checkpoint_from_release(rel)
    fit = fit_checkpoint(build_design(df, cp), cp)
    pos = {t: j for j, t in enumerate(fit.terms)}
    return [
        (float(fit.beta[pos[t["term"]]]), float(t["se"]), t["term"])
        for t in rel["terms"]
        if not t.get("suppressed")
    ]


def _hurdle_frame(n: int, seed: int, y: str, slope: float) -> pd.DataFrame:
    """A ratio-like outcome `y`: zero for about 65% of rows (fewer at high x), else exponential
    with many values near zero, its mean rising with x by `slope`."""
    r = np.random.default_rng(seed)
    x, w = r.normal(size=n), r.normal(size=n)
    pos = r.random(n) < 1 / (1 + np.exp(0.7 - 0.4 * x))
    val = r.exponential(np.exp(0.2 + slope * x + 0.2 * w), n)
    return pd.DataFrame({"x": np.round(x, 3), "w": np.round(w, 3), y: np.where(pos, val, 0.0)})


@pytest.mark.parametrize(("n", "seed", "y"), [(2500, 4, "affairs_rate"), (7000, 9, "spend")])
def test_share_of_exact_zeros_is_the_draws(tmp_path: Path, n: int, seed: int, y: str) -> None:
    """Rows the draw put above a mass point at the lower bound stay above it: clipping them at
    the bound (as the pin did) adds them to the exact zeros, and a logit of `y > 0` moves."""
    orig = _hurdle_frame(n, seed, y, 0.6)
    release, data, _ = release_of(orig, tmp_path)
    manifest = load_manifest(
        {"name": "t", "seed": 1, "sources": {"people": {"path": "x.csv"}}, "checkpoints": []}
    )
    cp = Checkpoint(tag="cp", source="people", model="ols", vcov="HC1", formula=f"{y} ~ x + w")
    rels = capture_released(data, manifest, cp)
    draw = _hurdle_frame(n, seed + 1, y, -0.2)
    old, _ = pin_checkpoints({"people": draw}, rels, seed=5)
    new, res = pin_checkpoints({"people": draw}, rels, seed=5, releases={"people": release})
    before, after = draw[y], new["people"][y]
    pushed = (before > 0) & (old["people"][y] <= 0)  # the pin takes these to or below 0
    assert pushed.mean() > 0.01
    assert (after == 0).sum() == (before == 0).sum()
    assert (after[before > 0] > 0).all()
    assert res[0].detail["support"]["mass_share_kept"], res[0].note
    assert max(z for _, z, _ in refit_terms(new["people"], rels[0])) <= 1e-6


def test_blocked_products_over_selected_rows_equal_the_copied_ones() -> None:
    """The repair's spread step forms V[rows]'V[rows] and V[rows] @ lam by blocks of rows
    (no copy of V[rows] at register scale): the same numbers as the copied products."""
    from replisynth.pin import support

    rng = np.random.default_rng(3)
    V = rng.normal(size=(2 * support.ROW_CHUNK + 123, 5))
    rows = np.flatnonzero(rng.random(len(V)) < 0.7)
    lam = rng.normal(size=5)
    np.testing.assert_allclose(
        support._gram_of_rows(V, rows), V[rows].T @ V[rows], rtol=1e-12, atol=1e-9
    )
    np.testing.assert_allclose(support._rows_times(V, rows, lam), V[rows] @ lam, rtol=1e-12)
