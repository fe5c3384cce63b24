"""The synthetic file keeps the original's shape: Stata and SPSS dates in their display
formats, extended and user missing codes with their counts (gated) and labels, value labels,
free text named, parquet types and categoricals, csv dates and numbers stored as text; and
tier 0 fails, naming the column, when the written file loses one of these properties."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyreadstat
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from replisynth.disclosure.bundle import load_bundle
from replisynth.disclosure.bundle_types import untyped
from replisynth.extract.missing_codes import gate_codes
from replisynth.io.files import FileMeta, read_json, write_dta, write_sav
from replisynth.stats.missing_codes import synthetic_codes
from replisynth.workflow.cli import main
from replisynth.workflow.pipeline import (
    _file_meta,
    integer_storage,
    read_parquet_frame,
    stage_verify,
)

K = 25  # min_cell_size of these runs


def _manifest(tmp: Path, name: str, source: str, path: Path, **keys: Any) -> Path:
    raw = {
        "name": name,
        "seed": 11,
        "sources": {source: {"path": str(path), "ids": ["pid"], **keys}},
        "checkpoints": [],
        "sdc": {"min_cell_size": K},
        "verify": {"tier": 0},
    }
    out = tmp / f"{name}.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


def _run(manifest: Path, results: Path) -> int:
    return main(["run", str(manifest), "--results", str(results), "--quiet"])


def _codes_column(n: int, counts: dict[Any, int], rng: np.random.Generator) -> np.ndarray:
    """An object column of valid values with `counts` rows of each code, shuffled."""
    out = np.round(rng.lognormal(3, 0.4, n), 2).astype(object)
    at = 0
    for code, c in counts.items():
        out[at : at + c] = code
        at += c
    return out[rng.permutation(n)]


# ------------------------------------------------------------------------------ Stata


DTA_CODES = {"a": 90, "b": 60, "c": 4}  # .c is below K: pooled into plain missing
DTA_PLAIN = 30


@pytest.fixture(scope="module")
def stata(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("dta")
    n = 640
    rng = np.random.default_rng(21)
    codes = {**DTA_CODES, np.nan: DTA_PLAIN}
    df = pd.DataFrame(
        {
            "pid": np.arange(1, n + 1, dtype=float),
            "hours": rng.integers(10, 60, n).astype(float),
            "pay": _codes_column(n, codes, rng),
            "area": rng.integers(1, 5, n).astype(float),
            "born": [
                dt.date(1950, 1, 1) + dt.timedelta(days=int(x)) for x in rng.integers(0, 15000, n)
            ],
            "seen": pd.Timestamp("2019-01-01") + pd.to_timedelta(rng.integers(0, 4e7, n), unit="s"),
            "hired": rng.integers(600, 700, n).astype(float),  # %tm: months since 1960m1
            "qtr": rng.integers(200, 240, n).astype(float),  # %tq
            "wk": rng.integers(2600, 3100, n).astype(float),  # %tw: weeks since 1960w1
            "yr": rng.integers(1990, 2020, n).astype(float),  # %ty
            "left": [
                dt.date(2010, 1, 1) + dt.timedelta(days=int(x)) for x in rng.integers(0, 4000, n)
            ],
            "remark": [f"remark {i} {rng.integers(10**6)}" for i in range(n)],
        }
    )
    path = tmp / "staff.dta"
    pyreadstat.write_dta(
        df,
        str(path),
        missing_user_values={"pay": list(DTA_CODES)},
        variable_value_labels={
            "area": {1: "north", 2: "south", 3: "east", 4: "west"},
            "pay": {"a": "refused", "b": "not asked", "c": "lost"},
        },
        variable_format={
            "born": "%td",
            "seen": "%tc",
            "hired": "%tm",
            "qtr": "%tq",
            "wk": "%tw",
            "yr": "%ty",
            "left": "%tdDD/NN/CCYY",
        },
        column_labels={"pay": "hourly pay", "born": "date of birth"},
    )
    results = tmp / "results"
    code = _run(_manifest(tmp, "st", "staff", path), results)
    syn = results / "st" / "synthetic"
    return {"tmp": tmp, "code": code, "results": results / "st", "dta": syn / "staff.dta"}


def test_stata_run_passes_tier0(stata: dict[str, Any]) -> None:
    assert stata["code"] == 0
    tiers = read_json(stata["results"] / "verify" / "tiers.json")
    assert tiers["sources"]["staff"]["schema"]["passed"], tiers["sources"]["staff"]["schema"]


def test_stata_dates_keep_their_display_format(stata: dict[str, Any]) -> None:
    _, meta = pyreadstat.read_dta(str(stata["dta"]), metadataonly=True)
    fmts = meta.original_variable_types
    assert {c: fmts[c] for c in ("born", "seen", "hired", "qtr", "wk", "yr", "left")} == {
        "born": "%td",
        "seen": "%tc",
        "hired": "%tm",
        "qtr": "%tq",
        "wk": "%tw",
        "yr": "%ty",
        "left": "%tdDD/NN/CCYY",
    }
    df = pd.read_stata(stata["dta"])
    assert (df["born"] == df["born"].dt.normalize()).all()  # whole days
    assert (df["seen"] != df["seen"].dt.normalize()).any()  # a time of day survives
    assert (df["hired"].dt.day == 1).all()
    assert df["qtr"].dt.month.isin([1, 4, 7, 10]).all() and (df["qtr"].dt.day == 1).all()
    assert ((df["yr"].dt.month == 1) & (df["yr"].dt.day == 1)).all()
    weeks = pd.read_parquet(stata["dta"].with_suffix(".parquet"))["wk"].dropna()
    assert len(weeks) and _stata_week_starts(weeks)  # the synthetic values, before Stata storage
    assert df["yr"].dt.year.between(1985, 2025).all()


def _stata_week_starts(t: pd.Series) -> bool:
    """Every date is the first day of a Stata week: 1 January plus 7k days, k = 0..51."""
    offset = (t - t.dt.to_period("Y").dt.to_timestamp()).dt.days
    return bool(((offset % 7 == 0) & (offset <= 357)).all())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 30_000), min_size=1, max_size=40), st.integers(0, 86_399))
def test_week_start_round_trips_through_stata(days: list[int], second: int) -> None:
    """A %tw date moved to its week start is a Stata week start on or before it (within the
    week; week 52 runs to 31 December), stays put when moved again, and is written and read
    back by Stata's weekly format unchanged (a 30/31 December date is not carried into the next
    year's first week)."""
    from replisynth.io.schema import date_period, period_start

    t = pd.Series(pd.Timestamp("1965-01-01") + pd.to_timedelta(days, unit="D"))
    t = t + pd.Timedelta(seconds=second)
    w = period_start(t, date_period("%tw") or "")
    assert _stata_week_starts(w) and (w <= t).all() and (w.dt.year == t.dt.year).all()
    assert ((t - w) < pd.Timedelta(days=9)).all() and (period_start(w, "W") == w).all()
    back = _stata_round_trip(w)
    assert (back == w.astype("datetime64[s]")).all()


