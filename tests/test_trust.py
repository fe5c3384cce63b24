"""Trust in the workflow: a manifest edit reruns exactly the jobs it affects (and the result is
a clean run's, byte for byte); every claim of the report is true; bad input is one line."""

from __future__ import annotations

import copy
import errno
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import make_people
from test_workflow import _checkout, _smk

import replisynth.workflow.pipeline as pipeline
from replisynth.core.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TIER_MISSED
from replisynth.io.files import SYNTHETIC_META_KEY
from replisynth.workflow.cli import main

# ---------------------------------------------------------------------------------------------
# Manifest edits rerun what they affect (Snakemake's params trigger sees a hash of the section
# each rule reads; replisynth.workflow.workflow.manifest_sections)


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


OUTSIDE = {
    "sample_copula/a",
    "sample_copula/b",
    "pin_checkpoints/a",
    "pin_checkpoints/b",
    "export_csv/a",
    "export_csv/b",
    "synthetic_readme",
    "verify_tiers",
    "render_report",
    "check_tier",
    "all",
}


def _edited(base: dict, edit) -> dict:
    m = copy.deepcopy(base)
    edit(m)
    return m


@pytest.mark.slow
@pytest.mark.workflow
def test_manifest_edits_rerun_what_they_affect(tmp_path):
    work = _checkout(tmp_path / "w", with_data=False)
    make_people(500, seed=11).to_csv(work / "a.csv", index=False)
    make_people(420, seed=12).drop(columns=["income"]).to_csv(work / "b.csv", index=False)
    base = {
        "name": "edits",
        "seed": 7,
        "sources": {
            "a": {"path": "a.csv", "ids": ["pid"], "strata": ["female"]},
            "b": {"path": "b.csv", "ids": ["pid"]},
        },
        "sdc": {"profile": "standard", "min_cell_size": 20},
        "checkpoints": [
            {"tag": "ya", "source": "a", "model": "ols", "formula": "y ~ x1 + x2 + female"},
            {"tag": "yb", "source": "b", "model": "ols", "formula": "y ~ x1 + C(region)"},
        ],
        "verify": {"tier": 3},
        "fuse": False,  # one job per stage, so the plan names each stage a change reruns
    }
    m0 = tmp_path / "m0.yaml"
    m0.write_text(yaml.safe_dump(base))
    r = _smk(work, "--cores", "2", "--configfile", str(m0))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert _planned(work, m0) == set()
    bundle_only = {"write_bundle", "review"} | OUTSIDE
    cases = {
        "seed": (lambda m: m.update(seed=8), bundle_only),
        "rows": (lambda m: m["sources"]["a"].update(rows=650), bundle_only),
        "tier": (lambda m: m["verify"].update(tier=4), bundle_only),
        "sdc key": (
            lambda m: m["sdc"].update(min_cell_size=25),
            {"extract_source/a", "extract_source/b", "extract_checkpoints"} | bundle_only,
        ),
        "profile": (
            lambda m: m["sdc"].update(profile="strict"),
            {"extract_source/a", "extract_source/b", "extract_checkpoints"} | bundle_only,
        ),
        "formula": (
            lambda m: m["checkpoints"][1].update(formula="y ~ x1 + x2 + C(region)"),
            {"extract_source/b", "extract_checkpoints"} | bundle_only,
        ),
        "strata": (
            lambda m: m["sources"]["b"].update(strata=["region"]),
            {"extract_source/b", "extract_checkpoints"} | bundle_only,  # the ledger reads strata
        ),
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
    files = sorted(
        str(p.relative_to(ref)) for d in ("bundle", "synthetic") for p in (ref / d).iterdir()
    )
    assert (
        files
        and sorted(
            str(p.relative_to(res)) for d in ("bundle", "synthetic") for p in (res / d).iterdir()
        )
        == files
    )
    for f in [*files, "verify/tiers.json"]:
        assert (res / f).read_bytes() == (ref / f).read_bytes(), f


# ---------------------------------------------------------------------------------------------
# Every claim is true


def _run_cli(tmp_path: Path, man: dict, *cmd: str) -> tuple[int, Path]:
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(man))
    rc = main([*(cmd or ("run",)), str(p), "--results", str(tmp_path / "res"), "--quiet"])
    return rc, tmp_path / "res" / man["name"]


