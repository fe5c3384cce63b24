"""An interrupted run: Snakemake and its running job are killed (SIGKILL, as a node failure or
a Slurm time-out would) in the middle of sample_copula. No half-written output is left at an
output path, and the re-run resumes: finished steps are not recomputed, the killed one is,
and the run completes at tier 4."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
import yaml
from conftest import make_people
from test_workflow import SNAKEMAKE, _checkout


@pytest.mark.slow
@pytest.mark.workflow
def test_killed_run_resumes_without_recomputing(tmp_path):
    work = _checkout(tmp_path / "w", with_data=False)
    make_people(3000, seed=11).to_csv(tmp_path / "p.csv", index=False)
    # 150k synthetic rows: sample_copula runs for seconds after its log opens, long enough to be killed in.
    man = {
        "name": "resume",
        "seed": 3,
        "verify": {"tier": 4},
        "sources": {"people": {"path": str(tmp_path / "p.csv"), "ids": ["pid"], "rows": 150_000}},
        "checkpoints": [
            {"tag": "a", "source": "people", "model": "ols", "formula": "y ~ x1 + x2 + female"}
        ],
    }
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(man))
    cmd = [SNAKEMAKE, "--profile", "profiles/local", "--configfile", str(tmp_path / "m.yaml")]
    res = work / "results" / "resume"
    started = res / "logs" / "sample_copula" / "people.log"
    target = res / "synthesize" / "people.parquet"

    with open(tmp_path / "first.log", "w") as out:
        p = subprocess.Popen(
            cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while not started.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.5)  # mid-way through the job
        assert not target.exists(), "sample_copula finished before it could be killed; raise rows"
        os.killpg(p.pid, signal.SIGKILL)  # snakemake and its job, at once
        p.wait(timeout=60)

    # Nothing half-written at an output path: only atomic_path's hidden temporaries may be left.
    assert not target.exists()
    leftovers = [f for f in (res / "synthesize").iterdir()] if (res / "synthesize").exists() else []
    assert all(
        f.name.startswith(".people.parquet.") and f.name.endswith(".tmp") for f in leftovers
    ), leftovers
    done = sorted(f for d in ("bundle", "extract") for f in (res / d).rglob("*") if f.is_file())
    assert any(f.name == "manifest.json" for f in done)
    mtimes = {f: f.stat().st_mtime_ns for f in done}

    # A killed Snakemake leaves its lock (README: "Interrupted runs"): refused, then unlocked.
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--unlock" in r.stdout + r.stderr
    assert (
        subprocess.run([*cmd, "--unlock"], cwd=work, capture_output=True, timeout=300).returncode
        == 0
    )
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M))
    assert "sample_copula" in stats and "pin_checkpoints" in stats
    for finished in ("extract_source", "extract_checkpoints", "write_bundle"):
        assert finished not in stats, f"{finished} was recomputed"
    assert {f: f.stat().st_mtime_ns for f in done} == mtimes
    tiers = yaml.safe_load((res / "verify" / "tiers.json").read_text())
    assert tiers["tier_met"] == 4 and tiers["passed"]
    cert = (res / "verify" / "certificate.txt").read_text()
    for b in (res / "benchmarks").rglob(
        "*.tsv"
    ):  # the csv export runs beside the report (not certified)
        assert (f"{b.parent.name}/{b.stem} " in cert) == (b.parent.name != "export_csv"), b
