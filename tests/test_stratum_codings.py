"""Codings inside strata: a column whose listed classes in a stratum hold exactly the rows of
a class another column's stratum table leaves unlisted would give that class's count, and
the unlisted total less it the protected cells. Such a column keeps its source-level table
only (disclosure/stratum_codings.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import manifest_for

from replisynth.config.manifest import load_manifest
from replisynth.disclosure.stratum_codings import stratum_codings
from replisynth.extract.extract import extract_source
from replisynth.io.files import dumps_json, read_source
from replisynth.workflow.cli import cmd_extract
from replisynth.workflow.pipeline import stage_synthesize
from replisynth.workflow.scatter import gather_release, stratum_blocks

K = 50


def _regions(code: str, seed: int = 3) -> pd.DataFrame:
    """Stratum north: visits 3 held by 20 rows (primary), so secondary suppression leaves 2
    unlisted too; `code` "split" is (visits == 2) + 10·female, "twos" visits == 2 alone,
    "unrelated" a dummy drawn apart from visits, "none" no code column."""
    rng = np.random.default_rng(seed)
    north = rng.choice([0, 1, 2], p=[0.4, 0.35, 0.25], size=1100).astype("float64")
    north[:20] = 3.0
    south = rng.choice([0, 1, 2, 3], p=[0.3, 0.3, 0.2, 0.2], size=1300).astype("float64")
    df = pd.DataFrame({"region": ["north"] * 1100 + ["south"] * 1300, "visits": [*north, *south]})
    df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df.insert(0, "pid", np.arange(len(df)))
    df["female"] = rng.integers(0, 2, size=len(df))
    if code == "split":
        df["code"] = (df["visits"] == 2).astype(int) + 10 * df["female"]
    elif code == "twos":
        df["code"] = (df["visits"] == 2).astype(int)
    elif code == "unrelated":
        df["code"] = rng.integers(0, 3, size=len(df))
    df["x"] = rng.normal(size=len(df))
    return df


def _extract(tmp: Path, df: pd.DataFrame) -> tuple[dict, list[dict]]:
    df.to_csv(tmp / "people.csv", index=False)
    raw = manifest_for(tmp / "people.csv", strata=["region"])
    raw["checkpoints"] = []
    bundle = cmd_extract(load_manifest(raw), tmp / "out")
    rel = json.loads((bundle / "source_people.json").read_text())
    log = json.loads((bundle / "sdc_log.json").read_text())
    review = json.loads((tmp / "out" / "t" / "review" / "disclosure_review.json").read_text())
    assert review["findings"] == [], review["findings"]  # the output checker's review is clean
    return rel, log["decisions"]


def _north(rel: dict) -> dict:
    return next(b for b in rel["blocks"].values() if b.get("key") == ["north"])


@pytest.mark.parametrize("code", ["split", "twos"])
def test_a_coding_that_counts_an_unlisted_class_keeps_its_source_table_only(
    tmp_path: Path, code: str
) -> None:
    """The attack of `test_coding_and_a_dummy_inside_strata_do_not_split_a_bucket` (round
    22): north's visits table leaves 2 and 3 unlisted; code's classes holding the 2s are
    listed. After extraction code has no stratum table, and no listed count of any stratum
    table less visits' unlisted total in north gives the 20 rows."""
    rel, log = _extract(tmp_path, _regions(code))
    north = _north(rel)
    v = north["marginals"]["visits"]["table"]
    assert v["suppressed"] > 20  # the primary cell and its secondary partner, unlisted
    assert {2.0, 3.0}.isdisjoint(v["levels"])
    for block in rel["blocks"].values():
        if block.get("key") is not None:
            assert block["marginals"]["code"]["kind"] == "suppressed"
    assert rel["blocks"]["all"]["marginals"]["code"]["kind"] == "categorical"
    withheld = [e["column"] for e in log if e.get("action") == "withheld_coding"]
    # a function of visits alone is released as derived (no stratum tables, computed from
    # visits outside); one of two columns is withheld by this rule
    assert withheld == ([] if code == "twos" else ["code"])
    assert ("code" in (rel.get("derived") or {})) == (code == "twos")
    # the attacker's step on every table listed in north: none gives the 20 threes
    for col, m in north["marginals"].items():
        if col == "visits" or m["kind"] != "categorical":
            continue
        counts = m["table"]["counts"]
        sums = {
            sum(counts[i] for i in range(len(counts)) if mask >> i & 1)
            for mask in range(1, 1 << len(counts))
        }
        assert v["suppressed"] - 20 not in sums, f"{col}'s listed counts give the unlisted 2s"


