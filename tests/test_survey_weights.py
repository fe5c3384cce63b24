"""Survey weights (`sources.<name>.weight`): released weighted shares on the unweighted tables'
cells, gated and rounded; synthetic weights calibrated to them; tier 1 checks them; bad keys
stop with one line naming the key. Method: docs/method.md, "Survey weights"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, manifest_for, run_pipeline
from hypothesis import given, settings
from hypothesis import strategies as st

from replisynth.stats.weights import SHARE_TOLERANCE

SRC = str(REPO / "src")


def oversampled(n: int, seed: int, region: str, weight: str, levels: str) -> pd.DataFrame:
    """A survey that oversamples the later levels of `region` (their weights are low): the
    first level is 40% of rows and about 70% of the weight. Income depends on the region."""
    rng = np.random.default_rng(seed)
    k = len(levels)
    p = np.r_[0.4, np.full(k - 1, 0.6 / (k - 1))]
    reg = rng.choice(list(levels), p=p, size=n)
    base = np.where(reg == levels[0], 3.0, 0.8)
    w = base * rng.uniform(0.7, 1.4, size=n)
    sex = rng.integers(0, 2, size=n)
    w = w * np.where(sex == 1, 1.15, 1.0)  # a second, milder weighting margin
    return pd.DataFrame(
        {
            "pid": np.arange(1, n + 1),
            region: reg,
            "sex": sex,
            "age": rng.integers(18, 80, size=n),
            "income": rng.lognormal(10, 0.5, size=n) * np.where(reg == levels[0], 1.3, 1.0),
            weight: w,
        }
    )


def _bundle_release(out: Path, name: str = "t") -> dict:
    return json.loads((out / name / "bundle" / "source_people.json").read_text())


def grid_of(rel: dict, col: str) -> list[float]:
    return rel["blocks"]["all"]["marginals"][col]["grid"]


def _weighted_shares(df: pd.DataFrame, col: str, weight: str) -> dict:
    s = df.groupby(col)[weight].sum()
    return (s / s.sum()).to_dict()


CASES = [
    (3000, 1, "region", "wt", "nsew"),
    (9000, 5, "land", "pweight", "ABCDE"),
    (30000, 11, "zone", "fw", "pqr"),
]


def test_spread_weights_keep_their_marginal_when_the_grid_trims_their_tails(
    tmp_path: Path,
) -> None:
    """Weights with a lognormal spread over 20,000 rows: the released grid, trimmed at p1 and
    p99, holds about 1% less weight than the original's tails, and scaling every synthetic
    weight up to the released total failed tier 1's KS test of the weight column (p = 0.026).
    The scaling stops at its KS budget: tier 1 holds, the total is short by less than the
    trimmed share, and the weighted shares still match."""
    n = 20_000
    df = oversampled(n, 3, "region", "wt", "nsew")
    df["wt"] = df["wt"] * np.random.default_rng(4).lognormal(0.0, 0.5, n)
    df.to_csv(tmp_path / "p.csv", index=False)
    tiers = run_pipeline(manifest_for(tmp_path / "p.csv", weight="wt"), tmp_path)
    src = tiers["sources"]["people"]
    assert src["tier_met"] >= 1 and src["marginals"]["problems"] == []
    weighted = src["marginals"]["weighted"]
    assert weighted["passed"]
    short = 1 - weighted["synthetic_total"] / weighted["released_total"]
    assert 0 < short < 0.02


def test_total_scale_moves_the_weights_distribution_at_most_its_budget() -> None:
    """The factor towards the total is the whole one when it moves the weights' empirical
    distribution by at most budget / sqrt(n) (KS distance), else the largest that does."""
    from replisynth.stats.weights import TOTAL_KS_BUDGET, total_scale

    w = np.random.default_rng(2).lognormal(0.0, 0.5, 20_000)

    def distance(f: float) -> float:
        grid = np.sort(np.concatenate([w, f * w]))
        a = np.searchsorted(np.sort(w), grid, side="right")
        b = np.searchsorted(np.sort(f * w), grid, side="right")
        return float(np.max(np.abs(a - b))) / len(w)

    limit = TOTAL_KS_BUDGET / np.sqrt(len(w))
    assert total_scale(w, 1.0005 * w.sum()) == pytest.approx(1.0005)  # small: all the way
    f = total_scale(w, 1.02 * w.sum())
    assert 1.0 < f < 1.02 and distance(f) <= limit < distance(1.02)
    assert distance(f + 0.002) > limit  # and not much less than it allows
    g = total_scale(w, 0.98 * w.sum())  # too much weight: down, under the same budget
    assert 0.98 < g < 1.0 and distance(g) <= limit


@pytest.mark.parametrize(("n", "seed", "region", "weight", "levels"), CASES)
def test_synthetic_weighted_shares_match_the_released_ones(
    tmp_path: Path, n: int, seed: int, region: str, weight: str, levels: str
) -> None:
    df = oversampled(n, seed, region, weight, levels)
    df.to_csv(tmp_path / "p.csv", index=False)
    tiers = run_pipeline(manifest_for(tmp_path / "p.csv", weight=weight), tmp_path)
    rel = _bundle_release(tmp_path)
    released = rel["weights"]
    assert released["column"] == weight
    table = released["tables"][region]
    true = _weighted_shares(df, region, weight)
    for lv, share in zip(table["levels"], table["shares"], strict=True):
        assert abs(share - true[lv]) <= 0.0005 + 1e-12  # rounded to 0.001, no more
    syn = pd.read_parquet(tmp_path / "t" / "synthetic" / "people.parquet")
    got = _weighted_shares(syn, region, weight)
    unweighted = syn[region].value_counts(normalize=True).to_dict()
    for lv, share in zip(table["levels"], table["shares"], strict=True):
        assert abs(got[lv] - share) <= SHARE_TOLERANCE
    # the check can fail: without the weights the first level's share is far off
    first = table["levels"].index(levels[0])
    assert abs(unweighted[levels[0]] - table["shares"][first]) > 0.2
    w = syn[weight].to_numpy(dtype="float64")
    grid = rel["blocks"]["all"]["marginals"][weight]["grid"]
    assert (w > 0).all() and w.min() >= min(grid) - 1e-9 and w.max() <= max(grid) + 1e-9
    assert abs(w.sum() / released["total"] - 1) < 2e-3  # as far as the KS budget allows
    src = tiers["sources"]["people"]
    assert src["marginals"]["weighted"]["passed"] and src["marginals"]["weighted"]["column"] == (
        weight
    )
    assert src["tier_met"] >= 1, src["marginals"]["problems"]
    from replisynth.verify.report import weighted_line
    from replisynth.verify.report_notes import certifies_text

    assert f"shares weighted by {weight}: max gap" in weighted_line(src["marginals"]["weighted"])
    assert f"weighted by its survey weight {weight}: the synthetic weighted shares are within" in (
        certifies_text(tiers)
    )
    from replisynth.verify.report import render_report

    html = render_report(tiers, {"people": rel}, {"people": syn}, "")
    assert f"also weighted by the column <strong>{weight}</strong>" in html
    # continuous columns: weighted shares of the released grid's decile intervals match too
    cuts = np.asarray(released["grids"]["income"]["cuts"])
    assert len(cuts) == 9 and set(cuts) <= set(grid_of(rel, "income"))
    assert src["marginals"]["weighted"]["max_decile_gap"]["income"] <= SHARE_TOLERANCE
    wmean = np.average(syn["income"], weights=syn[weight]) / syn["income"].mean()
    true_wmean = np.average(df["income"], weights=df[weight]) / df["income"].mean()
    assert abs(wmean - true_wmean) < 0.02


def test_tier1_fails_when_the_weights_lose_their_calibration(tmp_path: Path) -> None:
    """Verification reads the weighted shares: uncalibrated weights fail tier 1."""
    from replisynth.disclosure.bundle import load_bundle
    from replisynth.verify.verify import verify

    df = oversampled(4000, 3, "region", "wt", "abcd")
    df.to_csv(tmp_path / "p.csv", index=False)
    run_pipeline(manifest_for(tmp_path / "p.csv", weight="wt"), tmp_path)
    b = load_bundle(tmp_path / "t" / "bundle")
    syn = pd.read_parquet(tmp_path / "t" / "synthetic" / "people.parquet")
    syn["wt"] = np.random.default_rng(0).permutation(syn["wt"].to_numpy())
    t1 = verify(b, {"people": syn})["sources"]["people"]["marginals"]
    assert not t1["weighted"]["passed"] and not t1["passed"]
    assert any("weighted shares (by wt)" in p and "region" in p for p in t1["problems"])


def _attack_data(n: int, seed: int, nested: bool = False) -> pd.DataFrame:
    """Levels a, b, c common; d has 3 rows with heavy weights (below any cell size); e has
    30 rows, one of them carrying most of the level's weight (dominance). `nested`: grp is a
    coarsening of kind that puts d with a (g1 minus a would be d)."""
    rng = np.random.default_rng(seed)
    cat = rng.choice(list("abc"), p=[0.5, 0.3, 0.2], size=n).astype(object)
    cat[:3] = "d"
    cat[3:33] = "e"
    w = rng.uniform(0.5, 2.0, size=n)
    w[:3] = [41.3, 37.9, 45.2]
    grp = rng.choice(list("xyz"), size=n).astype(object)
    grp[:3] = "q"  # its own small cell too
    if nested:  # grp a coarsening of kind: g1 = a and the rare d, a cell of >= k rows
        grp = np.where(np.isin(cat, ["a", "d"]), "g1", "g2").astype(object)
    flag = rng.integers(0, 2, size=n)
    w2 = w.copy()
    w2[3] = 2000.0  # dominates level e (30 rows)
    return pd.DataFrame(
        {"pid": np.arange(1, n + 1), "kind": cat, "grp": grp, "flag": flag, "wt": w, "wt2": w2}
    )


def _cell_indicators(
    df: pd.DataFrame, release: dict
) -> tuple[np.ndarray, list[tuple], list[tuple]]:
    """The attacker's linear system: each released weight sum (a weighted table's cell, its
    bucket, the total) as a 0/1 vector over the atoms (rows alike in every tabulated column);
    also each row's atom."""
    tables = release["weights"]["tables"]
    cols = sorted(tables)
    cls = {}
    for c in cols:
        levels = tables[c]["levels"]
        cls[c] = [levels.index(v) if v in levels else len(levels) for v in df[c].tolist()]
    row_atom = list(zip(*(cls[c] for c in cols), strict=True))
    atoms = sorted(set(row_atom))
    rows = [np.ones(len(atoms))]
    for i, c in enumerate(cols):
        for j in range(len(tables[c]["levels"]) + 1):
            rows.append(np.array([float(a[i] == j) for a in atoms]))
    return np.array(rows), atoms, row_atom


