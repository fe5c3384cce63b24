"""Inputs a new user brings that the demo does not have: text row ids, strata that release no
cell, outcomes without residual variation, column names that are Python keywords. Each either
runs through or stops with one clear line naming the checkpoint or column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_people, manifest_for, run_pipeline

from replisynth.config.manifest import load_manifest
from replisynth.core.errors import CheckpointError, ManifestError, ReplisynthError, TierNotMet
from replisynth.verify.verdict import check_tier
from replisynth.workflow.cli import cmd_extract


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


@pytest.mark.parametrize(
    ("outcome", "message"),
    [("konst", "takes one value"), ("exact", "is fitted exactly")],
)
def test_outcome_without_residual_variation_is_one_clear_error(
    tmp_path: Path, outcome: str, message: str
) -> None:
    """A constant outcome, or one the regressors give exactly, has zero standard errors: no
    tolerance can be verified. Extraction stops naming the checkpoint and the outcome (it ran
    to verification, whose verdict then failed with an internal TypeError on the missing
    dbeta/SE)."""
    df = make_people(400)
    df["konst"] = 1.0
    df["exact"] = 2 * df["x1"] - df["x2"] + 1
    df.to_csv(tmp_path / "p.csv", index=False)
    raw = manifest_for(tmp_path / "p.csv")
    raw["checkpoints"] = [
        {"tag": "c", "source": "people", "model": "ols", "formula": f"{outcome} ~ x1 + x2"}
    ]
    with pytest.raises(
        CheckpointError, match=rf"checkpoints\[0\] \(c\): the outcome '{outcome}' {message}"
    ):
        cmd_extract(load_manifest(raw), tmp_path / "out")


def test_verdict_names_a_checkpoint_without_dbeta(tmp_path: Path) -> None:
    """A failed checkpoint whose dbeta/SE is undefined (null in tiers.json) is named in the
    verdict's one line, not an internal error."""
    tiers = {
        "passed": False,
        "tier_met": 3,
        "tier_required": 4,
        "sources": {},
        "checkpoints": {"c": {"passed": False, "max_dbeta_se": None, "max_dbeta_se_target": None}},
    }
    path = tmp_path / "tiers.json"
    path.write_text(json.dumps(tiers), encoding="utf-8")
    with pytest.raises(TierNotMet, match=r"checkpoint c: max dbeta/SE n/a"):
        check_tier(path)


@pytest.mark.parametrize("term", ["C(`class`)", "I(`if` * 2)", "log(`None`)"])
def test_keyword_column_inside_a_call_is_named(term: str) -> None:
    """formulaic cannot read a column named like a Python keyword inside a call, even quoted:
    the grammar stops it with one line naming the column (it passed the grammar, and the
    design then failed with a bare 'SyntaxError: invalid syntax')."""
    from replisynth.config.formula_grammar import formula_columns

    with pytest.raises(
        ManifestError,
        match=r"checkpoints\[0\]\.formula: the column '\w+' is named like a Python keyword",
    ):
        formula_columns(f"y ~ x + {term}", "checkpoints[0].formula")
    assert formula_columns("y ~ `class` + C(`match`)") == {"y", "class", "match"}


@pytest.mark.parametrize("formula", ["y ~ x + `1`", "y ~ `0` + x", "y ~ x + ` 1 `"])
def test_a_column_named_like_the_intercept_is_refused(formula: str) -> None:
    """formulaic reads a column quoted as `1` as the intercept and drops the column without a
    word; the grammar stops it with one line naming it."""
    from replisynth.config.formula_grammar import formula_columns

    with pytest.raises(ManifestError, match=r"the column `.*` reads as the intercept term"):
        formula_columns(formula, "checkpoints[0].formula")
    assert formula_columns("y ~ x + `10`") == {"y", "x", "10"}


