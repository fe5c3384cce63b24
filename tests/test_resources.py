"""Scheduler requests from input sizes (replisynth.workflow.resources) and how the rules use them."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from replisynth.workflow.resources import MIN_RUNTIME, file_cells, job_resources, release_cells


def test_toy_source_asks_for_little():
    r = job_resources("extract_source", 3010 * 26)  # the demo
    assert r.threads == 1 and r.mem_mb <= 512 and r.runtime == MIN_RUNTIME


def test_ten_million_rows_ask_for_what_they_need():
    """10M rows × 20 columns: the measured ~90 B/cell (1M × 19 peaked at 1.7 GB) gives
    ~18 GB, requested with a 1.5 margin; more cores and more than the minimum time."""
    r = job_resources("extract_source", 10_000_000 * 20)
    assert 18_000 * 1.5 <= r.mem_mb <= 18_000 * 1.5 + 1024
    assert r.threads == 4 and r.runtime > MIN_RUNTIME
    assert r.mem_mb % 256 == 0


def test_requests_grow_with_size_and_attempt():
    sizes = [0, 10**5, 10**7, 10**8, 10**9]
    mems = [job_resources("sample_copula", n).mem_mb for n in sizes]
    times = [job_resources("sample_copula", n).runtime for n in sizes]
    assert mems == sorted(mems) and mems[-1] > mems[0]
    assert times == sorted(times) and times[-1] > times[0]
    one, two = job_resources("verify_tiers", 10**8, 1), job_resources("verify_tiers", 10**8, 2)
    assert two.mem_mb >= 2 * one.mem_mb - 256 and two.runtime >= 2 * one.runtime - 1


def test_light_rules_do_not_scale_with_data():
    assert job_resources("write_bundle", 10**9) == job_resources("write_bundle", 0)
    assert job_resources("check_tier", 10**9).threads == 1


def test_jobs_without_parallel_work_keep_one_core():
    """The csv export, Stata export, verification and the report stay on one core at any
    size, so on a 2-core machine verification and the csv export share it; the data jobs
    (the checkpoint fits among them: one checkpoint per thread) take more on large data."""
    for rule in ("export_csv", "export_stata", "render_report", "verify_tiers"):
        assert job_resources(rule, 10**9).threads == 1, rule
    for rule in ("extract_source", "extract_checkpoints", "sample_copula", "pin_checkpoints"):
        assert job_resources(rule, 10**9).threads > 1, rule


def test_runner_hands_the_job_threads_to_the_stage():
    import replisynth.core.parallel as parallel
    from replisynth.workflow.runner import run

    try:
        assert run(None, parallel.threads, threads=2) == 2
        assert parallel.thread_map(lambda x: x * x, range(7)) == [x * x for x in range(7)]
        assert run(None, parallel.threads) == 1
    finally:
        parallel.set_threads(1)


def test_file_cells_exact_for_parquet_dta_and_release(tmp_path):
    df = pd.DataFrame({"a": np.arange(1000), "b": np.linspace(0, 1, 1000), "c": ["x"] * 1000})
    df.to_parquet(tmp_path / "d.parquet")
    assert file_cells(tmp_path / "d.parquet") == 3000
    assert file_cells(REPO / "data" / "card.dta") == 3010 * 26  # 26 variables
    csv = tmp_path / "d.csv"
    df.to_csv(csv, index=False)
    assert 0.3 * 3000 < file_cells(csv) < 3 * 3000  # estimated from the size
    rel = {"rows": 500, "columns": [{"name": "a"}, {"name": "b"}]}
    assert release_cells(rel) == 1000 and release_cells(rel, rows=2000) == 4000
    assert file_cells(tmp_path / "missing.parquet") == 0
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert file_cells(tmp_path / "bad.parquet") == 0


def test_every_rule_declares_threads_and_sized_resources():
    for smk in sorted((REPO / "rules").glob("*.smk")):
        text = smk.read_text()
        for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", text, flags=re.S | re.M):
            name, body = m.group(1), m.group(2)
            if "log:" not in body:  # target rules (all, extract, audit) run nothing
                continue
            assert f'threads: P.threads("{name}")' in body, name
            assert (
                f'mem_mb=P.mem_mb("{name}")' in body and f'runtime=P.runtime("{name}")' in body
            ), name


@pytest.mark.parametrize(
    "rule", ["extract_source", "sample_copula", "pin_checkpoints", "verify_tiers"]
)
def test_data_rules_are_costed(rule):
    assert job_resources(rule, 10**8).mem_mb > job_resources(rule, 10**5).mem_mb
