"""Shared test helpers: seeded data generators (true parameters in their docstrings) and a
one-call pipeline runner on a temporary directory."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import settings

# Property tests draw the same examples on every run and keep no database of past failures,
# so a local run and CI on a clean clone test the same cases (a failure seen once is kept
# as an explicit test).
settings.register_profile("replisynth", derandomize=True, database=None)
settings.load_profile("replisynth")

REPO = Path(__file__).resolve().parents[1]


def make_people(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """A small survey-like data set.

    True model: y = 1.0 + 0.5*x1 - 0.3*x2 + 0.2*female + 0.1*x1*female + region effect
    (0, 0.3, -0.2, 0.1 for regions a..d) + N(0, 1) noise; x1 ~ N(0,1), x2 = 0.6*x1 + N(0, 0.8);
    female ~ Bernoulli(0.5); age integer 18..65; educ integer 8..18 (ordinal, 11 levels);
    region nominal a..d with shares .4/.3/.2/.1; w analytic weights in [0.5, 2]; income
    log-normal with 10% missing; cluster ids 1..40.
    """
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = 0.6 * x1 + rng.normal(scale=0.8, size=n)
    female = rng.binomial(1, 0.5, size=n)
    region = rng.choice(list("abcd"), p=[0.4, 0.3, 0.2, 0.1], size=n)
    reff = pd.Series(region).map({"a": 0.0, "b": 0.3, "c": -0.2, "d": 0.1}).to_numpy()
    age = rng.integers(18, 66, size=n)
    educ = np.clip(np.round(12 + 2 * x1 + rng.normal(size=n)), 8, 18).astype(int)
    y = 1.0 + 0.5 * x1 - 0.3 * x2 + 0.2 * female + 0.1 * x1 * female + reff + rng.normal(size=n)
    income = np.exp(10 + 0.3 * x1 + rng.normal(scale=0.5, size=n))
    income[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "pid": np.arange(1, n + 1),
            "y": y,
            "x1": x1,
            "x2": x2,
            "female": female,
            "region": region,
            "age": age,
            "educ": educ,
            "income": income,
            "w": rng.uniform(0.5, 2.0, size=n),
            "cluster": rng.integers(1, 41, size=n),
        }
    )


def manifest_for(path: str | Path, **source_keys: Any) -> dict[str, Any]:
    """A minimal valid manifest dict for one csv/parquet/dta source at `path`."""
    src = {"path": str(path), "ids": ["pid"]}
    src.update(source_keys)
    return {
        "name": "t",
        "seed": 7,
        "sources": {"people": src},
        "checkpoints": [],
        "verify": {"tier": 0},
    }


def run_pipeline(raw: dict[str, Any], out: Path) -> dict[str, Any]:
    """Extract, synthesize and verify through the CLI code path; returns tiers.json."""
    from replisynth.config.manifest import load_manifest
    from replisynth.io.files import read_json
    from replisynth.workflow.cli import cmd_extract, cmd_synthesize
    from replisynth.workflow.pipeline import stage_verify

    m = load_manifest(raw)
    bundle = cmd_extract(m, out)
    syn = cmd_synthesize(bundle, out)
    tiers_path = out / m.name / "verify" / "tiers.json"
    stage_verify(bundle, syn, tiers_path)
    return read_json(tiers_path)


def release_of(
    df: pd.DataFrame,
    tmp_path: Path,
    sdc: dict[str, Any] | None = None,
    checkpoints: list[dict[str, Any]] | None = None,
    **source_keys: Any,
) -> tuple[dict[str, Any], pd.DataFrame, Any]:
    """Write `df` to csv and extract its release (for one source 'people'; `checkpoints` as
    in a manifest): (release, the data as read back, the SDC log)."""
    from replisynth.config.manifest import load_manifest
    from replisynth.extract.extract import extract_source
    from replisynth.io.files import read_source

    path = tmp_path / "people.csv"
    df.to_csv(path, index=False)
    raw = manifest_for(path, **source_keys)
    if sdc:
        raw["sdc"] = sdc
    if checkpoints:
        raw["checkpoints"] = checkpoints
    m = load_manifest(raw)
    data, meta = read_source(path)
    release, log = extract_source(data, meta, m, m.source("people"))
    return release, data, log


@pytest.fixture
def people() -> pd.DataFrame:
    return make_people()


def once_per_run(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]
) -> Any:
    """`build(folder)` once per test run, its JSON-able result shared: by every test of this
    process (call it from a session fixture) and by every pytest-xdist worker (the first to
    take the lock builds in the workers' common base folder, the others wait and read)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # popen-gwN's parent: the same folder for every worker
    folder, done = root / f"shared-{name}", root / f"shared-{name}.json"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            folder.mkdir(exist_ok=True)
            done.write_text(json.dumps(build(folder)))
    return json.loads(done.read_text())


def _run_demo(work: Path) -> dict[str, Any]:
    import yaml

    from replisynth.workflow.cli import main

    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["sources"]["card"]["path"] = str(REPO / "data" / "card.dta")
    (work / "m.yaml").write_text(yaml.safe_dump(raw))
    rc = main(["run", str(work / "m.yaml"), "--results", str(work / "res"), "--quiet"])
    return {"rc": rc, "raw": raw, "root": str(work / "res" / raw["name"])}


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo (config/config.yaml on data/card.dta, standard profile) through `replisynth
    run` once per test run, for the tests that read its outputs: the exit code, the manifest
    dict and the run's folder (bundle/, synthetic/, verify/). Tests must not write into it."""
    out = once_per_run(tmp_path_factory, "demo", _run_demo)
    return {**out, "root": Path(out["root"])}


def _dry_run_demo(_: Path) -> str:
    exe = str(Path(sys.executable).with_name("snakemake"))
    r = subprocess.run(
        [exe, "-n", "--cores", "1", "--forceall"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


@pytest.fixture(scope="session")
def demo_dry_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`snakemake -n --cores 1 --forceall` on the demo from the repository, once per test run:
    its output (stdout and stderr); the exit code is asserted."""
    return once_per_run(tmp_path_factory, "dry_run", _dry_run_demo)


def capture_released(df: pd.DataFrame, manifest: Any, *cps: Any) -> list[dict[str, Any]]:
    """Capture each checkpoint on `df` under `manifest`, asserting it passes the SDC gates."""
    from replisynth.extract.checkpoints import capture_checkpoint

    out = []
    for i, cp in enumerate(cps):
        rel, _ = capture_checkpoint(df, cp, manifest, i)
        assert rel["status"] == "released", rel
        out.append(rel)
    return out


def refit_terms(df: pd.DataFrame, rel: dict[str, Any]) -> list[tuple[float, float, float]]:
    """Refit a released checkpoint on `df`; per released term (|Δβ|/SE_synthetic,
    |Δβ|/SE_target, SE_synthetic/SE_target)."""
    from replisynth.config.manifest import checkpoint_from_release
    from replisynth.fit.estimators import fit_checkpoint
    from replisynth.stats.design import build_design

    cp = checkpoint_from_release(rel)
    fit = fit_checkpoint(build_design(df, cp), cp)
    pos = {t: j for j, t in enumerate(fit.terms)}
    out = []
    for t in rel["terms"]:
        if t.get("suppressed"):
            continue
        j = pos[t["term"]]
        db = abs(fit.beta[j] - t["beta"])
        out.append((db / fit.se[j], db / t["se"], fit.se[j] / t["se"]))
    return out


def extract_and_synthesize_twice(
    root: Path, orig: pd.DataFrame, raw_manifest: Any
) -> dict[str, Any]:
    """Write `orig` as root/p.csv, extract with the manifest made by `raw_manifest(path)`,
    synthesize twice (one/, two/: the reruns byte-compared by tests) and verify one/ (for the
    panel suites; the source is named 'p')."""
    from replisynth.config.manifest import load_manifest
    from replisynth.io.files import read_json
    from replisynth.workflow.cli import cmd_extract, cmd_synthesize, cmd_verify

    orig.to_csv(root / "p.csv", index=False)
    bundle = cmd_extract(load_manifest(raw_manifest(root / "p.csv")), root / "ext")
    one = cmd_synthesize(bundle, root / "one")["p"]
    two = cmd_synthesize(bundle, root / "two")["p"]
    cmd_verify(bundle, root / "one")
    return {
        "root": root,
        "orig": orig,
        "bundle": bundle,
        "one": one,
        "two": two,
        "release": read_json(bundle / "source_p.json"),
        "syn": pd.read_parquet(one),
    }


@pytest.fixture(autouse=True)
def _no_stale_log_handlers():
    """A CLI call in one test binds the package logger's stream handler to that test's
    captured stderr; drop it afterwards so a later warning does not write to a closed file.
    A stage run (runner.run, the CLI) also sets the logger's level: restored too."""
    import logging

    lg = logging.getLogger("replisynth")
    level = lg.level
    yield
    lg.handlers.clear()
    lg.setLevel(level)