def _in_span(A: np.ndarray, target: np.ndarray) -> bool:
    coef, *_ = np.linalg.lstsq(A.T, target, rcond=None)
    return bool(np.allclose(A.T @ coef, target, atol=1e-8))


def extract_release(
    df: pd.DataFrame, tmp_path: Path, weight: str, k: int
) -> tuple[dict, list[dict]]:
    """The release and SDC log of `df` with `weight` declared, cell size k."""
    from replisynth.config.manifest import load_manifest
    from replisynth.extract.extract import extract_source
    from replisynth.io.files import read_source

    path = tmp_path / "p.csv"
    df.to_csv(path, index=False)
    raw = manifest_for(
        path,
        weight=weight,
        categorical=["kind", "grp", "flag"],
        exclude=[c for c in ("wt", "wt2") if c != weight],
    )
    raw["sdc"] = {"min_cell_size": k}
    m = load_manifest(raw)
    data, meta = read_source(str(path))
    release, log = extract_source(data, meta, m, m.source("people"))
    return dict(release), log.entries


@pytest.mark.parametrize(
    ("n", "seed", "k", "nested"), [(3000, 2, 10, False), (6000, 8, 15, False), (4000, 3, 10, True)]
)
def test_small_cells_release_no_weighted_share_and_no_weight_sum(
    tmp_path: Path, n: int, seed: int, k: int, nested: bool
) -> None:
    df = _attack_data(n, seed, nested)
    release, log = extract_release(df, tmp_path, "wt", k)
    weights = release["weights"]
    if nested:  # the coarsening is released as derived from kind: no weighted table of its own
        assert release["derived"]["grp"]["from"] == "kind" and "grp" not in weights["tables"]
        assert any(e["stage"] == "weights" and e.get("column") == "grp" for e in log)
    for col in [c for c in ("kind", "grp") if c in weights["tables"]]:
        table = release["blocks"]["all"]["marginals"][col]["table"]
        assert "d" not in table["levels"] and "q" not in table["levels"]
        entry = weights["tables"][col]
        assert entry["levels"] == table["levels"]  # exactly the unweighted table's cells
        counts = table["counts"] + ([table["suppressed"]] if table["suppressed"] else [])
        assert min(counts) >= k  # every cell with a share holds at least k rows
    # combining every released weight sum (shares x total, buckets, the total) linearly never
    # isolates the small level's weight sum, nor any of its rows'
    A, atoms, row_atom = _cell_indicators(df, release)
    small = (df["kind"] == "d").to_numpy()
    mixed = {a for a, s in zip(row_atom, small, strict=True) if not s}
    pure = [a for a in {a for a, s in zip(row_atom, small, strict=True) if s} if a not in mixed]
    # a linear combination is constant on an atom: only atoms of the small level's rows alone,
    # one by one or together, could give its weights
    targets = [np.array([float(a == p) for a in atoms]) for p in pure]
    targets += [sum(targets, np.zeros(len(atoms)))] if pure else []
    for t in targets:
        assert not _in_span(A, t), "a suppressed cell's weight sum is derivable"
    # the test can fail: a released cell is in the span
    assert _in_span(A, A[1])


