"""Reading sources and writing synthetic files: labels, storage types, determinism, formats."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, make_people, manifest_for, run_pipeline

from replisynth.io.files import (
    FileMeta,
    read_columns,
    read_json,
    read_source,
    write_csv,
    write_dta,
    write_parquet,
)

# ---------------------------------------------------------------------------------------------
# helpers


def _typed_frame() -> tuple[pd.DataFrame, FileMeta]:
    """Stata-storable columns of every integer width, a double, a value-labelled code, an
    integer column with missing values and a string with a missing value."""
    df = pd.DataFrame(
        {
            "a8": np.array([1, -5, 100, 0, 7], dtype="int8"),
            "b16": np.array([300, -2000, 7, 32000, -1], dtype="int16"),
            "c32": np.array([70000, -1, 5, 2_000_000_000, 3], dtype="int32"),
            "f": [0.1, 1e300, -3.25, np.pi, -0.0],
            "lab": np.array([1, 2, 2, 3, 1], dtype="int8"),
            "k": [1.0, np.nan, 3.0, 4.0, -2.0],
            "s": ["x", None, "zz", "ü", "abc"],
        }
    )
    meta = FileMeta(
        variable_labels={
            "a8": "eight bit",
            "b16": "sixteen bit",
            "lab": "a labelled code",
            "f": "a double",
            "k": "with gaps",
        },
        value_labels={"lab": {1: "one", 2: "two", 3: "three"}},
        storage_types={
            "a8": "int8",
            "b16": "int16",
            "c32": "int32",
            "f": "double",
            "lab": "int8",
            "k": "int16",
            "s": "string",
        },
    )
    return df, meta


# ---------------------------------------------------------------------------------------------
# .dta round trip


def test_dta_round_trip_values_storage_types_and_labels(tmp_path: Path) -> None:
    df, meta = _typed_frame()
    p = tmp_path / "typed.dta"
    write_dta(df, p, meta)
    back, bm = read_source(p)

    assert list(back.columns) == list(df.columns)
    for c in ("a8", "b16", "c32", "lab"):
        assert back[c].tolist() == df[c].tolist(), c
        assert str(back[c].dtype) == str(df[c].dtype), c  # int8 stays int8, ...
    np.testing.assert_array_equal(back["f"].to_numpy(), df["f"].to_numpy())
    # Storage types as Stata sees them.
    for c in ("a8", "b16", "c32", "lab"):
        assert bm.storage_types[c] == meta.storage_types[c], c
    assert bm.storage_types["f"] == "double"
    # Value labels and variable labels come back exactly.
    assert bm.value_labels == {"lab": {1: "one", 2: "two", 3: "three"}}
    assert bm.variable_labels == meta.variable_labels
    # Stata's missing string is its empty string: it comes back as missing.
    assert back["s"].isna().tolist() == [False, True, False, False, False]
    assert back["s"].dropna().tolist() == ["x", "zz", "ü", "abc"]


def test_dta_integer_column_with_missing_is_float_but_integer_valued(tmp_path: Path) -> None:
    df, meta = _typed_frame()
    # also an Int64 (nullable) column holding a missing value
    df["n"] = pd.array([1, None, 3, 4, 5], dtype="Int64")
    meta = FileMeta(meta.variable_labels, meta.value_labels, {**meta.storage_types, "n": "int8"})
    p = tmp_path / "gaps.dta"
    write_dta(df, p, meta)
    back, bm = read_source(p)
    for c in ("k", "n"):
        assert bm.storage_types[c] in ("double", "float"), c
        assert pd.api.types.is_float_dtype(back[c].dtype), c
        assert back[c].isna().tolist() == pd.Series(df[c]).isna().tolist(), c
        v = back[c].dropna().to_numpy()
        assert np.all(v == np.round(v)), c
        assert v.tolist() == pd.Series(df[c]).dropna().astype("float64").tolist(), c


def test_dta_integer_storage_only_where_values_allow_it(tmp_path: Path) -> None:
    """write_dta restores integer storage 'where the values allow it': a pinned outcome whose
    source column was int8 holds non-integer (or out-of-range) values and must not be
    truncated or wrapped around."""
    df = pd.DataFrame(
        {
            "educ": [12.4, 15.9, 8.0, 11.5],  # int8 in the source, non-integer after pinning
            "age": [30.0, 300.0, 40.0, 22.0],  # does not fit int8
            "ok": [1.0, 2.0, 3.0, 4.0],  # fits: restored to int8
        }
    )
    meta = FileMeta(storage_types={"educ": "int8", "age": "int8", "ok": "int8"})
    p = tmp_path / "pinned.dta"
    write_dta(df, p, meta)
    back, bm = read_source(p)
    assert bm.storage_types["ok"] == "int8"
    np.testing.assert_array_equal(back["ok"].to_numpy(dtype="float64"), df["ok"].to_numpy())
    np.testing.assert_allclose(back["educ"].to_numpy(dtype="float64"), df["educ"].to_numpy())
    np.testing.assert_allclose(back["age"].to_numpy(dtype="float64"), df["age"].to_numpy())


def test_dta_export_of_integer_outcome_matches_parquet(tmp_path: Path) -> None:
    """End to end: a checkpoint on an outcome stored as a Stata integer; after pinning, the
    synthetic .dta must hold the same values as the synthetic parquet."""
    df = make_people(600, seed=3)
    src = tmp_path / "people.dta"
    st = {"age": "int8", "educ": "int8", "female": "int8", "pid": "int16", "cluster": "int8"}
    write_dta(
        df.astype(
            {"age": "int8", "educ": "int8", "female": "int8", "pid": "int16", "cluster": "int8"}
        ),
        src,
        FileMeta(storage_types=st),
    )
    raw = manifest_for(src, groups=["cluster"])
    raw["checkpoints"] = [
        {"tag": "age_ols", "source": "people", "model": "ols", "formula": "age ~ x1 + female"}
    ]
    run_pipeline(raw, tmp_path / "out")
    syn = tmp_path / "out" / "t" / "synthetic"
    pq_df = pd.read_parquet(syn / "people.parquet")
    dta_df, _ = read_source(syn / "people.dta")
    assert list(dta_df.columns) == list(pq_df.columns)
    for c in pq_df.columns:
        if pd.api.types.is_numeric_dtype(pq_df[c].dtype):
            np.testing.assert_allclose(
                dta_df[c].to_numpy(dtype="float64"), pq_df[c].to_numpy(dtype="float64"), err_msg=c
            )


# ---------------------------------------------------------------------------------------------
# the demo, end to end


@pytest.fixture
def demo(demo_run: dict) -> dict:
    """The session's demo run (conftest.demo_run): one `replisynth run` for every test here."""
    return demo_run


