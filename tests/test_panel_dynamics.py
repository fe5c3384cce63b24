"""Time dynamics inside panel entities (replisynth.synthesize.entities): period trends (age = birth
offset + period) and serial persistence (AR(1) within parts): the release, its SDC gate,
synthesis, and that bundles without these keys synthesize exactly as before."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import extract_and_synthesize_twice

from replisynth.config.manifest import load_manifest
from replisynth.core.seeds import rng
from replisynth.io.files import read_json
from replisynth.stats.copula_dims import synthetic_dim_matrix
from replisynth.synthesize.entities import (
    hierarchical_normals,
    period_order,
    period_trend,
    serial_within,
    within_lag1,
)
from replisynth.synthesize.synthesize import synthesize_source
from replisynth.workflow.cli import cmd_extract, cmd_synthesize

G = 300
RHO = 0.7


def ar1(r: np.random.Generator, T: int, rho: float) -> np.ndarray:
    """A stationary unit-variance AR(1) path of length T."""
    v = np.empty(T)
    v[0] = r.standard_normal()
    for t in range(1, T):
        v[t] = rho * v[t - 1] + np.sqrt(1 - rho**2) * r.standard_normal()
    return v


def make_dyn_panel(G: int = G, seed: int = 11, single: int = 0) -> pd.DataFrame:
    """An unbalanced panel of G people, each seen 4, 5 or 6 consecutive years out of 2000-2007
    (equal shares; the last `single` people only once). Period trends (slope 1 exactly in every
    person): age = a0 + (year − 2000), a0 = clip(30 + round(6 a), 18, 45), and
    tenure = e0 + (year − 2000), e0 uniform on 0..4 (integer, at most 20 levels: categorical).
    Persistence: x = √0.5 a' + √0.5 v, v a stationary AR(1) in year order with true ρ = 0.7
    (RHO); its within deviations have lag-1 autocorrelation below 0.7 after demeaning
    (`expected_demeaned_lag1`). Noise: z i.i.d. N(0, 1) (no trend, no persistence).
    Outcome y = 1 + 0.5 x + 0.05 age + u + ε, u ~ N(0, 0.5²) per person, ε ~ N(0, 1)."""
    r = np.random.default_rng(seed)
    a, a2, u = (r.standard_normal(G) for _ in range(3))
    T = r.choice([4, 5, 6], size=G)
    if single:
        T[-single:] = 1
    start = np.asarray([r.integers(2000, 2008 - t + 1) for t in T])
    i = np.repeat(np.arange(G), T)
    year = np.concatenate([np.arange(s, s + t) for s, t in zip(start, T, strict=True)])
    a0 = np.clip(30 + np.round(6 * a), 18, 45).astype(int)
    e0 = r.integers(0, 5, size=G)
    v = np.concatenate([ar1(r, t, RHO) for t in T])
    x = np.sqrt(0.5) * a2[i] + np.sqrt(0.5) * v
    n = len(i)
    age = a0[i] + year - 2000
    y = 1 + 0.5 * x + 0.05 * age + 0.5 * u[i] + r.standard_normal(n)
    return pd.DataFrame(
        {
            "pid": i + 101,
            "year": year,
            "age": age,
            "tenure": e0[i] + year - 2000,
            "x": x,
            "z": r.standard_normal(n),
            "y": y,
        }
    )


def expected_demeaned_lag1(rho: float, sizes: list[int]) -> float:
    """E-ratio of the pooled lag-1 statistic of within-entity deviations of a stationary AR(1)
    (Γ_ts = ρ^|t−s|) in entities of the given sizes (equal shares): with M = I − 11'/T and
    C = MΓM, Σ_T Σ_t C_{t,t−1} / √(Σ_T Σ_{t≥2} C_tt · Σ_T Σ_{t<T} C_tt)."""
    num = d1 = d2 = 0.0
    for T in sizes:
        t = np.arange(T)
        M = np.eye(T) - 1.0 / T
        C = M @ rho ** np.abs(t[:, None] - t[None, :]) @ M
        num += float(np.trace(C, offset=1))
        d1 += float(np.diag(C)[1:].sum())
        d2 += float(np.diag(C)[:-1].sum())
    return num / np.sqrt(d1 * d2)


def manifest(path: Path, min_cell: int = 50) -> dict[str, Any]:
    return {
        "name": "dyn",
        "seed": 23,
        "sources": {
            "p": {
                "path": str(path),
                "ids": [],
                "panel": {"entity": "pid", "time": "year"},
                "continuous": ["age", "x", "z", "y"],
            }
        },
        "sdc": {"min_cell_size": min_cell},
        "checkpoints": [
            {
                "tag": "fe_y",
                "source": "p",
                "model": "fe",
                "formula": "y ~ x + tenure",
                "entity": "pid",
                "time": "year",
                "vcov": "cluster:pid",
            },
        ],
        "verify": {"tier": 4},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return extract_and_synthesize_twice(tmp_path_factory.mktemp("dyn"), make_dyn_panel(), manifest)


def lag1_by_column(df: pd.DataFrame, release: dict[str, Any]) -> dict[str, float]:
    """The released statistic (`within_lag1`) computed on `df`, by column name."""
    X = synthetic_dim_matrix(df, release)
    r, _ = within_lag1(X, pd.factorize(df["pid"])[0], df["year"].to_numpy(dtype="float64"))
    return {
        d["column"]: float(v)
        for d, v in zip(release["dims"], r, strict=True)
        if d["kind"] != "missing"
    }


def test_trend_released_for_age_like_columns_and_not_for_noise(run: dict[str, Any]) -> None:
    es = run["release"]["entity_structure"]
    assert es["period_trend"] == {
        "age": {"slope": 1.0, "share": 1.0},
        "tenure": {"slope": 1.0, "share": 1.0},
    }
    log = json.loads((run["bundle"] / "sdc_log.json").read_text())["decisions"]
    trend_log = [
        e["column"] for e in log if e["stage"] == "entities" and "period trend" in e["reason"]
    ]
    assert trend_log == ["age", "tenure"]
    # noise, persistence and the outcome have no trend (share far below TREND_SHARE)
    codes = pd.factorize(run["orig"]["pid"])[0]
    t = run["orig"]["year"].to_numpy(dtype="float64")
    for c in ("x", "z", "y"):
        assert period_trend(run["orig"][c].to_numpy(dtype="float64"), t, codes)[1] < 0.05, c


def test_synthetic_trend_columns_follow_the_identity_in_every_entity(run: dict[str, Any]) -> None:
    syn = run["syn"]
    # age: continuous (integer), offsets solved on the integers of the released range; the
    # identity holds in every entity whose path stays inside it (beyond, values are coded to
    # the ends, as top/bottom coding at the released percentiles codes the original)
    grid = run["release"]["blocks"]["all"]["marginals"]["age"]["grid"]
    g_age = syn.groupby("pid")["age"]
    # the range of an integer column's synthetic values: its released grid's ends, rounded
    inner_age = (g_age.min() > np.round(grid[0])) & (g_age.max() < np.round(grid[-1]))
    diff_age = syn.groupby("pid").apply(
        lambda g: (g["age"] - g["year"]).nunique(), include_groups=False
    )
    assert inner_age.mean() > 0.8 and (diff_age[inner_age] == 1).all()
    # tenure: 12 integer values whose top ones are rare, so released as continuous (the spread
    # rule applies to panels); the identity holds wherever no value sits on a released end
    # (values beyond are coded to the end, as top coding coded the original)
    levels = sorted(run["orig"]["tenure"].unique())
    m = run["release"]["blocks"]["all"]["marginals"]["tenure"]
    assert m["kind"] == "continuous"
    lo, hi = m["grid"][0], m["grid"][-1]
    g_ten = syn.groupby("pid")["tenure"]
    inner = (g_ten.min() > lo) & (g_ten.max() < hi)
    diff = syn.groupby("pid").apply(
        lambda g: (g["tenure"] - g["year"]).nunique(), include_groups=False
    )
    assert inner.mean() > 0.3 and (diff[inner] == 1).all()
    assert levels  # the original has values at every level
    tiers = json.loads((run["root"] / "one" / "dyn" / "verify" / "tiers.json").read_text())
    assert tiers["sources"]["p"]["marginals"]["passed"], tiers["sources"]["p"]["marginals"][
        "problems"
    ]
    assert tiers["tier_met"] == 4, json.dumps(tiers["sources"]["p"])[:2000]


def test_lag1_release_recovers_the_true_rho_and_synthesis_keeps_it(run: dict[str, Any]) -> None:
    """x's within part is AR(1) with ρ = 0.7: the released statistic is its demeaned lag-1
    autocorrelation (about 0.26 in entities of 4-6 periods), z's the value of no persistence
    (about −0.23); the synthetic data reproduce both."""
    rel = run["release"]
    by_col = {
        d["column"]: v
        for d, v in zip(rel["dims"], rel["entity_structure"]["within_lag1"], strict=True)
    }
    want_x, want_z = expected_demeaned_lag1(RHO, [4, 5, 6]), expected_demeaned_lag1(0.0, [4, 5, 6])
    assert abs(by_col["x"] - want_x) < 0.06, (by_col["x"], want_x)
    assert abs(by_col["z"] - want_z) < 0.06, (by_col["z"], want_z)
    assert by_col["age"] is None and by_col["year"] is None  # trend and time columns: not released
    got = lag1_by_column(run["syn"], rel)
    for c in ("x", "z"):
        assert abs(got[c] - by_col[c]) < 0.05, (c, got[c], by_col[c])


def test_reruns_are_byte_identical(run: dict[str, Any]) -> None:
    assert run["one"].read_bytes() == run["two"].read_bytes()


def old_release(release: dict[str, Any]) -> dict[str, Any]:
    rel = json.loads(json.dumps(release))
    for k in ("period_trend", "within_lag1"):
        rel["entity_structure"].pop(k, None)
    return rel


def test_bundles_without_dynamics_take_the_old_path(
    run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle written before time dynamics existed (no `period_trend`, `within_lag1`) never
    reaches the new steps, so it synthesizes as the code before them did (checked once by
    hash against acb3e4a when the steps were added; later deliberate changes to refinement
    move both alike)."""
    import replisynth.synthesize.entities as entities

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("time-dynamics step reached without its release keys")

    monkeypatch.setattr(entities, "serial_within", boom)
    monkeypatch.setattr(entities, "trend_offsets", boom)
    df = synthesize_source(old_release(run["release"]), 23)
    again = synthesize_source(old_release(run["release"]), 23)
    assert (
        hashlib.sha256(df.to_csv(index=False).encode()).hexdigest()
        == hashlib.sha256(again.to_csv(index=False).encode()).hexdigest()
    )
    # and without the keys the trend is not imposed
    assert (
        df.groupby("pid")
        .apply(lambda g: (g["age"] - g["year"]).nunique(), include_groups=False)
        .max()
        > 1
    )


