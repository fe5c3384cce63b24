"""The secure-side output-checking audit: synthetic data made by the real pipeline reproduce
no original record; a doctored copy of the original is caught by every measure; the audit's
outputs and logs hold no original value; the manifest's `keys`, the CLI and the Snakemake
target."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, make_people, manifest_for

from replisynth.config.manifest import check_columns, load_manifest
from replisynth.core.errors import ManifestError
from replisynth.disclosure.audit import (
    audit_run,
    audit_source,
    identical_rows,
    render_text,
    replicated_uniques,
    resolve_keys,
    split_halves,
)
from replisynth.disclosure.bundle import load_bundle
from replisynth.io.files import read_json, read_source
from replisynth.workflow.cli import main
from replisynth.workflow.pipeline import stage_audit
from replisynth.workflow.runner import configure_logging

N = 800
SECRET_NUMBER = 987654.321
SECRET_TEXT = "ZZSECRET"
# How the planted values could be spelt in a text output.
SECRET_SPELLINGS = ("987654", "9.87654e", "zzsecret")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """~800 people with a planted outlier and a planted one-off label, through the real
    pipeline (CLI `run`, then `audit`)."""
    tmp = tmp_path_factory.mktemp("audit")
    df = make_people(N, seed=5)
    df["tag"] = np.where(np.arange(N) % 2 == 0, "p", "q")
    df.loc[17, "tag"] = SECRET_TEXT
    df.loc[23, "income"] = SECRET_NUMBER
    df.to_csv(tmp / "people.csv", index=False)
    raw = manifest_for(tmp / "people.csv", strata=["female"])
    (tmp / "m.yaml").write_text(yaml.safe_dump(raw))
    results = tmp / "results"
    assert main(["run", str(tmp / "m.yaml"), "--results", str(results), "--quiet"]) == 0
    assert main(["audit", str(tmp / "m.yaml"), "--results", str(results), "--quiet"]) == 0
    m = load_manifest(raw)
    original = read_source(tmp / "people.csv")[0]
    bundle = results / "t" / "bundle"
    return {
        "tmp": tmp,
        "manifest": m,
        "original": original,
        "results": results / "t",
        "bundle": bundle,
        "release": load_bundle(bundle).releases["people"],
    }


def _copy(original: pd.DataFrame) -> pd.DataFrame:
    """A 'synthetic' file that is the original with its ids renumbered, as synthesis does."""
    out = original.copy()
    out["pid"] = np.arange(1, len(out) + 1)
    return out


def _audit(run: dict[str, Any], synthetic: pd.DataFrame, **kw: Any) -> dict[str, Any]:
    m = run["manifest"]
    return audit_source(
        run["original"],
        synthetic,
        run["release"],
        "people",
        m.seed,
        strata=m.sources[0].strata,
        **kw,
    )


def _holds_secret(text: str) -> list[str]:
    low = text.lower()
    return [s for s in SECRET_SPELLINGS if s in low]


# ---------------------------------------------------------------------------------------------
# the real pipeline


def test_real_synthetic_reproduces_no_record(run: dict[str, Any]) -> None:
    out = run["results"] / "audit"
    a = read_json(out / "audit.json")
    s = a["sources"]["people"]
    assert s["original_rows"] == s["synthetic_rows"] == N
    assert "pid" not in s["columns"] and "income" in s["columns"] and "tag" in s["columns"]
    # default keys: strata and categorical columns; educ (8..18, its tails below the cell size
    # on 800 rows) is released as continuous, so it is not among them
    spec = {c["name"]: c for c in run["release"]["columns"]}
    assert spec["educ"]["role"] == "continuous" and spec["educ"]["integer"]
    assert s["keys_default"] and s["keys"] == ["female", "region", "tag"]
    assert s["identical_all_columns"]["count"] == 0
    assert a["verdict"] == "no synthetic row reproduces an original record"
    assert s["replicated_uniques"]["share"] < 0.02
    d = s["dcr"]
    assert d["synthetic_rows_sampled"] == N and d["training_rows"] + d["holdout_rows"] == N
    assert 0.8 < d["ratio"] < 1.25  # no memorisation: as close to one half as to the other
    assert d["share_closer_than_p5"] < 0.10 and d["share_at_zero"] == 0.0
    assert a["attention"] == []
    txt = (out / "audit.txt").read_text()
    assert "Verdict: no synthetic row reproduces an original record" in txt
    assert "Checked by:" in txt and a["summary"][:60] in " ".join(txt.split())


def test_copy_of_the_original_is_caught(run: dict[str, Any]) -> None:
    original = run["original"]
    s = _audit(run, _copy(original))
    assert s["identical_all_columns"]["count"] == N
    assert s["identical_all_columns"]["original_rows_reproduced"] == N
    assert s["identical_keys"]["count"] == N
    ru = s["replicated_uniques"]
    assert ru["unique_in_original"] > 0
    assert ru["count"] == ru["unique_in_original"] == ru["unique_in_synthetic"]
    d = s["dcr"]
    assert d["share_at_zero"] == 1.0 and d["holdout_share_at_zero"] == 0.0
    # every copied row is at distance 0 from the half it came from: about half are training rows
    assert d["share_closer_than_p5"] > 0.4
    a = audit_run("t", 7, {"people": s})
    assert (
        a["verdict"]
        == f"{N:,} synthetic row(s) reproduce an original record on all released columns"
    )
    assert len(a["attention"]) == 2
    assert "Verdict: 800 synthetic row(s) reproduce an original record" in a["summary"]


def test_copy_of_the_training_half_shows_memorisation(run: dict[str, Any]) -> None:
    """The standard holdout test: a synthesizer that memorised its training rows lies at
    distance 0 from the training half and at the usual distance from the holdout half."""
    original = run["original"]
    train, _ = split_halves(N, run["manifest"].seed, "people")
    s = _audit(run, _copy(original.iloc[train].reset_index(drop=True)))
    d = s["dcr"]
    assert d["median_to_training"] == 0.0 and d["median_to_holdout"] > 0.5
    assert d["ratio"] < 0.1
    assert d["share_closer_than_p5"] == 1.0
    assert s["identical_all_columns"]["count"] == len(train)


def test_column_released_empty_does_not_hide_a_copy(run: dict[str, Any]) -> None:
    syn = _copy(run["original"])
    syn["income"] = np.nan  # as if income had been released as all-missing
    s = _audit(run, syn)
    assert s["columns_empty_in_synthetic"] == ["income"] and "income" not in s["columns"]
    assert s["identical_all_columns"]["count"] == N


# ---------------------------------------------------------------------------------------------
# no original value leaves


def test_outputs_and_logs_hold_no_original_value(
    run: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Worst case: the 'synthetic' data is the original, planted values included."""
    syn = _copy(run["original"])
    assert (syn["income"] == SECRET_NUMBER).any() and (syn["tag"] == SECRET_TEXT).any()
    syn.to_parquet(tmp_path / "people.parquet")
    log_file = tmp_path / "audit.log"
    configure_logging(str(log_file))
    with caplog.at_level(logging.INFO, logger="replisynth"):
        result = stage_audit(
            run["manifest"],
            run["bundle"],
            {"people": tmp_path / "people.parquet"},
            tmp_path / "audit.json",
            tmp_path / "audit.txt",
        )
    logging.getLogger("replisynth").handlers.clear()
    assert result["identical_rows_total"] == N
    cap = capsys.readouterr()
    texts = {
        "audit.json": (tmp_path / "audit.json").read_text(),
        "audit.txt": (tmp_path / "audit.txt").read_text(),
        "log file": log_file.read_text(),
        "captured log": caplog.text,
        "stdout": cap.out,
        "stderr": cap.err,
        "render_text": render_text(result),
    }
    assert "identical on all" in texts["log file"]
    for name, text in texts.items():
        assert not _holds_secret(text), name
    # and the real run's outputs too
    for f in [run["results"] / "audit" / "audit.json", run["results"] / "audit" / "audit.txt"]:
        assert not _holds_secret(f.read_text()), f.name