def test_outcome_may_be_any_column_name(tmp_path: Path) -> None:
    """The outcome follows the grammar's column rule: a name in backticks (spaces, a leading
    digit) or with letters outside ASCII. The manifest refused both ('must be one column
    name'), though docs/grammar.md allows any column name in backticks."""
    df = make_people(600).rename(columns={"y": "hourly wage", "age": "âge"})
    df.to_csv(tmp_path / "p.csv", index=False)
    raw = manifest_for(tmp_path / "p.csv")
    raw["checkpoints"] = [
        {"tag": "a", "source": "people", "model": "ols", "formula": "`hourly wage` ~ x1 + âge"},
        {"tag": "b", "source": "people", "model": "poisson", "formula": "âge ~ x1 + x2"},
    ]
    raw["verify"] = {"tier": 4}
    m = load_manifest(raw)
    assert [c.outcome for c in m.checkpoints] == ["hourly wage", "âge"]
    tiers = run_pipeline(raw, tmp_path / "out")
    assert tiers["tier_met"] == 4
    bad = {**raw["checkpoints"][0], "formula": "log(`hourly wage`) ~ x1"}
    with pytest.raises(
        ManifestError, match=r"left-hand side 'log\(`hourly wage`\)' must be one column"
    ):
        load_manifest({**raw, "checkpoints": [bad]})


def test_init_template_parses_with_keyword_columns(tmp_path: Path) -> None:
    """`replisynth init` on columns named like Python keywords (`if`, `class`) drafts a
    checkpoint template that passes the grammar once uncommented (it wrote 'C(if)')."""
    from replisynth.io.draft import draft_manifest
    from replisynth.io.files import read_source

    df = make_people(600)
    df["if"] = df["female"]
    df["class"] = df["educ"] % 3
    df = df[["pid", "if", "class", "y", "x1"]]
    path = tmp_path / "p.csv"
    df.to_csv(path, index=False)
    data, meta = read_source(path)
    text = draft_manifest(data, meta, str(path), seed=3)
    lines = text.splitlines()
    start = lines.index("# checkpoints:")
    block = "\n".join(line[2:] for line in lines[start : start + 6])
    raw = yaml.safe_load(text)
    raw["checkpoints"] = yaml.safe_load(block)["checkpoints"]
    raw["verify"] = {"tier": 4}
    load_manifest(raw)


def _small_stratum_cell(path: Path, seed: int) -> None:
    """1,200 rows whose strata s1 x s2 have one cell below 50 rows: s1 == 3 holds 90 rows,
    (3, 0) at least 30 of them."""
    rng = np.random.default_rng(seed)
    n = 1200
    s1 = np.where(np.arange(n) < 90, 3, rng.integers(1, 3, n))
    s2 = np.where(np.arange(n) < 30, 0, rng.integers(0, 2, n))
    x = rng.normal(size=n)
    df = pd.DataFrame(
        {"pid": np.arange(n), "s1": s1, "s2": s2, "x": x, "y": x + rng.normal(size=n)}
    )
    df.to_csv(path, index=False)


def test_checkpoint_on_a_locally_suppressed_stratum_is_flagged(tmp_path: Path) -> None:
    """A strata cell below min_cell_size has its strata columns set to missing (the residual
    block), so a checkpoint whose subset or factor reads that cell cannot be rebuilt: the run
    only found out at verification ('subset selects no rows' on the synthetic data).
    Extraction now says so in the log and the SDC log, naming the checkpoint and the column."""
    _small_stratum_cell(tmp_path / "p.csv", seed=5)
    raw = manifest_for(tmp_path / "p.csv", strata=["s1", "s2"])
    raw["checkpoints"] = [
        {
            "tag": "rare",
            "source": "people",
            "model": "ols",
            "formula": "y ~ x",
            "subset": "s1 == 3",
        },
        {"tag": "plain", "source": "people", "model": "ols", "formula": "y ~ x"},
    ]
    bundle = cmd_extract(load_manifest(raw), tmp_path / "out")
    log = json.loads((bundle / "sdc_log.json").read_text(encoding="utf-8"))["decisions"]
    flagged = {e["checkpoint"] for e in log if e["action"] == "unbuildable"}
    assert flagged == {"rare"}
    assert any("strata column(s) s1" in e["reason"] for e in log if e["action"] == "unbuildable")


