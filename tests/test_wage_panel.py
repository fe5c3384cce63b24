"""The panel demo (config/wage_panel.yaml on data/wage_panel.csv): fixed- and random-effects
checkpoints with clustered SEs, end to end through Snakemake, to tier 4."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_workflow import _checkout, _smk

from replisynth.manifest import load_manifest


def test_wage_panel_manifest_loads_and_matches_its_data() -> None:
    from conftest import REPO

    from replisynth.manifest import check_columns

    m = load_manifest(REPO / "config" / "wage_panel.yaml")
    cols = list(pd.read_csv(REPO / "data" / "wage_panel.csv", nrows=1).columns)
    check_columns(m, "wages", cols)
    assert {c.model for c in m.checkpoints} == {"fe", "re"}
    assert all(c.cluster == "nr" for c in m.checkpoints)


@pytest.mark.workflow
def test_wage_panel_end_to_end(tmp_path) -> None:
    inside = _checkout(tmp_path / "inside")
    r = _smk(inside, "--cores", "2", "--configfile", "config/wage_panel.yaml")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    tiers = json.loads((inside / "results" / "wage_panel" / "verify" / "tiers.json").read_text())
    assert tiers["tier_met"] == 4 and tiers["passed"]
    for tag in ("fe_wage", "re_wage", "fe_hours"):
        c = tiers["checkpoints"][tag]
        assert c["max_dbeta_se"] < 1e-6 and c["max_dbeta_se_target"] < 1e-6, (tag, c["max_dbeta_se"])
    syn = pd.read_parquet(inside / "results" / "wage_panel" / "synthetic" / "wages.parquet")
    assert syn.groupby("nr")["year"].nunique().eq(syn.groupby("nr").size()).all()  # distinct years per man
    assert syn["nr"].nunique() == 545
