"""A derived column's table against its parent's: a derived level that joins released parent
levels with suppressed (rare) ones must not give the rare rows by subtraction."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import manifest_for, release_of

import replisynth.disclosure.review as review
import replisynth.extract.extract as extract
from replisynth.disclosure.linked_tables import audit_release_tables


def _data(
    parent: str, child: str, sizes: dict[str, int], coding: dict[str, str], seed: int
) -> pd.DataFrame:
    """`parent` with `sizes[level]` rows per level (shuffled), `child` = coding[parent], and
    `grand` a coding of `child` (a derived column of a derived column)."""
    rng = np.random.default_rng(seed)
    values = np.repeat(list(sizes), list(sizes.values()))
    rng.shuffle(values)
    kid = pd.Series(values).map(coding)
    return pd.DataFrame(
        {
            "pid": np.arange(len(values)),
            parent: values,
            child: kid,
            "grand": kid.map(lambda v: "top" if v == sorted(set(coding.values()))[0] else "rest"),
            "x": rng.normal(size=len(values)),
        }
    )


def subtraction_attack(release: dict, min_cell: int) -> list[tuple[str, str, int]]:
    """What an attacker recovers from the released source-level tables and maps alone: for
    each derived level, its count minus the counts of the released parent levels mapped to it
    (rows of the parent's suppressed categories); the recoveries in 1..min_cell-1."""
    all_m = release["blocks"]["all"]["marginals"]
    out = []
    for col, spec in release["derived"].items():
        pa, pb = all_m[spec["from"]], all_m[col]
        if pa["kind"] != "categorical" or pb["kind"] != "categorical":
            continue
        parent = dict(zip(pa["table"]["levels"], pa["table"]["counts"], strict=True))
        mapped: dict[object, int] = {}
        for a, b in spec["map"]:
            mapped[b] = mapped.get(b, 0) + parent[a]
        for lev, c in zip(pb["table"]["levels"], pb["table"]["counts"], strict=True):
            left = c - mapped.get(lev, 0)
            if 0 < left < min_cell:
                out.append((col, lev, left))
    return out


CASES = [
    # (k, sizes of the parent's levels, coding): rare levels mixed with common ones
    (10, {"a": 1524, "b": 800, "c": 12, "d": 3}, {"a": "g1", "d": "g1", "b": "g2", "c": "g2"}),
    (
        15,
        {"p": 900, "q": 700, "r": 400, "s": 4, "t": 6, "u": 9},
        {"p": "lo", "s": "lo", "q": "mid", "t": "mid", "r": "hi", "u": "hi"},
    ),
    (
        8,
        {"x1": 500, "x2": 450, "x5": 300, "x6": 200, "x3": 2, "x4": 5},
        {"x1": "A", "x3": "A", "x2": "B", "x6": "B", "x4": "C", "x5": "C"},
    ),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_no_rare_count_by_subtraction(tmp_path, monkeypatch, case):
    k, sizes, coding = CASES[case]
    parent, child = f"kind{case}", f"grp{case}"
    df = _data(parent, child, sizes, coding, seed=case)
    rare = {lev for lev, n in sizes.items() if n < k}

    # the old path (the fix switched off): the attack recovers a rare count exactly, and the
    # review's audit of the release finds it
    monkeypatch.setattr(extract, "withhold_bucket_split", lambda m, d, k: (m, []))
    old, _, _ = release_of(df, tmp_path, sdc={"min_cell_size": k})
    assert child in old["derived"] and old["derived"][child]["from"] == parent
    hits = subtraction_attack(old, k)
    assert hits
    # each recovery is the true number of rows of the parent's suppressed categories there
    shown = set(old["blocks"]["all"]["marginals"][parent]["table"]["levels"])
    bucket = df[~df[parent].isin(shown)]
    assert all(int((bucket[c] == g).sum()) == n for c, g, n in hits)
    assert child in {c for c, _, _ in hits}
    assert any(f["column"] == child for f in audit_release_tables(old, k))
    monkeypatch.undo()

    rel, _, log = release_of(df, tmp_path, sdc={"min_cell_size": k})
    assert child in rel["derived"]
    assert subtraction_attack(rel, k) == []
    assert not [f for f in audit_release_tables(rel, k) if f["column"] in rel["derived"]]
    # the derived table still adds up and its correlations are not released
    t = rel["blocks"]["all"]["marginals"][child]["table"]
    assert sum(t["counts"]) + t["suppressed"] == len(df)
    S = rel["blocks"]["all"]["spearman"]
    for j, d in enumerate(rel["dims"]):
        if d["column"] == child:
            assert all(v is None for i, v in enumerate(S[j]) if i != j)
    entries = [e for e in log.entries if e.get("column") == child and e["stage"] == "derived"]
    assert any(e["action"] == "secondary_suppression" for e in entries)
    text = " ".join(e["reason"] for e in entries)
    assert not any(f"'{lev}'" in text for lev in rare)  # no suppressed category named


def test_a_derived_map_that_respects_the_bucket_is_released_unchanged(tmp_path):
    k = 10
    sizes = {"a": 900, "b": 700, "c": 8, "d": 6}
    coding = {"a": "one", "b": "two", "c": "few", "d": "few"}  # the bucket maps alone
    df = _data("cat", "code", sizes, coding, seed=3)
    rel, _, log = release_of(df, tmp_path, sdc={"min_cell_size": k})
    t = rel["blocks"]["all"]["marginals"]["code"]["table"]
    assert dict(zip(t["levels"], t["counts"], strict=True)) == {"one": 900, "two": 700, "few": 14}
    assert not any(
        e["action"] == "secondary_suppression" and e.get("column") == "code" for e in log.entries
    )
    assert subtraction_attack(rel, k) == []


def test_review_of_a_bundle_made_without_the_fix_finds_the_leak(tmp_path, monkeypatch):
    from replisynth.config.manifest import load_manifest
    from replisynth.workflow.cli import cmd_extract

    k, sizes, coding = CASES[0]
    df = _data("kind", "grp", sizes, coding, seed=11)
    path = tmp_path / "people.csv"
    df.to_csv(path, index=False)
    raw = manifest_for(path)
    raw["sdc"] = {"min_cell_size": k}
    monkeypatch.setattr(extract, "withhold_bucket_split", lambda m, d, k: (m, []))
    bundle = cmd_extract(load_manifest(raw), tmp_path / "old")
    found = review.review_bundle(bundle)["findings"]
    assert any(f["check"] == "tables" and f.get("column") == "grp" for f in found)
    monkeypatch.undo()
    bundle = cmd_extract(load_manifest(raw), tmp_path / "new")
    found = review.review_bundle(bundle)["findings"]
    assert not any(f["check"] == "tables" and f.get("column") == "grp" for f in found)


@pytest.mark.parametrize("seed", [0, 5])
def test_strata_keep_the_derived_table_out_and_the_split_closed(tmp_path, seed):
    k = 10
    sizes = {"a": 1200, "b": 900, "c": 14, "d": 4}
    coding = {"a": "g1", "d": "g1", "b": "g2", "c": "g2"}
    df = _data("sort", "band", sizes, coding, seed=seed)
    df["area"] = np.random.default_rng(seed).choice(["n", "s", "e"], size=len(df))
    rel, _, _ = release_of(df, tmp_path, sdc={"min_cell_size": k}, strata=["area"])
    assert "band" in rel["derived"] and rel["strata"]["cells"]
    assert subtraction_attack(rel, k) == []
    assert audit_release_tables(rel, k) == []
    for cell in rel["strata"]["cells"]:
        assert rel["blocks"][cell["id"]]["marginals"]["band"]["kind"] == "suppressed"


def test_pipeline_runs_with_a_split_derived_column(tmp_path):
    from conftest import make_people, run_pipeline

    df = make_people(1500, seed=4)
    region = df["region"].to_numpy().copy()
    region[:3] = "z"  # a rare region
    df["region"] = region
    df["zone"] = pd.Series(region).map({"a": "w", "z": "w", "b": "e", "c": "e", "d": "n"})
    path = tmp_path / "people.csv"
    df.to_csv(path, index=False)
    raw = manifest_for(path)
    raw["sdc"] = {"min_cell_size": 10}
    tiers = run_pipeline(raw, tmp_path)
    bundle_rel = next(tmp_path.rglob("source_people.json"))
    rel = json.loads(bundle_rel.read_text())
    assert "zone" in rel["derived"] and subtraction_attack(rel, 10) == []
    # tier 1 (no checkpoints): the derived column's released counts are met exactly
    assert tiers["tier_met"] >= 1 and tiers["sources"]["people"]["marginals"]["passed"]
    assert tiers["sources"]["people"]["marginals"]["variables"]["zone"]["exact_counts"]


@pytest.mark.parametrize("as_factor", [True, False])
def test_checkpoint_means_of_a_coding_of_a_rare_parent_are_withheld(as_factor):
    """A checkpoint on a coding of a column with rare categories (a factor of the coding, or
    its 0/1 indicator as a term of its own) releases no design mean of it: mean × n minus the
    parent's released counts would give the rare count."""
    from replisynth.config.manifest import Checkpoint
    from replisynth.extract.checkpoints import factor_terms_with_rare_levels

    k, sizes, coding = CASES[0]
    df = _data("kind", "grp", sizes, coding, seed=3)
    df["is_g1"] = (df["grp"] == "g1").astype(int)
    df["y"] = df["x"] + df["is_g1"] + np.random.default_rng(1).normal(size=len(df))
    formula = "y ~ C(grp) + x" if as_factor else "y ~ is_g1 + x"
    cp = Checkpoint(tag="c", source="s", model="ols", formula=formula)
    from replisynth.stats.design import build_design

    terms = build_design(df, cp).terms
    withheld = factor_terms_with_rare_levels(df, formula, terms, k)
    level_terms = {t for t in terms if "grp" in t or t == "is_g1"}
    assert level_terms and level_terms <= withheld
    assert "x" not in withheld and "Intercept" not in withheld
    # a coding of a parent without rare categories keeps its means
    common = df[df["kind"].isin(["a", "b"])].copy()
    terms_c = build_design(common, cp).terms
    assert not factor_terms_with_rare_levels(common, formula, terms_c, k)