def test_demo_end_to_end_dta_keeps_schema_labels_and_storage(demo: dict) -> None:
    root = demo["root"]
    release = read_json(root / "bundle" / "source_card.json")
    orig, om = read_source(REPO / "data" / "card.dta")
    syn, sm = read_source(root / "synthetic" / "card.dta")
    pq_df = pd.read_parquet(root / "synthetic" / "card.parquet")

    released = [c["name"] for c in release["columns"]]
    exclude = set(demo["raw"]["sources"]["card"]["exclude"])
    assert released == [c for c in orig.columns if c not in exclude]
    assert list(syn.columns) == released
    assert list(pq_df.columns) == released
    assert len(syn) == len(orig) == 3010

    # Value labels survive, for released categories only.
    all_m = release["blocks"]["all"]["marginals"]
    for col in ("region66", "married"):
        levels = set(all_m[col]["table"]["levels"])
        want = {k: v for k, v in om.value_labels[col].items() if k in levels}
        assert want, col
        assert sm.value_labels[col] == want, col
        assert set(sm.value_labels[col]) <= levels
    assert sm.value_labels["region66"] == om.value_labels["region66"]  # all nine regions released
    # married codes 2 and 3 have fewer than 50 men: suppressed, and their labels with them
    assert 2 not in sm.value_labels["married"] and 3 not in sm.value_labels["married"]
    assert set(sm.value_labels) == {"region66", "married"}

    # Variable labels survive.
    assert sm.variable_labels == {
        c: om.variable_labels[c] for c in released if c in om.variable_labels
    }

    # Integer storage types restored where the synthetic column has no missing value.
    assert sm.storage_types["educ"] == "int8"
    assert str(syn["educ"].dtype) == "int8"
    for c in released:
        if om.storage_types[c].startswith("int") and not syn[c].isna().any():
            assert sm.storage_types[c] == om.storage_types[c], c
        if om.storage_types[c] == "double":
            assert sm.storage_types[c] == "double", c
    # Columns that hold missing values stay double but integer-valued where the source is
    # (checkpoint outcomes such as IQ and KWW are pinned, so they are exempt).
    spec = {c["name"]: c for c in release["columns"]}
    for c in ("fatheduc", "motheduc", "married", "libcrd14"):
        assert syn[c].isna().any(), c
        v = syn[c].dropna().to_numpy()
        assert spec[c]["integer"] and np.all(v == np.round(v)), c

    # The .dta holds the same values as the parquet.
    for c in released:
        np.testing.assert_allclose(
            syn[c].to_numpy(dtype="float64"), pq_df[c].to_numpy(dtype="float64"), err_msg=c
        )