def _stata_round_trip(t: pd.Series) -> pd.Series:
    import io

    buf = io.BytesIO()
    pd.DataFrame({"wk": t}).to_stata(buf, write_index=False, convert_dates={"wk": "tw"})
    buf.seek(0)
    return pd.read_stata(buf)["wk"].astype("datetime64[s]")


def test_stata_missing_codes_kept_with_counts_and_labels(stata: dict[str, Any]) -> None:
    raw, meta = pyreadstat.read_dta(str(stata["dta"]), user_missing=True)
    letters = raw["pay"][raw["pay"].map(lambda v: isinstance(v, str))].value_counts().to_dict()
    assert letters == {"a": DTA_CODES["a"], "b": DTA_CODES["b"]}  # .c (4 < K rows) pooled
    assert int(raw["pay"].isna().sum()) == DTA_PLAIN + DTA_CODES["c"]
    assert meta.variable_value_labels["pay"] == {"a": "refused", "b": "not asked"}
    assert meta.variable_value_labels["area"] == {1: "north", 2: "south", 3: "east", 4: "west"}
    release = load_bundle(stata["results"] / "bundle").releases["staff"]
    assert release["missing_codes"]["pay"] == {
        "codes": [".a", ".b"],
        "counts": [DTA_CODES["a"], DTA_CODES["b"]],
        "labels": {".a": "refused", ".b": "not asked"},
    }
    text = (stata["results"] / "bundle" / "source_staff.json").read_text()
    assert "lost" not in text  # the pooled code's label is not released


