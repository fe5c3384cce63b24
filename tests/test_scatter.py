"""Scatter by stratum (replisynth.workflow.scatter, `scatter:`): the per-stratum jobs and their gather
give the same release, SDC log and synthetic data as the one-job stages, byte for byte."""

from __future__ import annotations

import copy
import json
import re
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO, make_people, manifest_for
from test_workflow import _checkout, _smk

from replisynth.config.manifest import load_manifest
from replisynth.core.errors import ManifestError
from replisynth.extract.extract import extract_source
from replisynth.io.files import dumps_json, read_source
from replisynth.synthesize.synthesize import synthesize_source
from replisynth.workflow.scatter import gather_release, sample_blocks, shard_of, stratum_blocks
from replisynth.workflow.workflow import drop_local_rate_limit, scatter_plan, under_cluster


def _strata_data(tmp_path, n=900, seed=5):
    """make_people with strata region × female: 8 cells; at n=900 the region-d cells (10% of
    rows, ~45 each) fall below min_cell_size=50 and form the residual."""
    df = make_people(n, seed=seed)
    df.to_csv(tmp_path / "p.csv", index=False)
    return manifest_for(tmp_path / "p.csv", strata=["region", "female"])


def _json(x):
    return json.loads(dumps_json(x))  # what a job writes and the next one reads


@pytest.fixture(scope="module")
def one_job(tmp_path_factory):
    """The one-job stages on the strata data, once for every shard count: the manifest, the
    data, the full and base releases with their SDC logs, and the one-job synthetic frame."""
    tmp = tmp_path_factory.mktemp("scatter")
    m = load_manifest(_strata_data(tmp))
    data, meta = read_source(tmp / "p.csv")
    full, full_log = extract_source(data, meta, m, m.source("people"))
    base, base_log = extract_source(data, meta, m, m.source("people"), strata_blocks=False)
    return {
        "m": m,
        "data": data,
        "release": full,
        "full": dumps_json(full),
        "full_log": dumps_json(full_log.entries),
        "base": dumps_json(base),
        "base_log": dumps_json(base_log.entries),
        "synthetic": synthesize_source(full, m.seed, 1500),
    }


@pytest.mark.parametrize("shards", [1, 2, 3, 20])
def test_scattered_extraction_and_sampling_are_byte_identical(one_job, shards):
    m, data = one_job["m"], one_job["data"]
    full, base = copy.deepcopy(one_job["release"]), json.loads(one_job["base"])
    assert len(full["strata"]["cells"]) >= 5 and full["strata"]["residual_rows"] > 0
    assert set(base["blocks"]) == {"all"} and base["strata"]["cells"] == full["strata"]["cells"]
    parts = [_json(stratum_blocks(data, m, "people", base, k, shards)) for k in range(shards)]
    assert sorted(p["id"] for part in parts for p in part) == sorted(
        c["id"] for c in full["strata"]["cells"]
    )
    release, sdc = gather_release(base, json.loads(one_job["base_log"]), parts, m.sdc.min_cell_size)
    assert dumps_json(release) == one_job["full"]
    assert dumps_json(sdc) == one_job["full_log"]

    blocks: dict = {}
    for k in range(shards):
        blocks.update(sample_blocks(full, m.seed, 1500, k, shards))
    assert len(blocks) == len(full["strata"]["cells"]) + 1  # the strata and the residual
    a = one_job["synthetic"]
    b = synthesize_source(full, m.seed, 1500, blocks=blocks)
    assert a.equals(b) and list(a.dtypes) == list(b.dtypes)


def test_gather_refuses_missing_strata(tmp_path):
    m = load_manifest(_strata_data(tmp_path))
    data, meta = read_source(tmp_path / "p.csv")
    base, log = extract_source(data, meta, m, m.source("people"), strata_blocks=False)
    parts = [_json(stratum_blocks(data, m, "people", _json(base), 0, 2))]  # shard 1 of 2 missing
    with pytest.raises(RuntimeError, match="stratum jobs returned"):
        gather_release(_json(base), log.entries, parts, m.sdc.min_cell_size)


def test_shards_partition_the_items():
    items = list(range(7))
    assert sorted(x for k in range(3) for x in shard_of(items, k, 3)) == items
    assert (
        shard_of(items, 0, 1) == items
        and shard_of(items, 4, 9) == [4]
        and shard_of(items, 8, 9) == []
    )
    with pytest.raises(ValueError):
        shard_of(items, 3, 3)


def test_scatter_setting():
    strata = {"a": True, "b": False, "c": True}
    assert scatter_plan(3, strata, {}) == {"a": 3, "c": 3}
    assert scatter_plan(1, strata, {}) == {} and scatter_plan(0, strata, {}) == {}
    assert scatter_plan("auto", strata, {"a": 10**5, "c": 10**8}) == {"c": 4}
    assert scatter_plan(None, strata, {"a": 10**9, "b": 10**9}) == {"a": 4}  # b has no strata
    for bad in (-1, "many", 2.5, True):
        with pytest.raises(ManifestError, match="scatter: must be auto or an integer"):
            scatter_plan(bad, strata, {})


