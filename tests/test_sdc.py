"""Disclosure gates: nothing small or extreme leaves the secure side.

The fixture plants sensitive things in a source: a rare category ("ZZRARE", 5 rows), a rare
ordinal code (99, 3 rows), an extreme outlier (987654.321), a tiny stratum ("QQTINY", 7 rows),
a checkpoint on 20 rows and a checkpoint with a dummy that has 10 ones.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from replisynth.config.manifest import load_manifest
from replisynth.core.errors import BundleError
from replisynth.disclosure.bundle import load_bundle, software_versions
from replisynth.disclosure.sdc import DisclosureError, check_release
from replisynth.io.files import FileMeta, read_json, sha256_file

N = 1000
RARE_CAT = "ZZRARE"
OUTLIER = 987654.321
OUTLIER_TEXT = "987654"
TINY = "QQTINY"
RARE_CODE = 99
PLANTED_TEXT = (RARE_CAT, OUTLIER_TEXT, TINY)
CONTINUOUS = ("x", "y", "inc")


def planted_frame(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    grp = np.array(["A"] * 600 + ["B"] * (n - 607) + [TINY] * 7, dtype=object)
    rng.shuffle(grp)
    nom = rng.choice(["alpha", "beta", "gamma"], size=n, p=[0.5, 0.3, 0.2]).astype(object)
    idx = rng.permutation(n)
    nom[idx[:5]] = RARE_CAT
    ordl = rng.integers(1, 6, size=n)
    ordl[idx[5:8]] = RARE_CODE
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(size=n)
    inc = np.round(np.exp(10 + 0.5 * rng.normal(size=n)), 2)
    inc[idx[8]] = OUTLIER
    cohort = rng.integers(1, 3, size=n)
    cohort[idx[10:30]] = 3  # the small checkpoint's subset: 20 rows
    d10 = np.zeros(n, dtype=int)
    d10[idx[30:40]] = 1  # a dummy with 10 ones
    return pd.DataFrame(
        {
            "pid": np.arange(1, n + 1),
            "grp": grp,
            "nom": nom,
            "ordl": ordl,
            "x": x,
            "y": y,
            "inc": inc,
            "cohort": cohort,
            "d10": d10,
        }
    )


def planted_manifest(path: Path) -> dict[str, Any]:
    return {
        "name": "sdc",
        "seed": 11,
        "sources": {"people": {"path": str(path), "ids": ["pid"], "strata": ["grp"]}},
        "checkpoints": [
            {
                "tag": "small",
                "source": "people",
                "model": "ols",
                "formula": "y ~ x",
                "subset": "cohort == 3",
            },
            {"tag": "dummy", "source": "people", "model": "ols", "formula": "y ~ x + d10"},
        ],
        "verify": {"tier": 0},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from replisynth.workflow.cli import cmd_extract, cmd_synthesize

    root = tmp_path_factory.mktemp("sdc")
    df = planted_frame()
    src = root / "raw.csv"
    df.to_csv(src, index=False)
    raw = planted_manifest(src)
    # Capture every log record of the extract (any level).
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    lg = logging.getLogger("replisynth")
    h = Keep(level=logging.DEBUG)
    old = lg.level
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG)
    try:
        bundle = cmd_extract(load_manifest(raw), root / "out")
    finally:
        lg.removeHandler(h)
        lg.setLevel(old)
    syn = cmd_synthesize(bundle, root / "syn")
    return {
        "df": df,
        "raw": raw,
        "bundle": bundle,
        "records": records,
        "root": root,
        "release": read_json(bundle / "source_people.json"),
        "synthetic": pd.read_parquet(syn["people"]),
    }


def _bundle_texts(bundle: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(bundle.iterdir())}


# ---------------------------------------------------------------------------------------------
# the bundle


def test_planted_values_absent_from_every_bundle_file(built: dict[str, Any]) -> None:
    texts = _bundle_texts(built["bundle"])
    assert set(texts) == {"manifest.json", "sdc_log.json", "source_people.json", "checkpoints.json"}
    for name, text in texts.items():
        for planted in PLANTED_TEXT:
            assert planted not in text, (name, planted)
        json.loads(text)  # every bundle file is JSON


def test_planted_values_absent_from_extract_logs(
    built: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from replisynth.workflow.cli import cmd_extract

    # the records captured while building, plus a second extract under caplog
    caplog.set_level(logging.DEBUG, logger="replisynth")
    cmd_extract(load_manifest(built["raw"]), built["root"] / "again")
    records = built["records"] + list(caplog.records)
    assert records, "extract logged nothing"
    assert any("checkpoint small: rejected" in r.getMessage() for r in records)
    for r in records:
        msg = r.getMessage()
        for planted in PLANTED_TEXT:
            assert planted not in msg, msg
    for planted in PLANTED_TEXT:
        assert planted not in caplog.text


def test_rare_category_and_tiny_stratum_not_released(built: dict[str, Any]) -> None:
    rel = built["release"]
    all_m = rel["blocks"]["all"]["marginals"]
    nom = all_m["nom"]["table"]
    # the 5 rare rows alone would be almost known by subtraction: the smallest released level
    # (gamma) joins them (linked tables, docs/method.md)
    assert nom["levels"] == ["alpha", "beta"]
    assert nom["suppressed_levels"] == 2 and nom["suppressed"] >= 50
    assert all(c >= 50 for c in nom["counts"])
    # a residual block of 7 rows would follow from the source totals: the smaller stratum joins it
    assert all_m["grp"]["table"]["levels"] == ["A"]
    assert [c["key"] for c in rel["strata"]["cells"]] == [["A"]]
    assert rel["strata"]["residual_rows"] == 400
    for block in rel["blocks"].values():
        for m in block["marginals"].values():
            if m["kind"] == "categorical":
                assert all(c >= 50 for c in m["table"]["counts"])
                assert RARE_CAT not in m["table"]["levels"] and TINY not in m["table"]["levels"]


def test_rare_ordinal_code_not_released_in_any_block(built: dict[str, Any]) -> None:
    rel = built["release"]
    assert rel["blocks"]["all"]["marginals"]["ordl"]["table"]["levels"] == [1, 2, 3, 4, 5]
    assert rel["blocks"]["all"]["marginals"]["ordl"]["table"]["pooled_levels"] == 1
    for bid, block in rel["blocks"].items():
        m = block["marginals"]["ordl"]
        if m["kind"] == "categorical":
            assert RARE_CODE not in m["table"]["levels"], bid
        if "grid" in m:
            assert max(m["grid"]) <= 5, bid


def test_rare_ordinal_code_concentrated_in_one_stratum_not_released() -> None:
    """A code held by 3 rows (< min_cell_size) must not be released inside a stratum either:
    the stratum-level percentile grid of a many-level ordinal would show it as its top value
    when the 3 rows are 1% or more of the stratum."""
    from replisynth.extract.extract import extract_source

    rng = np.random.default_rng(1)
    n = 600
    grp = np.array(["A"] * 400 + ["B"] * 200)
    ordl = rng.integers(1, 6, size=n)
    ordl[[450, 451, 452]] = RARE_CODE  # all three in stratum B (1.5% of it)
    df = pd.DataFrame({"grp": grp, "ordl": ordl, "x": rng.normal(size=n)})
    m = load_manifest(
        {"name": "t", "seed": 1, "sources": {"s": {"path": "x.csv", "strata": ["grp"]}}}
    )
    rel, _ = extract_source(df, FileMeta(), m, m.source("s"))
    for bid, block in rel["blocks"].items():
        mm = block["marginals"]["ordl"]
        released = mm.get("grid") or (mm.get("table") or {}).get("levels") or []
        assert RARE_CODE not in released, f"block {bid} releases the 3-row code {RARE_CODE}"


def test_continuous_extremes_trimmed(built: dict[str, Any]) -> None:
    df, rel = built["df"], built["release"]
    for col in CONTINUOUS:
        raw_min, raw_max = float(df[col].min()), float(df[col].max())
        for bid, block in rel["blocks"].items():
            m = block["marginals"][col]
            assert m["kind"] == "continuous"
            g = np.asarray(m["grid"])
            assert len(g) == 101 and np.all(np.diff(g) >= 0)
            assert raw_min not in g and raw_max not in g, (col, bid)
            assert g[0] == g[1] and g[99] == g[100], (col, bid)  # top/bottom coded
            # the stratum's own extremes do not leave either
            sub = df[col] if block["key"] is None else df.loc[df["grp"] == block["key"][0], col]
            assert float(sub.min()) not in g and float(sub.max()) not in g, (col, bid)
    assert max(max(b["marginals"]["inc"]["grid"]) for b in rel["blocks"].values()) < OUTLIER / 5


def test_trim_hides_extremes_in_a_small_stratum() -> None:
    """'Raw extremes never leave': a stratum of 70 rows (>= min_cell_size, so released) must
    not carry its raw minimum and maximum in its 1%-trimmed grid."""
    from replisynth.extract.extract import extract_source

    rng = np.random.default_rng(2)
    n = 470
    df = pd.DataFrame({"grp": ["A"] * 400 + ["C"] * 70, "x": rng.normal(size=n)})
    m = load_manifest(
        {"name": "t", "seed": 1, "sources": {"s": {"path": "x.csv", "strata": ["grp"]}}}
    )
    rel, _ = extract_source(df, FileMeta(), m, m.source("s"))
    for bid, block in rel["blocks"].items():
        sub = df["x"] if block["key"] is None else df.loc[df["grp"] == block["key"][0], "x"]
        g = block["marginals"]["x"]["grid"]
        assert float(sub.max()) not in g, f"block {bid} ({len(sub)} rows) releases its raw maximum"
        assert float(sub.min()) not in g, f"block {bid} ({len(sub)} rows) releases its raw minimum"


def test_checkpoint_gates(built: dict[str, Any]) -> None:
    cps = {c["tag"]: c for c in read_json(built["bundle"] / "checkpoints.json")["checkpoints"]}
    small = cps["small"]
    assert small["status"] == "rejected"
    assert "terms" not in small and "n" not in small
    dummy = cps["dummy"]
    assert dummy["status"] == "released"
    sup = [t for t in dummy["terms"] if t.get("suppressed")]
    assert len(sup) == 1
    assert sup[0]["term"] is None
    assert "beta" not in sup[0] and "se" not in sup[0]
    assert [t["term"] for t in dummy["terms"] if not t.get("suppressed")] == ["Intercept", "x"]
    assert all(t["term"] != "d10" for t in dummy["terms"])


def test_sdc_log_records_each_decision_kind(built: dict[str, Any]) -> None:
    log = read_json(built["bundle"] / "sdc_log.json")
    assert log["settings"]["min_cell_size"] == 50
    assert log["settings"]["quantile_trim"] == 1
    dec = log["decisions"]

    def find(**want: Any) -> list[dict[str, Any]]:
        return [d for d in dec if all(d.get(k) == v for k, v in want.items())]

    assert find(stage="marginals", action="suppressed", block="all", column="nom")
    assert find(stage="marginals", action="pooled", block="all", column="ordl")
    for col in CONTINUOUS:
        assert len(find(stage="marginals", action="trimmed", block="all", column=col)) == 1
    assert find(
        stage="strata", action="local_suppression", cells=2
    )  # the tiny stratum, then B (linked tables)
    assert find(stage="strata", action="secondary_suppression", cells=1)
    assert find(stage="marginals", action="secondary_suppression", block="all", column="nom")
    assert len(find(stage="checkpoints", action="rejected", checkpoint="small")) == 1
    st = find(stage="checkpoints", action="suppressed_terms", checkpoint="dummy")
    assert len(st) == 1 and st[0]["terms"] == 1
    assert not find(stage="checkpoints", checkpoint="small", action="suppressed_terms")
    text = json.dumps(log)
    for planted in PLANTED_TEXT:
        assert planted not in text
    # where (source, block, column, checkpoint) and how many (cells, terms, dims, pairs), never a value
    allowed = {
        "stage",
        "action",
        "reason",
        "source",
        "block",
        "column",
        "checkpoint",
        "cells",
        "terms",
        "dims",
        "primary",
        "secondary",
        "pairs",
        "blocks",
    }
    for d in dec:
        assert {"stage", "action", "reason"} <= set(d) <= allowed, d


def test_release_passes_its_own_gate(built: dict[str, Any]) -> None:
    check_release(built["release"], 50)


def test_check_release_rejects_small_counts_and_small_strata(built: dict[str, Any]) -> None:
    rel = built["release"]
    bad = copy.deepcopy(rel)
    bad["blocks"]["all"]["marginals"]["nom"]["table"]["counts"][0] = 49
    with pytest.raises(DisclosureError, match="below min_cell_size"):
        check_release(bad, 50)

    bad = copy.deepcopy(rel)
    bad["strata"]["cells"][0]["rows"] = 12
    with pytest.raises(DisclosureError, match="stratum"):
        check_release(bad, 50)

    bad = copy.deepcopy(rel)
    bad["blocks"]["s0"]["rows"] = 12
    with pytest.raises(DisclosureError, match="stratum"):
        check_release(bad, 50)

    bad = copy.deepcopy(rel)
    bad["blocks"]["s0"]["marginals"]["x"]["n"] = 30
    with pytest.raises(DisclosureError, match="grid"):
        check_release(bad, 50)


# ---------------------------------------------------------------------------------------------
# synthesis from the bundle


def test_synthesis_never_produces_rare_values(built: dict[str, Any]) -> None:
    syn, rel, df = built["synthetic"], built["release"], built["df"]
    assert len(syn) == N
    assert list(syn.columns) == list(df.columns)
    assert RARE_CAT not in set(syn["nom"].dropna())
    assert set(syn["nom"].dropna()) <= {"alpha", "beta", "gamma"}
    assert RARE_CODE not in set(syn["ordl"].dropna().astype(int))
    assert set(syn["ordl"].dropna().astype(int)) <= {1, 2, 3, 4, 5}
    assert set(syn["cohort"].dropna().astype(int)) <= {1, 2}
    assert set(syn["d10"].dropna().astype(int)) == {0}
    for col in CONTINUOUS:
        if col == "y":
            continue  # the pinned outcome moves off its grid by design
        top = max(b["marginals"][col]["grid"][99] for b in rel["blocks"].values())
        assert syn[col].max() <= top + 1e-9, col
    assert syn["inc"].max() < OUTLIER / 5
    # per block: every synthetic value within the block's own released 99th percentile (the
    # residual rows, strata column missing, are drawn from the source-level statistics)
    for block in rel["blocks"].values():
        rows = syn["grp"].isna() if block["key"] is None else syn["grp"] == block["key"][0]
        for col in ("x", "inc"):
            assert syn.loc[rows, col].max() <= block["marginals"][col]["grid"][99] + 1e-9


def test_tiny_stratum_rows_form_the_residual_block(built: dict[str, Any]) -> None:
    syn = built["synthetic"]
    # the 7 tiny-stratum rows alone would follow from the source totals: B (393 rows) joins them
    assert int(syn["grp"].isna().sum()) == 7 + N - 607
    assert TINY not in set(syn["grp"].dropna())
    counts = syn["grp"].value_counts().to_dict()
    assert counts == {"A": 600}
    assert syn["pid"].tolist() == list(range(1, N + 1))


# ---------------------------------------------------------------------------------------------
# bundle integrity


def test_bundle_manifest_lists_every_file(built: dict[str, Any]) -> None:
    b = built["bundle"]
    info = read_json(b / "manifest.json")
    listed = {f["path"]: f for f in info["files"]}
    on_disk = {p.name for p in b.iterdir()}
    assert on_disk == set(listed) | {"manifest.json"}
    assert "manifest.json" not in listed
    for name, f in listed.items():
        assert f["sha256"] == sha256_file(b / name), name
        assert f["bytes"] == (b / name).stat().st_size, name
    assert info["seed"] == 11
    assert info["manifest"] == load_manifest(built["raw"]).raw
    assert info["manifest"]["sources"]["people"]["strata"] == ["grp"]
    sw = info["software"]
    assert sw == software_versions()
    for pkg in ("replisynth", "python", "numpy", "pandas", "scipy", "pyarrow"):
        assert sw[pkg] and sw[pkg] != "not installed", pkg
    assert info["sdc"]["min_cell_size"] == 50
    loaded = load_bundle(b)
    assert loaded.manifest.seed == 11
    assert loaded.releases["people"] == built["release"]


def test_altered_or_extra_bundle_file_is_rejected(built: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    b = tmp_path / "b"
    shutil.copytree(built["bundle"], b)
    (b / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match="not listed"):
        load_bundle(b)
    (b / "notes.txt").unlink()
    load_bundle(b)
    cp = b / "checkpoints.json"
    cp.write_text(cp.read_text().replace('"rejected"', '"released"', 1))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(b)


# ---------------------------------------------------------------------------------------------
# validation summaries carry counts only


def test_validation_summary_has_counts_not_values(built: dict[str, Any]) -> None:
    from replisynth.io.schema import ColumnSpec, pandera_schema, validation_summary

    rel = built["release"]
    specs = [ColumnSpec.from_dict(c) for c in rel["columns"]]
    cats = {
        c: m["table"]["levels"]
        for c, m in rel["blocks"]["all"]["marginals"].items()
        if m["kind"] == "categorical"
    }
    df = built["synthetic"].copy()
    schema = pandera_schema(specs, cats)
    assert validation_summary(schema, df) == []
    secret = "SECRET_VALUE_QX7"
    df["nom"] = df["nom"].astype(object)
    df.loc[[3, 17, 400], "nom"] = secret
    df["ordl"] = df["ordl"].astype("float64")
    df.loc[5, "ordl"] = 4.5  # not integer-valued, not a released category
    result = validation_summary(schema, df)
    assert result
    for r in result:
        assert set(r) == {"column", "check", "failures"}
        assert isinstance(r["failures"], int) and r["failures"] > 0
    by_col = {}
    for r in result:
        by_col.setdefault(r["column"], 0)
        by_col[r["column"]] += r["failures"]
    assert by_col.get("nom") == 3
    assert "ordl" in by_col
    text = str(result)
    assert secret not in text and "4.5" not in text
