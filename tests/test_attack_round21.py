"""Attacks of round 21 on whole bundles (cmd_extract), reading only what an intruder holding
the bundle reads: exact outcome or regressor totals of a numeric column whose table pools a
rare value (a checkpoint fitted on dummies only, intercept-only fits, totals carried from one
checkpoint to another, complementary subsets), and a checkpoint subset that counts a level
the table suppressed. Each asserts what should hold: the attack recovers nothing. Each was
seen to recover the protected number before the gates of this round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import manifest_for

from replisynth.config.manifest import load_manifest
from replisynth.core.errors import DataError
from replisynth.disclosure.review import review_bundle
from replisynth.workflow.cli import cmd_extract

K = 50  # the standard profile's min_cell_size


def _bundle(
    tmp: Path, df: pd.DataFrame, checkpoints: list[dict[str, Any]], **source: Any
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], Path]:
    """Extract `df` as source `people`: (its source release, the checkpoints by tag, the
    bundle directory), read back from the bundle on disk."""
    df.to_csv(tmp / "people.csv", index=False)
    raw = manifest_for(tmp / "people.csv", **source)
    raw["checkpoints"] = [{"source": "people", "model": "ols", **c} for c in checkpoints]
    bundle = cmd_extract(load_manifest(raw), tmp / "out")
    rel = json.loads((bundle / "source_people.json").read_text())
    cps = json.loads((bundle / "checkpoints.json").read_text())["checkpoints"]
    return rel, {c["tag"]: c for c in cps}, bundle


def _table(rel: dict[str, Any], col: str) -> dict[str, Any]:
    return rel["blocks"]["all"]["marginals"][col]["table"]


def _betas(cp: dict[str, Any]) -> dict[str, float]:
    return {t["term"]: t["beta"] for t in cp["terms"] if not t.get("suppressed")}


def _ses(cp: dict[str, Any]) -> dict[str, float]:
    return {t["term"]: t["se"] for t in cp["terms"] if not t.get("suppressed")}


def _table_total(t: dict[str, Any]) -> float:
    return float(sum(v * c for v, c in zip(t["levels"], t["counts"], strict=True)))


def _counts_with_outlier(
    values: list[float], probs: list[float], n: int, outlier: float, seed: int
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.choice(values, p=probs, size=n).astype("float64")
    x[rng.integers(n)] = outlier  # one row the table pools into its top level
    return x


# ------------------------------------------------ a count outcome fitted on dummies only

DUMMY_FITS = [
    ("visits", "region", ["north", "south", "east", "west"], "poisson", 1500, 17.0, 3),
    ("nights", "ward", ["a", "b", "c"], "ols", 2300, 23.0, 8),
    ("claims", "plan", ["basic", "plus"], "poisson", 800, 12.0, 14),
]


@pytest.mark.parametrize(("y", "factor", "levels", "model", "n", "outlier", "seed"), DUMMY_FITS)
def test_dummy_only_fit_does_not_give_a_pooled_outcome_total(
    tmp_path: Path,
    y: str,
    factor: str,
    levels: list[str],
    model: str,
    n: int,
    outlier: float,
    seed: int,
) -> None:
    """The documented residual risk, confirmed: a Poisson (canonical link) or OLS fit of a
    pooled count on the dummies of one factor has fitted level means exp(b0 + b_l) (or
    b0 + b_l), which times the factor's released level counts sum to the outcome's total;
    less Σ level × count of its table that gave the pooled row's excess over its level."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"pid": np.arange(n), factor: rng.choice(levels, size=n)})
    df[y] = _counts_with_outlier([0, 1, 2, 3, 4], [0.3, 0.3, 0.2, 0.1, 0.1], n, outlier, seed)
    df["x"] = rng.normal(size=n)
    rel, cps, bundle = _bundle(
        tmp_path, df, [{"tag": "d", "model": model, "formula": f"{y} ~ C({factor})"}]
    )
    t, f = _table(rel, y), _table(rel, factor)
    assert t["ordered"] and t["pooled_levels"] == 1 and f["suppressed"] == 0
    cp = cps["d"]
    if cp["status"] == "released":
        b = _betas(cp)
        link = np.exp if model == "poisson" else (lambda v: v)
        fitted = sum(
            c * link(b["Intercept"] + b.get(f"C({factor})[T.{lv}]", 0.0))
            for lv, c in zip(f["levels"], f["counts"], strict=True)
        )
        excess = fitted - _table_total(t)
        assert abs(excess - (outlier - max(t["levels"]))) > 0.5, "the pooled value follows"
    review = review_bundle(bundle)
    assert review["findings"] == [], review["findings"]


