"""Provenance: every benchmarked step's time and the run's wall time, from Snakemake's
benchmark files, in the report and the certificate."""

from __future__ import annotations

import os

from replisynth.workflow.pipeline import provenance, provenance_text

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path, seconds, end):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        HEADER + f"{seconds}\t0:00:0{int(seconds)}\t100\t200\t50\t60\t0\t0\t90\t{seconds}\n"
    )
    os.utime(path, (end, end))
    return path


def test_provenance_keys_by_rule_and_wildcards_and_spans_the_run(tmp_path):
    b = tmp_path / "benchmarks"
    files = [
        _bench(b / "extract_source" / "card.tsv", 2.0, 1000.0),  # ran 998..1000
        _bench(b / "sample_copula" / "card.tsv", 3.0, 1010.0),  # same stem, another rule
        _bench(b / "verify_tiers" / "all.tsv", 1.5, 1020.0),
        b / "pin_checkpoints" / "card.tsv",  # not written: skipped
    ]
    p = provenance(files)
    assert p["benchmarks"] == {
        "extract_source/card": 2.0,
        "sample_copula/card": 3.0,
        "verify_tiers/all": 1.5,
    }
    assert p["total_seconds"] == 6.5
    assert p["wall_seconds"] == 22.0  # 998 .. 1020
    text = provenance_text(p)
    for k in p["benchmarks"]:
        assert k in text
    assert "22.0 s from the first step's start" in text and "6.5 s over 3 benchmarked steps" in text


def test_no_benchmarks_no_provenance(tmp_path):
    assert provenance([]) is None
    assert provenance([tmp_path / "none.tsv"]) is None
    (tmp_path / "bad.tsv").write_text("not a benchmark")
    assert provenance([tmp_path / "bad.tsv"]) is None
