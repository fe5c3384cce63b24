"""Cross-moments of checkpoint regressors: the release (secure side) and the alignment of the
synthetic regressors before pinning (nested specifications, standard-error fidelity)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import refit_terms

from replisynth.config.manifest import Checkpoint, load_manifest
from replisynth.core.seeds import rng
from replisynth.disclosure.bundle import load_bundle
from replisynth.extract.checkpoints import capture_checkpoint, design_moments
from replisynth.pin.design_moments import align_moments
from replisynth.pin.pin import pin_checkpoints
from replisynth.stats.design import build_design
from replisynth.verify.verify import verify
from replisynth.workflow.cli import cmd_extract
from replisynth.workflow.pipeline import stage_synthesize


def make_nested(n: int = 3000, seed: int = 5) -> pd.DataFrame:
    """Nested-OLS data whose regressors a Gaussian copula gets slightly wrong. True model:
    y = 1 + 0.5 x1 + 0.8 x2 + (0, 0.4, -0.3 for f = a, b, c) + N(0, 1); x1 ~ N(0, 1);
    f in a/b/c by a multinomial logit with utilities (0, 1.2 x1 − 0.3, −1.2 x1 − 0.3);
    x2 = 0.4 x1 + 0.9 x1 [f == b] − 0.6 [f == c] + N(0, 0.6²) (a slope that differs by
    category: not a Gaussian dependence); z ~ N(0, 1) independent (a bystander column)."""
    r = np.random.default_rng(seed)
    x1 = r.normal(size=n)
    u = np.column_stack([np.zeros(n), 1.2 * x1 - 0.3, -1.2 * x1 - 0.3]) + r.gumbel(size=(n, 3))
    f = np.asarray(["a", "b", "c"])[u.argmax(axis=1)]
    x2 = 0.4 * x1 + 0.9 * (f == "b") * x1 - 0.6 * (f == "c") + r.normal(scale=0.6, size=n)
    y = (
        1
        + 0.5 * x1
        + 0.8 * x2
        + pd.Series(f).map({"a": 0.0, "b": 0.4, "c": -0.3}).to_numpy()
        + r.normal(size=n)
    )
    return pd.DataFrame(
        {"pid": np.arange(1, n + 1), "y": y, "x1": x1, "x2": x2, "f": f, "z": r.normal(size=n)}
    )


NESTED = [
    {"tag": "short", "source": "d", "model": "ols", "formula": "y ~ x1", "vcov": "nonrobust"},
    {"tag": "long", "source": "d", "model": "ols", "formula": "y ~ x1 + x2 + C(f)", "vcov": "HC1"},
]


def _text(s: pd.Series) -> np.ndarray:
    """The values of a column as sorted text (missing as 'NA'): equal multisets compare equal."""
    return np.sort(s.astype(object).fillna("NA").astype(str).to_numpy())


def _max_gaps(df: pd.DataFrame, cps: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Per checkpoint: (max |Δβ|/SE_synthetic, max |Δβ|/SE_target) over released terms."""
    out = {}
    for c in cps:
        terms = refit_terms(df, c)
        out[c["tag"]] = (max(t[0] for t in terms), max(t[1] for t in terms))
    return out


@pytest.fixture(scope="module")
def nested_run(tmp_path_factory) -> dict[str, Any]:
    """Extract and synthesize (Layers 1-3) the nested data; the unpinned synthetic frame."""
    tmp = tmp_path_factory.mktemp("nested")
    make_nested().to_csv(tmp / "d.csv", index=False)
    raw = {
        "name": "nested",
        "seed": 11,
        "sources": {"d": {"path": str(tmp / "d.csv"), "ids": ["pid"]}},
        "checkpoints": NESTED,
        "verify": {"tier": 4},
    }
    bundle = cmd_extract(load_manifest(raw), tmp / "out")
    stage_synthesize(bundle, "d", tmp / "unpinned.parquet")
    return {
        "bundle": load_bundle(bundle),
        "unpinned": pd.read_parquet(tmp / "unpinned.parquet"),
        "dir": bundle,
    }