@pytest.mark.parametrize(("n", "outlier", "seed"), [(900, 9.0, 2), (1300, 15.0, 6)])
def test_intercept_only_count_fit_does_not_give_a_pooled_total(
    tmp_path: Path, n: int, outlier: float, seed: int
) -> None:
    """`visits ~ 1`: exp(b0) is the outcome mean, n times it the total."""
    df = pd.DataFrame({"pid": np.arange(n)})
    df["visits"] = _counts_with_outlier([0, 1, 2], [0.5, 0.3, 0.2], n, outlier, seed)
    df["x"] = np.random.default_rng(seed).normal(size=n)
    rel, cps, _ = _bundle(tmp_path, df, [{"tag": "i", "model": "poisson", "formula": "visits ~ 1"}])
    t, cp = _table(rel, "visits"), cps["i"]
    if cp["status"] == "released":
        excess = cp["n"] * np.exp(_betas(cp)["Intercept"]) - _table_total(t)
        assert abs(excess - (outlier - max(t["levels"]))) > 0.5


@pytest.mark.parametrize(("split", "seed"), [(0.1, 21), (-0.4, 5)])
def test_complementary_subsets_do_not_give_a_pooled_total(
    tmp_path: Path, split: float, seed: int
) -> None:
    """Two Poisson fits of a pooled count on one dummy, on complementary subsets of another
    column: the nonrobust SEs give each sample's outcome total (1/se(b0)² is the reference
    group's Σμ, 1/(se(b1)² − se(b0)²) the other's), and the two add up to the source's."""
    n, outlier = 2000, 14.0
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"pid": np.arange(n), "x": rng.normal(size=n)})
    df["visits"] = _counts_with_outlier([0, 1, 2, 3], [0.4, 0.3, 0.2, 0.1], n, outlier, seed)
    df["female"] = rng.integers(0, 2, size=n)
    cps_in = [
        {"tag": "lo", "model": "poisson", "formula": "visits ~ female", "subset": f"x <= {split}"},
        {"tag": "hi", "model": "poisson", "formula": "visits ~ female", "subset": f"x > {split}"},
    ]
    rel, cps, bundle = _bundle(tmp_path, df, cps_in)
    if all(cps[t]["status"] == "released" for t in ("lo", "hi")):
        total = 0.0
        for tag in ("lo", "hi"):
            se = _ses(cps[tag])
            total += 1 / se["Intercept"] ** 2 + 1 / (se["female"] ** 2 - se["Intercept"] ** 2)
        t = _table(rel, "visits")
        assert abs(total - _table_total(t) - (outlier - max(t["levels"]))) > 0.5


# ------------------------------------------------ a total carried from another checkpoint


@pytest.mark.parametrize(("col", "outlier", "seed"), [("school", 26.0, 11), ("grade", 21.0, 4)])
def test_outcome_mean_of_one_fit_does_not_free_a_pooled_regressor_total(
    tmp_path: Path, col: str, outlier: float, seed: int
) -> None:
    """`wage ~ x` releases ȳ (intercept + slope × x's released mean); `wage ~ col + x` on the
    same rows, whose design means of the pooled column are withheld, then gives
    Σ col = n (ȳ − b0 − b_x x̄) / b_col, and less Σ level × count the pooled row's excess."""
    n = 1200
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"pid": np.arange(n), "x": rng.normal(size=n)})
    p = [0.15, 0.2, 0.35, 0.15, 0.15]
    df[col] = _counts_with_outlier([8, 10, 12, 14, 16], p, n, outlier, seed)
    df["wage"] = 2 + 0.1 * df[col] + 0.3 * df["x"] + rng.normal(size=n)
    rel, cps, bundle = _bundle(
        tmp_path,
        df,
        [{"tag": "a", "formula": "wage ~ x"}, {"tag": "b", "formula": f"wage ~ {col} + x"}],
    )
    t = _table(rel, col)
    assert t["pooled_levels"] == 1
    a, b = cps["a"], cps["b"]
    if a["status"] == b["status"] == "released" and "moments" in a:
        ba, bb = _betas(a), _betas(b)
        xbar = a["moments"]["mean"][a["moments"]["terms"].index("x")]
        ybar = ba["Intercept"] + ba["x"] * xbar
        total = n * (ybar - bb["Intercept"] - bb["x"] * xbar) / bb[col]
        assert abs(total - _table_total(t) - (outlier - max(t["levels"]))) > 0.5
    review = review_bundle(bundle)
    assert review["findings"] == [], review["findings"]


