"""A newcomer's path: the report says what it certifies and lists the disclosure control
decision by decision; long steps print progress lines with the elapsed time; outputs follow
the umask unless the manifest asks for private files; the CLI runs without Snakemake."""

from __future__ import annotations

import ast
import html
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, make_people, manifest_for

from replisynth.core.errors import ManifestError

PROGRESS = re.compile(r"^\[\s*(\d+\.\d) s\] (\w+): (.+)$")

# Runs the CLI with `import snakemake` failing, as in an enclave where it is not installed;
# the umask is set before replisynth is imported (io.atomic reads it at import).
BLOCKED_RUN = """
import importlib.abc, os, sys
class _NoSnakemake(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "snakemake" or name.startswith("snakemake."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, _NoSnakemake())
os.umask(int(sys.argv[1], 8))
from replisynth.workflow.cli import main
code = main(sys.argv[2:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "snakemake")
print("SNAKEMAKE-MODULES:", loaded)
raise SystemExit(code)
"""


def _data(tmp: Path, n: int, seed: int, rare: int) -> Path:
    """make_people plus `rare`, an indicator with `rare` ones (below the cell size of 50)."""
    df = make_people(n, seed)
    flag = np.zeros(n, dtype=int)
    flag[np.random.default_rng(seed).choice(n, rare, replace=False)] = 1
    df["rare"] = flag
    df["y"] = df["y"] + 0.4 * flag
    path = tmp / "people.csv"
    df.to_csv(path, index=False)
    return path