def _people(tmp_path: Path, n: int, seed: int, name: str = "d.csv", **cols) -> str:
    df = make_people(n, seed=seed).assign(**cols)
    path = tmp_path / name
    if name.endswith(".dta"):
        df.to_stata(path, write_index=False, version=118)
    elif name.endswith(".parquet"):
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("tier", [4, 3])
def test_all_rejected_checkpoints_claim_no_tier_4(tmp_path, capsys, tier):
    """Every checkpoint rejected by SDC (a sample below min_cell_size): tier 4 is not
    claimed, the rejection and its reason are in the certificate and the report."""
    path = _people(tmp_path, 400, seed=4)
    man = {
        "name": "rej",
        "seed": 3,
        "sources": {"d": {"path": path, "ids": ["pid"]}},
        "checkpoints": [
            {
                "tag": "old_only",
                "source": "d",
                "model": "ols",
                "formula": "y ~ x1",
                "subset": "age >= 64",
            }
        ],
        "verify": {"tier": tier},
    }
    rc, res = _run_cli(tmp_path, man)
    tiers = json.loads((res / "verify" / "tiers.json").read_text())
    cert = (res / "verify" / "certificate.txt").read_text()
    html = (res / "verify" / "report.html").read_text()
    assert tiers["checkpoints"]["old_only"]["status"] == "rejected"
    assert tiers["tier_met"] == 3 and tiers["sources"]["d"]["checkpoints"]["passed"] is False
    assert (
        "met fidelity tier 3" in cert
        and "met fidelity tier 4" not in cert
        and "tier 4 is not claimed" in cert
    )
    assert (
        "Rejected by disclosure control and not verified: old_only (sample below min_cell_size="
        in cert
    )
    assert "rejected by disclosure control: old_only" in html
    assert (
        "FAILED — fidelity tier met: 3" if tier == 4 else "PASSED — fidelity tier met: 3"
    ) in html
    assert rc == (EXIT_TIER_MISSED if tier == 4 else 0)
    if tier == 4:
        assert "old_only: rejected by disclosure control" in capsys.readouterr().err


def test_one_verified_checkpoint_claims_tier_4_and_lists_the_rejected(tmp_path):
    path = _people(tmp_path, 600, seed=5)
    man = {
        "name": "mix",
        "seed": 4,
        "sources": {"d": {"path": path, "ids": ["pid"]}},
        "checkpoints": [
            {"tag": "full", "source": "d", "model": "ols", "formula": "y ~ x1 + x2"},
            {
                "tag": "tiny",
                "source": "d",
                "model": "ols",
                "formula": "y ~ x1",
                "subset": "age >= 64",
            },
        ],
        "verify": {"tier": 4},
    }
    rc, res = _run_cli(tmp_path, man)
    cert = (res / "verify" / "certificate.txt").read_text()
    assert rc == 0 and "met fidelity tier 4" in cert and "not verified: tiny (" in cert


def test_synthetic_files_say_synthetic_and_carry_no_information(tmp_path):
    """The .dta data label, the parquet metadata, README.txt and the certificate; with
    `rows` above the original N, that more rows add no information."""
    path = _people(tmp_path, 300, seed=8, name="d.dta")
    man = {
        "name": "lab",
        "seed": 9,
        "sources": {"d": {"path": path, "ids": ["pid"], "rows": 450}},
        "checkpoints": [],
        "verify": {"tier": 3},
    }
    rc, res = _run_cli(tmp_path, man)
    assert rc == 0
    syn = res / "synthetic"
    sha = json.loads((res / "verify" / "tiers.json").read_text())["bundle_sha256"]
    label = pq.read_schema(syn / "d.parquet").metadata[SYNTHETIC_META_KEY].decode()
    assert label.startswith("SYNTHETIC") and "not real observations" in label
    assert sha in (syn / "README.txt").read_text()
    import pyreadstat

    _, meta = pyreadstat.read_dta(str(syn / "d.dta"), metadataonly=True)
    assert meta.file_label == label
    readme = (syn / "README.txt").read_text()
    cert = (res / "verify" / "certificate.txt").read_text()
    for text in (readme, cert):
        flat = " ".join(text.split())
        assert "no information about the population beyond what the original data hold" in flat
        assert "do not measure uncertainty about the population" in flat
        assert "must be confirmed on the original data" in flat
        assert "more rows add no information" in flat
    assert "d.parquet, d.csv, d.dta: 450 synthetic rows (the original has 300" in readme
    # the same row count as the original: no row-count sentence
    man["sources"]["d"]["rows"] = None
    man["name"] = "lab2"
    rc, res = _run_cli(tmp_path, man)
    assert rc == 0 and "more rows" not in (res / "verify" / "certificate.txt").read_text()


# ---------------------------------------------------------------------------------------------
# Exit codes and one line, never a traceback


def _one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err and "Traceback" not in "\n".join(err)
    advice = " looks like "  # extraction's advice on derived columns, not an error
    assert len([ln for ln in err if ln.startswith("replisynth:") and advice not in ln]) == 1, err
    return err[-1]


