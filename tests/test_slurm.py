"""The demo pipeline on a real single-node Slurm cluster (ci/slurm/up.sh: Debian's slurm-wlm
and munge, daemons started directly), through `snakemake --profile profiles/slurm`.

Asserts, from Slurm's own job records (`scontrol show job`, kept for MinJobAge=600 s), that
every non-local job of the run was an sbatch job that completed, with the cores and memory
replisynth.workflow.resources computed; that every data output equals a local run's byte for byte;
and that tier 4 is met.

Run with `make test-slurm` (pytest -m slurm). Skips with a reason where root or apt is
missing; with REPLISYNTH_REQUIRE_SLURM=1 (set by .ci/run) a missing cluster fails instead.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_workflow import _checkout

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
PREFIX = os.environ.get("SLURM_PREFIX", "/tmp/replisynth-slurm")
DAEMONS = ("munged", "slurmctld", "slurmd")
# Every rule of the demo DAG that runs as a cluster job (`all` is a local target rule).
CLUSTER_RULES = {
    "extract_source",
    "extract_checkpoints",
    "write_bundle",
    "sample_copula",
    "pin_checkpoints",
    "export_csv",
    "export_stata",
    "verify_tiers",
    "render_report",
    "check_tier",
    "review",
    "synthetic_readme",
}
# Outputs that must not depend on where a job ran. Logs, benchmarks, report.html and the
# certificate carry timings, so they legitimately differ between two runs.
DATA_DIRS = ("bundle", "extract", "synthesize", "synthetic")


def _unavailable(reason: str) -> None:
    if os.environ.get("REPLISYNTH_REQUIRE_SLURM") == "1":
        pytest.fail(f"REPLISYNTH_REQUIRE_SLURM=1 but no Slurm cluster: {reason}")
    pytest.skip(f"no Slurm cluster: {reason}")


def _running(name: str) -> bool:
    pidfile = Path(PREFIX, "run", f"{name}.pid")
    try:
        pid = pidfile.read_text().strip()
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    """Bring the cluster up (idempotent); stop it afterwards only if this fixture started it."""
    if os.name != "posix" or os.geteuid() != 0:
        _unavailable("needs root to install slurm-wlm/munge and start the daemons")
    installed = all(
        Path(p).exists() for p in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged")
    )
    if not installed and shutil.which("apt-get") is None:
        _unavailable("slurm-wlm/munge are not installed and apt-get is not available")
    # One cluster per machine (fixed ports): test sessions on it take turns, so one session's
    # teardown never stops the daemons under another's jobs.
    lock = open(f"{PREFIX}.lock", "w")  # held until the fixture ends
    deadline = time.monotonic() + 3600
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail(f"another test session has held {PREFIX}.lock for an hour")
            time.sleep(2)
    was_up = all(_running(d) for d in DAEMONS)
    env = {**os.environ, "SLURM_PREFIX": PREFIX}

    def down() -> None:
        if not was_up:  # stop exactly what this session started
            subprocess.run(
                ["bash", str(REPO / "ci" / "slurm" / "down.sh")], env=env, timeout=120, check=False
            )

    try:
        r = subprocess.run(
            ["bash", str(REPO / "ci" / "slurm" / "up.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if r.returncode == 2:
            _unavailable(r.stderr.strip()[-500:])
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        assert all(_running(d) for d in DAEMONS), "up.sh returned 0 but a daemon is not running"
        # Idempotent: a second call keeps the same daemons.
        pids = {d: Path(PREFIX, "run", f"{d}.pid").read_text() for d in DAEMONS}
        r2 = subprocess.run(
            ["bash", str(REPO / "ci" / "slurm" / "up.sh")],
            env={**env, "SLURM_UP_SMOKE": "0"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r2.returncode == 0, r2.stderr[-2000:]
        assert pids == {d: Path(PREFIX, "run", f"{d}.pid").read_text() for d in DAEMONS}
    except BaseException:  # a failed or skipped set-up leaves no daemon behind
        down()
        lock.close()
        raise
    yield {**env, "SLURM_CONF": f"{PREFIX}/etc/slurm.conf"}
    try:
        down()
        if not was_up:
            assert not any(_running(d) for d in DAEMONS)
    finally:
        lock.close()  # releases the lock


def _job_record(env: dict[str, str], jobid: str) -> dict[str, str]:
    """Slurm's record of one job as key=value pairs (`scontrol show job -o`)."""
    r = subprocess.run(
        ["scontrol", "show", "job", "-o", jobid],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, f"Slurm has no record of job {jobid}: {r.stderr}"
    rec = {}
    for tok in r.stdout.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            rec[k] = v
    return rec


def _data_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for d in DATA_DIRS
        for p in sorted((root / d).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo run locally (profiles/local): what every Slurm run must reproduce."""
    local = _checkout(tmp_path_factory.mktemp("local"))
    rl = subprocess.run(
        [SNAKEMAKE, "--profile", "profiles/local"],
        cwd=local,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert rl.returncode == 0, (rl.stdout + rl.stderr)[-3000:]
    return local / "results" / "card1995"


def _run_on_slurm(cluster: dict[str, str], work: Path, *extra: str) -> str:
    # The cluster has no accounting database (accounting_storage/none): poll with squeue,
    # and poll early so the chained demo jobs do not each wait the default 40 s.
    cmd = [
        SNAKEMAKE,
        "--profile",
        "profiles/slurm",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        *extra,
    ]
    # `timeout -k`: Snakemake ignores SIGTERM while it believes jobs are still running.
    r = subprocess.run(
        ["timeout", "-k", "10", "1500", *cmd], cwd=work, env=cluster, capture_output=True, text=True
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    return out


def _slurm_jobs(cluster: dict[str, str], out: str, work: Path) -> dict[str, list[dict[str, str]]]:
    """Slurm's record of every job the run submitted, by rule; each one a completed batch job."""
    jobids = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    assert jobids, out[-3000:]
    rules: dict[str, list[dict[str, str]]] = {}
    for jid in jobids:
        rec = _job_record(cluster, jid)
        assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", rec
        assert rec["BatchFlag"] == "1", rec  # a batch (sbatch) job, not srun/salloc
        assert Path(rec["WorkDir"]).resolve() == work.resolve()
        rule = re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", rec["Comment"]).group(1)
        rules.setdefault(rule, []).append(rec)
    # Every job but the target rule `all` ran on the cluster: one Slurm job per "rule" entry.
    local = re.findall(r"^localrule (\w+):", out, flags=re.M)
    assert local == ["all"], local
    assert len(jobids) == len(re.findall(r"^rule \w+:", out, flags=re.M))
    return rules


def _same_as_local(local: Path, res: Path) -> None:
    a, b = _data_files(local), _data_files(res)
    assert len(a) >= 10
    for name in a:
        assert name in b and a[name] == b[name], (
            f"{name} differs between the local and the Slurm run"
        )
    assert (local / "verify" / "tiers.json").read_bytes() == (
        res / "verify" / "tiers.json"
    ).read_bytes()
    # The certificate (and verdict.txt, its copy) end with this run's timings; the quotable
    # paragraph before them is the same.
    for name in ("verify/certificate.txt", "verify/verdict.txt"):
        assert (local / name).read_text().split("\n\n")[0] == (res / name).read_text().split(
            "\n\n"
        )[0], name
    tiers = yaml.safe_load((res / "verify" / "tiers.json").read_text())
    assert tiers["tier_met"] == 4 and tiers["passed"] is True
    cert = (res / "verify" / "certificate.txt").read_text()
    for bench in (res / "benchmarks").rglob(
        "*.tsv"
    ):  # the csv export runs beside the report (not certified)
        assert (f"{bench.parent.name}/{bench.stem} " in cert) == (
            bench.parent.name != "export_csv"
        ), bench


def test_demo_runs_on_slurm_like_locally(
    cluster: dict[str, str], local_run: Path, tmp_path: Path
) -> None:
    from replisynth.workflow.resources import file_cells, job_resources

    work = _checkout(tmp_path / "slurm")
    out = _run_on_slurm(cluster, work)
    rules = _slurm_jobs(cluster, out, work)
    assert set(rules) == CLUSTER_RULES and all(len(v) == 1 for v in rules.values())
    # The request came from replisynth.workflow.resources (sized from the input).
    want = job_resources("extract_source", file_cells(work / "data" / "card.dta"))
    got = rules["extract_source"][0]
    assert got["NumCPUs"] == str(want.threads) and got["MinMemoryNode"] == f"{want.mem_mb}M"
    assert got["TimeLimit"] == f"00:{want.runtime:02d}:00"
    _same_as_local(local_run, work / "results" / "card1995")


def test_demo_scattered_by_stratum_on_slurm(
    cluster: dict[str, str], local_run: Path, tmp_path: Path
) -> None:
    """scatter=2: the per-stratum jobs are sbatch jobs too, and the outputs still equal the
    local one-job-per-source run byte for byte."""
    work = _checkout(tmp_path / "slurm_scatter")
    out = _run_on_slurm(cluster, work, "--config", "scatter=2")
    rules = _slurm_jobs(cluster, out, work)
    assert len(rules["extract_stratum"]) == 2 and len(rules["sample_stratum"]) == 2
    assert {"extract_base", "gather_release", "gather_blocks"} <= set(rules)
    assert not {"extract_source", "sample_copula"} & set(rules)
    _same_as_local(local_run, work / "results" / "card1995")