def test_demo_meets_tier_4(demo: dict) -> None:
    tiers = read_json(demo["root"] / "verify" / "tiers.json")
    assert tiers["tier_met"] == 4
    assert tiers["passed"] is True and demo["rc"] == 0
    assert tiers["sources"]["card"]["schema"]["passed"] is True


def test_demo_runs_under_the_standard_profile_with_report_and_certificate(demo: dict) -> None:
    """The demo's own profile (standard; iab, fsrdc and strict in tests/test_profiles.py, slow
    tier) end to end: exit 0, the profile in the SDC log and the report, tier 4 certified."""
    root = demo["root"]
    assert demo["rc"] == 0 and demo["raw"]["sdc"]["profile"] == "standard"
    assert read_json(root / "bundle" / "sdc_log.json")["settings"]["profile"] == "standard"
    assert "Settings: profile standard," in (root / "verify" / "report.html").read_text()
    assert "met fidelity tier 4" in (root / "verify" / "certificate.txt").read_text()


def test_demo_parquet_carries_labels(demo: dict) -> None:
    root = demo["root"]
    _, pm = read_source(root / "synthetic" / "card.parquet")
    _, dm = read_source(root / "synthetic" / "card.dta")
    assert pm.value_labels == dm.value_labels
    assert pm.variable_labels == dm.variable_labels
    assert pm.storage_types["educ"] == "int8"


# ---------------------------------------------------------------------------------------------
# parquet, csv, dta: labels in metadata and byte-identical rewrites


def test_parquet_metadata_round_trip(tmp_path: Path) -> None:
    df, meta = _typed_frame()
    meta = FileMeta(
        meta.variable_labels,
        {**meta.value_labels, "s": {"x": "the letter x"}, "f": {0.1: "a tenth"}},
        meta.storage_types,
    )
    p = tmp_path / "a.parquet"
    write_parquet(df, p, meta)
    back, bm = read_source(p)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    for c in ("a8", "b16", "c32", "lab"):
        assert str(back[c].dtype) == str(df[c].dtype)
    assert bm.variable_labels == meta.variable_labels
    assert bm.value_labels == meta.value_labels  # numeric codes restored from JSON text keys
    assert all(isinstance(k, int) for k in bm.value_labels["lab"])
    assert bm.storage_types == meta.storage_types


def test_parquet_without_meta_has_empty_labels(tmp_path: Path) -> None:
    df, _ = _typed_frame()
    p = tmp_path / "plain.parquet"
    write_parquet(df, p)
    _, bm = read_source(p)
    assert bm == FileMeta()


def test_writers_are_byte_identical_twice(tmp_path: Path) -> None:
    df, meta = _typed_frame()
    for name, write in (
        ("parquet", lambda d, p: write_parquet(d, p, meta)),
        ("csv", lambda d, p: write_csv(d, p)),
        ("dta", lambda d, p: write_dta(d, p, meta)),
    ):
        a, b = tmp_path / f"a.{name}", tmp_path / f"b.{name}"
        write(df, a)
        write(df.copy(), b)
        assert a.read_bytes() == b.read_bytes(), name
        # no temporary files are left beside the outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{x}.{e}" for x in "ab" for e in ("parquet", "csv", "dta")
    )