def test_dynamics_gated_on_entities_with_two_or_more_periods(tmp_path: Path) -> None:
    # 80 people (entity structure released), 50 of them seen once: 30 < 50 with 2+ periods
    make_dyn_panel(G=80, single=50).to_csv(tmp_path / "p.csv", index=False)
    bundle = cmd_extract(load_manifest(manifest(tmp_path / "p.csv")), tmp_path / "ext")
    es = read_json(bundle / "source_p.json")["entity_structure"]
    assert es["period_trend"] == {} and "within_lag1" not in es
    log = json.loads((bundle / "sdc_log.json").read_text())["decisions"]
    sup = [e for e in log if e["stage"] == "entities" and e["action"] == "suppressed"]
    assert {e["column"] for e in sup if "period trend" in e["reason"]} == {"age", "tenure"}
    assert any("lag-1" in e["reason"] for e in sup)
    syn = pd.read_parquet(cmd_synthesize(bundle, tmp_path / "out")["p"])
    assert len(syn) == len(make_dyn_panel(G=80, single=50))


def test_serial_within_keeps_the_correlation_and_between_shares_exactly() -> None:
    sizes = np.asarray([4, 5, 6, 8] * 60)
    ent = np.repeat(np.arange(len(sizes)), sizes)
    R = np.asarray([[1.0, 0.3, 0.2], [0.3, 1.0, -0.1], [0.2, -0.1, 1.0]])
    eta = np.asarray([0.0, 0.5, 0.3])  # dim 0 plays the period
    Z = hierarchical_normals(R, eta, np.eye(3), ent, rng(1, "h"))
    order = period_order(ent, Z[:, 0])
    target = np.asarray([np.nan, 0.3, 0.1])
    Z2 = serial_within(Z, ent, order, target, None, rng(1, "s"))
    np.testing.assert_allclose(np.corrcoef(Z2.T), np.corrcoef(Z.T), atol=1e-8)
    m = pd.DataFrame(Z2).groupby(ent).transform("mean").to_numpy()
    m0 = pd.DataFrame(Z).groupby(ent).transform("mean").to_numpy()
    np.testing.assert_allclose(m, m0, atol=1e-10)  # entity parts untouched
    from replisynth.synthesize.entities import lag1_stat

    got = lag1_stat(Z2[:, 1:], ent, order)
    assert np.all(np.abs(got - target[1:]) < 0.01), got
    assert np.array_equal(period_order(ent, Z2[:, 0]), order)  # period order unchanged


