"""Column classification (`schema.infer_column`) and its SDC interplay: integer columns whose
small levels cell suppression would pool are released as continuous (their spread survives)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from conftest import manifest_for, release_of

from replisynth.config.manifest import load_manifest
from replisynth.io.files import FileMeta
from replisynth.io.schema import infer_column


def _meta(labels: dict | None = None) -> FileMeta:
    return FileMeta(value_labels=labels or {})


def _source():
    return load_manifest(manifest_for("people.csv")).sources[0]


def _schooling(n: int = 750, seed: int = 0) -> pd.Series:
    """Years of schooling like mroz: half the rows at 12, the rest over 5..17 in levels of
    4-60 rows (about 30% of rows in levels below 50)."""
    rng = np.random.default_rng(seed)
    p = np.array([1, 1, 1, 4, 3, 6, 6, 50, 6, 7, 2, 8, 5], dtype=float)
    return pd.Series(rng.choice(np.arange(5, 18), size=n, p=p / p.sum()), name="educ")


def test_heavily_pooled_integer_is_continuous() -> None:
    s = _schooling()
    assert s.nunique() <= 20
    assert (
        infer_column(s, _source(), _meta()).role == "categorical"
    )  # without a cell size: the old rule
    spec = infer_column(s, _source(), _meta(), min_cell=50)
    assert spec.role == "continuous" and spec.integer


def test_pooling_rule_exceptions() -> None:
    s = _schooling()
    src = _source()
    # named as a factor, stratum or panel time: stays categorical
    assert (
        infer_column(s, src, _meta(), min_cell=50, keep_categorical={"educ"}).role == "categorical"
    )
    # labelled codes are categories whatever their counts
    assert (
        infer_column(s, src, _meta({"educ": {"5": "grade 5"}}), min_cell=50).role == "categorical"
    )
    # few values (a count of children 0..3): pooled, but not turned continuous
    kids = pd.Series(np.repeat([0, 1, 2, 3], [600, 118, 26, 3]), name="kids")
    assert infer_column(kids, src, _meta(), min_cell=50).role == "categorical"
    # every level large enough: categorical
    big = pd.Series(np.repeat(np.arange(8), 100), name="educ")
    assert infer_column(big, src, _meta(), min_cell=50).role == "categorical"
    # the manifest's categorical list wins
    forced = load_manifest(manifest_for("people.csv", categorical=["educ"])).sources[0]
    assert infer_column(s, forced, _meta(), min_cell=50).role == "categorical"


def test_extract_logs_the_decision(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "pid": np.arange(750),
            "educ": _schooling(),
            "x": np.random.default_rng(1).normal(size=750),
        }
    )
    release, _, log = release_of(df, tmp_path)
    spec = {c["name"]: c for c in release["columns"]}
    assert spec["educ"]["role"] == "continuous"
    entries = [e for e in log.entries if e.get("column") == "educ" and e["action"] == "continuous"]
    assert len(entries) == 1 and "min_cell_size=50" in entries[0]["reason"]
    # a checkpoint reading it as a factor keeps it categorical
    raw_cp = [{"tag": "f", "source": "people", "model": "ols", "formula": "x ~ C(educ)"}]
    release, _, log = release_of(df, tmp_path, checkpoints=raw_cp)
    assert {c["name"]: c for c in release["columns"]}["educ"]["role"] == "categorical"


# ---------------------------------------------------------------------------------------------
# the released schema's checks without pandera agree with pandera


def _spec(name: str, lt: str, role: str, integer: bool = False):
    from replisynth.io.schema import ColumnSpec

    return ColumnSpec(
        name=name,
        logical_type=lt,
        storage_type="x",
        role=role,
        integer=integer,
        ordered=False,
        missing=0,
        rows=6,
    )


def _clean_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "i": [1, 2, 3, 4, 5, 6],
            "f": [1.0, 2.5, np.nan, 4.0, 5.0, 6.0],
            "fi": [1.0, 2.0, np.nan, 3.0, 4.0, 5.0],
            "d": pd.to_datetime(["2000-01-01"] * 6),
            "b": [True, False, True, None, False, True],
            "c": ["a", "b", None, "a", "b", "a"],
            "pid": ["x1", "x2", "x3", "x4", "x5", "x6"],
        }
    )


def test_released_schema_passes_exactly_when_pandera_finds_nothing() -> None:
    from replisynth.io.schema import pandera_schema, validation_summary

    specs = [
        _spec("i", "integer", "categorical", True),
        _spec("f", "float", "continuous"),
        _spec("fi", "float", "continuous", True),
        _spec("d", "date", "continuous"),
        _spec("b", "boolean", "categorical"),
        _spec("c", "string", "categorical"),
        _spec("pid", "string", "id"),
    ]
    schema = pandera_schema(specs, {"i": [1, 2, 3, 4, 5, 6], "c": ["a", "b"]})
    clean = _clean_frame()
    assert schema.passes(clean)
    assert validation_summary(schema, clean) == validation_summary(schema.to_pandera(), clean) == []
    broken = {
        "non-integer": lambda df: df.assign(fi=[1.5, 2.0, np.nan, 3.0, 4.0, 5.0]),
        "category": lambda df: df.assign(c=["a", "zz", None, "a", "zz", "a"]),
        "level": lambda df: df.assign(i=[1, 2, 3, 4, 5, 9]),
        "text in numeric": lambda df: df.assign(f=["x"] * 6),
        "not a date": lambda df: df.assign(d=["2000-01-01"] * 6),
        "boolean": lambda df: df.assign(b=[True, 2, False, None, 0, 1]),
        "order": lambda df: df[list(df.columns[::-1])],
        "extra column": lambda df: df.assign(extra=1),
    }
    for why, f in broken.items():
        df = f(clean)
        assert not schema.passes(df), why
        got = validation_summary(schema, df)
        assert got and got == validation_summary(schema.to_pandera(), df), why
    # outcomes exempt from the value checks
    exempt = pandera_schema(specs, {"c": ["a", "b"]}, exempt=("fi",))
    assert exempt.passes(broken["non-integer"](clean))


# ---------------------------------------------------------------------------------------------
# numeric columns of few values, whole or not, are frequency tables


def _banded(rng: np.random.Generator, k: int, n: int, name: str) -> pd.Series:
    """n values on k non-integer points (midpoints of bands, coded rates), each held by at
    least 60 rows."""
    points = np.round(np.sort(rng.choice(np.arange(1, 400), size=k, replace=False)) / 7.0 + 0.5, 4)
    points = points[points != np.round(points)] if k > 2 else points + 0.25
    counts = 60 + rng.multinomial(n - 60 * len(points), np.full(len(points), 1 / len(points)))
    return pd.Series(rng.permutation(np.repeat(points, counts)), name=name)


def test_few_non_integer_values_are_categorical() -> None:
    src = _source()
    for seed, k, n in [(1, 3, 700), (2, 7, 1500), (3, 12, 2400), (4, 19, 3000)]:
        s = _banded(np.random.default_rng(seed), k, n, f"band{seed}")
        assert s.nunique() <= 20 and not np.all(s == np.round(s))
        spec = infer_column(s, src, _meta(), min_cell=50)
        assert spec.role == "categorical" and spec.ordered and not spec.integer
    # more distinct values than a frequency table takes: continuous, as before
    many = pd.Series(np.random.default_rng(5).normal(size=900).round(1), name="score")
    assert many.nunique() > 20
    assert infer_column(many, src, _meta(), min_cell=50).role == "continuous"
    # the manifest's continuous list wins
    forced = load_manifest(manifest_for("people.csv", continuous=["band1"])).sources[0]
    s = _banded(np.random.default_rng(1), 3, 700, "band1")
    assert infer_column(s, forced, _meta(), min_cell=50).role == "continuous"


def test_synthetic_values_of_a_banded_column_stay_on_its_points(tmp_path: Path) -> None:
    from replisynth.synthesize.synthesize import synthesize_source

    for seed, k, n in [(11, 6, 1200), (12, 9, 2000)]:
        rng = np.random.default_rng(seed)
        age = _banded(rng, k, n, "ageband")
        df = pd.DataFrame(
            {"pid": np.arange(n), "ageband": age, "y": age.to_numpy() + rng.normal(size=n)}
        )
        (tmp_path / str(seed)).mkdir()
        release, data, _ = release_of(df, tmp_path / str(seed))
        syn = synthesize_source(release, seed=seed)
        points = set(data["ageband"].round(6))
        assert set(syn["ageband"].round(6)) <= points  # nothing between the bands
        # each point's share is the original's (released counts)
        want = data["ageband"].value_counts().sort_index()
        got = syn["ageband"].value_counts().reindex(want.index, fill_value=0)
        assert np.abs(got.to_numpy() - want.to_numpy()).max() <= 1