def test_nested_specifications_pin_jointly_after_alignment(nested_run: dict[str, Any]) -> None:
    b, syn = nested_run["bundle"], nested_run["unpinned"]
    release = b.releases["d"]
    cps = b.checkpoints
    assert all("moments" in c for c in cps)
    aligned, rep = align_moments(syn, cps, release, rng(b.manifest.seed, "d", "xmom"))
    # only regressors moved; every column keeps its values (marginals exact), y is untouched
    assert rep["moved"] == ["f", "x1", "x2"]
    for col in syn.columns:
        np.testing.assert_array_equal(_text(aligned[col]), _text(syn[col]))
    pd.testing.assert_series_equal(aligned["y"], syn["y"])
    pd.testing.assert_series_equal(aligned["z"], syn["z"])
    gaps = rep["checkpoints"]["long"]
    assert gaps["after"]["max_corr_gap"] < 0.2 * gaps["before"]["max_corr_gap"]

    plain, _ = pin_checkpoints({"d": syn}, cps)
    pinned, _ = pin_checkpoints({"d": aligned}, cps)
    before = _max_gaps(plain["d"], cps)
    after = _max_gaps(pinned["d"], cps)
    worst_before = max(max(v) for v in before.values())
    worst_after = max(max(v) for v in after.values())
    assert worst_after < 0.1, after
    assert worst_before > 3 * worst_after, (before, after)
    tiers = verify(b, pinned, None)
    assert all(tiers["checkpoints"][c["tag"]]["passed"] for c in cps)
    # tiers 2 (and 3, no strata) still hold after the alignment
    assert tiers["sources"]["d"]["correlations"]["passed"], tiers["sources"]["d"]["correlations"]
    assert tiers["sources"]["d"]["tier_met"] == 4


def test_alignment_is_seeded_and_reproducible(nested_run: dict[str, Any]) -> None:
    b, syn = nested_run["bundle"], nested_run["unpinned"]
    one, _ = align_moments(syn, b.checkpoints, b.releases["d"], rng(b.manifest.seed, "d", "xmom"))
    two, _ = align_moments(syn, b.checkpoints, b.releases["d"], rng(b.manifest.seed, "d", "xmom"))
    pd.testing.assert_frame_equal(one, two)


def test_moments_release_holds_aggregates_only(nested_run: dict[str, Any]) -> None:
    text = json.dumps([c["moments"] for c in nested_run["bundle"].checkpoints])
    original = make_nested()
    for v in original["x1"].to_numpy()[:50]:
        assert repr(float(v)) not in text
    mo = nested_run["bundle"].checkpoints[1]["moments"]
    assert mo["terms"] == ["x1", "x2", "C(f)[T.b]", "C(f)[T.c]"]
    k = len(mo["terms"])
    assert len(mo["mean"]) == len(mo["sd"]) == k and np.shape(mo["corr"]) == (k, k)
    log = json.loads((nested_run["dir"] / "sdc_log.json").read_text())
    entries = [e for e in log["decisions"] if e.get("action") == "released_moments"]
    assert {e["checkpoint"] for e in entries} == {"short", "long"}


def _cp(formula: str, weights: str | None = None) -> Checkpoint:
    return Checkpoint(
        tag="m", source="people", model="ols", formula=formula, vcov="nonrobust", weights=weights
    )


def test_design_moments_match_a_direct_computation() -> None:
    from conftest import make_people

    df = make_people(1500, seed=3)
    cp = _cp("y ~ x1 + I(x1**2) + x1:female + C(region)", weights="w")
    d = build_design(df, cp)
    mo, info = design_moments(d.X, d.terms, d.weights, set(d.terms) - {"Intercept"}, 50)
    assert mo is not None and info["columns"] == len(d.terms) - 1 and mo["weighted"]
    j = d.terms.index("I(x1 ** 2)")
    w = d.weights
    x = d.X[:, j]
    m = np.average(x, weights=w)
    assert mo["mean"][mo["terms"].index("I(x1 ** 2)")] == pytest.approx(m, rel=1e-12)
    assert mo["sd"][mo["terms"].index("I(x1 ** 2)")] == pytest.approx(
        np.sqrt(np.average((x - m) ** 2, weights=w)), rel=1e-12
    )
    k = d.terms.index("x1")
    xk = d.X[:, k]
    mk = np.average(xk, weights=w)
    r = np.average((x - m) * (xk - mk), weights=w) / np.sqrt(
        np.average((x - m) ** 2, weights=w) * np.average((xk - mk) ** 2, weights=w)
    )
    assert mo["corr"][mo["terms"].index("I(x1 ** 2)")][mo["terms"].index("x1")] == pytest.approx(
        r, rel=1e-10
    )


def test_design_moments_gates() -> None:
    """Suppressed terms and small indicator groups are left out; indicator pairs with a small
    2x2 cell are blanked; a column whose spread two rows dominate is left out; rounding."""
    r = np.random.default_rng(0)
    n = 400
    a = (r.random(n) < 0.5).astype(float)
    b = np.zeros(n)
    b[:30] = 1.0  # 30 ones: its own group is below 50
    c = a.copy()
    c[a == 1] = (r.random(int(a.sum())) < 0.9).astype(float)  # a & ~c is a small cell
    x = r.normal(size=n)
    out = x.copy()
    out[7] = 1e6  # one row dominates the spread
    X = np.column_stack([np.ones(n), a, b, c, x, out, x * b])
    terms = ["Intercept", "a", "b", "c", "x", "out", "x:b"]
    mo, info = design_moments(X, terms, None, set(terms) - {"x"}, 50, digits=3, dominance=0.85)
    assert mo["terms"] == ["a", "c"]
    assert info == {"columns": 2, "left_out": 3, "blanked": 1}
    assert mo["corr"][0][1] is None and mo["corr"][0][0] == 1.0
    assert all(
        len(f"{v:.10g}".replace("-", "").replace(".", "").lstrip("0")) <= 3
        for v in mo["mean"] + mo["sd"]
    )