@pytest.mark.parametrize(("name", "seed"), [("load", 41), ("burden", 3)])
def test_derived_sum_does_not_carry_a_pooled_total(tmp_path: Path, name: str, seed: int) -> None:
    """`derive: {load: visits + x}` (released with the manifest): a dummy fit of `load` gives
    its total, `w ~ x` gives x's, and their difference is the pooled count's total."""
    n, outlier = 1600, 11.0
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"pid": np.arange(n), "female": rng.integers(0, 2, size=n)})
    df["visits"] = _counts_with_outlier([0, 1, 2, 3], [0.4, 0.3, 0.2, 0.1], n, outlier, seed)
    df["x"] = rng.normal(size=n).round(3)
    df[name] = df["visits"] + df["x"]
    df["w"] = df["x"] + rng.normal(size=n)
    cps_in = [
        {"tag": "a", "formula": f"{name} ~ female", "vcov": "HC1"},
        {"tag": "b", "formula": "w ~ x"},
    ]
    rel, cps, bundle = _bundle(tmp_path, df, cps_in, derive={name: "visits + x"})
    t, f = _table(rel, "visits"), _table(rel, "female")
    a, b = cps["a"], cps["b"]
    if a["status"] == b["status"] == "released":
        ba = _betas(a)
        total = sum(
            c * (ba["Intercept"] + (ba["female"] if lv == 1 else 0.0))
            for lv, c in zip(f["levels"], f["counts"], strict=True)
        )
        x_total = n * b["moments"]["mean"][b["moments"]["terms"].index("x")]
        assert abs(total - x_total - _table_total(t) - (outlier - 3)) > 0.5
    assert review_bundle(bundle)["findings"] == []


@pytest.mark.parametrize(("col", "few", "seed"), [("level", 5, 17), ("stage", 9, 2)])
def test_fit_on_a_stratum_does_not_split_its_suppressed_cells(
    tmp_path: Path, col: str, few: int, seed: int
) -> None:
    """A value held by `few` rows inside one stratum (and many rows elsewhere): the stratum's
    table buckets it with a secondary cell; a Poisson fit on that stratum gives the
    stratum's exact total of the column, which, with the bucket's count, splits the bucket
    and gives the small cell exactly."""
    rng = np.random.default_rng(seed)
    north = rng.choice([0, 1, 2], p=[0.4, 0.35, 0.25], size=1100).astype("float64")
    north[:few] = 3.0
    south = rng.choice([0, 1, 2, 3], p=[0.3, 0.3, 0.2, 0.2], size=1300).astype("float64")
    df = pd.DataFrame({"region": ["north"] * 1100 + ["south"] * 1300, col: [*north, *south]})
    df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df.insert(0, "pid", np.arange(len(df)))
    df["female"] = rng.integers(0, 2, size=len(df))
    cp = {"tag": "n", "model": "poisson", "formula": f"{col} ~ female", "vcov": "HC1"}
    rel, cps, _ = _bundle(tmp_path, df, [{**cp, "subset": "region == 'north'"}], strata=["region"])
    if cps["n"]["status"] != "released":
        return
    b = _betas(cps["n"])
    for block in rel["blocks"].values():
        t = block["marginals"][col].get("table")
        if block.get("key") != ["north"] or t is None or not t.get("suppressed"):
            continue
        f = block["marginals"]["female"]["table"]
        total = sum(
            c * np.exp(b["Intercept"] + (b["female"] if lv == 1 else 0.0))
            for lv, c in zip(f["levels"], f["counts"], strict=True)
        )
        hidden = [v for v in (0, 1, 2, 3) if v not in t["levels"]]
        if len(hidden) == 2:  # two values in the bucket: total and count give both cells
            lo, hi = hidden
            top = (total - _table_total(t) - lo * t["suppressed"]) / (hi - lo)
            assert not (0.5 < top < K - 0.5 and abs(top - round(top)) < 1e-6)


# ------------------------------------------------ a subset counting a suppressed level


@pytest.mark.parametrize(
    ("col", "hidden", "rare", "seed"), [("region", "east", 3, 5), ("county", "lakes", 11, 9)]
)
def test_subset_on_a_suppressed_level_does_not_count_the_bucket(
    tmp_path: Path, col: str, hidden: str, rare: int, seed: int
) -> None:
    """A level of 60 rows joins a rare category (1..k-1 rows) in the table's bucket; a
    checkpoint whose subset is that level has n = its count, and the bucket less n is the
    rare category's count."""
    n = 1500
    rng = np.random.default_rng(seed)
    v = rng.choice(["north", "south", "west"], p=[0.45, 0.45, 0.1], size=n).astype(object)
    v[:60], v[60 : 60 + rare] = hidden, "islands"
    df = pd.DataFrame({"pid": np.arange(n), col: rng.permutation(v), "x": rng.normal(size=n)})
    df["y"] = df["x"] + rng.normal(size=n)
    rel, cps, bundle = _bundle(
        tmp_path, df, [{"tag": "h", "formula": "y ~ x", "subset": f"{col} == '{hidden}'"}]
    )
    t = _table(rel, col)
    assert hidden not in t["levels"] and t["suppressed"] == 60 + rare
    if cps["h"]["status"] == "released":
        assert not 0 < t["suppressed"] - cps["h"]["n"] < K, "the rare category's count follows"


# ------------------------------------------------ the gates refuse only what leaks