def test_unrelated_columns_keep_their_stratum_tables(tmp_path: Path) -> None:
    """A column that is no coding of visits in any stratum is listed per stratum as before."""
    rel, log = _extract(tmp_path, _regions("unrelated"))
    assert _north(rel)["marginals"]["code"]["kind"] == "categorical"
    assert _north(rel)["marginals"]["female"]["kind"] == "categorical"
    assert not [e for e in log if e.get("action") == "withheld_coding"]


@pytest.mark.parametrize("shards", [1, 2])
def test_scattered_extraction_withholds_the_same_tables(tmp_path: Path, shards: int) -> None:
    """The stratum jobs send their codings (class codes, a staging file) to the gather, which
    gives the release and log of one job, byte for byte."""
    path = tmp_path / "p.csv"
    _regions("split").to_csv(path, index=False)
    raw = manifest_for(path, strata=["region"])
    raw["checkpoints"] = []
    m = load_manifest(raw)
    data, meta = read_source(path)
    full, full_log = extract_source(data, meta, m, m.source("people"))
    base, base_log = extract_source(data, meta, m, m.source("people"), strata_blocks=False)
    js = lambda x: json.loads(dumps_json(x))  # noqa: E731
    parts = [js(stratum_blocks(data, m, "people", js(base), s, shards)) for s in range(shards)]
    release, sdc = gather_release(js(base), js(base_log.entries), parts, m.sdc.min_cell_size)
    assert any(e.get("action") == "withheld_coding" for e in sdc)
    assert dumps_json(release) == dumps_json(full)
    assert dumps_json(sdc) == dumps_json(full_log.entries)


def test_synthesis_runs_from_a_release_with_withheld_stratum_tables(tmp_path: Path) -> None:
    """The outside side draws the withheld column from its source-level table: every row, its
    source-level levels only, the block sizes kept."""
    df = _regions("split")
    rel, _ = _extract(tmp_path, df)
    bundle = tmp_path / "out" / "t" / "bundle"
    if not bundle.exists():
        bundle = next((tmp_path / "out").glob("*/bundle"))
    stage_synthesize(bundle, "people", tmp_path / "u.parquet")
    syn = pd.read_parquet(tmp_path / "u.parquet")
    assert len(syn) == len(df)
    levels = set(rel["blocks"]["all"]["marginals"]["code"]["table"]["levels"])
    assert set(syn["code"].dropna().unique()) <= levels
    assert (syn["region"] == "north").sum() == 1100


def test_stratum_codings_records_only_pure_listable_classes() -> None:
    """Class 1 of a is held by b's classes 0 and 1, which hold nothing else (a record);
    class 0 of a shares b's class 2 with part of a's class 2 (none); a's class 2 is held by
    b's class 3, which is small (none)."""
    from replisynth.stats.marginals import FrequencyTable

    a = np.asarray([1] * 60 + [1] * 60 + [0] * 70 + [2] * 70 + [2] * 10)
    b = np.asarray([0] * 60 + [1] * 60 + [2] * 70 + [2] * 70 + [3] * 10)
    ta = FrequencyTable([0, 1, 2], [70, 120, 80], False)
    tb = FrequencyTable([0, 1, 2, 3], [60, 60, 140, 10], False)
    recs = stratum_codings({"a": (a, ta), "b": (b, tb)}, np.ones(len(a), dtype=bool), K)
    found = {(r["column"], r["class"], r["by"]): r for r in recs}
    assert found[("a", 1, "b")]["held"] == [0, 1] and found[("a", 1, "b")]["minus"] == []
    assert ("a", 0, "b") not in found and ("a", 2, "b") not in found
    # b's class 0 is held by a's class 1, which also holds b's class 1 (whole, listable):
    # a record with that class to subtract
    assert found[("b", 0, "a")]["minus"] == [1]
    # one stratum: the source-level counts equal the stratum's, so `source` is set
    assert found[("a", 1, "b")]["source"]
    # ten of b's class 0 outside the stratum: its source-level count is not the stratum's
    recs = stratum_codings({"a": (a, ta), "b": (b, tb)}, np.arange(len(a)) >= 10, K)
    found = {(r["column"], r["class"], r["by"]): r for r in recs}
    assert found[("a", 1, "b")]["held"] == [0, 1] and not found[("a", 1, "b")]["source"]
