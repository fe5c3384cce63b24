"""fuse: a small local run's outside stages in one job (rules/fused.smk), with every stage's
log and benchmark file where its own rule writes them, and the same bytes as one job per
stage."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, make_people
from test_workflow import _checkout, _smk

from replisynth.config.manifest import load_manifest
from replisynth.core.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, ManifestError
from replisynth.workflow.fused import Stage, benchmark_row, run_beside, run_stages
from replisynth.workflow.pipeline import provenance
from replisynth.workflow.resources import FUSE_CELLS, FUSE_ROWS
from replisynth.workflow.workflow import fuse_plan

OUTSIDE_RULES = (
    "sample_copula",
    "pin_checkpoints",
    "export_stata",
    "verify_tiers",
    "export_csv",
    "synthetic_readme",
)
SECURE_RULES = ("extract_source", "extract_checkpoints", "write_bundle")


def _jobs(out: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M))


def test_auto_fuses_only_small_local_unscattered_runs():
    small, rows = {"a": 50_000, "b": FUSE_CELLS}, {"a": None, "b": FUSE_ROWS}
    assert fuse_plan("auto", small, rows, scattered=False, cluster=False)
    assert fuse_plan(None, small, rows, scattered=False, cluster=False)
    assert not fuse_plan("auto", small, rows, scattered=False, cluster=True)
    assert not fuse_plan("auto", small, rows, scattered=True, cluster=False)
    assert not fuse_plan("auto", {**small, "b": FUSE_CELLS + 1}, rows, False, False)
    assert not fuse_plan("auto", small, {**rows, "a": FUSE_ROWS + 1}, False, False)
    assert not fuse_plan("auto", {"a": 0}, {"a": None}, False, False)  # size unknown (no data)
    huge = {"a": 10**9}
    assert fuse_plan(True, huge, {"a": None}, scattered=False, cluster=True)
    assert not fuse_plan(True, small, rows, scattered=True, cluster=False)
    assert not fuse_plan(False, small, rows, scattered=False, cluster=False)
    assert fuse_plan("false", small, rows, False, False) is False
    assert fuse_plan("True", huge, {"a": None}, scattered=False, cluster=True)
    for bad in ("yes", 1, 0, 2.5):
        with pytest.raises(ManifestError, match="fuse: must be auto, true or false"):
            fuse_plan(bad, small, rows, False, False)


def test_fuse_is_not_recorded_in_the_manifest(tmp_path):
    make_people(200).to_csv(tmp_path / "p.csv", index=False)
    raw = {"name": "f", "seed": 2, "sources": {"p": {"path": str(tmp_path / "p.csv")}}}
    assert load_manifest({**raw, "fuse": False}).raw == load_manifest(raw).raw


@pytest.mark.parametrize("seconds,cpu,rss", [(0.25, 0.31, 180.5), (3725.0, 7000.12, 2048.0)])
def test_stage_benchmark_reads_like_snakemakes(tmp_path, seconds, cpu, rss):
    """A stage's benchmark file has Snakemake's columns: the report's provenance and the
    benchmark matrix read its seconds, CPU seconds and peak memory."""
    import importlib.util

    path = tmp_path / "benchmarks" / "sample_copula" / "s1.tsv"
    path.parent.mkdir(parents=True)
    path.write_text(benchmark_row(seconds, cpu, rss))
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    step = run._bench_files(tmp_path)["sample_copula"]
    assert step["s"] == pytest.approx(seconds) and step["cpu"] == pytest.approx(cpu)
    assert step["rss"] == pytest.approx(rss)
    prov = provenance([path])
    assert prov is not None and prov["benchmarks"] == {"sample_copula/s1": pytest.approx(seconds)}


def test_dry_run_demo_fuses_unless_told_not_to():
    r = _smk(REPO, "-n", "--cores", "1", "--forceall")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    jobs = _jobs(out)
    assert jobs["outside_fused"] == "1" and jobs["secure_fused"] == "1"
    assert not any(rule in jobs for rule in OUTSIDE_RULES + SECURE_RULES + ("render_report",))
    assert {"review", "check_tier"} <= set(jobs)
    r = _smk(REPO, "-n", "--cores", "1", "--forceall", "--config", "fuse=false")
    jobs = _jobs(r.stdout + r.stderr)
    assert "outside_fused" not in jobs and set(OUTSIDE_RULES) <= set(jobs)
    assert "secure_fused" not in jobs and set(SECURE_RULES) <= set(jobs)
    r = _smk(REPO, "-n", "--cores", "1", "--config", "fuse=maybe")
    assert r.returncode != 0 and "fuse: must be auto, true or false" in r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.workflow
def test_fused_run_equals_one_job_per_stage(tmp_path):
    """The same manifest through Snakemake with fuse on and off: the synthetic files, the pin
    reports, tiers.json and the bundle are byte-identical, and every stage's log and
    benchmark file is where its rule writes it."""
    make_people(700, seed=4).to_stata(tmp_path / "people.dta", write_index=False)
    man = {
        "name": "fused",
        "seed": 9,
        "sources": {"people": {"path": str(tmp_path / "people.dta"), "ids": ["pid"]}},
        "checkpoints": [
            {"tag": "y", "source": "people", "model": "ols", "formula": "y ~ x1 + x2 + female"}
        ],
        "verify": {"tier": 4},
    }
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(man))
    runs = {}
    for fuse in ("true", "false"):
        work = _checkout(tmp_path / f"fuse_{fuse}", with_data=False)
        args = ("--cores", "2", "--configfile", str(tmp_path / "m.yaml"), "--config")
        r = _smk(work, *args, f"fuse={fuse}")
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        assert ("outside_fused" in _jobs(r.stdout + r.stderr)) == (fuse == "true")
        runs[fuse] = work / "results" / "fused"
    one, each = runs["true"], runs["false"]
    for d in ("bundle", "synthetic"):
        names = sorted(p.name for p in (each / d).iterdir())
        assert names == sorted(p.name for p in (one / d).iterdir())
        for n in names:
            assert (one / d / n).read_bytes() == (each / d / n).read_bytes(), n
    for n in ("synthesize/people.parquet", "synthesize/people.pin.json", "verify/tiers.json"):
        assert (one / n).read_bytes() == (each / n).read_bytes(), n
    for kind in ("logs", "benchmarks"):
        files = sorted(str(p.relative_to(each)) for p in (each / kind).rglob("*.*"))
        assert files == sorted(str(p.relative_to(one)) for p in (one / kind).rglob("*.*"))
    for rule in OUTSIDE_RULES:
        assert (one / "logs" / rule).is_dir() and any((one / "logs" / rule).iterdir()), rule
    cert = (one / "verify" / "certificate.txt").read_text()
    assert "sample_copula/people" in cert and "verify_tiers/all" in cert


def _pid_stage(tmp_path, name: str, fail: Exception | None = None, wait: float = 0.0) -> Stage:
    """A stage that records the process it ran in (or fails with `fail` after `wait` s)."""

    def call() -> None:
        time.sleep(wait)
        if fail is not None:
            raise fail
        (tmp_path / f"{name}.pid").write_text(str(os.getpid()))

    return Stage(
        str(tmp_path / "logs" / f"{name}.log"), str(tmp_path / "bench" / f"{name}.tsv"), call
    )


def _stage(tmp_path, name: str, call) -> Stage:
    return Stage(
        str(tmp_path / "logs" / f"{name}.log"), str(tmp_path / "bench" / f"{name}.tsv"), call
    )


def _logs(tmp_path) -> None:
    (tmp_path / "logs").mkdir(exist_ok=True)


@pytest.mark.parametrize("parallel", [True, False])
def test_run_beside_runs_every_stage_with_its_log_and_benchmark(tmp_path, parallel):
    _logs(tmp_path)
    main = [_pid_stage(tmp_path, "m1"), _pid_stage(tmp_path, "m2")]
    side = [_pid_stage(tmp_path, "s1")]
    run_beside(main, side, threads=1, parallel=parallel)
    pids = {n: int((tmp_path / f"{n}.pid").read_text()) for n in ("m1", "m2", "s1")}
    assert pids["m1"] == pids["m2"] == os.getpid()
    assert (pids["s1"] != os.getpid()) == parallel  # beside: a forked child
    for n in pids:
        assert (tmp_path / "logs" / f"{n}.log").exists()
        assert (tmp_path / "bench" / f"{n}.tsv").read_text().startswith("s\th:m:s\tmax_rss")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_each_stage_benchmark_reports_its_own_peak(tmp_path):
    """A fused job's benchmark row per stage gives that stage's peak resident set, not the
    process's largest so far: a light stage after a heavy one reports a light peak."""
    import numpy as np

    _logs(tmp_path)

    def heavy():
        block = np.ones(40_000_000)  # 320 MB, touched
        return float(block[-1])

    run_stages([_stage(tmp_path, "heavy", heavy), _stage(tmp_path, "light", lambda: None)])

    def rss(name: str) -> float:
        row = (tmp_path / "bench" / f"{name}.tsv").read_text().splitlines()[1].split("\t")
        return float(row[2])

    assert rss("heavy") > 300 and rss("light") < rss("heavy") - 250


