"""Missingness in panels with entity structure (replisynth.synthesize.entities): firms that skip a survey
module in every year skip its related questions too, so the missingness of two columns is
correlated mostly between entities. Within-entity swaps never move a missing value, so this
correlation is the hierarchical copula's and `refine_blocks`' to get right."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.manifest import load_manifest
from replisynth.io.files import read_json
from replisynth.stats.copula_dims import synthetic_dim_matrix
from replisynth.workflow.cli import cmd_extract, cmd_synthesize


def make_missing_panel(G: int = 240, T: int = 3, seed: int = 5) -> pd.DataFrame:
    """G firms × T years (balanced). Firm effect f ~ N(0, 1); a = f + ε, b = 0.8 a + 0.6 ε'
    (ε, ε' ~ N(0, 1) i.i.d. per row). Missingness: firm-level module flag m_e = 1 with
    probability 0.2; a is missing in every year of flagged firms; b is missing in those rows
    too and, independently, in 5% of the other rows; c ~ N(0, 1) is never missing.
    True Spearman(missing(a), missing(b)) ≈ 0.2/√(0.2 · 0.24) ≈ 0.91 at the row level."""
    r = np.random.default_rng(seed)
    f = r.standard_normal(G)
    i = np.repeat(np.arange(G), T)
    a = f[i] + r.standard_normal(G * T)
    b = 0.8 * a + 0.6 * r.standard_normal(G * T)
    flag = (r.random(G) < 0.2)[i]
    a[flag] = np.nan
    b[flag | (r.random(G * T) < 0.05)] = np.nan
    return pd.DataFrame(
        {
            "firm": i + 1,
            "year": np.tile(np.arange(2000, 2000 + T), G),
            "a": a,
            "b": b,
            "c": r.standard_normal(G * T) + 0.5 * f[i],
        }
    )


def manifest(path: Path) -> dict[str, Any]:
    return {
        "name": "pmiss",
        "seed": 7,
        "sources": {
            "p": {"path": str(path), "ids": [], "panel": {"entity": "firm", "time": "year"}}
        },
        # 20: the ~29 rows with b missing and a observed are a cell of the missingness
        # pair's 2x2 table, which the correlation gate withholds below min_cell_size
        "sdc": {"min_cell_size": 20},
        "checkpoints": [
            {
                "tag": "fe_c",
                "source": "p",
                "model": "fe",
                "formula": "c ~ a",
                "entity": "firm",
                "time": "year",
                "vcov": "cluster:firm",
            }
        ],
        "verify": {"tier": 2},
    }


def test_entity_level_missingness_keeps_its_correlation(tmp_path: Path) -> None:
    orig = make_missing_panel()
    orig.to_csv(tmp_path / "p.csv", index=False)
    bundle = cmd_extract(load_manifest(manifest(tmp_path / "p.csv")), tmp_path / "ext")
    rel = read_json(bundle / "source_p.json")
    names = [d["column"] + ("?" if d["kind"] == "missing" else "") for d in rel["dims"]]
    assert {"a?", "b?"} <= set(names)
    ia, ib = names.index("a?"), names.index("b?")
    released = rel["blocks"]["all"]["spearman"][ia][ib]
    assert released > 0.8
    syn = pd.read_parquet(cmd_synthesize(bundle, tmp_path / "one")["p"])
    X = synthetic_dim_matrix(syn, rel)
    got = float(pd.DataFrame(X[:, [ia, ib]]).corr(method="spearman").iloc[0, 1])
    assert abs(got - released) < 0.05, (got, released)
    # the value correlation is kept as well, and missing counts are exact
    va, vb = names.index("a"), names.index("b")
    got_v = float(pd.DataFrame(X[:, [va, vb]]).corr(method="spearman").iloc[0, 1])
    assert abs(got_v - rel["blocks"]["all"]["spearman"][va][vb]) < 0.05
    assert (
        syn["a"].isna().sum() == orig["a"].isna().sum()
        and syn["b"].isna().sum() == orig["b"].isna().sum()
    )