def test_free_text_named_not_released(stata: dict[str, Any]) -> None:
    df = pd.read_stata(stata["dta"])
    assert (df["remark"] == "").all()
    tiers = read_json(stata["results"] / "verify" / "tiers.json")
    assert tiers["sources"]["staff"]["schema"]["free_text"] == ["remark"]
    cert = (stata["results"] / "verify" / "certificate.txt").read_text()
    assert "staff: remark" in cert
    html = (stata["results"] / "verify" / "report.html").read_text()
    assert "<h2>Free text</h2>" in html and "staff: remark" in html


def _reverify(run: dict[str, Any], source: str, ext: str, mutate: Any) -> dict[str, Any]:
    """Copy the synthetic folder, rewrite the labelled file through `mutate`, verify again."""
    work = run["tmp"] / f"mutated_{len(list(run['tmp'].glob('mutated_*')))}"
    shutil.copytree(run["results"] / "synthetic", work)
    bundle = load_bundle(run["results"] / "bundle")
    release = untyped(bundle.releases[source])
    parquet = work / f"{source}.parquet"
    df = read_parquet_frame(parquet)
    mutate(df, release, work / f"{source}.{ext}", parquet, bundle.manifest.seed)
    tiers = stage_verify(run["results"] / "bundle", {source: parquet}, work / "tiers.json")
    return tiers["sources"][source]["schema"]


def _dta_without_format(df: pd.DataFrame, rel: dict, out: Path, _p: Path, seed: int) -> None:
    meta = _file_meta(rel)
    formats = {c: f for c, f in meta.display_formats.items() if c != "born"}
    meta = FileMeta(**{**meta.__dict__, "display_formats": formats})
    write_dta(df, out, meta, codes=synthetic_codes(df, rel, seed))


def _dta_without_codes(df: pd.DataFrame, rel: dict, out: Path, _p: Path, seed: int) -> None:
    write_dta(df, out, _file_meta(rel))


def _dta_without_code_labels(df: pd.DataFrame, rel: dict, out: Path, _p: Path, seed: int) -> None:
    meta = FileMeta(**{**_file_meta(rel).__dict__, "missing_labels": {}})
    write_dta(df, out, meta, codes=synthetic_codes(df, rel, seed))


def _dta_one_code_short(df: pd.DataFrame, rel: dict, out: Path, _p: Path, seed: int) -> None:
    codes = synthetic_codes(df, rel, seed)
    first = int(np.flatnonzero(codes["pay"] == ".a")[0])
    codes["pay"][first] = None
    write_dta(df, out, _file_meta(rel), codes=codes)


def _parquet_mid_month(df: pd.DataFrame, rel: dict, out: Path, parquet: Path, seed: int) -> None:
    from replisynth.io.files import parquet_meta, synthetic_label, write_parquet

    df = df.assign(hired=df["hired"] + pd.Timedelta(days=14))
    write_parquet(df, parquet, parquet_meta(parquet), synthetic=synthetic_label())


@pytest.mark.parametrize(
    ("mutate", "column", "words"),
    [
        (_dta_without_format, "born", "date stored as %tc, released %td"),
        (_dta_without_codes, "pay", "missing-value codes none"),
        (_dta_without_code_labels, "pay", "labels did not survive"),
        (_dta_one_code_short, "pay", ".a: 89"),
        (_parquet_mid_month, "hired", "first day"),
    ],
)
def test_tier0_fails_when_a_stata_property_breaks(
    stata: dict[str, Any], mutate: Any, column: str, words: str
) -> None:
    schema = _reverify(stata, "staff", "dta", mutate)
    assert not schema["passed"]
    hits = [p for p in schema["problems"] if p.startswith(f"{column}:")]
    assert hits and any(words in p for p in hits), schema["problems"]


# ------------------------------------------------------------------------------ SPSS


SAV_CODES = {-9.0: 70, -8.0: 40, -7.0: 5}  # -7 is below K: pooled
SAV_PLAIN = 30  # system-missing rows