def test_dta_time_stamp_is_fixed(tmp_path: Path) -> None:
    import pyreadstat

    df, meta = _typed_frame()
    write_dta(df, tmp_path / "a.dta", meta)
    _, m = pyreadstat.read_dta(str(tmp_path / "a.dta"), metadataonly=True)
    assert m.creation_time == dt.datetime(2000, 1, 1, 0, 0)


def test_csv_full_precision_and_missing_as_empty(tmp_path: Path) -> None:
    df = pd.DataFrame({"x": [0.1 + 0.2, 1 / 3, np.nan], "s": ["a,b", None, 'q"uote']})
    p = tmp_path / "a.csv"
    write_csv(df, p)
    back, _ = read_source(p)
    assert back["x"].iloc[:2].tolist() == df["x"].iloc[:2].tolist()
    assert back["x"].isna().tolist() == [False, False, True]
    assert (
        back["s"].iloc[0] == "a,b" and pd.isna(back["s"].iloc[1]) and back["s"].iloc[2] == 'q"uote'
    )


# ---------------------------------------------------------------------------------------------
# .sav


def _sav_frame(n: int = 600) -> tuple[pd.DataFrame, dict[str, str], dict[str, dict[float, str]]]:
    df = make_people(n, seed=4)[["pid", "y", "x1", "female", "region", "educ", "income"]]
    df = df.astype({"pid": "float64", "female": "float64", "educ": "float64"})
    labels = {
        "y": "the outcome",
        "x1": "a regressor",
        "female": "sex",
        "region": "region of residence",
    }
    vlabels = {"female": {0: "male", 1: "female"}, "educ": {8: "elementary", 18: "graduate"}}
    return df, labels, vlabels


def test_sav_read_values_and_labels(tmp_path: Path) -> None:
    import pyreadstat

    df, labels, vlabels = _sav_frame(200)
    p = tmp_path / "people.sav"
    pyreadstat.write_sav(df, str(p), column_labels=labels, variable_value_labels=vlabels)
    back, meta = read_source(p)
    assert list(back.columns) == list(df.columns)
    for c in ("pid", "y", "x1", "female", "educ"):
        np.testing.assert_allclose(
            back[c].to_numpy(dtype="float64"),
            df[c].to_numpy(dtype="float64"),
            equal_nan=True,
            err_msg=c,
        )
    assert back["region"].tolist() == df["region"].tolist()
    assert back["income"].isna().tolist() == df["income"].isna().tolist()
    assert meta.variable_labels == labels
    assert meta.value_labels == vlabels
    assert read_columns(p) == list(df.columns)


def test_sav_source_through_the_pipeline(tmp_path: Path) -> None:
    import pyreadstat

    df, labels, vlabels = _sav_frame(600)
    p = tmp_path / "people.sav"
    pyreadstat.write_sav(df, str(p), column_labels=labels, variable_value_labels=vlabels)
    raw = manifest_for(p)
    tiers = run_pipeline(raw, tmp_path / "out")
    assert tiers["tier_met"] >= 0
    syn = tmp_path / "out" / "t" / "synthetic"
    assert sorted(x.name for x in syn.iterdir()) == [
        "README.txt",
        "people.csv",
        "people.parquet",
        "people.sav",
    ]  # a .sav (not a .dta) for a .sav source
    sav_df, sm = read_source(syn / "people.sav")
    assert list(sav_df.columns) == list(df.columns) and sm.variable_labels == labels
    pq_df, pm = read_source(syn / "people.parquet")
    csv_df, _ = read_source(syn / "people.csv")
    assert list(pq_df.columns) == list(df.columns)
    assert list(csv_df.columns) == list(df.columns)
    assert len(pq_df) == len(csv_df) == len(df)
    np.testing.assert_allclose(csv_df["y"].to_numpy(), pq_df["y"].to_numpy())
    assert pm.variable_labels == labels
    assert pm.value_labels["female"] == {0: "male", 1: "female"}
    assert pq_df["pid"].tolist() == list(range(1, len(df) + 1))
    assert set(pq_df["region"].dropna()) <= set("abcd")


# ---------------------------------------------------------------------------------------------
# read_columns reads the header only


