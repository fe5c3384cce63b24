"""The Snakemake workflow: lint, dry runs, the demo end to end, a bundle-only rebuild in a
clone without data (byte-identical), and a run that misses its tier exits non-zero after
writing its reports."""

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
from conftest import REPO, make_people

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
COPY = ["Snakefile", "config", "rules", "scripts", "envs", "docs", "data", "profiles"]


def _checkout(dst: Path, with_data: bool = True) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src = REPO / name
        if not src.exists() or (name == "data" and not with_data):
            continue
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst / name)
    return dst


def _smk(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_lint_is_clean():
    r = _smk(REPO, "--lint")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations" in r.stdout + r.stderr


def test_dry_run_demo_has_every_stage(demo_dry_run):
    """Every stage of the demo runs; the secure and the outside stages of this small local run
    are one job each (`fuse`; with fuse=false each its own: tests/test_fused.py)."""
    out = demo_dry_run
    for rule in [
        "rule secure_fused",
        "rule outside_fused",
        "logs/extract_source/card.log",
        "logs/extract_checkpoints/all.log",
        "logs/write_bundle/all.log",
        "check_tier",
        "review",
    ]:
        assert rule in out, rule


def test_configfile_replaces_demo(tmp_path):
    df = make_people(300)
    df.to_csv(tmp_path / "people.csv", index=False)
    man = {
        "name": "mine",
        "seed": 1,
        "sources": {"people": {"path": str(tmp_path / "people.csv"), "ids": ["pid"]}},
    }
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(man))
    r = _smk(REPO, "-n", "--cores", "1", "--forceall", "--configfile", str(tmp_path / "m.yaml"))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "results/mine/" in out and "card1995" not in out
    assert "export_stata" not in out  # a csv source has no .dta output


def test_bad_manifest_stops_with_its_message(tmp_path):
    (tmp_path / "m.yaml").write_text(
        yaml.safe_dump({"name": "x", "seed": -1, "sources": {"s": {"path": "a.csv"}}})
    )
    r = _smk(REPO, "-n", "--cores", "1", "--configfile", str(tmp_path / "m.yaml"))
    assert r.returncode != 0
    assert "seed: must be a non-negative integer" in r.stderr + r.stdout


@pytest.mark.slow
@pytest.mark.workflow
def test_demo_end_to_end_and_bundle_only_rebuild(tmp_path):
    inside = _checkout(tmp_path / "inside")
    r = _smk(inside, "--cores", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = inside / "results" / "card1995"
    tiers = yaml.safe_load((res / "verify" / "tiers.json").read_text())
    assert tiers["tier_met"] == 4 and tiers["passed"]
    assert (res / "verify" / "report.html").stat().st_size > 10_000
    cert = (res / "verify" / "certificate.txt").read_text()
    assert "met fidelity tier 4" in cert
    # Provenance: every benchmark file's step, and the run's time, in the certificate.
    benches = sorted((res / "benchmarks").rglob("*.tsv"))
    assert len(benches) >= 7 and "Provenance: the run took" in cert
    for b in benches:  # the csv export runs beside the report: its time is not in the certified run
        assert (f"{b.parent.name}/{b.stem} " in cert) == (b.parent.name != "export_csv"), b
    assert (res / "benchmarks" / "export_csv" / "card.tsv").exists() and (
        res / "synthetic" / "card.csv"
    ).stat().st_size > 0
    # `snakemake --report`: one self-contained file with the data editor's outputs, captioned.
    r = _smk(inside, "--report", "smk_report.html")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    html = (inside / "smk_report.html").read_text()
    for text in (
        "Verification",
        "Disclosure control",
        "Synthetic data",
        "Layer 4 for source card",
        "Every statistical disclosure control decision",
        "The machine-readable verdict",
    ):
        assert text in html, text
    assert not re.search(r"""(src|href)=["']https?://""", html)  # nothing fetched from the web
    # outside: a clone with no data, twice; byte-identical to the inside run
    for k in range(2):
        outside = _checkout(tmp_path / f"outside{k}", with_data=False)
        shutil.copytree(res / "bundle", outside / "the_bundle")
        r = _smk(outside, "--cores", "2", "--config", "bundle=the_bundle")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        for f in ["card.parquet", "card.csv", "card.dta"]:
            a = (res / "synthetic" / f).read_bytes()
            b = (outside / "results" / "card1995" / "synthetic" / f).read_bytes()
            assert a == b, f
        assert (outside / "results" / "card1995" / "verify" / "tiers.json").read_bytes() == (
            res / "verify" / "tiers.json"
        ).read_bytes()


@pytest.mark.slow
@pytest.mark.workflow
def test_missed_tier_exits_nonzero_after_reports(tmp_path):
    """A checkpoint on the top 0.6% of x1: the original has 60 such rows, but the released
    grid is top-coded at the 99th percentile, so the synthetic data has none and the
    checkpoint cannot be refitted: tier 4 is missed, honestly."""
    rng = np.random.default_rng(3)
    n = 10_000
    x1 = rng.normal(size=n)
    df = pd.DataFrame({"pid": np.arange(n), "x1": x1, "y": x1 + rng.normal(size=n)})
    df.to_csv(tmp_path / "d.csv", index=False)
    cut = float(np.sort(x1)[-60])
    man = {
        "name": "miss",
        "seed": 1,
        "sources": {"d": {"path": str(tmp_path / "d.csv"), "ids": ["pid"]}},
        "checkpoints": [
            {
                "tag": "top",
                "source": "d",
                "model": "ols",
                "formula": "y ~ x1",
                "subset": f"x1 >= {cut!r}",
            }
        ],
        "verify": {"tier": 4},
    }
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(man))
    work = _checkout(tmp_path / "w", with_data=False)
    r = _smk(work, "--cores", "2", "--configfile", str(tmp_path / "m.yaml"))
    assert r.returncode != 0
    v = work / "results" / "miss" / "verify"
    tiers = yaml.safe_load((v / "tiers.json").read_text())
    assert tiers["passed"] is False and tiers["tier_met"] == 3
    assert tiers["checkpoints"]["top"]["status"] == "failed"
    assert (v / "report.html").exists() and not (v / "verdict.txt").exists()
    assert (
        "tier 3 met, tier 4 required"
        in (work / "results" / "miss" / "logs" / "check_tier" / "all.log").read_text()
    )