def _manifest(tmp: Path, data: Path, **top: object) -> Path:
    raw = manifest_for(data, exclude=["income", "w", "cluster"])
    raw["sdc"] = {"profile": "standard"}
    raw["checkpoints"] = [
        {
            "tag": "main_eq",
            "source": "people",
            "model": "ols",
            "formula": "y ~ x1 + x2 + female + rare",
            "vcov": "HC1",
        },
    ]
    raw["verify"] = {"tier": 4}
    raw.update(top)
    path = tmp / "m.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _run_blocked(tmp: Path, umask: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("REPLISYNTH_PRIVATE_OUTPUTS", None)
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, umask, *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _modes(root: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def blocked_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One CLI `run` without Snakemake under umask 022 (the default case)."""
    tmp = tmp_path_factory.mktemp("newcomer")
    m = _manifest(tmp, _data(tmp, 1500, 11, rare=30))
    r = _run_blocked(tmp, "022", "run", str(m), "--results", "res")
    return {"tmp": tmp, "proc": r, "res": tmp / "res" / "t"}


def test_cli_runs_without_snakemake(blocked_run):
    r = blocked_run["proc"]
    assert r.returncode == 0, r.stderr
    assert "SNAKEMAKE-MODULES: []" in r.stdout
    assert (blocked_run["res"] / "verify" / "certificate.txt").exists()


def test_progress_lines_with_elapsed_time_on_every_long_step(blocked_run):
    lines = [m for m in map(PROGRESS.match, blocked_run["proc"].stderr.splitlines()) if m]
    steps = [m.group(2) for m in lines]
    for step in ("read", "extract", "synthesize", "pin", "verify", "report"):
        assert step in steps, blocked_run["proc"].stderr
    elapsed = [float(m.group(1)) for m in lines]
    assert elapsed == sorted(elapsed) and elapsed[-1] > 0
    text = [m.group(3) for m in lines]
    assert any(t.startswith("people outcome y (1 checkpoint(s): main_eq)") for t in text)
    for tier in range(4):
        assert any(t.startswith(f"people tier {tier} ") for t in text)
    assert any(t.startswith("checkpoint main_eq (ols") for t in text)


def test_outputs_follow_the_umask(blocked_run):
    modes = _modes(blocked_run["res"])
    assert modes == {0o644}, sorted(oct(m) for m in modes)


def test_private_outputs_are_owner_only_and_other_umask_followed(tmp_path):
    data = _data(tmp_path, 700, 5, rare=20)
    m = _manifest(tmp_path, data, output={"private": True})
    r = _run_blocked(tmp_path, "022", "extract", str(m), "--results", "priv", "--quiet")
    assert r.returncode == 0, r.stderr
    assert _modes(tmp_path / "priv") == {0o600}
    m = _manifest(tmp_path, data)
    r = _run_blocked(tmp_path, "027", "extract", str(m), "--results", "grp", "--quiet")
    assert r.returncode == 0, r.stderr
    assert _modes(tmp_path / "grp") == {0o640}
    assert not any(map(PROGRESS.match, r.stderr.splitlines()))  # --quiet: no progress lines


@pytest.mark.parametrize(
    ("output", "key"),
    [({"private": "yes"}, "output.private"), ({"privat": True}, "output:"), ([1], "output:")],
)
def test_bad_output_setting_names_the_key(tmp_path, output, key):
    from replisynth.config.manifest import load_manifest

    raw = manifest_for(tmp_path / "d.csv")
    raw["output"] = output
    with pytest.raises(ManifestError, match=re.escape(key)):
        load_manifest(raw)


def test_report_names_suppressed_terms_and_lists_every_sdc_decision(blocked_run):
    from replisynth.io.files import read_json

    res = blocked_run["res"]
    tiers = read_json(res / "verify" / "tiers.json")
    sup = [t for t in tiers["checkpoints"]["main_eq"]["terms"] if t.get("suppressed")]
    assert [t["term"] for t in sup] == ["rare"]  # the bundle itself gives its position only
    bundle_terms = read_json(res / "bundle" / "checkpoints.json")["checkpoints"][0]["terms"]
    assert [t["term"] for t in bundle_terms if t.get("suppressed")] == [None]
    page = (res / "verify" / "report.html").read_text()
    section = page[page.index("<h2>Disclosure control</h2>") :]
    row = re.search(r"<tr><td>main_eq</td><td>rare</td><td>([^<]+)</td></tr>", section)
    assert row and "fewer than 50" in html.unescape(row.group(1))
    decisions = read_json(res / "bundle" / "sdc_log.json")["decisions"]
    assert len(decisions) > 5
    assert f"SDC decisions ({len(decisions):,})" in section
    for d in decisions:
        assert html.escape(d["reason"], quote=True) in section, d["reason"]


def test_certifies_paragraph_tops_report_and_certificate(blocked_run):
    res = blocked_run["res"]
    cert = (res / "verify" / "certificate.txt").read_text()
    first = cert.split("\n\n")[0]
    assert first.startswith("What this certifies and what it does not.")
    assert "fidelity tier 4 of 4" in first and "The checkpoint main_eq reproduces" in first
    assert "within 3 standard errors" in first and "add no information" in first
    assert "not guaranteed" in first
    page = (res / "verify" / "report.html").read_text()
    assert page.index("What this certifies") < page.index("<h2>Fidelity tiers</h2>")


def test_certifies_text_when_tier_missed_and_checkpoint_withheld():
    from replisynth.verify.report_notes import certifies_text

    tiers = {
        "tier_met": 2,
        "tier_required": 4,
        "checkpoints": {
            "a": {"passed": None, "status": "rejected", "reason": "sample too small"},
            "b": {"passed": False, "status": "failed"},
        },
    }
    text = certifies_text(tiers)
    assert "tier 2 of 4" in text and "required tier 4, which was missed" in text
    assert "The checkpoint a was withheld by disclosure control" in text
    assert "The checkpoint b missed that tolerance" in text
    assert "reproduce" not in text


def test_suppressed_term_name_needs_an_aligned_design():
    from replisynth.verify.verify import suppressed_term_name

    released = [
        {"term": "Intercept", "position": 0, "beta": 1.0, "se": 0.1},
        {"term": None, "position": 1, "suppressed": True},
        {"term": "x", "position": 2, "beta": 1.0, "se": 0.1},
        {"term": "alpha", "position": 3, "beta": 1.0, "se": 0.1},
    ]
    aligned = ["Intercept", "C(g)[T.b]", "x"]
    assert suppressed_term_name(released[1], released, aligned) == "C(g)[T.b]"
    # the rare level is not in the synthetic data: the design is shorter and shifted
    assert suppressed_term_name(released[1], released, ["Intercept", "x"]) is None


def test_rule_log_gets_progress_lines(tmp_path):
    from replisynth.workflow.progress import progress
    from replisynth.workflow.runner import run

    log = tmp_path / "job.log"
    run(str(log), lambda: progress("pin: demo outcome z (2 checkpoint(s): a, b)"))
    assert re.search(r"\[\s*\d+\.\d s\] pin: demo outcome z \(2 checkpoint", log.read_text())


def test_snakemake_is_an_extra_and_no_module_imports_it():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(d.split("[")[0].strip() == "snakemake" for d in meta["dependencies"])
    assert "snakemake" in meta["optional-dependencies"]["workflow"]
    for py in (REPO / "src" / "replisynth").rglob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "snakemake" for n in names), py


@pytest.mark.slow
@pytest.mark.workflow
def test_snakemake_report_of_a_bundle_only_run(tmp_path):
    """`snakemake --config bundle=DIR`, then `snakemake --report` on the same run: one HTML
    file with the captioned outputs; the rule logs carry the progress lines; `output:
    {private: true}` in a --configfile reaches every job."""
    import shutil

    from replisynth.config.manifest import load_manifest
    from replisynth.workflow.cli import cmd_extract

    m = load_manifest(
        yaml.safe_load(_manifest(tmp_path, _data(tmp_path, 900, 3, rare=25)).read_text())
    )
    bundle = cmd_extract(m, tmp_path / "secure")
    wf = tmp_path / "outside"
    wf.mkdir()
    for name in ["Snakefile", "config", "rules", "scripts", "envs", "docs", "profiles"]:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, wf / name)
    shutil.copytree(bundle, wf / "b")
    # a manifest file beside the bundle asks for private files (every job inherits it)
    (wf / "priv.yaml").write_text(yaml.safe_dump({"output": {"private": True}}))
    smk = str(Path(sys.executable).with_name("snakemake"))
    for args in (["--cores", "2", "--configfile", "priv.yaml"], ["--report", "report.html"]):
        r = subprocess.run(
            [smk, *args, "--config", "bundle=b"],
            cwd=wf,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]
    page = (wf / "report.html").read_text()
    for label in ("tiers.json", "report.html", "certificate.txt", "people.pin.json"):
        assert label in page, label
    res = wf / "results" / "t"
    assert _modes(res / "synthetic") | _modes(res / "verify") | _modes(res / "logs") == {0o600}
    log = (res / "logs" / "pin_checkpoints" / "people.log").read_text()
    assert re.search(r"\[\s*\d+\.\d s\] pin: people outcome y", log)
