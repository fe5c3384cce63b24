"""Leak tests: planted rare categories, extreme values, tiny strata and small groups never
reach the bundle, the logs or Snakemake's own metadata (.snakemake/)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replisynth.config.manifest import load_manifest
from replisynth.workflow.cli import cmd_extract


def _planted(n: int, seed: int, rare: str, extreme: float, tiny_code: int) -> pd.DataFrame:
    """n rows of ordinary data plus: 3 rows of category `rare`, one value `extreme` in x,
    a stratum `tiny_code` of 6 rows, a group of 2 rows (cluster 999)."""
    rng = np.random.default_rng(seed)
    cat = rng.choice(["north", "south", "east", "west"], size=n).astype(object)
    cat[:3] = rare
    x = rng.normal(50, 10, size=n)
    x[5] = extreme
    stratum = rng.choice([1, 2], size=n)
    stratum[10:16] = tiny_code
    cluster = rng.integers(1, 40, size=n)
    cluster[20:22] = 999
    return pd.DataFrame(
        {
            "pid": np.arange(n),
            "cat": cat,
            "x": x,
            "y": x * 0.1 + rng.normal(size=n),
            "stratum": stratum,
            "cluster": cluster,
        }
    )


def _texts(root: Path) -> str:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix not in (".parquet", ".csv", ".dta", ".pyc"):
            try:
                out.append(p.read_text(errors="ignore"))
            except OSError:
                continue
    return "\n".join(out)


def _fmt(v: float) -> list[str]:
    return [repr(v), f"{v:.6g}", f"{v:.4f}"]


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rare=st.from_regex(r"ZZ[A-Z]{6}", fullmatch=True),
    extreme=st.floats(min_value=1e5, max_value=1e7).map(lambda v: round(v, 3) + 0.123),
    tiny=st.integers(min_value=700, max_value=899),
    seed=st.integers(0, 10_000),
)
def test_planted_values_never_leave(tmp_path_factory, rare, extreme, tiny, seed):
    tmp = tmp_path_factory.mktemp("leak")
    df = _planted(400, seed, rare, extreme, tiny)
    df.to_csv(tmp / "d.csv", index=False)
    raw = {
        "name": "leak",
        "seed": 1,
        "sources": {
            "d": {
                "path": str(tmp / "d.csv"),
                "ids": ["pid"],
                "strata": ["stratum"],
                "groups": ["cluster"],
            }
        },
        "sdc": {"min_cell_size": 20},
        "checkpoints": [{"tag": "c", "source": "d", "model": "ols", "formula": "y ~ x + C(cat)"}],
    }
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logging.getLogger("replisynth").addHandler(handler)
    try:
        bundle = cmd_extract(load_manifest(raw), tmp / "out")
    finally:
        logging.getLogger("replisynth").removeHandler(handler)
    text = _texts(bundle) + "\n".join(records)
    assert rare not in text
    for s in _fmt(extreme):
        assert s not in text
    rel = json.loads((bundle / "source_d.json").read_text())
    # the 6-row stratum is locally suppressed; a residual of 6 rows would follow from the source
    # totals, so the smaller ordinary stratum joins it (linked tables)
    assert [cell["key"] for cell in rel["strata"]["cells"]] in ([[1]], [[2]]) and rel["strata"][
        "residual_rows"
    ] >= 20
    assert str(tiny) not in json.dumps(rel["strata"]) and str(tiny) not in json.dumps(
        rel["blocks"]["all"]["marginals"]["stratum"]
    )
    assert "999" not in json.dumps(rel["groups"])
    grids = [
        m["grid"] for b in rel["blocks"].values() for m in b["marginals"].values() if "grid" in m
    ]
    assert all(max(g) < extreme for g in grids)


def test_pandera_failure_logs_counts_only(tmp_path):
    from replisynth.io.schema import ColumnSpec, pandera_schema, validation_summary

    spec = ColumnSpec(
        name="cat",
        logical_type="string",
        storage_type="str",
        role="categorical",
        integer=False,
        ordered=False,
        missing=0,
        rows=3,
    )
    df = pd.DataFrame({"cat": ["a", "ZZSECRETVALUE", "a"]})
    out = validation_summary(pandera_schema([spec], {"cat": ["a"]}), df)
    assert out and out[0]["failures"] == 1 and out[0]["column"] == "cat"
    assert "ZZSECRETVALUE" not in json.dumps(out)


@pytest.mark.workflow
def test_snakemake_metadata_and_logs_hold_no_planted_value(tmp_path):
    rare, extreme = "ZZPLANTED", 7654321.987
    df = _planted(400, 1, rare, extreme, 777)
    work = tmp_path / "w"
    work.mkdir()
    for name in ["Snakefile", "rules", "scripts", "envs", "docs", "config"]:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / name)
    df.to_csv(work / "d.csv", index=False)
    man = {
        "name": "leak",
        "seed": 1,
        "sources": {
            "d": {"path": "d.csv", "ids": ["pid"], "strata": ["stratum"], "groups": ["cluster"]}
        },
        "sdc": {"min_cell_size": 20},
        "checkpoints": [{"tag": "c", "source": "d", "model": "ols", "formula": "y ~ x + C(cat)"}],
        "verify": {"tier": 0},
    }
    (work / "m.yaml").write_text(yaml.safe_dump(man))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    r = subprocess.run(
        [snakemake, "extract", "--cores", "2", "--configfile", "m.yaml"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    text = (
        _texts(work / ".snakemake")
        + _texts(work / "results" / "leak" / "logs")
        + _texts(work / "results" / "leak" / "bundle")
        + r.stdout
        + r.stderr
    )
    assert rare not in text
    for s in _fmt(extreme):
        assert s not in text