@pytest.mark.parametrize(("col", "outlier", "seed"), [("school", 25.0, 4), ("tenure", 31.0, 12)])
def test_a_fit_refused_for_its_means_is_released_without_them(
    tmp_path: Path, col: str, outlier: float, seed: int
) -> None:
    """`emp ~ col + x` alone, a linear probability model: the 0/1 outcome's total is in its
    table, so with x's design mean released n (ȳ − b0 − b_x x̄) / b_col is the pooled
    column's total (Mroz's LPM was refused for this). The gate's lesser remedy withholds the
    means and releases the coefficients and SEs, which leave the total free; when an earlier
    checkpoint already released x̄ on the same rows, withholding this one's means is not
    enough and it is refused."""
    n = 1100
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"pid": np.arange(n), "x": rng.normal(size=n)})
    df[col] = _counts_with_outlier(
        [8, 10, 12, 14, 16], [0.15, 0.2, 0.35, 0.15, 0.15], n, outlier, seed
    )
    df["emp"] = (0.1 * df[col] + 0.3 * df["x"] + rng.normal(size=n) > 1.3).astype(int)
    alone = {"tag": "b", "formula": f"emp ~ {col} + x", "vcov": "HC1"}
    (tmp_path / "alone").mkdir()
    (tmp_path / "after").mkdir()
    rel, cps, bundle = _bundle(tmp_path / "alone", df, [alone])
    assert _table(rel, col)["pooled_levels"] == 1
    b = cps["b"]
    assert b["status"] == "released" and _betas(b).keys() == {"Intercept", col, "x"}
    assert "moments" not in b and b.get("outcome_mean") is None
    log = json.loads((bundle / "sdc_log.json").read_text())
    assert any(
        e["action"] == "withheld_moments" and e.get("checkpoint") == "b" for e in log["decisions"]
    )
    assert review_bundle(bundle)["findings"] == []
    first = {"tag": "a", "formula": "emp ~ x", "vcov": "HC1"}
    _, cps, bundle = _bundle(tmp_path / "after", df, [first, alone])
    assert cps["a"]["status"] == "released" and "moments" in cps["a"]
    assert cps["b"]["status"] == "rejected" and "pooled totals" in cps["b"]["reason"]
    assert review_bundle(bundle)["findings"] == []