def test_a_dominated_cell_withholds_the_weighted_table(tmp_path: Path) -> None:
    df = _attack_data(4000, 4)
    release, log = extract_release(df, tmp_path, "wt2", 10)
    weights = release["weights"]
    assert "kind" not in weights["tables"]  # level e: one row holds most of its weight
    assert "flag" in weights["tables"]
    assert any(
        e.get("column") == "kind" and e["stage"] == "weights" and "dominance" in e["reason"]
        for e in log
    )
    assert max(release["blocks"]["all"]["marginals"]["wt2"]["grid"]) < 2000.0


def test_no_weight_key_releases_no_weights(tmp_path: Path) -> None:
    df = _attack_data(2000, 1)
    path = tmp_path / "p.csv"
    df.to_csv(path, index=False)
    from replisynth.config.manifest import load_manifest
    from replisynth.extract.extract import extract_source
    from replisynth.io.files import read_source

    m = load_manifest(manifest_for(path))
    data, meta = read_source(str(path))
    release, _ = extract_source(data, meta, m, m.source("people"))
    assert "weights" not in release


def _run_cli(tmp_path: Path, raw: dict) -> subprocess.CompletedProcess[str]:
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(raw))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "replisynth.workflow.cli",
            "extract",
            str(tmp_path / "m.yaml"),
            "--results",
            str(tmp_path / "res"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=300,
    )


