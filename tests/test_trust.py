"""Trust in the workflow: a manifest edit reruns exactly the jobs it affects (and the result is
a clean run's, byte for byte); every claim of the report is true; bad input is one line."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import make_people
from test_workflow import _checkout, _smk

# ---------------------------------------------------------------------------------------------
# Manifest edits rerun what they affect (Snakemake's params trigger sees a hash of the section
# each rule reads; replisynth.workflow.manifest_sections)


def _planned(work: Path, manifest: Path) -> set[str]:
    """Jobs a dry run would run: `rule` or `rule/source`."""
    r = _smk(work, "-n", "--cores", "1", "--configfile", str(manifest))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    jobs: set[str] = set()
    rule = None
    for ln in (r.stdout + r.stderr).splitlines():
        m = re.match(r"\s*(?:local)?rule (\w+):", ln)
        if m:
            rule = m.group(1)
            jobs.add(rule)
            continue
        m = re.match(r"\s*wildcards: source=(\w+)", ln)
        if m and rule:
            jobs.discard(rule)
            jobs.add(f"{rule}/{m.group(1)}")
            rule = None
    return jobs


OUTSIDE = {"sample_copula/a", "sample_copula/b", "pin_checkpoints/a", "pin_checkpoints/b", "export_csv/a",
           "export_csv/b", "verify_tiers", "render_report", "check_tier", "all"}


def _edited(base: dict, edit) -> dict:
    m = copy.deepcopy(base)
    edit(m)
    return m


@pytest.mark.workflow
def test_manifest_edits_rerun_what_they_affect(tmp_path):
    work = _checkout(tmp_path / "w", with_data=False)
    make_people(500, seed=11).to_csv(work / "a.csv", index=False)
    make_people(420, seed=12).drop(columns=["income"]).to_csv(work / "b.csv", index=False)
    base = {"name": "edits", "seed": 7,
            "sources": {"a": {"path": "a.csv", "ids": ["pid"], "strata": ["female"]}, "b": {"path": "b.csv", "ids": ["pid"]}},
            "sdc": {"profile": "standard", "min_cell_size": 20},
            "checkpoints": [{"tag": "ya", "source": "a", "model": "ols", "formula": "y ~ x1 + x2 + female"},
                            {"tag": "yb", "source": "b", "model": "ols", "formula": "y ~ x1 + C(region)"}],
            "verify": {"tier": 3}}
    m0 = tmp_path / "m0.yaml"
    m0.write_text(yaml.safe_dump(base))
    r = _smk(work, "--cores", "2", "--configfile", str(m0))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert _planned(work, m0) == set()
    bundle_only = {"write_bundle"} | OUTSIDE
    cases = {
        "seed": (lambda m: m.update(seed=8), bundle_only),
        "rows": (lambda m: m["sources"]["a"].update(rows=650), bundle_only),
        "tier": (lambda m: m["verify"].update(tier=4), bundle_only),
        "sdc key": (lambda m: m["sdc"].update(min_cell_size=25),
                    {"extract_source/a", "extract_source/b", "extract_checkpoints"} | bundle_only),
        "profile": (lambda m: m["sdc"].update(profile="strict"),
                    {"extract_source/a", "extract_source/b", "extract_checkpoints"} | bundle_only),
        "formula": (lambda m: m["checkpoints"][1].update(formula="y ~ x1 + x2 + C(region)"),
                    {"extract_source/b", "extract_checkpoints"} | bundle_only),
        "strata": (lambda m: m["sources"]["b"].update(strata=["region"]), {"extract_source/b"} | bundle_only),
    }
    for name, (edit, expected) in cases.items():
        p = tmp_path / f"m_{name.replace(' ', '_')}.yaml"
        p.write_text(yaml.safe_dump(_edited(base, edit)))
        assert _planned(work, p) == expected, name
    # Run one edit (a source's strata and the seed), then compare with a clean run of it.
    both = _edited(base, lambda m: (m["sources"]["b"].update(strata=["region"]), m.update(seed=9)))
    m1 = tmp_path / "m1.yaml"
    m1.write_text(yaml.safe_dump(both))
    before = (work / "results" / "edits" / "extract" / "a.release.json").stat().st_mtime_ns
    r = _smk(work, "--cores", "2", "--configfile", str(m1))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (work / "results" / "edits" / "extract" / "a.release.json").stat().st_mtime_ns == before
    assert _planned(work, m1) == set()
    clean = _checkout(tmp_path / "clean", with_data=False)
    for f in ("a.csv", "b.csv"):
        shutil.copy2(work / f, clean / f)
    r = _smk(clean, "--cores", "2", "--configfile", str(m1))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res, ref = work / "results" / "edits", clean / "results" / "edits"
    files = sorted(str(p.relative_to(ref)) for d in ("bundle", "synthetic") for p in (ref / d).iterdir())
    assert files and sorted(str(p.relative_to(res)) for d in ("bundle", "synthetic") for p in (res / d).iterdir()) == files
    for f in [*files, "verify/tiers.json"]:
        assert (res / f).read_bytes() == (ref / f).read_bytes(), f