def _boom(exc: BaseException):
    def stage(*a, **k):
        raise exc

    return stage


@pytest.mark.parametrize(
    "exc, code, words",
    [
        (
            RuntimeError("secret value 123.456 in the message"),
            EXIT_INTERNAL,
            "internal error (RuntimeError)",
        ),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
        (
            OSError(errno.ENOSPC, "No space left on device", "res/x/extract/d.release.json"),
            EXIT_BAD_INPUT,
            "free disk space",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "res/x"),
            EXIT_BAD_INPUT,
            "check the permissions",
        ),
    ],
)
def test_exit_codes_and_one_line(tmp_path, capsys, monkeypatch, exc, code, words):
    path = _people(tmp_path, 200, seed=1)
    monkeypatch.setattr(pipeline, "stage_extract_source", _boom(exc))
    rc, _ = _run_cli(
        tmp_path,
        {"name": "x", "seed": 1, "sources": {"d": {"path": path, "ids": ["pid"]}}},
        "extract",
    )
    line = _one_line(capsys)
    assert rc == code and words in line
    assert "123.456" not in line  # an unexpected exception's message could quote data: never shown


def test_results_folder_is_a_file(tmp_path, capsys):
    path = _people(tmp_path, 200, seed=2)
    (tmp_path / "res").write_text("not a folder")
    rc, _ = _run_cli(
        tmp_path,
        {"name": "x", "seed": 1, "sources": {"d": {"path": path, "ids": ["pid"]}}},
        "extract",
    )
    line = _one_line(capsys)
    assert (
        rc == EXIT_BAD_INPUT
        and "res" in line
        and "not a folder" in line.lower()
        or "Not a directory" in line
    )


def test_verify_before_synthesize(tmp_path, capsys):
    path = _people(tmp_path, 200, seed=3)
    man = {"name": "early", "seed": 1, "sources": {"d": {"path": path, "ids": ["pid"]}}}
    assert _run_cli(tmp_path, man, "extract")[0] == 0
    capsys.readouterr()
    rc, _ = _run_cli(tmp_path, man, "verify")
    line = _one_line(capsys)
    assert (
        rc == EXIT_BAD_INPUT and "d.parquet is missing" in line and "replisynth synthesize" in line
    )


@pytest.mark.parametrize("kind", ["folder", "binary", "duplicate key"])
def test_bad_manifest_file(tmp_path, capsys, kind):
    p = tmp_path / "m.yaml"
    if kind == "folder":
        p.mkdir()
    elif kind == "binary":
        p.write_bytes(bytes(range(256)) * 3)
    else:
        p.write_text("name: a\nseed: 1\nsources:\n  s: {path: d.csv}\nseed: 2\n")
    rc = main(["extract", str(p), "--results", str(tmp_path / "res")])
    line = _one_line(capsys)
    assert rc == EXIT_BAD_INPUT and str(p) in line
    assert {
        "folder": "is a folder",
        "binary": "not a text file",
        "duplicate key": "key 'seed' is given twice",
    }[kind] in line


def _bad(kind: str, tmp_path: Path) -> tuple[dict, str]:
    """A manifest with one bad input of `kind`, and the words its error must hold."""
    rng = np.random.default_rng(len(kind))
    cp = {"tag": "t", "source": "d", "model": "ols", "formula": "y ~ x1"}
    src: dict = {"ids": ["pid"]}
    n = int(rng.integers(250, 400))
    base = make_people(n, seed=len(kind))
    name = "d.csv"
    if kind == "lists":
        base["basket"], name = [[1, 2]] * n, "d.parquet"
        words = "column 'basket' holds lists"
    elif kind == "numbers as text":
        base["x2"] = [f"{v:.4f}".replace(".", ",") for v in base["x2"]]
        words = "column 'x2' holds numbers stored as text"
    elif kind == "continuous strata":
        src["strata"] = ["x1"]
        words = "sources.d.strata: column 'x1' is continuous"
    elif kind == "panel duplicates":
        base["firm"], base["year"] = np.arange(n) // 5, np.arange(n) % 5
        base.loc[3, "year"] = base.loc[2, "year"]
        src["panel"] = {"entity": "firm", "time": "year"}
        words = "1 row(s) repeat an (firm, year) pair"
    elif kind == "outcome on both sides":
        cp["formula"] = "y ~ y + x1"
        words = "checkpoints[0].formula: the outcome 'y' is also on the right-hand side"
    elif kind == "negative weights":
        base.loc[: int(rng.integers(5, 20)), "w"] = -1.0
        cp["weights"] = "w"
        words = "weights column 'w' has"
    elif kind == "text weights":
        base["w"] = "heavy"
        cp["weights"] = "w"
        words = "weights column 'w' is not numeric"
    elif kind == "zero weights":
        base["w"] = 0.0
        cp["weights"] = "w"
        words = "weights column 'w' is zero on every row"
    elif kind.startswith("single cluster"):
        base["site"] = 7
        cp["vcov"] = "cluster:site"
        if kind.endswith("logit"):
            base["hi"] = (base["y"] > base["y"].median()).astype(int)
            cp.update(model="logit", formula="hi ~ x1 + x2")
        words = "vcov cluster:site needs at least 2 clusters"
    path = tmp_path / name
    base.to_parquet(path) if name.endswith(".parquet") else base.to_csv(path, index=False)
    man = {
        "name": "bad",
        "seed": 1,
        "sources": {"d": {"path": str(path), **src}},
        "checkpoints": [cp],
        "verify": {"tier": 3},
    }
    return man, words