def test_a_term_missing_from_the_refit_is_the_reason(tmp_path: Path) -> None:
    """A checkpoint that fails because one of its terms is absent from the synthetic refit
    (here the level of a locally suppressed strata cell) names the term; the verdict showed
    only the largest dbeta/SE of the terms present, which was small."""
    _small_stratum_cell(tmp_path / "p.csv", seed=6)
    raw = manifest_for(tmp_path / "p.csv", strata=["s1", "s2"])
    raw["checkpoints"] = [
        {"tag": "fac", "source": "people", "model": "ols", "formula": "y ~ x + C(s1)"}
    ]
    raw["verify"] = {"tier": 4}
    cp = run_pipeline(raw, tmp_path / "out")["checkpoints"]["fac"]
    assert cp["passed"] is False
    assert "C(s1)[T.3]" in cp["reason"]


@pytest.mark.parametrize(
    ("model", "formula", "term"),
    [
        ("ols", "y ~ x1 + log(spend)", "log(spend)"),
        ("ols", "y ~ x1 + I(x1 / zero)", "I(x1 / zero)"),
        ("iv", "y ~ x2 + [x1 ~ log(spend)]", "log(spend)"),
    ],
)
def test_infinite_term_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, formula: str, term: str
) -> None:
    """The log of a column with zeros (a zero-inflated amount) gives -inf: extraction stopped
    with an internal ValueError from the QR of the design, after numpy warnings. It now stops
    with one line naming the term."""
    from replisynth.workflow.cli import main

    df = make_people(400)
    df["spend"] = np.where(df["x2"] > 0, df["income"].fillna(1.0), 0.0)
    df["zero"] = 0.0
    df.to_csv(tmp_path / "p.csv", index=False)
    raw = manifest_for(tmp_path / "p.csv")
    raw["checkpoints"] = [{"tag": "c", "source": "people", "model": model, "formula": formula}]
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(raw), encoding="utf-8")
    code = main(["extract", str(manifest), "--results", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, err
    assert len(err) == 1 and f"term(s) {term} take infinite values" in err[0], err


def test_panel_rows_with_a_missing_time_are_not_duplicates(tmp_path: Path) -> None:
    """Two rows of one entity with a missing time were counted as a repeated (entity, time)
    pair, and extraction stopped telling the user to drop duplicates the data do not have
    (one missing time per entity was accepted). Only complete pairs can repeat."""
    from replisynth.io.input_checks import check_source_frame

    df = pd.DataFrame(
        {"firm": [1, 1, 1, 2, 2], "year": [2000, np.nan, np.nan, 2000, 2001], "x": range(5)}
    )
    m = load_manifest(manifest_for("p.csv", ids=[], panel={"entity": "firm", "time": "year"}))
    check_source_frame(m, m.source("people"), df)
    df.loc[4, "year"] = 2000
    with pytest.raises(ReplisynthError, match=r"1 row\(s\) repeat an \(firm, year\) pair"):
        check_source_frame(m, m.source("people"), df)


@pytest.mark.parametrize(("clusters", "warned"), [(5, True), (40, False)])
def test_a_checkpoint_clustered_on_few_clusters_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clusters: int, warned: bool
) -> None:
    """Cluster-robust SEs on a handful of clusters are unreliable and the synthetic data may not
    reproduce them: extraction says so, naming the checkpoint and the column (no count)."""
    df = make_people(800)
    df["cluster"] = np.random.default_rng(1).integers(0, clusters, len(df))
    df.to_csv(tmp_path / "p.csv", index=False)
    raw = manifest_for(tmp_path / "p.csv")
    raw["checkpoints"] = [
        {
            "tag": "cl",
            "source": "people",
            "model": "ols",
            "formula": "y ~ x1 + x2",
            "vcov": "cluster:cluster",
        }
    ]
    with caplog.at_level("WARNING", logger="replisynth"):
        cmd_extract(load_manifest(raw), tmp_path / "out")
    lines = [r.getMessage() for r in caplog.records if "fewer than 20 clusters" in r.getMessage()]
    assert bool(lines) == warned
    if warned:
        assert lines[0].startswith("checkpoint cl: clustered on cluster with fewer than 20")