@pytest.fixture(scope="module")
def spss(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("sav")
    n = 520
    rng = np.random.default_rng(8)
    mood = rng.integers(1, 6, n).astype(float)
    coded = np.repeat(list(SAV_CODES), list(SAV_CODES.values()))
    mood[: len(coded)] = coded
    mood[len(coded) : len(coded) + SAV_PLAIN] = np.nan
    df = pd.DataFrame(
        {
            "pid": np.arange(1, n + 1, dtype=float),
            "mood": mood[rng.permutation(n)],
            "spend": np.round(rng.lognormal(6, 0.5, n), 2),
            "visit": [
                dt.date(2020, 1, 1) + dt.timedelta(days=int(x)) for x in rng.integers(0, 800, n)
            ],
            "stamp": pd.Timestamp("2022-01-01")
            + pd.to_timedelta(rng.integers(0, 3e7, n), unit="s"),
            "words": [f"words {i} {rng.integers(10**6)}" for i in range(n)],
        }
    )
    path = tmp / "poll.sav"
    pyreadstat.write_sav(
        df,
        str(path),
        missing_ranges={"mood": list(SAV_CODES)},
        variable_value_labels={
            "mood": {-9: "refused", -8: "don't know", -7: "skipped", 1: "low", 5: "high"}
        },
        variable_format={"visit": "DATE11", "stamp": "DATETIME20"},
        column_labels={"mood": "mood today"},
    )
    results = tmp / "results"
    code = _run(_manifest(tmp, "sp", "poll", path), results)
    return {
        "tmp": tmp,
        "code": code,
        "results": results / "sp",
        "sav": results / "sp" / "synthetic" / "poll.sav",
    }


def test_sav_source_gets_a_sav_file(spss: dict[str, Any]) -> None:
    assert spss["code"] == 0
    raw, meta = pyreadstat.read_sav(str(spss["sav"]), user_missing=True)
    assert {c: meta.original_variable_types[c] for c in ("visit", "stamp")} == {
        "visit": "DATE11",
        "stamp": "DATETIME20",
    }
    assert meta.column_names_to_labels["mood"] == "mood today"
    kept = raw["mood"][raw["mood"].isin([-9.0, -8.0, -7.0])].value_counts().to_dict()
    assert kept == {-9.0: 70, -8.0: 40}
    assert [r["lo"] for r in meta.missing_ranges["mood"]] == [-9.0, -8.0]
    assert int(raw["mood"].isna().sum()) == SAV_PLAIN + SAV_CODES[-7.0]
    assert meta.variable_value_labels["mood"] == {
        -9.0: "refused",
        -8.0: "don't know",
        1.0: "low",
        5.0: "high",
    }
    assert (raw["words"] == "").all()


def test_sav_bytes_repeat(spss: dict[str, Any]) -> None:
    first = spss["sav"].read_bytes()
    assert (
        main(
            [
                "synthesize",
                "--bundle",
                str(spss["results"] / "bundle"),
                "--results",
                str(spss["results"].parent),
                "--quiet",
            ]
        )
        == 0
    )
    assert spss["sav"].read_bytes() == first


def _sav_without_codes(df: pd.DataFrame, rel: dict, out: Path, _p: Path, seed: int) -> None:
    write_sav(df, out, _file_meta(rel))


def _sav_datetime_as_date(df: pd.DataFrame, rel: dict, out: Path, _p: Path, seed: int) -> None:
    meta = _file_meta(rel)
    meta = FileMeta(
        **{**meta.__dict__, "display_formats": {**meta.display_formats, "stamp": "DATE11"}}
    )
    write_sav(df, out, meta, codes=synthetic_codes(df, rel, seed))


@pytest.mark.parametrize(
    ("mutate", "column", "words"),
    [
        (_sav_without_codes, "mood", "missing-value codes none"),
        (_sav_datetime_as_date, "stamp", "released DATETIME20"),
    ],
)
def test_tier0_fails_when_a_spss_property_breaks(
    spss: dict[str, Any], mutate: Any, column: str, words: str
) -> None:
    schema = _reverify(spss, "poll", "sav", mutate)
    assert not schema["passed"]
    assert any(p.startswith(f"{column}:") and words in p for p in schema["problems"]), schema


# ------------------------------------------------------------------------------ parquet, csv


def test_parquet_keeps_date_types_and_categoricals(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 360
    rng = np.random.default_rng(2)
    level = pd.Categorical(
        rng.choice(["none", "some", "lots"], n), categories=["none", "some", "lots"], ordered=True
    )
    table = pa.table(
        {
            "pid": pa.array(np.arange(1, n + 1)),
            "level": pa.array(pd.Series(level)),
            "kids": pa.array(rng.integers(0, 4, n)),
            "day": pa.array(
                [dt.date(2018, 3, 1) + dt.timedelta(days=int(x)) for x in rng.integers(0, 600, n)],
                type=pa.date32(),
            ),
            "at": pa.array(
                pd.Timestamp("2021-06-01", tz="America/Chicago")
                + pd.to_timedelta(rng.integers(0, 2e7, n), unit="s"),
                type=pa.timestamp("ms", tz="America/Chicago"),
            ),
        }
    )
    pq.write_table(table, tmp_path / "fam.parquet")
    assert _run(_manifest(tmp_path, "pq", "fam", tmp_path / "fam.parquet"), tmp_path / "r") == 0
    out = tmp_path / "r" / "pq" / "synthetic" / "fam.parquet"
    schema = pq.read_schema(out)
    assert str(schema.field("day").type) == "date32[day]"
    assert str(schema.field("at").type) == "timestamp[ms, tz=America/Chicago]"
    df = pd.read_parquet(out)
    assert isinstance(df["level"].dtype, pd.CategoricalDtype)
    assert list(df["level"].cat.categories) == ["none", "some", "lots"] and df["level"].cat.ordered
    assert df["kids"].dtype == np.int64


def test_csv_dates_and_numbers_stored_as_text(tmp_path: Path, capsys: Any) -> None:
    n = 420
    rng = np.random.default_rng(6)
    amount = [f"{x:,}" for x in rng.integers(1000, 900000, n)]
    for i in range(0, n, 29):
        amount[i] = "n/a"
    pd.DataFrame(
        {
            "pid": np.arange(1, n + 1),
            "amount": amount,
            "opened": [
                (dt.date(2017, 1, 1) + dt.timedelta(days=int(x))).isoformat()
                for x in rng.integers(0, 900, n)
            ],
            "closed": [
                (dt.date(2019, 1, 1) + dt.timedelta(days=int(x))).strftime("%d/%m/%Y")
                for x in rng.integers(0, 900, n)
            ],
        }
    ).to_csv(tmp_path / "acct.csv", index=False)
    bare = _manifest(tmp_path, "cv", "acct", tmp_path / "acct.csv")
    assert _run(bare, tmp_path / "r0") != 0
    err = capsys.readouterr().err
    assert "'amount'" in err and "sources.acct.numeric" in err and "900" not in err
    declared = _manifest(
        tmp_path,
        "cv",
        "acct",
        tmp_path / "acct.csv",
        numeric=["amount"],
        missing_tokens=["n/a"],
        dates={"closed": "%d/%m/%Y"},
    )
    assert _run(declared, tmp_path / "r") == 0
    out = pd.read_csv(tmp_path / "r" / "cv" / "synthetic" / "acct.csv", dtype=str)
    assert out["opened"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert out["closed"].str.fullmatch(r"\d{2}/\d{2}/\d{4}").all()
    amounts = pd.to_numeric(out["amount"])
    assert amounts.notna().mean() > 0.9 and amounts.dropna().between(900, 910000).all()


def test_numeric_declared_value_that_does_not_read(tmp_path: Path, capsys: Any) -> None:
    n = 200
    vals = [f"{i * 7},5" for i in range(n)]
    vals[13] = "about 4"
    pd.DataFrame({"pid": np.arange(n), "rate": vals}).to_csv(tmp_path / "r.csv", index=False)
    m = _manifest(tmp_path, "nm", "rates", tmp_path / "r.csv", numeric=["rate"], decimal_comma=True)
    assert _run(m, tmp_path / "out") != 0
    err = capsys.readouterr().err
    assert "'rate'" in err and "1 value(s)" in err and "about" not in err


# ------------------------------------------------------------------------------ units


@settings(max_examples=200, deadline=None)
@given(
    counts=st.dictionaries(st.sampled_from(list("abcdefg")), st.integers(1, 80), max_size=6),
    plain=st.integers(0, 80),
    k=st.integers(2, 40),
)
def test_code_gate_leaves_no_small_cell(counts: dict[str, int], plain: int, k: int) -> None:
    total = plain + sum(counts.values())
    released, pooled, joined = gate_codes(counts, total, k)
    rest = total - sum(released.values())
    assert all(n >= k and counts[c] == n for c, n in released.items())
    assert rest == 0 or rest >= k or not released
    assert pooled == sum(1 for n in counts.values() if n < k)
    assert len(released) + pooled + joined == len(counts)


def test_release_gate_refuses_a_small_code() -> None:
    from replisynth.disclosure.sdc import DisclosureError, check_missing_codes

    release = {
        "source": "s",
        "columns": [{"name": "x", "missing": 70}],
        "missing_codes": {"x": {"codes": [".a"], "counts": [60], "labels": {}}},
    }
    with pytest.raises(DisclosureError, match="x/missing codes"):  # 10 plain missing rows
        check_missing_codes(release, 20)
    release["missing_codes"]["x"]["counts"] = [50]
    check_missing_codes(release, 20)


def test_integer_storage_restored_when_whole() -> None:
    rel = {
        "columns": [
            {"name": "y", "logical_type": "integer", "integer": True},
            {"name": "z", "logical_type": "integer", "integer": True},
            {"name": "w", "logical_type": "float", "integer": True},
        ]
    }
    df = pd.DataFrame({"y": [1.0, 2.0, np.nan], "z": [1.0, 2.5, 3.0], "w": [1.0, 2.0, 3.0]})
    out = integer_storage(df, rel)
    assert str(out["y"].dtype) == "Int64" and out["z"].dtype == np.float64
    assert out["w"].dtype == np.float64
    assert out["y"].tolist()[:2] == [1, 2]


@pytest.mark.parametrize(
    ("dtype", "fmt", "dot", "step"),
    [
        ("int8", "<b", 101, 1),
        ("int16", "<h", 32741, 1),
        ("int32", "<i", 2147483621, 1),
        ("float32", "<I", 0x7F000000, 0x800),
        ("float64", "<Q", 0x7FE0000000000000, 1 << 40),
    ],
)
def test_raw_code_counts_agree_with_pyreadstat(
    tmp_path: Path, dtype: str, fmt: str, dot: int, step: int
) -> None:
    """Codes counted on the cells' bit patterns, for every Stata storage type, as pyreadstat
    reads them (negative values are not codes)."""
    import struct

    from replisynth.io.files import dta_code_counts

    rng = np.random.default_rng(len(dtype))
    vals = rng.integers(-50, 50, 40).astype(dtype)
    path = tmp_path / "c.dta"
    pd.DataFrame({"v": vals}).to_stata(path, write_index=False, version=118, byteorder="little")
    raw = bytearray(path.read_bytes())
    start = raw.index(b"<data>") + len(b"<data>")
    width = struct.calcsize(fmt)
    plan = {0: 1, 5: 1, 9: 3, 12: 26, 20: 0}  # row -> letter (0 = plain ".")
    for row, letter in plan.items():
        struct.pack_into(fmt, raw, start + row * width, dot + letter * step)
    path.write_bytes(bytes(raw))
    got = dta_code_counts(path, ["v"], ["v"])
    back, _ = pyreadstat.read_dta(str(path), user_missing=True)
    letters = back["v"][back["v"].map(lambda x: isinstance(x, str))].value_counts()
    assert got == {"v": {"." + k: int(n) for k, n in sorted(letters.items())}}
    assert got == {"v": {".a": 2, ".c": 1, ".z": 1}}


def test_dates_key_only_for_csv(tmp_path: Path) -> None:
    from replisynth.config.manifest import load_manifest
    from replisynth.core.errors import ManifestError

    raw = yaml.safe_load(
        _manifest(tmp_path, "d", "w", tmp_path / "w.dta", dates={"day": "%Y"}).read_text()
    )
    with pytest.raises(ManifestError, match=r"sources\.w\.dates: only csv sources"):
        load_manifest(raw)
    raw["sources"]["w"]["path"] = str(tmp_path / "w.csv")
    assert dict(load_manifest(raw).sources[0].dates) == {"day": "%Y"}


@pytest.mark.parametrize("inside", [False, True])
def test_sav_more_than_three_codes(tmp_path: Path, inside: bool) -> None:
    """Five codes: declared as one range when no valid value lies in it; else the three
    lowest are declared and the others written as plain missing (never as valid values)."""
    from replisynth.io.files import read_source

    n = 60
    vals = pd.Series(np.arange(n, dtype=float) + 1)
    vals[:10] = np.nan
    if inside:
        vals[10] = -6.5
    codes = np.full(n, None, dtype=object)
    codes[:10] = ["-9", "-8", "-7", "-6", "-5"] * 2
    meta = FileMeta(missing_labels={"x": {"-9": "refused"}})
    write_sav(pd.DataFrame({"x": vals}), tmp_path / "m.sav", meta, codes={"x": codes})
    back, m = read_source(tmp_path / "m.sav")
    want = {"-9": 2, "-8": 2, "-7": 2} if inside else {k: 2 for k in ("-9", "-8", "-7", "-6", "-5")}
    assert m.missing_codes == {"x": want}
    assert int(back["x"].isna().sum()) == 10
    assert m.missing_labels == {"x": {"-9": "refused"}}
