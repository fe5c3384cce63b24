"""Bad inputs: every one gets one clear error (a ReplisynthError subclass) that names the file,
column or manifest key, and no run leaves a half-written output behind."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_people, manifest_for, run_pipeline

from replisynth.config.manifest import load_manifest
from replisynth.core.errors import (
    BundleError,
    CheckpointError,
    DataError,
    ManifestError,
    ReplisynthError,
)
from replisynth.disclosure.bundle import load_bundle
from replisynth.io.files import (
    atomic_path,
    read_columns,
    read_json,
    read_source,
    sha256_file,
    write_json,
)
from replisynth.workflow.cli import cmd_extract, main

N = 400


@pytest.fixture(autouse=True)
def _restore_logger():
    """The CLI attaches a stderr handler to the `replisynth` logger; detach it afterwards so
    later tests never log into a closed capture stream."""
    lg = logging.getLogger("replisynth")
    handlers, level = list(lg.handlers), lg.level
    yield
    lg.handlers[:] = handlers
    lg.setLevel(level)


def _people_csv(path: Path, n: int = N, **extra: Any) -> Path:
    df = make_people(n, seed=3)
    for k, v in extra.items():
        df[k] = v
    df.to_csv(path, index=False)
    return path


def _cp(**k: Any) -> dict[str, Any]:
    return {"tag": "c1", "source": "people", "model": "ols", "formula": "y ~ x1 + x2", **k}


def _no_temp_files(root: Path) -> list[Path]:
    """Leftovers of atomic writes (.name.XXXX.tmp) or of the bundle writer (.bundle-XXXX)."""
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".bundle-")]


# ---------------------------------------------------------------------------------------------
# reading data files


def _write_bad(tmp_path: Path, kind: str) -> Path:
    if kind == "not_found":
        return tmp_path / "people.csv"
    if kind == "empty":
        p = tmp_path / "people.csv"
        p.write_bytes(b"")
        return p
    if kind == "header_only":
        p = tmp_path / "people.csv"
        p.write_text(",".join(make_people(5).columns) + "\n")
        return p
    if kind == "corrupt_parquet":
        p = tmp_path / "people.parquet"
        p.write_bytes(np.random.default_rng(0).bytes(2048))
        return p
    if kind == "duplicate_columns":
        p = tmp_path / "people.csv"
        p.write_text("pid,a,b,a,b\n1,2,3,4,5\n2,3,4,5,6\n")
        return p
    if kind == "directory":
        p = tmp_path / "people.csv"
        p.mkdir()
        return p
    raise AssertionError(kind)


BAD_FILES = [
    ("not_found", "data file not found"),
    ("empty", "the file is empty"),
    ("header_only", "header but no rows"),
    ("corrupt_parquet", "cannot read the column names as parquet"),
    ("duplicate_columns", r"duplicate column names \['a', 'b'\]"),
    ("directory", "is a directory"),
]


@pytest.mark.parametrize(("kind", "pattern"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_read_source_bad_file(tmp_path: Path, kind: str, pattern: str) -> None:
    p = _write_bad(tmp_path, kind)
    with pytest.raises(DataError, match=pattern) as info:
        read_source(p)
    assert str(p) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["people.xlsx", "people", "people.txt"])
def test_read_source_unknown_extension(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    p.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"unknown extension") as info:
        read_source(p)
    msg = str(info.value)
    assert str(p) in msg
    assert ".csv" in msg and ".parquet" in msg and ".dta" in msg and ".sav" in msg


def test_read_columns_duplicates(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("a,b,a\n1,2,3\n")
    with pytest.raises(DataError, match=r"duplicate column names \['a'\]") as info:
        read_columns(p)
    assert str(p) in str(info.value)


def test_duplicate_columns_in_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table([[1], [2], [3]], names=["a", "b", "a"]), p)
    with pytest.raises(DataError, match=r"duplicate column names \['a'\]") as info:
        read_source(p)
    assert str(p) in str(info.value)


def test_truncated_parquet(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    make_people(50).to_parquet(good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError) as info:
        read_source(bad)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize(("kind", "pattern"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_extract_bad_file_writes_nothing(tmp_path: Path, kind: str, pattern: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    p = _write_bad(data, kind)
    raw = manifest_for(p, ids=[] if kind == "duplicate_columns" else ["pid"])
    out = tmp_path / "res"
    with pytest.raises(DataError, match=pattern) as info:
        cmd_extract(load_manifest(raw), out)
    assert str(p) in str(info.value)
    assert not (out / "t" / "bundle").exists()
    assert not list(out.rglob("*.json"))


def test_extract_missing_column_names_key(tmp_path: Path) -> None:
    p = _people_csv(tmp_path / "people.csv")
    raw = manifest_for(p, strata=["regio"])
    with pytest.raises(
        ManifestError, match=r"sources\.people\.strata: column 'regio' is not in source 'people'"
    ) as info:
        cmd_extract(load_manifest(raw), tmp_path / "res")
    assert str(p) in str(info.value)
    assert not (tmp_path / "res" / "t" / "bundle").exists()


def test_infinite_values_named(tmp_path: Path) -> None:
    df = make_people(N, seed=3)
    df.loc[5, "x2"] = np.inf
    p = tmp_path / "people.parquet"
    df.to_parquet(p)
    with pytest.raises(DataError, match=r"column 'x2' holds infinite values") as info:
        cmd_extract(load_manifest(manifest_for(p)), tmp_path / "res")
    assert str(p) in str(info.value)
    assert not (tmp_path / "res" / "t" / "bundle").exists()


# ---------------------------------------------------------------------------------------------
# degenerate columns still run


def test_all_missing_column(tmp_path: Path) -> None:
    p = _people_csv(tmp_path / "people.csv", allna=np.nan)
    run_pipeline(manifest_for(p), tmp_path / "out")
    bundle = load_bundle(tmp_path / "out" / "t" / "bundle")
    spec = next(c for c in bundle.releases["people"]["columns"] if c["name"] == "allna")
    assert spec["missing"] == spec["rows"] == N
    assert spec["role"] in ("continuous", "categorical")
    assert bundle.releases["people"]["blocks"]["all"]["marginals"]["allna"]["kind"] == "suppressed"
    decisions = read_json(tmp_path / "out" / "t" / "bundle" / "sdc_log.json")["decisions"]
    assert any(d.get("column") == "allna" and d["action"] == "all_missing" for d in decisions)
    syn = pd.read_parquet(tmp_path / "out" / "t" / "synthetic" / "people.parquet")
    assert "allna" in syn.columns
    assert len(syn) == N
    assert syn["allna"].isna().all()
    csv = pd.read_csv(tmp_path / "out" / "t" / "synthetic" / "people.csv")
    assert csv["allna"].isna().all()


def test_all_missing_string_column_parquet(tmp_path: Path) -> None:
    df = make_people(N, seed=3)
    df["note"] = pd.Series([None] * N, dtype=object)
    p = tmp_path / "people.parquet"
    df.to_parquet(p)
    run_pipeline(manifest_for(p), tmp_path / "out")
    decisions = read_json(tmp_path / "out" / "t" / "bundle" / "sdc_log.json")["decisions"]
    assert any(d.get("column") == "note" and d["action"] == "all_missing" for d in decisions)
    syn = pd.read_parquet(tmp_path / "out" / "t" / "synthetic" / "people.parquet")
    assert syn["note"].isna().all()


def test_constant_columns(tmp_path: Path) -> None:
    p = _people_csv(tmp_path / "people.csv", const=3.5, constcat="k", constint=7)
    run_pipeline(manifest_for(p), tmp_path / "out")
    syn = pd.read_parquet(tmp_path / "out" / "t" / "synthetic" / "people.parquet")
    assert len(syn) == N
    for col, value in (("const", 3.5), ("constcat", "k"), ("constint", 7)):
        assert syn[col].notna().all(), col
        assert syn[col].nunique() == 1, col
        assert syn[col].iloc[0] == value, col


# ---------------------------------------------------------------------------------------------
# checkpoints that cannot be estimated


def test_singular_design(tmp_path: Path) -> None:
    df = make_people(N, seed=3)
    df["x1copy"] = df["x1"]
    p = tmp_path / "people.csv"
    df.to_csv(p, index=False)
    raw = manifest_for(p)
    raw["checkpoints"] = [_cp(tag="dup", formula="y ~ x1 + x1copy")]
    with pytest.raises(CheckpointError, match=r"checkpoints\[0\] \(dup\): singular design.*x1copy"):
        cmd_extract(load_manifest(raw), tmp_path / "res")
    assert not (tmp_path / "res" / "t" / "bundle").exists()


def test_singular_design_linear_combination(tmp_path: Path) -> None:
    df = make_people(N, seed=3)
    df["s"] = df["x1"] + 2 * df["x2"]
    p = tmp_path / "people.csv"
    df.to_csv(p, index=False)
    raw = manifest_for(p)
    raw["checkpoints"] = [_cp(tag="lc", formula="y ~ x1 + x2 + s")]
    with pytest.raises(CheckpointError, match=r"singular design.*\b(x1|x2|s)\b"):
        cmd_extract(load_manifest(raw), tmp_path / "res")


@pytest.mark.parametrize(
    ("subset", "pattern"),
    [
        ("age > 200", r"checkpoints\[0\] \(sub\): subset 'age > 200' selects no rows"),
        ("age >>> 3", r"checkpoints\[0\]\.subset: cannot parse subset 'age >>> 3'"),
        ("agee > 3", r"checkpoints\[0\]\.subset: column 'agee' is not in source"),
        ("region == ", r"checkpoints\[0\]\.subset: cannot parse subset 'region =='"),
        (
            "age + 1",
            r"checkpoints\[0\] \(sub\): subset 'age \+ 1' does not give a true/false value per row",
        ),
    ],
    ids=["no_rows", "syntax", "unknown_column", "incomplete", "not_boolean"],
)
def test_bad_subset(tmp_path: Path, subset: str, pattern: str) -> None:
    """Syntax is refused when the manifest loads, unknown columns when the data are read, a
    condition that selects nothing or is not true/false per row when the sample is drawn."""
    p = _people_csv(tmp_path / "people.csv")
    raw = manifest_for(p)
    raw["checkpoints"] = [_cp(tag="sub", subset=subset)]
    with pytest.raises(ReplisynthError, match=pattern):
        cmd_extract(load_manifest(raw), tmp_path / "res")
    assert not (tmp_path / "res" / "t" / "bundle").exists()


def test_no_complete_rows(tmp_path: Path) -> None:
    p = _people_csv(tmp_path / "people.csv", gap=np.nan)
    raw = manifest_for(p)
    raw["checkpoints"] = [_cp(tag="gap", formula="y ~ x1 + gap")]
    with pytest.raises(
        CheckpointError, match=r"checkpoints\[0\] \(gap\): no row has all of .*'gap'"
    ):
        cmd_extract(load_manifest(raw), tmp_path / "res")


@pytest.mark.parametrize("seed", [-1, "abc", 1.5, None, "7"])
def test_bad_seed(tmp_path: Path, seed: Any) -> None:
    raw = manifest_for(tmp_path / "people.csv")
    raw["seed"] = seed
    with pytest.raises(ManifestError, match=r"seed: .*non-negative integer"):
        load_manifest(raw)


# ---------------------------------------------------------------------------------------------
# the CLI: exit status, one line, nothing half-written


def _manifest_file(tmp_path: Path, raw: dict[str, Any]) -> Path:
    mp = tmp_path / "manifest.yaml"
    mp.write_text(yaml.safe_dump(raw, sort_keys=False))
    return mp


def _singular_raw(tmp_path: Path) -> dict[str, Any]:
    df = make_people(N, seed=3)
    df["x1copy"] = df["x1"]
    p = tmp_path / "people.csv"
    df.to_csv(p, index=False)
    raw = manifest_for(p)
    raw["checkpoints"] = [_cp(tag="dup", formula="y ~ x1 + x1copy")]
    return raw


def test_cli_extract_failure_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mp = _manifest_file(tmp_path, _singular_raw(tmp_path))
    res = tmp_path / "res"
    rc = main(["extract", str(mp), "--results", str(res), "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("replisynth: checkpoints[0] (dup): singular design")
    assert "x1copy" in lines[0]
    assert not (res / "t" / "bundle" / "manifest.json").exists()
    assert not (res / "t" / "bundle").exists()
    assert not _no_temp_files(tmp_path)


def test_cli_extract_failure_not_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mp = _manifest_file(tmp_path, _singular_raw(tmp_path))
    rc = main(["extract", str(mp), "--results", str(tmp_path / "res")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "singular design" in ln]
    assert len(errors) == 1
    assert err.strip().splitlines()[-1] == errors[0]


def test_cli_bad_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = manifest_for(_people_csv(tmp_path / "people.csv"))
    raw["seed"] = -5
    mp = _manifest_file(tmp_path, raw)
    rc = main(["extract", str(mp), "--results", str(tmp_path / "res"), "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "seed: must be a non-negative integer, got -5" in err
    assert not (tmp_path / "res").exists()


def test_cli_missing_manifest_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mp = tmp_path / "nope.yaml"
    rc = main(["extract", str(mp), "--results", str(tmp_path / "res"), "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{mp}: manifest file not found" in err


def test_cli_synthesize_from_non_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["synthesize", "--bundle", str(tmp_path), "--results", str(tmp_path / "res"), "--quiet"]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "no manifest.json" in err and str(tmp_path) in err


def _bundle_hashes(bundle: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(bundle.iterdir())}


@pytest.mark.parametrize("failure", ["singular_checkpoint", "data_file_gone", "bad_subset"])
def test_failed_reextract_keeps_old_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], failure: str
) -> None:
    raw = _singular_raw(tmp_path)
    good = dict(raw, checkpoints=[_cp(tag="dup", formula="y ~ x1 + x2")])
    res = tmp_path / "res"
    assert (
        main(["extract", str(_manifest_file(tmp_path, good)), "--results", str(res), "--quiet"])
        == 0
    )
    bundle = res / "t" / "bundle"
    before = _bundle_hashes(bundle)
    assert set(before) == {
        "manifest.json",
        "sdc_log.json",
        "checkpoints.json",
        "source_people.json",
    }
    b0 = load_bundle(bundle)

    if failure == "singular_checkpoint":
        bad = raw
    elif failure == "bad_subset":
        bad = dict(good, checkpoints=[_cp(tag="dup", subset="age > 1000")])
    else:
        bad = good
        os.unlink(raw["sources"]["people"]["path"])
    capsys.readouterr()
    rc = main(["extract", str(_manifest_file(tmp_path, bad)), "--results", str(res), "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    assert _bundle_hashes(bundle) == before
    b1 = load_bundle(bundle)  # the sha256 checks pass
    assert b1.sha256 == b0.sha256
    assert b1.checkpoints == b0.checkpoints
    assert not _no_temp_files(tmp_path)


# ---------------------------------------------------------------------------------------------
# atomic writes


def test_atomic_path_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_atomic_path_error_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_path_error_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("{")
            raise KeyboardInterrupt
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_block_removes_tmp_itself(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.unlink()
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_write_json_unserialisable_keeps_old(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


# ---------------------------------------------------------------------------------------------
# load_bundle


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    p = _people_csv(root / "people.csv")
    raw = manifest_for(p)
    raw["checkpoints"] = [_cp()]
    return cmd_extract(load_manifest(raw), root / "res")


@pytest.fixture
def bundle_copy(good_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(good_bundle, dst)
    load_bundle(dst)  # the copy is valid to start with
    return dst


def test_load_bundle_good(bundle_copy: Path) -> None:
    b = load_bundle(bundle_copy)
    assert b.manifest.name == "t"
    assert set(b.releases) == {"people"}
    assert [c["tag"] for c in b.checkpoints] == ["c1"]


def test_load_bundle_without_manifest(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"not a bundle \(no manifest\.json\)") as info:
        load_bundle(bundle_copy)
    assert str(bundle_copy) in str(info.value)


def test_load_bundle_empty_or_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path / "nope")


@pytest.mark.parametrize("name", ["sdc_log.json", "checkpoints.json", "source_people.json"])
def test_load_bundle_altered_file(bundle_copy: Path, name: str) -> None:
    f = bundle_copy / name
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sha256 does not match manifest\.json") as info:
        load_bundle(bundle_copy)
    assert name in str(info.value)


def test_load_bundle_appended_bytes(bundle_copy: Path) -> None:
    f = bundle_copy / "checkpoints.json"
    f.write_bytes(f.read_bytes() + b"\n")
    with pytest.raises(BundleError, match=r"checkpoints\.json: sha256 does not match"):
        load_bundle(bundle_copy)


def test_load_bundle_extra_file(bundle_copy: Path) -> None:
    (bundle_copy / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match=r"files not listed in manifest\.json: notes\.txt"):
        load_bundle(bundle_copy)


def test_load_bundle_missing_listed_file(bundle_copy: Path) -> None:
    (bundle_copy / "checkpoints.json").unlink()
    with pytest.raises(BundleError, match=r"bundle file checkpoints\.json is missing"):
        load_bundle(bundle_copy)


def test_load_bundle_wrong_format(bundle_copy: Path) -> None:
    mf = bundle_copy / "manifest.json"
    info = json.loads(mf.read_text())
    info["format"] = "replisynth-bundle/0"
    mf.write_text(json.dumps(info))
    with pytest.raises(BundleError, match=r"manifest\.json: format 'replisynth-bundle/0' is not"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    "content",
    ["truncated", '{"format": "replisynth-bundle/1"}', "[]"],
    ids=["truncated", "no_files_list", "not_an_object"],
)
def test_load_bundle_broken_manifest_json(bundle_copy: Path, content: str) -> None:
    mf = bundle_copy / "manifest.json"
    mf.write_bytes(mf.read_bytes()[:40] if content == "truncated" else content.encode())
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy)
    assert "manifest.json" in str(info.value)


def test_errors_are_replisynth_errors() -> None:
    for cls in (BundleError, CheckpointError, DataError, ManifestError):
        assert issubclass(cls, ReplisynthError)


def test_string_outcome_is_a_clear_checkpoint_error(tmp_path):
    df = make_people(400)
    df.to_csv(tmp_path / "p.csv", index=False)
    raw = manifest_for(tmp_path / "p.csv")
    raw["checkpoints"] = [
        {"tag": "s", "source": "people", "model": "ols", "formula": "region ~ x1"}
    ]
    from replisynth.config.manifest import load_manifest
    from replisynth.core.errors import CheckpointError
    from replisynth.workflow.cli import cmd_extract

    with pytest.raises(CheckpointError, match=r"outcome 'region' is not numeric"):
        cmd_extract(load_manifest(raw), tmp_path / "out")


def test_boolean_outcome_pins_and_meets_tier_4(tmp_path):
    df = make_people(1200)
    df["flag"] = df["x1"] + np.random.default_rng(0).normal(size=len(df)) > 0.5
    df.to_csv(tmp_path / "p.csv", index=False)
    raw = manifest_for(tmp_path / "p.csv")
    raw["checkpoints"] = [
        {
            "tag": "lpm",
            "source": "people",
            "model": "ols",
            "formula": "flag ~ x1 + x2",
            "vcov": "HC1",
        }
    ]
    raw["verify"] = {"tier": 4}
    tiers = run_pipeline(raw, tmp_path / "out")
    assert tiers["tier_met"] == 4, tiers["sources"]["people"]["schema"]["problems"]
    # the 0/1 outcome stays 0/1 (pin/support.py), its coefficients within the stated tolerance
    from replisynth.pin.support import INTEGER_TOL

    assert tiers["checkpoints"]["lpm"]["max_dbeta_se"] <= INTEGER_TOL
    flag = pd.read_parquet(tmp_path / "out" / "t" / "synthetic" / "people.parquet")["flag"]
    assert flag.dtype == bool


def test_checkpoint_on_a_column_that_releases_nothing_is_flagged(tmp_path):
    """Every year has 30 rows (< 50): the year factor releases nothing, so a checkpoint with
    C(year) cannot be rebuilt. Extraction says so (log + sdc_log), verification fails tier 4
    naming the empty column, and listing the column as continuous fixes it."""
    rng = np.random.default_rng(2)
    n = 600
    df = pd.DataFrame(
        {"pid": np.arange(n), "year": np.repeat(np.arange(1980, 2000), 30), "x": rng.normal(size=n)}
    )
    df["y"] = df["x"] + 0.01 * (df["year"] - 1990) + rng.normal(size=n)
    df.to_csv(tmp_path / "p.csv", index=False)
    raw = manifest_for(tmp_path / "p.csv")
    raw["checkpoints"] = [
        {"tag": "fe", "source": "people", "model": "ols", "formula": "y ~ x + C(year)"}
    ]
    raw["verify"] = {"tier": 4}
    tiers = run_pipeline(raw, tmp_path / "a")
    from replisynth.io.files import read_json

    log = read_json(tmp_path / "a" / "t" / "bundle" / "sdc_log.json")["decisions"]
    assert any(e["action"] == "unbuildable" and "year" in e["reason"] for e in log)
    assert (
        tiers["tier_met"] == 3 and "entirely missing: year" in tiers["checkpoints"]["fe"]["reason"]
    )
    raw["sources"]["people"]["continuous"] = ["year"]
    assert run_pipeline(raw, tmp_path / "b")["tier_met"] == 4