def test_design_widens_narrow_integers() -> None:
    """A Stata byte column squared in the formula must not wrap around (12**2 in int8)."""
    df = pd.DataFrame(
        {"y": np.arange(60, dtype=float), "e": np.tile(np.arange(20, dtype="int8"), 3)}
    )
    d = build_design(
        df,
        Checkpoint(tag="e", source="s", model="ols", formula="y ~ e + I(e**2)", vcov="nonrobust"),
    )
    assert d.X[:, d.terms.index("I(e ** 2)")].max() == 361.0


def test_capture_releases_moments_in_the_checkpoint_record() -> None:
    from conftest import make_people, manifest_for

    m = load_manifest(manifest_for(Path("people.csv")))
    rel, log = capture_checkpoint(make_people(800, seed=2), _cp("y ~ x1 + x2 + C(region)"), m, 0)
    assert rel["moments"]["terms"][:2] == ["x1", "x2"]
    assert any(e["action"] == "released_moments" for e in log.entries)


def test_planted_values_do_not_reach_the_moments(tmp_path: Path) -> None:
    """An extreme value and a rare category (see test_leaks) leave no trace in the released
    moments: the dominated column and the rare level's indicator are left out."""
    from test_leaks import _fmt, _planted

    rare, extreme = "ZZPLANTED", 4321987.123
    df = _planted(400, 3, rare, extreme, 777)
    df.loc[5, "y"] = df[
        "y"
    ].median()  # an outcome that inherits the extreme is rejected whole (outcome dominance)
    df.to_csv(tmp_path / "d.csv", index=False)
    raw = {
        "name": "leak",
        "seed": 1,
        "sources": {"d": {"path": str(tmp_path / "d.csv"), "ids": ["pid"]}},
        "sdc": {"min_cell_size": 20},
        "checkpoints": [
            {"tag": "c", "source": "d", "model": "ols", "formula": "y ~ x + C(cat) + stratum"}
        ],
    }
    bundle = cmd_extract(load_manifest(raw), tmp_path / "out")
    (c,) = load_bundle(bundle).checkpoints
    terms = (c.get("moments") or {}).get("terms", [])
    # x holds the extreme; stratum has a code held by 6 rows that its table pools, so an exact
    # mean of it less the table's levels times counts would give that code (release_guards)
    assert "x" not in terms and "stratum" not in terms
    assert not any(rare in t for t in terms)
    text = (bundle / "checkpoints.json").read_text() + (bundle / "sdc_log.json").read_text()
    assert rare not in text
    for s in _fmt(extreme):
        assert s not in text


def test_alignment_keeps_every_stratum_and_missing_position(tmp_path: Path) -> None:
    """With strata, swaps stay inside a stratum: each stratum holds the same values of every
    column after the alignment, and missing values stay on their rows."""
    df = make_nested(2400, seed=8)
    df["g"] = np.where(df["x1"] + np.random.default_rng(1).normal(size=len(df)) > 0, 1, 2)
    df.loc[df.index[::9], "x2"] = np.nan
    df.to_csv(tmp_path / "d.csv", index=False)
    raw = {
        "name": "strat",
        "seed": 3,
        "sources": {"d": {"path": str(tmp_path / "d.csv"), "ids": ["pid"], "strata": ["g"]}},
        "checkpoints": NESTED,
        "verify": {"tier": 4},
    }
    bundle = cmd_extract(load_manifest(raw), tmp_path / "out")
    stage_synthesize(bundle, "d", tmp_path / "u.parquet")
    b, syn = load_bundle(bundle), pd.read_parquet(tmp_path / "u.parquet")
    aligned, rep = align_moments(syn, b.checkpoints, b.releases["d"], rng(3, "d", "xmom"))
    assert rep["status"] == "aligned" and "x2" in rep["moved"] and "g" not in rep["moved"]
    moved = 0
    for col in ["x1", "x2", "f"]:
        for g in (1, 2):
            a, s = aligned.loc[aligned["g"] == g, col], syn.loc[syn["g"] == g, col]
            np.testing.assert_array_equal(_text(a), _text(s))
        moved += int(
            (
                aligned[col].astype(object).fillna("NA").astype(str)
                != syn[col].astype(object).fillna("NA").astype(str)
            ).sum()
        )
    assert moved > 0
    np.testing.assert_array_equal(aligned["x2"].isna().to_numpy(), syn["x2"].isna().to_numpy())
    pinned, _ = pin_checkpoints({"d": aligned}, b.checkpoints)
    tiers = verify(b, pinned, None)
    assert tiers["sources"]["d"]["strata"]["passed"] and tiers["sources"]["d"]["tier_met"] == 4


