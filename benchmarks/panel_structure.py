"""Entity-structure fidelity of a panel run: per-term SE ratios of every checkpoint (from
verify/tiers.json), the within-entity share of variance of chosen columns and whether
columns are constant within entity, original vs synthetic.

Usage: python benchmarks/panel_structure.py RESULTS_DIR ORIGINAL.csv SYNTHETIC.parquet ENTITY COL [COL ...]
e.g.   python benchmarks/panel_structure.py results/wage_panel data/wage_panel.csv \
           results/wage_panel/synthetic/wages.parquet nr married union educ black hisp hours exper
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def within_share(df: pd.DataFrame, entity: str, col: str) -> float:
    """Within-entity sum of squares over total sum of squares of `col` (raw scale)."""
    x = pd.to_numeric(df[col], errors="coerce").astype("float64")
    dev = x - x.groupby(df[entity]).transform("mean")
    tot = x - x.mean()
    return float((dev**2).sum() / (tot**2).sum())


def constant_share(df: pd.DataFrame, entity: str, col: str) -> float:
    """Share of entities whose non-missing values of `col` are all equal."""
    return float(df.groupby(entity)[col].nunique(dropna=True).le(1).mean())


def main(argv: list[str]) -> None:
    res, orig, syn, entity, *cols = argv
    tiers = json.loads((Path(res) / "verify" / "tiers.json").read_text())
    print("tier_met", tiers["tier_met"])
    for tag, c in tiers["checkpoints"].items():
        print(tag, {t["term"]: round(t["se_ratio"], 2) for t in c["terms"]})
    o, s = pd.read_csv(orig), pd.read_parquet(syn)
    for col in cols:
        print(f"{col}: within share {within_share(o, entity, col):.2f} -> {within_share(s, entity, col):.2f}; "
              f"constant within entity {constant_share(o, entity, col):.2f} -> {constant_share(s, entity, col):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