def test_read_columns_reads_header_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq
    import pyreadstat

    df, meta = _typed_frame()
    paths = {
        "csv": tmp_path / "a.csv",
        "parquet": tmp_path / "a.parquet",
        "dta": tmp_path / "a.dta",
    }
    write_csv(df, paths["csv"])
    write_parquet(df, paths["parquet"], meta)
    write_dta(df, paths["dta"], meta)
    # A csv whose body is not even parseable: only the header may be read.
    bad_csv = tmp_path / "ragged.csv"
    bad_csv.write_bytes(b"u,v,w\n1,2,3\n" + b"x" * 200_000 + b"\n\xff\xfe,,,,,,\n")

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("read_columns read the data")

    real_read_dta = pyreadstat.read_dta

    def header_only_dta(path: str, *a: object, **k: object):  # type: ignore[no-untyped-def]
        if not k.get("metadataonly"):
            raise AssertionError("read_columns read the .dta data")
        return real_read_dta(path, *a, **k)

    monkeypatch.setattr(pd, "read_csv", boom)
    monkeypatch.setattr(pd, "read_parquet", boom)
    monkeypatch.setattr(pd, "read_stata", boom)
    monkeypatch.setattr(pq, "read_table", boom)
    monkeypatch.setattr(pyreadstat, "read_dta", header_only_dta)
    for fmt, p in paths.items():
        assert read_columns(p) == list(df.columns), fmt
    assert read_columns(bad_csv) == ["u", "v", "w"]


def test_read_columns_rejects_duplicates_and_unknown_extensions(tmp_path: Path) -> None:
    from replisynth.core.errors import DataError

    p = tmp_path / "dup.csv"
    p.write_text("a,b,a\n1,2,3\n")
    with pytest.raises(DataError, match="duplicate"):
        read_columns(p)
    q = tmp_path / "a.txt"
    q.write_text("a\n1\n")
    with pytest.raises(DataError, match="unknown extension"):
        read_columns(q)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_columns(tmp_path / "empty.csv")


def test_fast_csv_is_byte_identical_to_pandas(tmp_path: Path) -> None:
    """The Arrow path of write_csv writes exactly pandas' bytes (repr floats, exponents,
    whole floats with '.0', -0.0, inf, missing as empty, nullable integers, booleans)."""
    rng = np.random.default_rng(5)
    edge = [
        1.0,
        0.0,
        -0.0,
        1e16,
        1e15,
        9999999999999998.0,
        1e-4,
        9.99e-5,
        1e-5,
        0.1,
        1.5e-7,
        np.nan,
        np.inf,
        -np.inf,
        2.5e300,
        5e-324,
        1 / 3,
        12345678.9,
        1e21,
        -1e15,
        123456789012345.6,
        1e14,
        0.00012,
        100.0,
        1e5,
        12300000.0,
    ]
    n = 2000
    f = np.concatenate([edge, rng.normal(size=n) * np.exp(rng.normal(size=n) * 8)])
    m = len(f)
    df = pd.DataFrame(
        {
            "a b": f,
            'q"x,y': np.round(rng.normal(size=m) * 10.0 ** rng.integers(0, 17, size=m)),
            "i": rng.integers(-(10**12), 10**12, size=m),
            "u": rng.integers(0, 5, size=m).astype("uint8"),
            "I": pd.array(
                np.where(rng.random(m) < 0.2, None, rng.integers(0, 9, size=m)), dtype="Int64"
            ),
            "b": rng.random(m) < 0.5,
        }
    )
    write_csv(df, tmp_path / "a.csv")
    df.to_csv(tmp_path / "b.csv", index=False, lineterminator="\n")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_csv_export_from_parquet_equals_the_csv_written_beside_it(
    demo: dict, tmp_path: Path
) -> None:
    """The workflow writes the csv in its own job from the pinned parquet (`stage_export_csv`);
    the CLI writes it from the frame in memory. Both give the same bytes."""
    from replisynth.workflow.pipeline import stage_export_csv

    syn = demo["root"] / "synthetic"
    stage_export_csv(syn / "card.parquet", tmp_path / "card.csv")
    assert (tmp_path / "card.csv").read_bytes() == (syn / "card.csv").read_bytes()


