"""Rebuilding from a bundle: byte-identical reruns, bundle-only rebuilds, seed streams."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_people

from replisynth.config.manifest import load_manifest
from replisynth.core.seeds import rng, seed_sequence
from replisynth.io.files import FileMeta, read_json, write_dta
from replisynth.workflow.cli import cmd_extract, cmd_synthesize, main

N = 1000
STORAGE = {"pid": "int16", "female": "int8", "age": "int8", "educ": "int8", "cluster": "int8"}


def write_people_dta(path: Path, n: int = N, seed: int = 0) -> None:
    df = make_people(n, seed).astype(STORAGE)
    meta = FileMeta(
        variable_labels={
            "y": "outcome",
            "x1": "first regressor",
            "female": "=1 if female",
            "region": "region",
        },
        value_labels={"female": {0: "male", 1: "female"}},
        storage_types=STORAGE,
    )
    write_dta(df, path, meta)


def people_manifest(path: Path, seed: int = 7, name: str = "rb") -> dict[str, Any]:
    return {
        "name": name,
        "seed": seed,
        "sources": {
            "people": {
                "path": str(path),
                "ids": ["pid"],
                "groups": ["cluster"],
                "strata": ["female"],
            }
        },
        "checkpoints": [
            {
                "tag": "y_ols",
                "source": "people",
                "model": "ols",
                "formula": "y ~ x1 + x2 + female + C(region)",
                "vcov": "HC1",
            },
        ],
        "verify": {"tier": 4},
    }


def files_under(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("rebuild")
    src = root / "people.dta"
    write_people_dta(src)
    raw = people_manifest(src)
    bundle = cmd_extract(load_manifest(raw), root / "ext")
    cmd_synthesize(bundle, root / "one")
    cmd_synthesize(bundle, root / "two")
    return {
        "root": root,
        "src": src,
        "raw": raw,
        "bundle": bundle,
        "one": root / "one" / "rb",
        "two": root / "two" / "rb",
    }


# ---------------------------------------------------------------------------------------------
# byte-identical reruns


def test_synthesize_twice_is_byte_identical(built: dict[str, Any]) -> None:
    one, two = files_under(built["one"]), files_under(built["two"])
    assert {"synthetic/people.parquet", "synthetic/people.csv", "synthetic/people.dta"} <= set(one)
    assert set(one) == set(two)
    for name in one:
        assert one[name] == two[name], name
    df = pd.read_parquet(built["one"] / "synthetic" / "people.parquet")
    assert len(df) == N


def test_extract_twice_gives_the_same_bundle(built: dict[str, Any], tmp_path: Path) -> None:
    again = cmd_extract(load_manifest(built["raw"]), tmp_path)
    assert files_under(again) == files_under(built["bundle"])


def test_other_seed_changes_data_not_statistics(built: dict[str, Any], tmp_path: Path) -> None:
    raw8 = people_manifest(built["src"], seed=8)
    b8 = cmd_extract(load_manifest(raw8), tmp_path / "ext")
    b7 = built["bundle"]
    # Released statistics do not depend on the seed.
    for f in ("source_people.json", "checkpoints.json", "sdc_log.json"):
        assert (b8 / f).read_bytes() == (b7 / f).read_bytes(), f
    m7, m8 = read_json(b7 / "manifest.json"), read_json(b8 / "manifest.json")
    assert (m7["seed"], m8["seed"]) == (7, 8)
    assert (m7["manifest"]["seed"], m8["manifest"]["seed"]) == (7, 8)
    for m in (m7, m8):
        m.pop("seed")
        m["manifest"].pop("seed")
    assert m7 == m8
    # The synthetic data do.
    cmd_synthesize(b8, tmp_path / "syn")
    d7 = pd.read_parquet(built["one"] / "synthetic" / "people.parquet")
    d8 = pd.read_parquet(tmp_path / "syn" / "rb" / "synthetic" / "people.parquet")
    assert list(d7.columns) == list(d8.columns) and len(d7) == len(d8)
    for c in ("x1", "x2", "income", "w", "age"):
        assert not d7[c].equals(d8[c]), c
    # ... with the same marginals: categorical counts are exact under both seeds.
    for c in ("region", "educ", "female"):
        assert d7[c].value_counts().sort_index().equals(d8[c].value_counts().sort_index()), c
    assert sorted(d7["x1"].dropna()) == pytest.approx(sorted(d8["x1"].dropna()))


# ---------------------------------------------------------------------------------------------
# rebuilding from the bundle alone


def test_bundle_only_rebuild_without_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "secure" / "people.dta"
    src.parent.mkdir()
    write_people_dta(src, n=800, seed=2)
    mpath = tmp_path / "secure" / "manifest.yaml"
    mpath.write_text(yaml.safe_dump(people_manifest(src, name="solo")))
    with_data = tmp_path / "with_data"
    assert main(["run", str(mpath), "--results", str(with_data), "--quiet"]) == 0

    # Ship the bundle; the source data stays behind (and is gone).
    shipped = tmp_path / "outside" / "bundle"
    shutil.copytree(with_data / "solo" / "bundle", shipped)
    shutil.rmtree(tmp_path / "secure")
    assert not src.exists()
    out = tmp_path / "outside" / "results"
    assert main(["synthesize", "--bundle", str(shipped), "--results", str(out), "--quiet"]) == 0
    assert main(["verify", "--bundle", str(shipped), "--results", str(out), "--quiet"]) == 0

    a = files_under(with_data / "solo")
    b = files_under(out / "solo")
    for name in (
        "synthetic/people.parquet",
        "synthetic/people.csv",
        "synthetic/people.dta",
        "synthesize/people.parquet",
        "synthesize/people.pin.json",
        "verify/tiers.json",
        "verify/certificate.txt",
        "verify/report.html",
    ):
        assert name in b, name
        assert a[name] == b[name], name
    assert not any(
        k.startswith(("bundle/", "extract/")) for k in b
    )  # nothing secure-side was rebuilt
    tiers = read_json(out / "solo" / "verify" / "tiers.json")
    assert tiers["tier_met"] == 4


def test_cli_synthesize_from_a_copied_bundle_matches(built: dict[str, Any], tmp_path: Path) -> None:
    # The outside side needs only the bundle and the synthetic files; the source is never read.
    shipped = tmp_path / "bundle"
    shutil.copytree(built["bundle"], shipped)
    out = tmp_path / "res"
    assert main(["synthesize", "--bundle", str(shipped), "--results", str(out), "--quiet"]) == 0
    assert files_under(out / "rb" / "synthetic") == files_under(built["one"] / "synthetic")


# ---------------------------------------------------------------------------------------------
# seeds


def test_seed_streams_are_reproducible_and_named() -> None:
    a1 = rng(123, "a", "b").random(50)
    a2 = rng(123, "a", "b").random(50)
    np.testing.assert_array_equal(a1, a2)
    # other streams created in between do not move this one
    rng(123, "c").random(1000)
    rng(123, "a").random(1000)
    np.testing.assert_array_equal(rng(123, "a", "b").random(50), a1)
    # different names, order, grouping or seed give different streams
    for other in (
        rng(123, "a", "c"),
        rng(123, "b", "a"),
        rng(123, "ab"),
        rng(123, "a"),
        rng(124, "a", "b"),
        rng(123, "a", "b", "c"),
    ):
        assert not np.array_equal(other.random(50), a1)
    assert seed_sequence(123, "a", "b").entropy == 123
    assert seed_sequence(123, "a", "b").spawn_key == seed_sequence(999, "a", "b").spawn_key


def test_second_source_does_not_change_the_first(built: dict[str, Any], tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    make_people(300, seed=9)[["pid", "y", "x1", "region"]].to_csv(other, index=False)
    raw = people_manifest(built["src"])
    raw["sources"]["other"] = {"path": str(other), "ids": ["pid"]}
    b2 = cmd_extract(load_manifest(raw), tmp_path / "ext")
    assert (b2 / "source_people.json").read_bytes() == (
        built["bundle"] / "source_people.json"
    ).read_bytes()
    assert (b2 / "source_other.json").exists()
    cmd_synthesize(b2, tmp_path / "syn")
    got = files_under(tmp_path / "syn" / "rb" / "synthetic")
    want = files_under(built["one"] / "synthetic")
    assert set(got) == set(want) | {"other.parquet", "other.csv"}
    for name in want:
        if name != "README.txt":  # it lists every source of the bundle
            assert got[name] == want[name], name