def _visits_frame(n: int, seed: int, outlier: float | None = 13.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    v = rng.choice(["north", "south", "west"], p=[0.45, 0.45, 0.1], size=n).astype(object)
    v[:60], v[60:63] = "east", "islands"
    df = pd.DataFrame({"pid": np.arange(n), "region": rng.permutation(v)})
    df["age"] = rng.uniform(20, 70, size=n).round(2)
    df["x"] = rng.normal(size=n)
    p = [0.4, 0.3, 0.2, 0.1]
    if outlier is None:
        df["visits"] = rng.choice([0, 1, 2, 3], p=p, size=n).astype("float64")
    else:
        df["visits"] = _counts_with_outlier([0, 1, 2, 3], p, n, outlier, seed)
    df["female"] = rng.integers(0, 2, size=n)
    return df


@pytest.mark.parametrize("seed", [1, 7])
def test_safe_checkpoints_are_still_released(tmp_path: Path, seed: int) -> None:
    """No false refusal: a count fit of the pooled outcome on a continuous regressor (its
    fitted total needs every row's value), an OLS of it on one (its mean withheld), a
    dummy-only fit of an outcome whose table pools nothing, subsets on released levels and
    on the whole bucket."""
    df = _visits_frame(1600, seed)
    df["calls"] = np.random.default_rng(seed).integers(0, 4, size=len(df))
    cps_in = [
        {"tag": "cont", "model": "poisson", "formula": "visits ~ age + x"},
        {"tag": "ols", "formula": "visits ~ age", "vcov": "HC1"},
        {"tag": "plain", "model": "poisson", "formula": "calls ~ female"},
        {"tag": "north", "formula": "x ~ age", "subset": "region == 'north'"},
        {"tag": "known", "formula": "x ~ age", "subset": "region != 'east' & region != 'islands'"},
        {"tag": "own", "formula": "x ~ visits", "subset": "visits >= 1", "vcov": "HC1"},
    ]
    rel, cps, bundle = _bundle(tmp_path, df, cps_in)
    assert _table(rel, "visits")["pooled_levels"] == 1
    assert {t: c["status"] for t, c in cps.items()} == dict.fromkeys(cps, "released")
    assert review_bundle(bundle)["findings"] == []
    # with model-based SEs, the last two give the totals of their designs (round 22)
    for c in cps_in[-1:] + cps_in[1:2]:
        c.pop("vcov")
    (tmp_path / "nonrobust").mkdir()
    _, cps, _ = _bundle(tmp_path / "nonrobust", df, cps_in)
    assert cps["own"]["status"] == cps["ols"]["status"] == "rejected"


def test_the_gates_refuse_what_the_attacks_use(tmp_path: Path) -> None:
    """The attacks above recover nothing because the checkpoints they need are refused, with
    the gates' reasons (not because a fit failed), and the log says why."""
    df = _visits_frame(1500, 3)
    cps_in = [
        {"tag": "dummies", "model": "poisson", "formula": "visits ~ female"},
        {"tag": "east", "formula": "x ~ age", "subset": "region == 'east'"},
    ]
    _, cps, bundle = _bundle(tmp_path, df, cps_in)
    assert cps["dummies"]["status"] == "rejected" and "pooled totals" in cps["dummies"]["reason"]
    assert cps["east"]["status"] == "rejected" and "subset on a table" in cps["east"]["reason"]
    assert "beta" not in json.dumps(cps["dummies"]) and "n" not in cps["east"]
    log = json.loads((bundle / "sdc_log.json").read_text())
    why = {e.get("checkpoint"): e["reason"] for e in log["decisions"] if e["action"] == "rejected"}
    assert why.keys() >= {"dummies", "east"}
    entries = {e["id"]: e for e in log["ledger"]["entries"]}
    for tag in ("dummies", "east"):
        assert entries[f"checkpoint/{tag}"]["released"].startswith("nothing (refused")
        assert "rows" not in entries[f"checkpoint/{tag}"]


def test_review_of_bundles_made_without_the_gates_finds_the_leaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review's checks can fail: a bundle extracted with both gates switched off holds
    the two leaks, and the review reports each."""
    from replisynth.extract import pooled_totals_gate
    from replisynth.workflow import pipeline

    monkeypatch.setattr(pooled_totals_gate.PooledTotalsGate, "refusal", lambda *a: None)
    monkeypatch.setattr(pipeline, "refuse_subset_levels", lambda cps, *a: cps)
    df = _visits_frame(1500, 4)
    cps_in = [
        {"tag": "dummies", "model": "poisson", "formula": "visits ~ female"},
        {"tag": "east", "formula": "x ~ age", "subset": "region == 'east'"},
    ]
    _, cps, bundle = _bundle(tmp_path, df, cps_in)
    assert cps["dummies"]["status"] == cps["east"]["status"] == "released"
    found = {(f["check"], f["checkpoint"]) for f in review_bundle(bundle)["findings"]}
    assert found == {("pooled totals", "dummies"), ("subset levels", "east")}


# ------------------------------------------------ group counts from standard errors


def _group_counts(cp: dict[str, Any], model: str) -> dict[str, float]:
    """Attacker: each group's rows from the model-based SEs of a saturated indicator fit
    (OLS: scale / se²; logit: 1 / (se² p (1 − p)) with p from the coefficients), the
    reference group under 'Intercept', a suppressed group as n less the others."""
    b, se = _betas(cp), _ses(cp)

    def info(eta: float, var: float) -> float:
        if model == "ols":
            return cp["scale"] / var
        p = 1 / (1 + np.exp(-eta))
        return 1 / (var * p * (1 - p))

    out = {"Intercept": info(b["Intercept"], se["Intercept"] ** 2)}
    for t in b:
        if t != "Intercept":
            out[t] = info(b["Intercept"] + b[t], se[t] ** 2 - se["Intercept"] ** 2)
    if any(t.get("suppressed") for t in cp["terms"]):
        out["suppressed"] = cp["n"] - sum(out.values())
    return out


@pytest.mark.parametrize(("model", "seed"), [("ols", 5), ("logit", 12)])
def test_standard_errors_of_a_dummy_fit_do_not_count_suppressed_levels(
    tmp_path: Path, model: str, seed: int
) -> None:
    """`y ~ C(region)` with nonrobust SEs: every group's count follows from the SEs, so the
    rare level (coefficient suppressed) is n less the others, and a level of 60 rows that the
    table put in the bucket leaves the bucket less 60 = the rare count."""
    df = _visits_frame(1500, seed)
    rng = np.random.default_rng(seed)
    df["y"] = rng.integers(0, 2, size=len(df)) if model == "logit" else rng.normal(size=len(df))
    rel, cps, bundle = _bundle(
        tmp_path, df, [{"tag": "f", "model": model, "formula": "y ~ C(region)"}]
    )
    t = _table(rel, "region")
    assert t["suppressed"] == 63 and "east" not in t["levels"]
    if cps["f"]["status"] == "released":
        counts = _group_counts(cps["f"], model)
        pinned = [round(c) for c in counts.values() if 0.5 < c < K - 0.5]
        pinned += [
            round(t["suppressed"] - c)
            for c in counts.values()
            if 0.5 < t["suppressed"] - c < K - 0.5
        ]
        assert not pinned, f"counts of protected groups follow: {pinned}"
    assert review_bundle(bundle)["findings"] == []


def test_standard_errors_of_a_fit_without_intercept_do_not_count_suppressed_levels(
    tmp_path: Path,
) -> None:
    """`y ~ 0 + C(region)`: one coefficient per level, each SE scale / n_l, so the rare level
    (suppressed) is n less the others."""
    df = _visits_frame(1500, 5)
    df["y"] = np.random.default_rng(5).normal(size=len(df))
    _, cps, bundle = _bundle(tmp_path, df, [{"tag": "o", "formula": "y ~ 0 + C(region)"}])
    cp = cps["o"]
    if cp["status"] == "released":
        counts = [cp["scale"] / s**2 for s in _ses(cp).values()]
        assert not 0.5 < cp["n"] - sum(counts) < K - 0.5, "the rare level's count follows"
    assert review_bundle(bundle)["findings"] == []


def test_standard_errors_of_a_coding_do_not_count_pooled_rows(tmp_path: Path) -> None:
    """`wage ~ I(visits == 3)`: the SEs give the rows at exactly 3, which the table's count of
    3 (holding the row pooled into it) exceeds by the pooled row."""
    df = _visits_frame(1400, 9)
    df["wage"] = np.random.default_rng(9).normal(size=len(df))
    rel, cps, _ = _bundle(tmp_path, df, [{"tag": "c", "formula": "wage ~ I(visits == 3)"}])
    t = _table(rel, "visits")
    assert t["pooled_levels"] == 1
    if cps["c"]["status"] == "released":
        counts = _group_counts(cps["c"], "ols")
        ones = counts[next(k for k in counts if k != "Intercept")]
        assert not 0.5 < t["counts"][t["levels"].index(3)] - ones < K - 0.5


@pytest.mark.parametrize(("cell", "seed"), [(7, 19), (23, 4)])
def test_standard_errors_of_two_dummies_do_not_give_their_small_cell(
    tmp_path: Path, cell: int, seed: int
) -> None:
    """`y ~ a + b`, two 0/1 columns whose 2×2 table has a cell of `cell` rows (their
    correlation is withheld for it): with the margins from the tables, the nonrobust SEs of
    both slopes are functions of that one cell, which they give exactly."""
    n = 1200
    a, b = np.zeros(n, dtype=int), np.zeros(n, dtype=int)
    a[: 400 + cell], b[:cell], b[400 + cell : 700 + cell] = 1, 1, 1
    order = np.random.default_rng(seed).permutation(n)
    df = pd.DataFrame({"pid": np.arange(n), "a": a[order], "b": b[order]})
    df["y"] = np.random.default_rng(seed).normal(size=n)
    rel, cps, bundle = _bundle(tmp_path, df, [{"tag": "ab", "formula": "y ~ a + b"}])
    cp = cps["ab"]
    if cp["status"] == "released":
        se = _ses(cp)
        na, nb = _table(rel, "a")["counts"][1], _table(rel, "b")["counts"][1]

        def misfit(n11: int) -> float:
            inv = np.linalg.inv(np.array([[n, na, nb], [na, na, n11], [nb, n11, nb]], float))
            return abs(cp["scale"] * inv[1, 1] - se["a"] ** 2) + abs(
                cp["scale"] * inv[2, 2] - se["b"] ** 2
            )

        fits = [g for g in range(min(na, nb) + 1) if misfit(g) < 1e-9 * se["a"] ** 2]
        assert not (len(fits) == 1 and 0 < fits[0] < K), f"the cell of {fits} rows follows"
    assert review_bundle(bundle)["findings"] == []


def test_group_counts_gate_keeps_robust_and_common_fits(tmp_path: Path) -> None:
    """No false refusal: the same dummy fit with HC1 SEs (group variances unknown), a
    nonrobust dummy fit of a factor without rare categories, and a threshold of a continuous
    column without atoms (its values all distinct) are released."""
    df = _visits_frame(1500, 2)
    df["plan"] = np.random.default_rng(2).choice(["a", "b", "c"], size=len(df))
    cps_in = [
        {"tag": "robust", "formula": "x ~ C(region)", "vcov": "HC1"},
        {"tag": "common", "formula": "x ~ C(plan)"},
        {"tag": "threshold", "formula": "x ~ I(age > 60)"},
    ]
    _, cps, _ = _bundle(tmp_path, df, cps_in)
    assert {t: c["status"] for t, c in cps.items()} == dict.fromkeys(cps, "released")


def test_review_finds_group_counts_in_a_bundle_made_without_the_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from replisynth.extract import checkpoints

    monkeypatch.setattr(checkpoints, "group_count_rejection", lambda *a: None)
    df = _visits_frame(1500, 6)
    df["y"] = np.random.default_rng(6).normal(size=len(df))
    _, cps, bundle = _bundle(tmp_path, df, [{"tag": "f", "formula": "y ~ C(region)"}])
    assert cps["f"]["status"] == "released"
    found = {(f["check"], f["checkpoint"]) for f in review_bundle(bundle)["findings"]}
    assert ("group counts", "f") in found


@pytest.mark.parametrize(("col", "seed"), [("region", 31), ("site", 8)])
def test_fit_on_a_stratum_does_not_give_a_pooled_total_against_its_table(
    tmp_path: Path, col: str, seed: int
) -> None:
    """A Poisson fit of a pooled count on a 0/1 column, on the rows of one stratum (robust
    SEs): its fitted means times the stratum's released 0/1 counts give the stratum's total,
    and less Σ level × count of the stratum's table, the pooled row's excess."""
    n, outlier = 2400, 12.0
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"pid": np.arange(n), col: rng.choice(["north", "south"], size=n)})
    df["visits"] = rng.choice([0, 1, 2, 3], p=[0.4, 0.3, 0.2, 0.1], size=n).astype("float64")
    df.loc[int(np.flatnonzero(df[col] == "north")[0]), "visits"] = outlier
    df["female"] = rng.integers(0, 2, size=n)
    cp = {"tag": "n", "model": "poisson", "formula": "visits ~ female", "vcov": "HC1"}
    rel, cps, _ = _bundle(tmp_path, df, [{**cp, "subset": f"{col} == 'north'"}], strata=[col])
    if cps["n"]["status"] != "released":
        return
    b = _betas(cps["n"])
    for bid, block in rel["blocks"].items():
        f, v = block["marginals"]["female"].get("table"), block["marginals"]["visits"].get("table")
        if bid == "all" or block["key"] != ["north"] or f is None or v is None:
            continue
        fitted = sum(
            c * np.exp(b["Intercept"] + (b["female"] if lv == 1 else 0.0))
            for lv, c in zip(f["levels"], f["counts"], strict=True)
        )
        assert abs(fitted - _table_total(v) - (outlier - 3)) > 0.5, "the pooled value follows"


# ------------------------------------------------ subsets with more conditions


def test_subset_with_a_condition_that_is_always_true_does_not_count_the_bucket(
    tmp_path: Path,
) -> None:
    """`region == 'east' & age > 0`: the second condition holds in every row, so n is the
    suppressed level's count (the check reads the other conditions as always true or false)."""
    df = _visits_frame(1500, 5)
    rel, cps, _ = _bundle(
        tmp_path, df, [{"tag": "h", "formula": "x ~ age", "subset": "region == 'east' & age > 0"}]
    )
    t = _table(rel, "region")
    if cps["h"]["status"] == "released":
        assert not 0 < t["suppressed"] - cps["h"]["n"] < K


@pytest.mark.parametrize("value", [1.0, 2.5])
def test_a_constant_weight_does_not_hide_a_pooled_total_or_group_counts(
    tmp_path: Path, value: float
) -> None:
    """A weights column equal in every row makes weighted totals and counts scaled copies of
    the unweighted ones: the dummy fit's total and the SEs' group counts follow as before."""
    df = _visits_frame(1500, 13)
    df["wt"] = value
    df["y"] = np.random.default_rng(13).normal(size=len(df))
    cps_in = [
        {"tag": "p", "model": "poisson", "formula": "visits ~ female", "weights": "wt"},
        {"tag": "g", "formula": "y ~ C(region)", "weights": "wt"},
    ]
    rel, cps, _ = _bundle(tmp_path, df, cps_in)
    t, f = _table(rel, "visits"), _table(rel, "female")
    if cps["p"]["status"] == "released":
        b = _betas(cps["p"])
        fitted = sum(
            c * np.exp(b["Intercept"] + (b["female"] if lv == 1 else 0.0))
            for lv, c in zip(f["levels"], f["counts"], strict=True)
        )
        assert abs(fitted - _table_total(t) - (13.0 - 3)) > 0.5
    if cps["g"]["status"] == "released":
        counts = _group_counts(cps["g"], "ols")
        assert not any(0.5 < c < K - 0.5 for c in counts.values())


@pytest.mark.parametrize(("drop", "seed"), [(12, 3), (30, 8)])
def test_subset_dropping_a_few_rows_of_a_level_does_not_count_them(
    tmp_path: Path, drop: int, seed: int
) -> None:
    """`plan == 'gold' & score > c` where c drops `drop` rows of gold: n less gold's released
    count is the rows of gold with score <= c, a cell of 1..k-1 rows."""
    n = 1500
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"pid": np.arange(n), "plan": rng.choice(["gold", "basic"], size=n)})
    df["score"] = rng.uniform(10, 90, size=n).round(2)
    gold = np.flatnonzero(df["plan"] == "gold")
    df.loc[gold[:drop], "score"] = rng.uniform(0, 4, size=drop).round(2)
    df.loc[np.flatnonzero(df["plan"] == "basic")[:drop], "score"] = 1.0
    df["y"] = rng.normal(size=n)
    cp = {"tag": "g", "formula": "y ~ score", "subset": "plan == 'gold' & score > 5"}
    rel, cps, _ = _bundle(tmp_path, df, [cp])
    t = _table(rel, "plan")
    if cps["g"]["status"] == "released":
        gone = t["counts"][t["levels"].index("gold")] - cps["g"]["n"]
        assert not 0 < gone < K, f"{gone} rows of gold with score <= 5 follow"


