"""No data value in any log, staging file, bundle, review packet or error message: a run on
data with planted values (a 3-row category label, an extreme maximum that trimming removes, an
id value, a free-text value), through the CLI and through Snakemake, scanned file by file."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

from replisynth.workflow.cli import main

LABEL = "PLANTED_LABEL_7Q"
EXTREME = 987654.3125
PID = 4455667788
TEXT = "PLANTED_TEXT_Q4Z"
DATA_FILES = (".parquet", ".dta", ".pyc", ".pkl")


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cat = rng.choice(["alpha", "beta", "gamma"], size=n).astype(object)
    cat[rng.choice(n, 3, replace=False)] = LABEL
    income = rng.normal(50.0, 10.0, size=n).round(2)
    income[rng.integers(n)] = EXTREME
    pid = rng.permutation(np.arange(10_000, 10_000 + n))
    pid[rng.integers(n)] = PID
    note = np.asarray([f"free text {i:05d}" for i in rng.permutation(n)], dtype=object)
    note[rng.integers(n)] = TEXT
    return pd.DataFrame(
        {
            "pid": pid,
            "cat": cat,
            "income": income,
            "note": note,
            "flag": rng.binomial(1, 0.3, size=n),
            "zone": rng.choice([1, 2], size=n),
            "y": rng.normal(size=n) + 0.01 * income.clip(0, 100),
        }
    )


def _manifest(path: Path, subset: str | None = None) -> dict:
    cp = {"tag": "m", "source": "d", "model": "ols", "formula": "y ~ income + flag + C(cat)"}
    if subset:
        cp["subset"] = subset
    return {
        "name": "leak2",
        "seed": 11,
        "sdc": {"min_cell_size": 10},
        "sources": {"d": {"path": str(path), "ids": ["pid"], "strata": ["zone"]}},
        "checkpoints": [cp],
        "verify": {"tier": 0},
    }


def _planted_in(text: str, data_file: bool = False) -> list[str]:
    """The planted values found in `text` (the extreme in its usual float spellings; in a
    synthetic data file only the spellings long enough not to occur by chance)."""
    spellings = [repr(EXTREME), f"{EXTREME:.2f}", f"{EXTREME:.6e}", f"{EXTREME:,.2f}"]
    if not data_file:
        spellings += [f"{EXTREME:.6g}", f"{EXTREME:g}", f"{EXTREME:.1f}"]
    return [s for s in [LABEL, TEXT, str(PID), *spellings] if s in text]


def _scan(root: Path) -> dict[str, list[str]]:
    """Every readable file under root with the planted values it holds."""
    hits = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix in DATA_FILES:
            continue
        found = _planted_in(p.read_text(errors="ignore"), data_file=p.parent.name == "synthetic")
        if found:
            hits[str(p.relative_to(root))] = found
    return hits


def test_cli_run_and_review_print_no_planted_value(tmp_path, capfd):
    _frame(1500, 3).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(_manifest(tmp_path / "d.csv")))
    res = tmp_path / "res"
    assert main(["run", str(tmp_path / "m.yaml"), "--results", str(res)]) == 0
    assert main(["review", str(res / "leak2" / "bundle")]) in (0, 3)
    assert main(["audit", str(tmp_path / "m.yaml"), "--results", str(res)]) == 0
    out = capfd.readouterr()
    run_dir = res / "leak2"
    assert {"bundle", "review", "extract", "verify", "audit"} <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / "review" / "disclosure_review.txt").exists()
    assert _scan(run_dir) == {}
    assert _planted_in(out.out + out.err) == []
    # the scan can fail: the source file itself holds every planted value
    assert set(_planted_in((tmp_path / "d.csv").read_text())) >= {
        LABEL,
        TEXT,
        str(PID),
        repr(EXTREME),
    }


@pytest.mark.parametrize("subset", ["note > 5", "nosuch > 1", "income > 1e12", "cat > 5"])
def test_failing_run_error_holds_no_planted_value(tmp_path, capfd, subset):
    _frame(600, 5).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(_manifest(tmp_path / "d.csv", subset=subset)))
    rc = main(["extract", str(tmp_path / "m.yaml"), "--results", str(tmp_path / "res")])
    out = capfd.readouterr()
    assert rc == 1, out.err
    # messages start with "replisynth: "; progress lines with the elapsed time
    assert all(
        ln.startswith("replisynth: ") or re.match(r"\[\s*\d+\.\d s\] ", ln)
        for ln in out.err.splitlines()
    )
    assert "Traceback" not in out.err
    assert _planted_in(out.out + out.err) == []
    assert _scan(tmp_path / "res") == {}


@pytest.mark.workflow
def test_snakemake_extract_and_review_hold_no_planted_value(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    for name in ["Snakefile", "rules", "scripts", "envs", "docs", "config"]:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / name)
    _frame(1200, 8).to_csv(work / "d.csv", index=False)
    (work / "m.yaml").write_text(yaml.safe_dump(_manifest(Path("d.csv"))))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    r = subprocess.run(
        [snakemake, "extract", "--cores", "2", "--configfile", "m.yaml"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    run_dir = work / "results" / "leak2"
    assert (run_dir / "review" / "disclosure_review.json").exists() and (
        run_dir / "logs" / "review" / "all.log"
    ).exists()
    assert _scan(run_dir) == {}
    assert _scan(work / ".snakemake") == {}
    assert _planted_in(r.stdout + r.stderr) == []