def test_partial_error_change_equals_the_full_error_change() -> None:
    """A swap batch that touches only the columns tc changes `_Target.error` by exactly the
    change of `part_error` on the rows tc, and `_expand` rebuilds the full S1/S2 changes."""
    from replisynth.pin.design_moments import _expand, _Target

    rng_ = np.random.default_rng(1)
    n, k, K = 500, 6, 7
    X = rng_.normal(size=(n, k)) @ rng_.normal(size=(k, k))
    w = rng_.random(n)
    mean, sd = X.mean(0) + 0.01, X.std(0)
    R = np.corrcoef(X.T) + 0.02
    Rmask = ~np.eye(k, dtype=bool)
    Rmask[0, 3] = Rmask[3, 0] = False  # a blanked pair stays out of the error
    Xs = X - mean
    t = _Target(
        "t",
        None,
        [],
        set(),
        [],
        w,
        float(w.sum()),
        mean,
        sd,
        R,
        Rmask,
        w @ Xs,
        (Xs * w[:, None]).T @ Xs,
    )
    tc = np.array([1, 4])
    old = Xs[:K]
    new = old.copy()
    new[:, tc] = rng_.normal(size=(K, len(tc)))
    full1 = w[:K, None] * (new - old)
    full2 = w[:K, None, None] * (
        new[:, :, None] * new[:, None, :] - old[:, :, None] * old[:, None, :]
    )
    d1, d2 = full1[:, tc], full2[:, tc, :]
    want = t.error(t.S1 + full1, t.S2 + full2) - t.error(t.S1, t.S2)
    got = t.part_error(tc, t.S1[tc] + d1, t.S2[tc] + d2) - t.part_error(tc, t.S1[tc], t.S2[tc])
    assert np.abs(want).max() > 1e-4
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)
    D1, D2 = _expand(k, tc, d1.sum(0), d2.sum(0))
    np.testing.assert_array_equal(D1, full1.sum(0))
    np.testing.assert_array_equal(D2, full2.sum(0))
    # iv: the SE-factor term depends on every correlation, and part_error carries it too
    t.iv = (np.array([0, 1, 2]), np.array([0, 1, 4, 5]), np.array([0.1, -0.2, 0.3]))
    want = t.error(t.S1 + full1, t.S2 + full2) - t.error(t.S1, t.S2)
    got = t.part_error(tc, t.S1[tc] + d1, t.S2[tc] + d2) - t.part_error(tc, t.S1[tc], t.S2[tc])
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# IV checkpoints: moments of the union design [exogenous | endogenous | excluded instruments]

IV_TRUE = {"Intercept": 2.0, "w": 0.5, "g": -0.3, "x": 1.0}


def make_iv(n: int = 3000, seed: int = 21) -> pd.DataFrame:
    """An IV design with a strong first stage. True model: w ~ N(0, 1); g ~ Bernoulli(0.4);
    instrument z = 0.5 w + 0.4 g + N(0, 0.85²); endogenous x = 1 + 0.6 z + 0.4 w + v, v ~ N(0, 1);
    y = 2 + 1.0 x + 0.5 w − 0.3 g + u, u = 0.5 v + N(0, 0.75²) (so x is correlated with u and
    OLS is biased; z is excluded from y). First-stage correlation corr(x, z) ≈ 0.6."""
    r = np.random.default_rng(seed)
    w = r.normal(size=n)
    g = (r.random(n) < 0.4).astype(int)
    z = 0.5 * w + 0.4 * g + r.normal(scale=0.85, size=n)
    v = r.normal(size=n)
    x = 1 + 0.6 * z + 0.4 * w + v
    u = 0.5 * v + r.normal(scale=0.75, size=n)
    y = IV_TRUE["Intercept"] + IV_TRUE["x"] * x + IV_TRUE["w"] * w + IV_TRUE["g"] * g + u
    return pd.DataFrame({"pid": np.arange(1, n + 1), "y": y, "x": x, "z": z, "w": w, "g": g})


IV_CP = [
    {
        "tag": "iv",
        "source": "d",
        "model": "iv",
        "formula": "y ~ w + g + [x ~ z]",
        "vcov": "nonrobust",
    }
]