# ------------------------------------------------ a coding of a pooled column's true values


@pytest.mark.parametrize(("outlier", "seed", "name"), [(13.0, 23, "mid"), (9.0, 5, "at_three")])
def test_coding_of_true_values_does_not_count_pooled_rows(
    tmp_path: Path, outlier: float, seed: int, name: str
) -> None:
    """`derive: {mid: visits == 3}` (released with the manifest): visits' table counts the
    pooled row at 3, mid's table would not, so their difference would be the pooled rows'
    count. Extraction stops with one line naming the key (no value); the same coding written
    so that the pooled value gives what its level gives (`visits >= 3`) is released, and its
    table then counts what visits' table counts at 3."""
    n = 1500
    df = pd.DataFrame({"pid": np.arange(n), "x": np.random.default_rng(seed).normal(size=n)})
    df["visits"] = _counts_with_outlier([0, 1, 2, 3], [0.4, 0.3, 0.2, 0.1], n, outlier, seed)
    df[name] = (df["visits"] == 3).astype(int)
    (tmp_path / "eq").mkdir()
    with pytest.raises(DataError) as err:
        _bundle(tmp_path / "eq", df, [], derive={name: "visits == 3"})
    msg = str(err.value)
    assert f"sources.people.derive.{name}" in msg and "'visits'" in msg and ">=" in msg
    assert str(int(outlier)) not in msg.replace(f"min_cell_size={K}", "")
    assert not any((tmp_path / "eq" / "out").rglob("*.json")), "nothing half-written"
    df[name] = (df["visits"] >= 3).astype(int)
    (tmp_path / "ge").mkdir()
    rel, _, bundle = _bundle(tmp_path / "ge", df, [], derive={name: "visits >= 3"})
    t, m = _table(rel, "visits"), rel["blocks"]["all"]["marginals"][name]["table"]
    assert t["pooled_levels"] == 1
    assert t["counts"][t["levels"].index(3)] == m["counts"][m["levels"].index(1)]
    assert review_bundle(bundle)["findings"] == []


