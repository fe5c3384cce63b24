"""Entity-structure fidelity of a panel run: per-term SE ratios of every checkpoint (from
verify/tiers.json; fe/re checkpoints marked), and per chosen column, original vs synthetic:
the within-entity share of variance, the share of entities in which it is constant, the
share of entities (with 2+ periods) in which it follows the period trend exactly
(x − x̄_e = slope·(t − t̄_e), slope the pooled within slope of the original), and the lag-1
autocorrelation of its within-entity deviations in period order (pooled over entities), on
the raw values and on the normal scores (the scale `within_lag1` is released on).

Usage: python benchmarks/panel_structure.py RESULTS_DIR ORIGINAL.csv SYNTHETIC.parquet ENTITY [--time TIME] COL [COL ...]
e.g.   python benchmarks/panel_structure.py results/wage_panel data/wage_panel.csv \
           results/wage_panel/synthetic/wages.parquet nr --time year married union educ black hisp hours exper
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special, stats


def within_share(df: pd.DataFrame, entity: str, col: str) -> float:
    """Within-entity sum of squares over total sum of squares of `col` (raw scale)."""
    x = pd.to_numeric(df[col], errors="coerce").astype("float64")
    dev = x - x.groupby(df[entity]).transform("mean")
    tot = x - x.mean()
    return float((dev**2).sum() / (tot**2).sum())


def constant_share(df: pd.DataFrame, entity: str, col: str) -> float:
    """Share of entities whose non-missing values of `col` are all equal."""
    return float(df.groupby(entity)[col].nunique(dropna=True).le(1).mean())


def _devs(df: pd.DataFrame, entity: str, col: str) -> pd.Series:
    x = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return x - x.groupby(df[entity]).transform("mean")


def trend_slope(df: pd.DataFrame, entity: str, time: str, col: str) -> float:
    """Pooled within-entity slope of `col` on the period."""
    xd, td = _devs(df, entity, col), _devs(df, entity, time)
    return float((xd * td).sum() / (td * td).sum())


def trend_share(df: pd.DataFrame, entity: str, time: str, col: str, slope: float) -> float:
    """Share of entities with 2+ rows in which x − x̄_e = slope·(t − t̄_e) on every row."""
    bad = (_devs(df, entity, col) - slope * _devs(df, entity, time)).abs() > 1e-9
    g = pd.DataFrame({"e": df[entity], "bad": bad})
    size = g.groupby("e").size()
    anybad = g.groupby("e")["bad"].any()
    multi = size >= 2
    return float((~anybad[multi]).mean()) if multi.any() else float("nan")


def lag1(df: pd.DataFrame, entity: str, time: str, col: str, scores: bool = False) -> float:
    """Lag-1 autocorrelation of within-entity deviations in period order, pooled over entities;
    with `scores`, of the van der Waerden normal scores (the statistic the bundle releases)."""
    if scores:
        x = pd.to_numeric(df[col], errors="coerce").astype("float64")
        ok = x.notna()
        sc = pd.Series(0.0, index=df.index)
        sc[ok] = special.ndtri((stats.rankdata(x[ok]) - 0.5) / int(ok.sum()))
        df = df.assign(**{col: sc - sc[ok].mean()})
    d = pd.DataFrame(
        {
            "e": df[entity],
            "t": pd.to_numeric(df[time], errors="coerce"),
            "w": _devs(df, entity, col),
        }
    )
    d = d.sort_values(["e", "t"], kind="stable")
    prev = d.groupby("e")["w"].shift(1)
    ok = prev.notna() & d["w"].notna()
    a, b = d["w"][ok].to_numpy(), prev[ok].to_numpy()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def main(argv: list[str]) -> None:
    time = None
    if "--time" in argv:
        i = argv.index("--time")
        time = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    res, orig, syn, entity, *cols = argv
    tiers = json.loads((Path(res) / "verify" / "tiers.json").read_text())
    print("tier_met", tiers["tier_met"])
    for tag, c in tiers["checkpoints"].items():
        print("se_ratio", tag, {t["term"]: round(t["se_ratio"], 2) for t in c["terms"]})
    o, s = pd.read_csv(orig), pd.read_parquet(syn)
    for col in cols:
        line = (
            f"{col}: within share {within_share(o, entity, col):.2f} -> {within_share(s, entity, col):.2f}; "
            f"constant within entity {constant_share(o, entity, col):.2f} -> {constant_share(s, entity, col):.2f}"
        )
        if time is not None and col != time:
            b = trend_slope(o, entity, time, col)
            line += (
                f"; trend identity (slope {b:.3g}) {trend_share(o, entity, time, col, b):.2f} -> {trend_share(s, entity, time, col, b):.2f}"
                f"; within lag-1 autocorrelation {lag1(o, entity, time, col):.3f} -> {lag1(s, entity, time, col):.3f}"
                f" (normal scores {lag1(o, entity, time, col, True):.3f} -> {lag1(s, entity, time, col, True):.3f})"
            )
        print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
