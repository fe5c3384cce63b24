"""Inputs a new user brings that the demo does not have: text row ids, strata that release no
cell, outcomes without residual variation, column names that are Python keywords. Each either
runs through or stops with one clear line naming the checkpoint or column."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from conftest import make_people, manifest_for, run_pipeline


def test_text_row_ids_keep_their_logical_type(tmp_path: Path) -> None:
    """An id column of text ("P00017") is renumbered 1..rows as text, so the schema floor holds
    (it was renumbered as integers: tier 0 always failed on 'logical type integer, released
    string')."""
    df = make_people(600)
    df["pid"] = [f"P{i:05d}" for i in range(len(df))]
    df.to_csv(tmp_path / "p.csv", index=False)
    raw = manifest_for(tmp_path / "p.csv")
    raw["verify"] = {"tier": 1}
    tiers = run_pipeline(raw, tmp_path / "out")
    assert tiers["sources"]["people"]["schema"]["problems"] == []
    assert tiers["tier_met"] >= 1
    syn = pd.read_parquet(tmp_path / "out" / "t" / "synthetic" / "people.parquet")
    assert syn["pid"].tolist() == [str(i) for i in range(1, len(df) + 1)]


def test_strata_without_a_released_cell_verify(tmp_path: Path) -> None:
    """Every cell of female x region is below min_cell_size, so no stratum is released and the
    source is synthesized as one block; verification says so instead of failing inside tier 3
    (it raised TypeError on the missing stratum key: an internal error)."""
    df = make_people(600)
    df.to_csv(tmp_path / "p.csv", index=False)
    raw = manifest_for(tmp_path / "p.csv", strata=["female", "region"])
    raw["sdc"] = {"min_cell_size": 200}
    raw["verify"] = {"tier": 3}
    tiers = run_pipeline(raw, tmp_path / "out")
    strata = tiers["sources"]["people"]["strata"]
    assert "no stratum released" in strata["note"] and strata["strata"] == []
    assert tiers["tier_met"] == 3