@pytest.mark.parametrize(
    ("name", "column", "values", "says"),
    [
        ("svy", "nowhere", None, "is not in source"),
        ("hh", "wgt", ["x", "y"], "is not numeric"),
        ("pp", "pw", [-1.5, 2.0], "zero or negative"),
        ("zz", "w0", [np.nan, 2.0], "missing or infinite"),
    ],
)
def test_a_bad_weight_stops_with_one_line_naming_the_key(
    tmp_path: Path, name: str, column: str, values: list | None, says: str
) -> None:
    rng = np.random.default_rng(len(name))
    n = 300
    df = pd.DataFrame({"pid": np.arange(n), "x": rng.normal(size=n), "g": rng.integers(0, 3, n)})
    if values is not None:
        df[column] = rng.uniform(0.5, 2, size=n)
        df[column] = df[column].astype(object)
        df.loc[: len(values) - 1, column] = values
        if all(isinstance(v, float) for v in values):
            df[column] = df[column].astype("float64")
    path = tmp_path / "p.csv"
    df.to_csv(path, index=False)
    raw = manifest_for(path, weight=column)
    raw["sources"] = {name: raw["sources"]["people"]}
    r = _run_cli(tmp_path, raw)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    err = [ln for ln in lines if f"sources.{name}.weight" in ln]
    assert len(err) == 1 and says in err[0], r.stderr
    assert "Traceback" not in r.stderr
    assert "-1.5" not in r.stderr  # never a data value


def test_a_weight_with_another_role_is_refused(tmp_path: Path) -> None:
    from replisynth.config.manifest import load_manifest
    from replisynth.core.errors import ManifestError

    raw = manifest_for(tmp_path / "p.csv", weight="wt", categorical=["wt"])
    with pytest.raises(ManifestError, match=r"sources\.people\.weight: 'wt' is also in"):
        load_manifest(raw)