def _shuffled(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Every column but the id permuted independently: the synthetic regressors start with no
    dependence at all (first stage ≈ 0), so only the alignment can bring it back."""
    r = np.random.default_rng(seed)
    out = df.copy()
    for col in df.columns.drop("pid"):
        out[col] = df[col].to_numpy()[r.permutation(len(df))]
    return out


def _first_stage(df: pd.DataFrame) -> float:
    return float(np.corrcoef(df["x"], df["z"])[0, 1])


def _without_instruments(c: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint record as a bundle from before this release would hold it: moments of
    [exogenous | endogenous] only, no `instruments` key."""
    mo = c["moments"]
    keep = [i for i, t in enumerate(mo["terms"]) if t not in mo.get("instruments", [])]
    old = {
        "terms": [mo["terms"][i] for i in keep],
        "weighted": mo["weighted"],
        "mean": [mo["mean"][i] for i in keep],
        "sd": [mo["sd"][i] for i in keep],
        "corr": [[mo["corr"][i][j] for j in keep] for i in keep],
    }
    return {**c, "moments": old}


@pytest.fixture(scope="module")
def iv_run(tmp_path_factory) -> dict[str, Any]:
    """Extract the IV data (the release); the original and an independently shuffled copy."""
    tmp = tmp_path_factory.mktemp("iv")
    df = make_iv()
    df.to_csv(tmp / "d.csv", index=False)
    raw = {
        "name": "ivx",
        "seed": 7,
        "sources": {"d": {"path": str(tmp / "d.csv"), "ids": ["pid"]}},
        "checkpoints": IV_CP,
        "verify": {"tier": 4},
    }
    b = load_bundle(cmd_extract(load_manifest(raw), tmp / "out"))
    return {"bundle": b, "original": df, "shuffled": _shuffled(df, 3)}


def test_iv_moments_release_the_instruments(iv_run: dict[str, Any]) -> None:
    (c,) = iv_run["bundle"].checkpoints
    mo = c["moments"]
    assert mo["terms"] == ["w", "g", "x", "z"] and mo["instruments"] == ["z"]
    d = iv_run["original"]
    assert mo["corr"][2][3] == pytest.approx(_first_stage(d), rel=1e-12)
    assert mo["mean"][3] == pytest.approx(d["z"].mean(), rel=1e-12)


def test_iv_alignment_restores_the_first_stage_and_the_ses(iv_run: dict[str, Any]) -> None:
    """From independent shuffles, the alignment brings the first-stage correlation back (within
    0.02) and the pinned IV's SEs to the released ones (ratio within [0.9, 1.1]); without the
    alignment the instrument is irrelevant on the synthetic data and the SEs blow up."""
    from replisynth.pin.design_moments import _target

    b, syn, orig = iv_run["bundle"], iv_run["shuffled"], iv_run["original"]
    (c,) = b.checkpoints
    t, note = _target(syn, c)
    assert t is not None, note
    assert t.compiled is not None  # the row evaluator reproduced formulaic's union design
    assert abs(_first_stage(syn) - _first_stage(orig)) > 0.4
    aligned, rep = align_moments(syn, b.checkpoints, b.releases["d"], rng(7, "d", "xmom"))
    assert rep["status"] == "aligned" and not rep["notes"]
    assert "z" in rep["moved"] and "x" in rep["moved"]
    for col in syn.columns:
        np.testing.assert_array_equal(_text(aligned[col]), _text(syn[col]))
    assert abs(_first_stage(aligned) - _first_stage(orig)) < 0.02
    pinned, _ = pin_checkpoints({"d": aligned}, b.checkpoints)
    terms = refit_terms(pinned["d"], c)
    assert max(tt[1] for tt in terms) < 1e-6
    ratios = [tt[2] for tt in terms]
    assert all(0.9 <= r <= 1.1 for r in ratios), ratios
    plain, _ = pin_checkpoints({"d": syn}, b.checkpoints)
    assert max(tt[2] for tt in refit_terms(plain["d"], c)) > 3


def test_iv_old_bundle_without_instrument_moments_still_aligns(iv_run: dict[str, Any]) -> None:
    """A bundle from before the instrument moments (no `instruments`, moments of X only) is
    aligned on the columns it has and pinned; its first stage is not a target, so it lands
    further away than with the instrument moments."""
    b, syn, orig = iv_run["bundle"], iv_run["shuffled"], iv_run["original"]
    old = [_without_instruments(c) for c in b.checkpoints]
    assert "z" not in old[0]["moments"]["terms"]
    aligned, rep = align_moments(syn, old, b.releases["d"], rng(7, "d", "xmom"))
    assert rep["status"] == "aligned" and not rep["notes"]
    g = rep["checkpoints"]["iv"]
    assert g["after"]["max_corr_gap"] < 0.01 < g["before"]["max_corr_gap"]
    pinned, _ = pin_checkpoints({"d": aligned}, old)
    assert max(tt[1] for tt in refit_terms(pinned["d"], old[0])) < 1e-6
    new, _ = align_moments(syn, b.checkpoints, b.releases["d"], rng(7, "d", "xmom"))
    assert abs(_first_stage(new) - _first_stage(orig)) < abs(
        _first_stage(aligned) - _first_stage(orig)
    )


def test_rare_indicator_instrument_is_left_out_of_the_moments(tmp_path: Path) -> None:
    """An excluded instrument is gated like any design column: a 0/1 instrument with 30 ones
    (below the cell size of 50) is not in the released moments, the other instrument is, and
    the SDC log counts it as left out."""
    df = make_iv(1500, seed=4)
    df["r"] = 0
    df.loc[df.index[:30], "r"] = 1
    df.to_csv(tmp_path / "d.csv", index=False)
    cps = [
        {
            "tag": "iv",
            "source": "d",
            "model": "iv",
            "formula": "y ~ w + g + [x ~ z + r]",
            "vcov": "HC1",
        }
    ]
    raw = {
        "name": "ivr",
        "seed": 1,
        "sources": {"d": {"path": str(tmp_path / "d.csv"), "ids": ["pid"], "categorical": ["r"]}},
        "sdc": {"min_cell_size": 50},
        "checkpoints": cps,
    }
    bundle = cmd_extract(load_manifest(raw), tmp_path / "out")
    (c,) = load_bundle(bundle).checkpoints
    assert c["status"] == "released"
    assert c["moments"]["terms"] == ["w", "g", "x", "z"] and c["moments"]["instruments"] == ["z"]
    log = json.loads((bundle / "sdc_log.json").read_text())
    (e,) = [e for e in log["decisions"] if e.get("action") == "released_moments"]
    assert (
        "1 column(s) left out" in e["reason"]
        and "1 of them excluded instruments, of 2" in e["reason"]
    )
    # and directly: the same column gated through design_moments as a candidate
    r = df["r"].to_numpy(dtype=float)
    X = np.column_stack([np.ones(len(df)), df["z"], r])
    mo, info = design_moments(X, ["Intercept", "z", "r"], None, {"z", "r"}, 50)
    assert mo["terms"] == ["z"] and info["left_out"] == 1


def test_iv_log_se_factors_match_a_direct_2sls_computation() -> None:
    """½ log diag[(R_xz R_zz⁻¹ R_zx)⁻¹] from the union correlations equals the log of the 2SLS
    slope SEs × sd_j √n / σ computed from the data (intercept in both X and Z)."""
    from replisynth.pin.design_moments import _iv_log_se_factors

    d = make_iv(2000, seed=9)
    n = len(d)
    U = d[["w", "g", "x", "z"]].to_numpy(dtype=float)
    R = np.corrcoef(U, rowvar=False)
    ix, iz = np.asarray([0, 1, 2]), np.asarray([0, 1, 3])
    X = np.column_stack([np.ones(n), U[:, ix]])
    Z = np.column_stack([np.ones(n), U[:, iz]])
    Xh = Z @ np.linalg.lstsq(Z, X, rcond=None)[0]
    V = np.linalg.inv(Xh.T @ Xh)  # covariance / σ²
    sd = U[:, ix].std(axis=0)
    direct = 0.5 * np.log(np.diag(V)[1:] * sd**2 * n)
    np.testing.assert_allclose(_iv_log_se_factors(R, ix, iz), direct, rtol=1e-10)
    # a weaker first stage: larger factor for x only through R
    R2 = R.copy()
    R2[2, 3] = R2[3, 2] = R[2, 3] * 0.5
    assert _iv_log_se_factors(R2, ix, iz)[2] > direct[2] + 0.3


def test_iv_log_se_factors_of_a_singular_first_stage_are_finite() -> None:
    """A candidate arrangement with no first stage left (instrument collinear with a control)
    scores as a large finite gap, not NaN or an exception, inside a batch of good ones."""
    from replisynth.pin.design_moments import _iv_log_se_factors

    good = np.asarray([[1.0, 0.3, 0.2], [0.3, 1.0, 0.5], [0.2, 0.5, 1.0]])  # w, x, z
    bad = good.copy()
    bad[0, 2] = bad[2, 0] = 1.0  # z is w
    bad[1, 2] = bad[2, 1] = 0.3
    out = _iv_log_se_factors(np.stack([good, bad, good]), np.asarray([0, 1]), np.asarray([0, 2]))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], out[2])
    assert out[1].max() > out[0].max() + 1