def test_trend_dims_take_the_period_within_part() -> None:
    """A trend dim tied to the time dim: its within part is the period's (sign of the slope,
    scaled to its within variance 1 − η), so within entities the two are perfectly
    correlated, and a third dim keeps its within correlation with the period instead of
    losing most of its within variance to the exper − year direction (without the tie, the
    third dim's correlations 0.73 / 0.75 with two dims correlated 0.999 leave it little)."""
    r = rng(3, "ties")
    G, T = 400, 6
    ent = np.repeat(np.arange(G), T)
    eta = np.array([0.0, 0.4, 0.5])  # period, trend, married-like
    R = np.array([[1.0, 0.77, 0.55], [0.77, 1.0, 0.57], [0.55, 0.57, 1.0]])
    Rb = np.eye(3)
    Rb[1, 2] = Rb[2, 1] = 0.3
    Z = hierarchical_normals(R, eta, Rb, ent, r, {1: (0, 1.0)})
    m = pd.DataFrame(Z).groupby(ent).transform("mean").to_numpy()
    W = Z - m
    c = np.corrcoef(W.T)
    assert c[0, 1] > 0.999999
    assert np.isclose(W[:, 1].var() / W[:, 0].var(), (1 - 0.4) / (1 - 0.0), rtol=1e-9)
    # the third dim keeps exactly its within correlation with the period, (R − B)_02 / √(W_00 W_22),
    # so its variance left after the period and the trend is 1 − that² (0.39), not a sliver
    beta = np.linalg.lstsq(W[:, [0, 1]], W[:, 2], rcond=None)[0]
    resid = W[:, 2] - W[:, [0, 1]] @ beta
    wc = R[0, 2] / np.sqrt((1 - eta[0]) * (1 - eta[2]))
    assert np.isclose(resid.var() / W[:, 2].var(), 1 - wc**2, atol=1e-9)


def test_offset_program_without_exact_counts_stops_within_its_node_budget() -> None:
    """Released level counts the period sets cannot reach (counts scaled to another size):
    the program stops at its node limit (smaller for larger programs) and still returns
    offsets for every entity, each class keeping its size, on the level lattice."""
    from replisynth.synthesize import entities

    assert entities.trend_node_limit(100) == 2_000 and entities.trend_node_limit(818) == 244
    assert entities.trend_node_limit(10) == 20_000 and entities.trend_node_limit(10**6) == 200
    r = np.random.default_rng(7)
    sets = [(0.0, 1.0, 2.0), (1.0, 2.0), (0.0, 2.0, 3.0, 4.0)]
    cls = r.integers(0, 3, 400)
    natural = r.normal(10.0, 3.0, 400)
    levels = np.arange(0.0, 21.0)
    counts = np.full(len(levels), 37)  # 777 level-rows, not what 400 entities' periods give
    off = entities.trend_offsets(natural, sets, cls, 1.0, levels, counts)
    assert off is not None and len(off) == 400
    lattice = np.unique((levels[:, None] - np.arange(5.0)[None, :]).ravel())
    assert np.isin(np.round(off, 9), lattice).all()