def test_a_checkpoint_reading_the_weight_keeps_it_through_pinning(tmp_path: Path) -> None:
    """The source weight does not change checkpoints; a WLS checkpoint that names it as its
    `weights` is pinned on the weights as calibrated at synthesis, which pinning leaves alone."""
    df = oversampled(4000, 21, "area", "sw", "uvw")
    rng = np.random.default_rng(21)
    df["y"] = 0.5 * np.log(df["income"]) + 0.3 * df["sex"] + rng.normal(size=len(df))
    df.to_csv(tmp_path / "p.csv", index=False)
    raw = manifest_for(tmp_path / "p.csv", weight="sw")
    raw["checkpoints"] = [
        {
            "tag": "wls",
            "source": "people",
            "model": "ols",
            "formula": "y ~ sex + age",
            "weights": "sw",
        }
    ]
    raw["verify"] = {"tier": 4}
    tiers = run_pipeline(raw, tmp_path)
    before = pd.read_parquet(tmp_path / "t" / "synthesize" / "people.parquet")["sw"]
    after = pd.read_parquet(tmp_path / "t" / "synthetic" / "people.parquet")["sw"]
    assert np.array_equal(before.to_numpy(), after.to_numpy())
    src = tiers["sources"]["people"]
    assert src["tier_met"] == 4, src
    assert src["marginals"]["weighted"]["passed"]


def test_the_release_gate_refuses_weighted_shares_off_the_tables_cells(tmp_path: Path) -> None:
    """sdc.check_release (run at extraction and by the output checker's review) refuses a
    weighted share of a level the table does not release, and a cut off the grid."""
    from replisynth.disclosure.sdc import DisclosureError, check_release

    release, _ = extract_release(_attack_data(3000, 6), tmp_path, "wt", 10)
    check_release(release, 10)
    bad = json.loads(json.dumps(release))
    entry = bad["weights"]["tables"]["kind"]
    entry["levels"].append("d")
    entry["shares"].append(0.04)
    with pytest.raises(DisclosureError, match="weighted shares off the table's cells"):
        check_release(bad, 10)
    bad = json.loads(json.dumps(release))
    bad["weights"]["grids"] = {"flag": {"cuts": [0.5], "shares": [0.5, 0.5]}}
    with pytest.raises(DisclosureError, match="cut off the grid"):
        check_release(bad, 10)


@pytest.mark.parametrize(("n", "seed", "scale"), [(5000, 4, 100), (3000, 9, 3)])
def test_whole_weights_of_a_stratified_dta_stay_whole(
    tmp_path: Path, n: int, seed: int, scale: int
) -> None:
    """Frequency weights (integers, a Stata file, the oversampled column a stratum): the
    synthetic weights are whole and in the original storage; tier 0 holds and the weighted
    shares match (rounding to whole weights costs little even for small weights)."""
    df = oversampled(n, seed, "reg", "fw", "abc")
    df["fw"] = np.maximum(np.round(df["fw"] * scale), 1).astype("int32")
    df.to_stata(tmp_path / "p.dta", write_index=False)
    tiers = run_pipeline(manifest_for(tmp_path / "p.dta", weight="fw", strata=["reg"]), tmp_path)
    src = tiers["sources"]["people"]
    assert src["tier_met"] >= 1, (src["schema"]["problems"], src["marginals"]["problems"])
    assert src["marginals"]["weighted"]["passed"]
    syn = pd.read_stata(tmp_path / "t" / "synthetic" / "people.dta")
    assert pd.api.types.is_integer_dtype(syn["fw"].dtype) and (syn["fw"] >= 1).all()
    table = _bundle_release(tmp_path)["weights"]["tables"]["reg"]
    got = _weighted_shares(syn, "reg", "fw")
    for lv, share in zip(table["levels"], table["shares"], strict=True):
        assert abs(got[lv] - share) <= SHARE_TOLERANCE