# ---------------------------------------------------------------------------------------------
# the measures on hand-made data


def test_replicated_uniques_by_hand() -> None:
    orig = pd.DataFrame({"k": ["a", "a", "b", "c", None]})
    syn = pd.DataFrame({"k": ["b", "c", "c", "d", None]})
    # unique in synthetic: b, d, missing; unique in original: b, c, missing -> b and missing
    r = replicated_uniques(orig, syn, ["k"])
    assert (r["count"], r["unique_in_original"], r["unique_in_synthetic"]) == (2, 3, 3)
    assert r["share"] == pytest.approx(2 / 5)


def test_identical_rows_equality_rules() -> None:
    orig = pd.DataFrame({"x": [1, 2, 3], "y": [0.1, np.nan, 1e6 / 3], "s": ["u", "v", None]})
    syn = pd.DataFrame(
        {
            "x": [1.0, 2.0, 3.0],  # integer vs float: equal
            "y": [
                0.1 + 1e-12,
                np.nan,
                np.float32(1e6 / 3),
            ],  # 7 significant digits; missing = missing
            "s": pd.Categorical(["u", "v", None]),  # text vs categorical: equal
        }
    )
    assert identical_rows(orig, syn, ["x", "y", "s"])["count"] == 3
    syn2 = syn.assign(y=[0.1001, 1.0, 1e6 / 3])
    r = identical_rows(orig, syn2, ["x", "y", "s"])
    assert r["count"] == 1 and r["original_rows_reproduced"] == 1


