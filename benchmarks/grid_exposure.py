"""How many of a block's values its released grid gives away exactly, and how many synthetic
rows then reproduce an original record: on crafted sources with small strata and on the demo.

    PYTHONPATH=src python benchmarks/grid_exposure.py [--demo config/config.yaml]

Exposure of a block's column: the share of its non-missing values that equal a number of the
released marginal (the 101-point grid, and the window means when released) and are held by
fewer than 5 rows of the block (a value shared by 5 or more rows is an atom, not a person).
Identical rows: synthetic rows equal to an original row on every released column
(`audit.identical_rows`, the audit's measure).
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.manifest import load_manifest
from replisynth.disclosure.audit import audit_columns, identical_rows
from replisynth.extract.extract import extract_source
from replisynth.io.files import FileMeta, read_source
from replisynth.synthesize.synthesize import synthesize_source

ATOM = 5  # rows sharing a value from which it counts as an atom


def released_numbers(m: dict[str, Any]) -> np.ndarray:
    """Every number a grid marginal releases."""
    return np.asarray(
        list(m.get("grid") or []) + list(m.get("window_means") or []), dtype="float64"
    )


def exposure(values: np.ndarray, m: dict[str, Any]) -> float:
    """Share of `values` equal to a released number and held by fewer than ATOM rows."""
    v = values[np.isfinite(values)]
    if not len(v):
        return 0.0
    uniq, counts = np.unique(v, return_counts=True)
    rare = uniq[counts < ATOM]
    hit = np.isin(v, np.intersect1d(rare, released_numbers(m)))
    return float(hit.mean())


def block_rows(df: pd.DataFrame, release: dict[str, Any], block: dict[str, Any]) -> np.ndarray:
    """Mask of the original rows a released block describes."""
    if block["key"] is None:
        return np.ones(len(df), dtype=bool)
    mask = np.ones(len(df), dtype=bool)
    for c, k in zip(release["strata"]["columns"], block["key"], strict=True):
        mask &= (df[c].astype(str) == str(k)).to_numpy()
    return mask


def exposures(df: pd.DataFrame, release: dict[str, Any]) -> list[tuple[str, str, int, float]]:
    """(block, column, values, exposure) of every grid marginal."""
    out = []
    for bid, block in release["blocks"].items():
        mask = block_rows(df, release, block)
        for col, m in block["marginals"].items():
            if m["kind"] not in ("continuous", "ordinal_grid"):
                continue
            v = pd.to_numeric(df.loc[mask, col], errors="coerce").to_numpy(dtype="float64")
            out.append((bid, col, int(np.isfinite(v).sum()), exposure(v, m)))
    return out


def crafted(strata: int, rows: int, seed: int, wide: bool) -> pd.DataFrame:
    """A source of `strata` strata of `rows` rows: an income column, and when `wide` a second
    continuous column and a category."""
    rng = np.random.default_rng(seed)
    n = strata * rows
    df = pd.DataFrame(
        {
            "cell": np.repeat([f"c{i:02d}" for i in range(strata)], rows),
            "income": np.round(np.exp(10 + 0.6 * rng.normal(size=n)), 2),
        }
    )
    if wide:
        df["score"] = np.round(rng.normal(50, 10, size=n), 3)
        df["sex"] = rng.choice(["f", "m"], size=n)
    return df


def run(df: pd.DataFrame, raw: dict[str, Any], name: str) -> None:
    man = load_manifest(raw)
    src = man.sources[0]
    rel, _ = extract_source(df, FileMeta(), man, src)
    ex = exposures(df, rel)
    strata = [e for e in ex if e[0] != "all"]
    syn = synthesize_source(rel, man.seed)
    cols = [c["name"] for c in audit_columns(rel)]
    ident = identical_rows(df[cols].reset_index(drop=True), syn[cols], cols)
    small = [e[3] for e in strata if e[2] < 200]
    print(
        f"{name} ({man.sdc.profile}): source-level exposure max {max([e[3] for e in ex if e[0] == 'all'] or [0]):.1%}; "
        f"strata: mean {np.mean([e[3] for e in strata] or [0]):.1%}, max {max([e[3] for e in strata] or [0]):.1%}"
        f"{f', blocks < 200 values max {max(small):.1%}' if small else ''}; identical synthetic rows {ident['share']:.1%} ({ident['count']})"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", default=None, help="also measure this manifest's first source")
    args = ap.parse_args()
    for profile in ("standard", "iab", "fsrdc", "strict"):
        for rows in (50, 80):
            cells = 3000 // rows
            raw = {
                "name": "g",
                "seed": 3,
                "sources": {"s": {"path": "x.csv", "strata": ["cell"]}},
                "sdc": {"profile": profile},
            }
            if rows < load_manifest(raw).sdc.min_cell_size:
                continue
            for wide in (False, True):
                run(
                    crafted(cells, rows, 7, wide),
                    raw,
                    f"crafted {cells} strata x {rows} rows, {'3 columns' if wide else 'income only'}",
                )
    if args.demo:
        import yaml

        base = yaml.safe_load(open(args.demo, encoding="utf-8"))
        for profile in ("standard", "iab", "fsrdc", "strict"):
            raw = copy.deepcopy(base)
            raw["sdc"] = {"profile": profile}
            raw["checkpoints"] = []
            name = next(iter(raw["sources"]))
            raw["sources"] = {name: raw["sources"][name]}
            df, meta = read_source(raw["sources"][name]["path"])
            man = load_manifest(raw)
            rel, _ = extract_source(df, meta, man, man.sources[0])
            ex = exposures(df, rel)
            strata = [e for e in ex if e[0] != "all"]
            syn = synthesize_source(rel, man.seed)
            cols = [c["name"] for c in audit_columns(rel)]
            ident = identical_rows(df[cols].reset_index(drop=True), syn[cols], cols)
            worst = max(strata, key=lambda e: e[3]) if strata else None
            print(
                f"demo ({profile}): source-level exposure max {max([e[3] for e in ex if e[0] == 'all'] or [0]):.1%}; strata mean "
                f"{np.mean([e[3] for e in strata] or [0]):.1%}, max {worst[3] if worst else 0:.1%}"
                f"{f' ({worst[1]} in {worst[0]}, {worst[2]} values)' if worst else ''}; identical synthetic rows {ident['share']:.1%} ({ident['count']})"
            )


if __name__ == "__main__":
    main()