def test_alignment_views_equal_refine_views() -> None:
    """`design_moments._views` (one ranker per column, per-view ranks by counting, scores only for dims
    in a masked pair) holds exactly what `refine._view` holds on every masked pair: the same
    scores of the dims it scores, and the same running sums, targets and masks (refine's views
    with float64 scores; by default they store float32)."""
    from replisynth.pin.design_moments import _views
    from replisynth.synthesize.refine import _view

    rng_ = np.random.default_rng(3)
    n, d = 3000, 6
    X = np.column_stack(
        [
            rng_.normal(size=n),
            rng_.integers(0, 5, size=n),
            rng_.random(n) < 0.3,
            np.round(rng_.normal(size=n), 1),
            rng_.normal(size=n),
            rng_.integers(0, 40, size=n) * 1.5,
        ]
    ).astype("float64")
    X[rng_.random(n) < 0.1, 3] = np.nan
    X[rng_.random(n) < 0.05, 5] = np.nan
    strata = rng_.integers(0, 3, size=n)
    groups = [(f"g{g}", np.flatnonzero(strata == g)) for g in range(3)] + [("all", np.arange(n))]
    T = np.corrcoef(rng_.normal(size=(d, 50)))
    T[0, 2] = T[2, 0] = np.nan
    ignore = np.zeros((d, d), dtype=bool)
    ignore[4, :] = ignore[:, 4] = True  # a dim in no masked pair: never scored
    masks, tgts, ref = [], [], []
    for _, rows in groups:
        v = _view(X, rows, T, n, np.float64)
        v.M[ignore] = 0.0
        ref.append(v)
        masks.append(v.M.copy())
        tgts.append(v.T.copy())
    got = _views(lambda need: X, groups, masks, tgts)
    for v, g in zip(ref, got, strict=True):
        live = g.M.any(axis=1)
        assert not live[4] and live.sum() == d - 1
        assert np.array_equal(v.U[:, live], g.U[:, live]) and not g.U[:, ~live].any()
        pair = g.M > 0
        for a, b in ((v.C, g.C), (v.A, g.A), (v.Q, g.Q), (v.N, g.N)):
            assert np.array_equal(a[pair], b[pair])
        assert (
            np.array_equal(v.T, g.T) and np.array_equal(v.M, g.M) and np.array_equal(v.pos, g.pos)
        )
        assert np.array_equal(v.error(), g.error())