def test_fast_csv_bytes_do_not_depend_on_the_thread_count(tmp_path: Path) -> None:
    """write_csv formats columns on the stage's threads: one thread and two write the same
    bytes (floats with and without '.0', exponents, missing values, integers)."""
    from replisynth.core.parallel import set_threads, threads

    rng = np.random.default_rng(11)
    m = 5000
    df = pd.DataFrame(
        {
            f"f{j}": np.where(
                rng.random(m) < 0.1,
                np.nan,
                np.round(rng.normal(size=m) * 10.0 ** rng.integers(-6, 18, size=m), j),
            )
            for j in range(4)
        }
        | {"i": rng.integers(0, 100, size=m), "w": np.round(rng.normal(size=m) * 100)}
    )
    before = threads()
    try:
        set_threads(1)
        write_csv(df, tmp_path / "one.csv")
        set_threads(2)
        write_csv(df, tmp_path / "two.csv")
    finally:
        set_threads(before)
    df.to_csv(tmp_path / "pandas.csv", index=False, lineterminator="\n")
    assert (
        (tmp_path / "one.csv").read_bytes()
        == (tmp_path / "two.csv").read_bytes()
        == (tmp_path / "pandas.csv").read_bytes()
    )


def test_csv_written_in_row_chunks_has_the_bytes_of_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_csv formats a chunk of rows at a time (memory); chunks of 1024 rows give the
    bytes pandas writes for the whole frame (floats, whole floats, exponents, missing,
    integers, nullable integers, booleans)."""
    import replisynth.io.files as rio

    rng = np.random.default_rng(5)
    m = 5000
    df = pd.DataFrame(
        {
            "f": np.where(
                rng.random(m) < 0.1,
                np.nan,
                rng.normal(size=m) * 10.0 ** rng.integers(-6, 18, size=m),
            ),
            "w": np.round(rng.normal(size=m) * 100),
            "i": rng.integers(-50, 50, size=m),
            "I": pd.array(
                np.where(rng.random(m) < 0.2, None, rng.integers(0, 9, size=m)), dtype="Int64"
            ),
            "b": rng.random(m) < 0.5,
        }
    )
    monkeypatch.setattr(rio, "CSV_CHUNK_CELLS", 1)
    write_csv(df, tmp_path / "chunked.csv")
    df.to_csv(tmp_path / "pandas.csv", index=False, lineterminator="\n")
    assert (tmp_path / "chunked.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()


def test_csv_export_reads_the_parquet_one_row_group_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The csv job reads the pinned parquet one row group at a time; with many small groups
    (a float column missing in one group only, nullable integers, booleans) the bytes are
    those pandas writes for the whole frame, and a text column takes the one-pass path."""
    import replisynth.io.files as rio

    rng = np.random.default_rng(9)
    m = 5000
    f = rng.normal(size=m) * 10.0 ** rng.integers(-6, 18, size=m)
    f[1000:2000] = np.nan  # one whole row group missing
    df = pd.DataFrame(
        {
            "f": f,
            "w": np.round(rng.normal(size=m) * 100),
            "i": rng.integers(-50, 50, size=m),
            "I": pd.array(
                np.where(rng.random(m) < 0.2, None, rng.integers(0, 9, size=m)), dtype="Int64"
            ),
            "b": rng.random(m) < 0.5,
        }
    )
    monkeypatch.setattr(rio, "PARQUET_ROW_GROUP", 1000)
    monkeypatch.setattr(rio, "CSV_CHUNK_CELLS", 1)
    write_parquet(df, tmp_path / "d.parquet")
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "d.parquet").num_row_groups == 5
    rio.write_csv_from_parquet(tmp_path / "d.parquet", tmp_path / "grouped.csv")
    df.to_csv(tmp_path / "pandas.csv", index=False, lineterminator="\n")
    assert (tmp_path / "grouped.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
    df["s"] = ["x", None, "y", "z", "w"] * (m // 5)
    write_parquet(df, tmp_path / "t.parquet")
    rio.write_csv_from_parquet(tmp_path / "t.parquet", tmp_path / "text.csv")
    df.to_csv(tmp_path / "pandas_t.csv", index=False, lineterminator="\n")
    assert (tmp_path / "text.csv").read_bytes() == (tmp_path / "pandas_t.csv").read_bytes()