@pytest.mark.parametrize(
    "kind",
    [
        "lists",
        "numbers as text",
        "continuous strata",
        "panel duplicates",
        "outcome on both sides",
        "negative weights",
        "text weights",
        "zero weights",
        "single cluster",
        "single cluster logit",
    ],
)
def test_bad_input_is_one_line_before_any_synthetic_file(tmp_path, capsys, kind):
    man, words = _bad(kind, tmp_path)
    rc, res = _run_cli(tmp_path, man)
    line = _one_line(capsys)
    assert rc == EXIT_BAD_INPUT and words in line, line
    assert not (res / "synthetic").exists() and not (res / "bundle" / "manifest.json").exists()


def test_emptied_column_warns(tmp_path, caplog):
    """A text column whose every category is below the cell size (codes listed as
    categorical on purpose): a visible warning that it is all missing in the synthetic data."""
    n = 300
    df = make_people(n, seed=4).assign(code=[f"c{i:03d}" for i in range(n)])
    df.to_csv(tmp_path / "d.csv", index=False)
    man = {
        "name": "empt",
        "seed": 2,
        "sources": {
            "d": {"path": str(tmp_path / "d.csv"), "ids": ["pid"], "categorical": ["code"]}
        },
        "verify": {"tier": 3},
    }
    with caplog.at_level(logging.WARNING, logger="replisynth"):
        rc, _ = _run_cli(tmp_path, man, "extract")
    assert rc == 0
    assert any(
        "column 'code' has values but releases nothing" in r.getMessage() for r in caplog.records
    )


def test_internal_error_in_a_job_keeps_its_traceback_in_the_log_without_its_message(
    tmp_path, capsys
):
    from replisynth.workflow.runner import run

    value = "".join(["Ja", "ne Doe 1961"])  # a data value the exception quotes

    def stage():
        raise ValueError(f"could not convert {value!r} to float")

    log = tmp_path / "job.log"
    with pytest.raises(SystemExit) as e:
        run(str(log), stage)
    assert e.value.code == EXIT_INTERNAL
    err, text = capsys.readouterr().err, log.read_text()
    assert (
        err.count("replisynth:") == 1 and "internal error (ValueError)" in err and str(log) in err
    )
    assert "Traceback" not in err and "in stage" in text and "ValueError" in text
    assert "Jane" not in err + text


@pytest.mark.workflow
def test_failing_job_and_duplicate_key_show_one_line(tmp_path):
    """A job that fails on bad input prints its `replisynth:` line once, no traceback; a
    manifest key given twice stops the workflow before any job (Snakemake's own loader would
    keep the last value)."""
    work = _checkout(tmp_path / "w", with_data=False)
    make_people(300, seed=21).assign(w="heavy").to_csv(work / "d.csv", index=False)
    man = {
        "name": "fails",
        "seed": 2,
        "sources": {"d": {"path": "d.csv", "ids": ["pid"]}},
        "checkpoints": [
            {"tag": "t", "source": "d", "model": "ols", "formula": "y ~ x1", "weights": "w"}
        ],
    }
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(man))
    r = _smk(work, "--cores", "2", "--configfile", str(tmp_path / "m.yaml"))
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" not in out
    lines = [ln for ln in out.splitlines() if ln.startswith("replisynth:")]
    assert len(lines) == 1 and "weights column 'w' is not numeric" in lines[0], out[-3000:]
    text = (tmp_path / "m.yaml").read_text() + "seed: 3\n"
    (tmp_path / "dup.yaml").write_text(text)
    r = _smk(work, "-n", "--cores", "1", "--configfile", str(tmp_path / "dup.yaml"))
    assert (
        r.returncode == EXIT_BAD_INPUT
        and "key 'seed' is given twice" in r.stderr
        and "Traceback" not in r.stderr
    )