def test_undeclared_coding_of_true_values_is_refused_and_safe_codings_pass(
    tmp_path: Path,
) -> None:
    """The same coding as a plain data column (not declared): refused with one line naming
    the column; codings that give a pooled value what its level gives (`visits >= 2`), and a
    multiple of the column whose own table pools the same row (`2 visits`), pass."""
    n = 1500
    df = pd.DataFrame({"pid": np.arange(n), "x": np.random.default_rng(4).normal(size=n)})
    df["visits"] = _counts_with_outlier([0, 1, 2, 3], [0.4, 0.3, 0.2, 0.1], n, 11.0, 4)
    df["high"] = (df["visits"] >= 2).astype(int)
    df["double"] = 2 * df["visits"]
    (tmp_path / "ok").mkdir()
    rel, _, _ = _bundle(tmp_path / "ok", df, [])
    assert _table(rel, "visits")["pooled_levels"] == 1
    assert _table(rel, "double")["pooled_levels"] == 1
    df["three"] = (df["visits"] == 3).astype(int)
    (tmp_path / "eq").mkdir()
    with pytest.raises(
        DataError, match=r"^people: column 'three': counts the rows at a level of '(visits|double)'"
    ):
        _bundle(tmp_path / "eq", df, [])


def test_review_finds_a_coding_of_true_values_in_a_bundle_made_without_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An output checker holding a bundle made elsewhere: the review evaluates each declared
    one-column coding at its input's released levels and finds the table that differs by the
    pooled rows' count; a coding that gives a pooled value what its level gives is clean."""
    import replisynth.extract.relations as relations

    monkeypatch.setattr(relations, "check_pooled_codings", lambda *_a, **_k: None)
    n = 1500
    df = pd.DataFrame({"pid": np.arange(n), "x": np.random.default_rng(8).normal(size=n)})
    df["visits"] = _counts_with_outlier([0, 1, 2, 3], [0.4, 0.3, 0.2, 0.1], n, 12.0, 8)
    codings = {"eq": ("==", df["visits"] == 3, 1), "ge": (">=", df["visits"] >= 3, 0)}
    for where, (sign, mid, expected) in codings.items():
        df["mid"] = mid.astype(int)
        (tmp_path / where).mkdir()
        _, _, bundle = _bundle(tmp_path / where, df, [], derive={"mid": f"visits {sign} 3"})
        found = [f for f in review_bundle(bundle)["findings"] if f["check"] == "pooled codings"]
        assert [f["column"] for f in found] == ["mid"] * expected