def test_auto_scatters_only_under_a_cluster_executor():
    """On one machine `auto` never scatters, however large the source (the stratum jobs'
    start-up and reads made a local 1M-row run slower); explicit counts still do."""
    strata = {"big": True, "flat": False}
    huge = {"big": 10**10}
    assert scatter_plan("auto", strata, huge, cluster=False) == {}
    assert scatter_plan(None, strata, huge, cluster=False) == {}
    assert scatter_plan("auto", strata, huge, cluster=True) == {"big": 4}
    assert scatter_plan(2, strata, {}, cluster=False) == {"big": 2}


def test_cluster_executor_is_recognised():
    """A job limit (`--jobs` with a cluster executor) or a job re-reading the Snakefile in
    remote mode means a cluster; a local run (cores only, `--jobs` turned into cores) not."""
    local = SimpleNamespace(resource_settings=SimpleNamespace(nodes=None), remote_exec=False)
    submit = SimpleNamespace(resource_settings=SimpleNamespace(nodes=50), remote_exec=False)
    remote = SimpleNamespace(resource_settings=SimpleNamespace(nodes=None), remote_exec=True)
    assert not under_cluster(local)
    assert under_cluster(submit) and under_cluster(remote)
    assert not under_cluster(object())


def test_local_run_drops_only_the_default_rate_limit():
    """Snakemake's default limit (100 jobs a second) leaves a one-second timer that a local
    run waits for at its exit: dropped on one machine; a cluster run and an explicit limit
    keep theirs. Snakemake's own classes, so a renamed attribute fails here."""
    import inspect

    from snakemake.scheduling.job_scheduler import JobRateLimiter, JobScheduler
    from snakemake.settings.types import MaxJobsPerTimespan

    assert "self.job_rate_limiter" in inspect.getsource(JobScheduler.__init__)

    def workflow(limit: str, nodes: int | None) -> SimpleNamespace:
        limiter = JobRateLimiter(MaxJobsPerTimespan.parse_choice(limit))
        return SimpleNamespace(
            resource_settings=SimpleNamespace(nodes=nodes),
            remote_exec=False,
            scheduler=SimpleNamespace(job_rate_limiter=limiter),
        )

    local, cluster, explicit = (
        workflow("100/1s", None),
        workflow("100/1s", 50),
        workflow("5/1s", None),
    )
    for w in (local, cluster, explicit):
        drop_local_rate_limit(w)
    assert local.scheduler.job_rate_limiter is None
    assert cluster.scheduler.job_rate_limiter.max_jobs == 100
    assert explicit.scheduler.job_rate_limiter.max_jobs == 5
    drop_local_rate_limit(object())  # no scheduler (a dry run's hooks never run): nothing to do


def test_scatter_is_not_recorded_in_the_manifest(tmp_path):
    raw = _strata_data(tmp_path)
    assert load_manifest({**raw, "scatter": 4}).raw == load_manifest(raw).raw


def test_dry_run_scatters_only_when_asked():
    r = _smk(REPO, "-n", "--cores", "1", "--forceall", "--config", "scatter=3")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M))
    assert jobs["extract_stratum"] == "3" and jobs["sample_stratum"] == "3"
    assert jobs["extract_base"] == jobs["gather_release"] == jobs["gather_blocks"] == "1"
    assert "extract_source" not in jobs and "sample_copula" not in jobs
    r = _smk(REPO, "-n", "--cores", "1", "--forceall", "--config", "scatter=0")
    assert r.returncode == 0 and "extract_stratum" not in r.stdout + r.stderr
    r = _smk(REPO, "-n", "--cores", "1", "--config", "scatter=-2")
    assert r.returncode != 0 and "scatter: must be auto or an integer" in r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.workflow
def test_snakemake_scattered_run_equals_unscattered(tmp_path):
    """The several-strata manifest through Snakemake, once scattered over 3 jobs per stage
    and once not: the bundle, staging releases and synthetic files are byte-identical."""
    raw = _strata_data(tmp_path, n=1500)
    raw.update(
        name="strata",
        checkpoints=[
            {
                "tag": "a",
                "source": "people",
                "model": "ols",
                "formula": "y ~ x1 + x2 + female + C(region)",
            }
        ],
        verify={"tier": 4},
    )
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(raw))
    runs = {}
    for scatter in (0, 3):
        work = _checkout(tmp_path / f"s{scatter}", with_data=False)
        r = _smk(
            work,
            "--cores",
            "2",
            "--configfile",
            str(tmp_path / "m.yaml"),
            "--config",
            f"scatter={scatter}",
        )
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        runs[scatter] = work / "results" / "strata"
    assert len(list((runs[3] / "extract" / "people.strata").glob("*.json"))) == 3
    assert len(list((runs[3] / "synthesize" / "people.strata").glob("*.pkl"))) == 3
    for d in ("bundle", "synthetic"):
        names = sorted(p.relative_to(runs[0]) for p in (runs[0] / d).iterdir())
        assert names
        for n in names:
            assert (runs[0] / n).read_bytes() == (runs[3] / n).read_bytes(), n
    for n in (
        "extract/people.release.json",
        "extract/people.sdc.json",
        "synthesize/people.parquet",
        "verify/tiers.json",
    ):
        assert (runs[0] / n).read_bytes() == (runs[3] / n).read_bytes(), n
    tiers = json.loads((runs[3] / "verify" / "tiers.json").read_text())
    assert tiers["tier_met"] == 4