def test_dim_columns_equal_the_synthetic_dim_matrix(nested_run: dict[str, Any]) -> None:
    """`design_moments._dim_columns` codes each distinct value once and spreads it back: the same floats
    as `dims.synthetic_dim_matrix` on every dim it is asked for (missing values included), 0
    on the others."""
    from replisynth.pin.design_moments import _dim_columns
    from replisynth.stats.copula_dims import synthetic_dim_matrix

    release = nested_run["bundle"].releases["d"]
    df = nested_run["unpinned"].copy()
    r = np.random.default_rng(2)
    df.loc[r.random(len(df)) < 0.05, "f"] = None
    df.loc[r.random(len(df)) < 0.05, "x1"] = np.nan
    df = df.iloc[r.permutation(len(df))].reset_index(drop=True)
    want = synthetic_dim_matrix(df, release)
    d = want.shape[1]
    assert d >= 3 and any(x["kind"] != "continuous" for x in release["dims"])
    need = np.ones(d, dtype=bool)
    need[0] = False
    got = _dim_columns(df, release, need)
    np.testing.assert_array_equal(got[:, need], want[:, need])
    assert not got[:, 0].any()


def test_alignment_does_not_depend_on_the_thread_count(nested_run: dict[str, Any]) -> None:
    """One thread and two give the same aligned frame and report (the stage runs with the
    job's threads; nothing in the alignment may depend on them)."""
    from replisynth.core.parallel import set_threads, threads

    b, syn = nested_run["bundle"], nested_run["unpinned"]
    before = threads()
    try:
        out = []
        for n in (1, 2):
            set_threads(n)
            out.append(
                align_moments(
                    syn, b.checkpoints, b.releases["d"], rng(b.manifest.seed, "d", "xmom")
                )
            )
    finally:
        set_threads(before)
    (one, rep_one), (two, rep_two) = out
    assert rep_one["status"] == "aligned"
    pd.testing.assert_frame_equal(one, two, check_exact=True)
    assert rep_one == rep_two


@pytest.mark.parametrize(("n", "seed", "y"), [(2500, 3, "visits"), (6000, 8, "n_arrests")])
def test_alignment_keeps_a_discrete_outcomes_rank_relations(
    tmp_path: Path, n: int, seed: int, y: str
) -> None:
    """A count of a maximum-likelihood checkpoint keeps its released rank correlation with
    the regressors the alignment reorders (its pin changes few values, so a relation broken
    here would stay broken); a linear checkpoint's outcome, which its pin rebuilds, is left
    out of that penalty and loses it."""
    r = np.random.default_rng(seed)
    x1 = r.normal(size=n)
    x2 = 0.6 * x1 + r.normal(scale=0.8, size=n)
    count = r.poisson(np.exp(0.3 + 0.5 * x1 + 0.2 * x2))
    # top-coded where fewer than 100 rows lie above, so no value is held by 1..k-1 rows (a
    # pooled value withholds a linear fit's design moments: release_guards)
    count = np.minimum(count, max(v for v in range(count.max() + 1) if (count >= v).sum() >= 100))
    assert np.bincount(count).min() >= 50
    df = pd.DataFrame({"pid": np.arange(1, n + 1), "x1": x1, "x2": x2, y: count})
    df.to_csv(tmp_path / "d.csv", index=False)
    rho = {}
    for model in ("poisson", "ols"):
        raw = {
            "name": "xm",
            "seed": 7,
            "sources": {"d": {"path": str(tmp_path / "d.csv"), "ids": ["pid"]}},
            "checkpoints": [
                {
                    "tag": "c",
                    "source": "d",
                    "model": model,
                    "formula": f"{y} ~ x1 + x2",
                    "vcov": "HC1",
                }
            ],
            "verify": {"tier": 4},
        }
        b = load_bundle(cmd_extract(load_manifest(raw), tmp_path / model))
        syn = df.assign(x2=df["x2"].to_numpy()[r.permutation(n)])  # x1-x2 to be aligned
        aligned, rep = align_moments(syn, b.checkpoints, b.releases["d"], rng(7, "d", "xmom"))
        assert rep["status"] == "aligned", rep
        assert abs(np.corrcoef(aligned["x1"], aligned["x2"])[0, 1] - 0.6) < 0.1
        rho[model] = float(pd.Series(aligned[y]).corr(aligned["x1"], method="spearman"))
    orig = float(df[y].corr(df["x1"], method="spearman"))
    assert abs(rho["poisson"] - orig) < 0.05, (rho, orig)
    assert abs(rho["ols"] - orig) > 0.1, (rho, orig)