@pytest.mark.parametrize(("shards", "seed"), [(2, 5), (3, 12)])
def test_scattered_extraction_releases_the_same_weights(
    tmp_path: Path, shards: int, seed: int
) -> None:
    """Scatter by stratum (replisynth.workflow.scatter): the weights record, the SDC log and
    the calibrated synthetic data are the one-job stages', byte for byte."""
    from conftest import make_people

    from replisynth.config.manifest import load_manifest
    from replisynth.extract.extract import extract_source
    from replisynth.io.files import dumps_json, read_source
    from replisynth.synthesize.synthesize import synthesize_source
    from replisynth.workflow.scatter import gather_release, sample_blocks, stratum_blocks

    def as_read(x: object) -> object:
        return json.loads(dumps_json(x))

    make_people(1500, seed=seed).to_csv(tmp_path / "p.csv", index=False)
    m = load_manifest(manifest_for(tmp_path / "p.csv", strata=["region", "female"], weight="w"))
    src = m.source("people")
    data, meta = read_source(tmp_path / "p.csv")
    full, full_log = extract_source(data, meta, m, src)
    base, base_log = extract_source(data, meta, m, src, strata_blocks=False)
    parts = [
        as_read(stratum_blocks(data, m, "people", as_read(base), k, shards)) for k in range(shards)
    ]
    release, sdc = gather_release(
        as_read(base),
        as_read(base_log.entries),
        parts,
        m.sdc.min_cell_size,
    )
    assert full["weights"]["tables"] and dumps_json(release) == dumps_json(full)
    assert dumps_json(sdc) == dumps_json(full_log.entries)
    blocks: dict = {}
    for k in range(shards):
        blocks.update(sample_blocks(full, m.seed, 1500, k, shards))
    a = synthesize_source(dict(full), m.seed, 1500)
    b = synthesize_source(dict(full), m.seed, 1500, blocks=blocks)
    assert a.equals(b)
    from replisynth.stats.weights import weighted_share_gaps

    assert max(weighted_share_gaps(a, dict(full["weights"])).values()) <= SHARE_TOLERANCE


@pytest.mark.parametrize(("n", "k"), [(15, 20), (12, 30)])
def test_a_suppressed_weight_column_releases_no_weighted_statistic(
    tmp_path: Path, n: int, k: int
) -> None:
    """Fewer rows than the cell size: the weight's own grid is suppressed, and with it every
    weighted statistic (the synthetic file would have no weights to calibrate)."""
    rng = np.random.default_rng(n)
    df = pd.DataFrame(
        {
            "pid": np.arange(n),
            "kind": rng.choice(list("ab"), n),
            "grp": "x",
            "flag": rng.integers(0, 2, n),
            "wt": rng.uniform(1, 2, n),
            "wt2": 1.0,
        }
    )
    release, log = extract_release(df, tmp_path, "wt", k)
    assert release["blocks"]["all"]["marginals"]["wt"]["kind"] == "suppressed"
    assert "weights" not in release
    assert any(e["stage"] == "weights" and "own marginal is suppressed" in e["reason"] for e in log)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1000, 4000),
    levels=st.integers(2, 6),
    seed=st.integers(0, 2**31 - 1),
    spread=st.floats(0.2, 1.0),
)
def test_calibration_keeps_weights_in_range_and_meets_reachable_targets(
    n: int, levels: int, seed: int, spread: float
) -> None:
    """Targets from a permutation of the weights (so reachable): calibration stays inside
    [lo, hi], and meets them; the weights' own distribution is nearly the synthesized one.
    (A few hundred rows of heavy-tailed weights, one row holding ~15% of the total, cannot be
    matched by a permutation; raking then moves the weights' distribution, which tier 1's KS
    test of the weight column reports.)"""
    from replisynth.stats.weights import calibrate

    rng = np.random.default_rng(seed)
    cls = rng.integers(0, levels, n)
    other = rng.integers(-1, 3, n)  # a second margin with missing rows (-1)
    truth = rng.lognormal(sigma=spread, size=n) * (1 + cls)
    targets = []
    for c, k in ((cls, levels), (other, 3)):
        s = np.bincount(c[c >= 0], weights=truth[c >= 0], minlength=k)
        targets.append((c, s / s.sum()))
    w0 = rng.permutation(truth)
    lo, hi = float(truth.min()), float(truth.max())
    cal = calibrate(w0, targets, float(truth.sum()), lo, hi)
    assert (cal.weights >= lo - 1e-12).all() and (cal.weights <= hi + 1e-12).all()
    assert cal.max_gap < 0.005
    q = np.linspace(0.05, 0.95, 19)
    iqr = np.subtract(*np.quantile(truth, [0.75, 0.25]))
    assert np.max(np.abs(np.quantile(cal.weights, q) - np.quantile(truth, q))) < 0.25 * iqr