def test_a_failing_stage_beside_fails_the_job_with_its_status(tmp_path):
    _logs(tmp_path)
    bad = _pid_stage(tmp_path, "side", fail=ManifestError("sources.q: no such column zz"))
    with pytest.raises(SystemExit) as exc:
        run_beside([_pid_stage(tmp_path, "main")], [bad], threads=1, parallel=True)
    assert exc.value.code == EXIT_BAD_INPUT
    assert (tmp_path / "main.pid").exists()  # the other side finished first
    assert "no such column zz" in (tmp_path / "logs" / "side.log").read_text()
    assert not (tmp_path / "bench" / "side.tsv").exists()


def test_a_failing_stage_here_stops_the_one_beside(tmp_path):
    _logs(tmp_path)
    slow = _pid_stage(tmp_path, "side", wait=30.0)
    start = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        run_beside([_pid_stage(tmp_path, "main", fail=RuntimeError("x"))], [slow], 1, parallel=True)
    assert exc.value.code == EXIT_INTERNAL
    assert time.monotonic() - start < 20 and not (tmp_path / "side.pid").exists()


def test_the_secure_fused_job_asks_for_two_cores_for_its_two_processes():
    from replisynth.workflow.resources import job_resources

    for cells in (10, 3_010 * 34, FUSE_CELLS):
        assert job_resources("secure_fused", cells).threads == 2
        assert job_resources("extract_source", cells).threads == 1
    assert job_resources("secure_fused", 200_000_000).threads == 4


@pytest.mark.parametrize("fuse", [None, True])
def test_the_secure_side_is_fused_only_on_a_local_fused_run(tmp_path, fuse):
    from replisynth.workflow.workflow import workflow_plan

    make_people(300, seed=5).to_csv(tmp_path / "s.csv", index=False)
    raw = {"name": "sf", "seed": 1, "sources": {"s": {"path": str(tmp_path / "s.csv")}}}
    if fuse is not None:
        raw["fuse"] = fuse
    local = workflow_plan(raw, cluster=False)
    assert local.fused and local.fused_secure
    cluster = workflow_plan(raw, cluster=True)
    assert cluster.fused == (fuse is True) and not cluster.fused_secure
    assert not workflow_plan({**raw, "fuse": False}, cluster=False).fused_secure
    scattered = {
        **raw,
        "scatter": 2,
        "sources": {"s": {**raw["sources"]["s"], "strata": ["female"]}},
    }
    assert not workflow_plan(scattered, cluster=False).fused_secure