@pytest.mark.parametrize(("model", "seed"), [("logit", 4), ("poisson", 9), ("fe", 2)])
def test_glm_and_fe_checkpoints_settle_by_their_raw_factors(model: str, seed: int) -> None:
    """A GLM or fe checkpoint alone on its outcome starts settled when the SE factors of its
    raw unweighted moments are within PROXY_FACTOR_TOL (the design as released: nothing
    moves), and is aligned when a regressor's spread is off by 10% (a factor gap far beyond)."""
    from conftest import make_people, manifest_for

    from replisynth.pin.design_moments import PROXY_FACTOR_TOL, _settle_rule, _target

    df = make_people(1200, seed=seed)
    quartile = np.searchsorted(np.quantile(df["y"], [0.25, 0.5, 0.75]), df["y"])
    # a count of four common values (a value held by few rows withholds the design moments)
    hit = {"logit": (df["y"] > df["y"].median()).astype(int), "poisson": quartile}
    df["hit"] = hit.get(model, df["y"])
    absorb = ["region"] if model == "fe" else []
    cp = Checkpoint(
        tag="g",
        source="people",
        model=model,
        formula="hit ~ x1 + x2 + age",
        vcov="HC1",
        absorb=absorb,
    )
    m = load_manifest(manifest_for(Path("people.csv")))
    rel, _ = capture_checkpoint(df, cp, m, 0)
    c = {**rel, "status": "released"}
    fine = _settle_rule([c])
    same, _ = _target(df, c, compile_rows=False)
    assert same is not None and same.se_factor_gap() <= PROXY_FACTOR_TOL and fine(same)
    off = df.assign(x2=df["x2"] * 1.1)
    wide, _ = _target(off, c, compile_rows=False)
    assert wide is not None and wide.se_factor_gap() > PROXY_FACTOR_TOL and not fine(wide)
    # the same record as an re checkpoint is not judged by these factors
    assert not _settle_rule([{**c, "model": "re"}])(same)


def test_clustered_checkpoint_settles_within_its_own_se_precision() -> None:
    """An fe checkpoint clustered over 12 sites settles with an SE-factor gap of about 1%
    (its SE is itself known to about 1/sqrt(22), `settle_tol`), the same checkpoint with HC1
    does not, and a gap of 4% is beyond both."""
    from conftest import make_people, manifest_for

    from replisynth.pin.design_moments import PROXY_FACTOR_TOL, _settle_rule, _target, settle_tol

    df = make_people(1200, seed=2)
    df["site"] = np.arange(len(df)) % 12
    m = load_manifest(manifest_for(Path("people.csv")))
    tol = settle_tol(PROXY_FACTOR_TOL, 12)
    assert tol == pytest.approx(0.1 / np.sqrt(22))
    assert settle_tol(PROXY_FACTOR_TOL, 10**6) == PROXY_FACTOR_TOL
    for vcov, near in (("cluster:site", True), ("HC1", False)):
        cp = Checkpoint(
            tag="g",
            source="people",
            model="fe",
            formula="y ~ x1 + x2",
            vcov=vcov,
            absorb=["region"],
        )
        rel, _ = capture_checkpoint(df, cp, m, 0)
        c = {**rel, "status": "released"}
        fine = _settle_rule([c])
        for scale, ok in ((1.01, near), (1.04, False)):
            t, _ = _target(df.assign(x2=df["x2"] * scale), c, compile_rows=False)
            assert t is not None and t.clusters == (12 if near else None)
            assert PROXY_FACTOR_TOL < t.se_factor_gap() and fine(t) == ok, (vcov, scale)