def test_split_halves_is_seeded_and_partitions() -> None:
    a, b = split_halves(801, 7, "people")
    assert len(a) == 401 and len(b) == 400
    assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(801))
    a2, _ = split_halves(801, 7, "people")
    assert np.array_equal(a, a2)
    assert not np.array_equal(a, split_halves(801, 7, "firms")[0])
    assert not np.array_equal(a, split_halves(801, 8, "people")[0])


# ---------------------------------------------------------------------------------------------
# the manifest key


def test_keys_in_manifest_and_schema(run: dict[str, Any]) -> None:
    raw = manifest_for("people.csv", keys=["female", "age"])
    m = load_manifest(raw)
    assert m.sources[0].keys == ("female", "age")
    assert load_manifest(manifest_for("people.csv")).sources[0].keys == ()
    cols = list(make_people(5).columns)
    check_columns(m, "people", cols)
    with pytest.raises(
        ManifestError, match=r"sources\.people\.keys: column 'sex' is not in source 'people'"
    ):
        check_columns(load_manifest(manifest_for("people.csv", keys=["sex"])), "people", cols)
    with pytest.raises(ManifestError, match=r"sources\.people\.keys"):
        load_manifest(manifest_for("people.csv", keys=["age", "age"]))
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    k = schema["properties"]["sources"]["additionalProperties"]["properties"]["keys"]
    assert k["uniqueItems"] is True and k["items"] == {"type": "string"} and k["default"] == []
    assert "audit" in k["description"]
    with pytest.raises(ManifestError, match=r"sources\.people\.keys: column 'pid' is not released"):
        resolve_keys(run["release"], "people", ("female", "pid"), ())
    assert resolve_keys(run["release"], "people", ("age", "female"), ("female",)) == (
        ["age", "female"],
        False,
    )


def test_declared_keys_are_used(run: dict[str, Any]) -> None:
    s = _audit(run, _copy(run["original"]), keys=("female", "region", "educ", "age"))
    assert s["keys"] == ["female", "region", "educ", "age"] and not s["keys_default"]
    assert s["replicated_uniques"]["count"] == s["replicated_uniques"]["unique_in_original"] > 100


# ---------------------------------------------------------------------------------------------
# CLI and Snakemake


def test_cli_audit_needs_bundle_and_synthetic(
    run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", str(run["tmp"] / "m.yaml"), "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("replisynth: audit: ") and "bundle/manifest.json is missing" in err
    assert not (tmp_path / "t" / "audit").exists()


def _smk(*args: str) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("snakemake"))
    return subprocess.run([exe, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_snakemake_audit_target_dry_run(demo_dry_run: str) -> None:
    r = _smk("-n", "--cores", "1", "--forceall", "audit")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "rule audit_disclosure:" in out and "results/card1995/audit/audit.json" in out
    assert "check_tier" in demo_dry_run  # the default target's dry run, shared
    assert "audit" not in demo_dry_run  # not part of `all`
