"""Extraction from codes computed once per column (replisynth.extract.extract.column_codes): the same
level orders, dim matrix and pooled values as the per-row paths of replisynth.stats.copula_dims, and a
release that does not depend on the thread count."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_people, manifest_for

from replisynth.config.manifest import load_manifest
from replisynth.core.parallel import set_threads, threads
from replisynth.extract.extract import (
    coded_dim_matrix,
    coded_level_order,
    column_codes,
    extract_source,
    gated_spearman,
    pooled_level_values,
    rows_of,
)
from replisynth.io.files import dumps_json, read_source
from replisynth.io.schema import ColumnSpec
from replisynth.stats.codings import coded_dependencies, functional_dependencies
from replisynth.stats.copula_dims import category_values, copula_dims, dim_matrix, ordered_codes
from replisynth.stats.marginals import FrequencyTable, frequency_table, level_order


def _mixed(n: int = 3000, seed: int = 1) -> pd.DataFrame:
    """Columns that exercise every coding: an ordinal with rare (pooled) levels and missing
    values, a float-coded ordinal, a nominal string column with a rare category, an object
    column holding 1 and 1.0, a boolean, a pandas ordered categorical, and a continuous one."""
    rng = np.random.default_rng(seed)
    ordinal = rng.choice([1, 2, 3, 4, 5, 9], p=[0.3, 0.3, 0.2, 0.15, 0.04, 0.01], size=n).astype(
        "float64"
    )
    ordinal[rng.random(n) < 0.05] = np.nan
    obj = pd.Series(rng.choice([0, 1], size=n), dtype=object)
    obj[rng.random(n) < 0.3] = 1.0
    return pd.DataFrame(
        {
            "ordinal": ordinal,
            "half": rng.choice([0.5, 1.5, 2.5], size=n),
            "nominal": rng.choice(list("abcz"), p=[0.5, 0.3, 0.19, 0.01], size=n),
            "obj": obj,
            "flag": rng.random(n) < 0.3,
            "cat": pd.Categorical(
                rng.choice(["lo", "mid", "hi"], size=n),
                categories=["lo", "mid", "hi"],
                ordered=True,
            ),
            "x": rng.normal(size=n),
        }
    )


def _specs(df: pd.DataFrame) -> dict[str, ColumnSpec]:
    def spec(c: str, lt: str, role: str, ordered: bool) -> ColumnSpec:
        return ColumnSpec(
            name=c,
            logical_type=lt,
            storage_type=str(df[c].dtype),
            role=role,
            integer=False,
            ordered=ordered,
            missing=int(df[c].isna().sum()),
            rows=len(df),
        )

    return {
        "ordinal": spec("ordinal", "float", "categorical", True),
        "half": spec("half", "float", "categorical", True),
        "nominal": spec("nominal", "string", "categorical", False),
        "obj": spec("obj", "string", "categorical", False),
        "flag": spec("flag", "boolean", "categorical", True),
        "cat": spec("cat", "categorical", "categorical", True),
        "x": spec("x", "float", "continuous", False),
    }


def _tables(df: pd.DataFrame, specs: dict[str, ColumnSpec]) -> dict[str, FrequencyTable]:
    order = {"cat": list(df["cat"].dtype.categories)}
    return {
        c: frequency_table(df[c], 50, s.ordered, order=order.get(c))
        for c, s in specs.items()
        if s.role == "categorical"
    }


def test_coded_paths_equal_the_per_row_paths():
    df = _mixed()
    specs = _specs(df)
    tables = _tables(df, specs)
    assert tables["ordinal"].pooled_levels > 0 and tables["nominal"].suppressed > 0
    coded = {c: column_codes(df[c]) for c in tables}
    levels = {c: coded_level_order(df[c], specs[c], coded[c][1]) for c in tables}
    for c in tables:
        own = list(df[c].dtype.categories) if c == "cat" else None
        assert levels[c] == (own or level_order(list(category_values(df[c]).dropna().unique())))
    marginals = {c: {"kind": "categorical", "table": t.to_dict()} for c, t in tables.items()} | {
        "x": {"kind": "continuous"}
    }
    dims = copula_dims(list(specs.values()), marginals, min_cell=50)
    assert {d["kind"] for d in dims} == {"continuous", "ordered", "indicator", "missing"}
    X_old = dim_matrix(df, specs, dims, tables, levels, order="F")
    X_new = coded_dim_matrix(df, specs, dims, tables, levels, coded)
    assert X_new.flags.f_contiguous
    np.testing.assert_array_equal(X_new, X_old)  # NaN where NaN, every value exact
    pooled = pooled_level_values(df, tables, specs, levels, coded)
    assert (
        pooled.keys()
        == pooled_level_values(df, tables, specs, levels).keys()
        == {"ordinal", "half"}
    )
    for c, v in pooled.items():
        pos = ordered_codes(category_values(df[c]), tables[c], levels[c])
        lev = np.asarray(tables[c].levels, dtype="float64")
        np.testing.assert_array_equal(
            v, np.where(np.isnan(pos), np.nan, lev[np.nan_to_num(pos).astype(int)])
        )


def test_coded_dependencies_find_the_codings_of_the_series_path():
    rng = np.random.default_rng(3)
    n = 2000
    year = rng.choice([87, 88, 89], size=n)
    region = rng.choice(list("abcde"), size=n)
    df = pd.DataFrame(
        {
            "year": year,
            "d89": (year == 89).astype(int),
            "region": region,
            "south": np.isin(region, ["d", "e"]).astype(int),
            "z": rng.binomial(1, 0.4, size=n),
        }
    )
    tables = {c: frequency_table(df[c], 50, c != "region") for c in df}
    cats = {c: category_values(df[c]) for c in df}
    levels = {c: level_order(list(cats[c].dropna().unique())) for c in df}
    coded = {c: column_codes(df[c]) for c in df}
    got = coded_dependencies(coded, tables, levels, list(df))
    assert got == functional_dependencies(cats, tables, levels, list(df))
    assert got == {
        "d89": {"from": "year", "map": [[87, 0], [88, 0], [89, 1]]},
        "south": {"from": "region", "map": [["a", 0], ["b", 0], ["c", 0], ["d", 1], ["e", 1]]},
    }


def test_a_strata_block_spearman_over_gathered_rows_is_the_masked_one():
    X = np.asfortranarray(np.random.default_rng(0).normal(size=(500, 4)).round(1))
    X[::7, 2] = np.nan
    X[:, 3] = X[:, 3] > 1.5  # a two-valued dim with a small group
    mask = np.random.default_rng(1).random(500) < 0.4
    S_mask, bad_mask = gated_spearman(X, 30, mask)
    S_rows, bad_rows = gated_spearman(rows_of(X, mask), 30)
    assert bad_mask == bad_rows == 1
    np.testing.assert_array_equal(S_rows, S_mask)


@pytest.fixture
def restore_threads():
    before = threads()
    yield
    set_threads(before)


def test_release_does_not_depend_on_the_thread_count(tmp_path, restore_threads):
    make_people(1500, seed=4).to_csv(tmp_path / "p.csv", index=False)
    m = load_manifest(manifest_for(tmp_path / "p.csv", strata=["region", "female"]))
    data, meta = read_source(tmp_path / "p.csv")
    out = []
    for n in (1, 2, 3):
        set_threads(n)
        release, log = extract_source(data, meta, m, m.source("people"))
        out.append((dumps_json(release), json.dumps(log.entries)))
    assert len(json.loads(out[0][0])["blocks"]) >= 5
    assert out[0] == out[1] == out[2]


def test_sorted_percentiles_are_numpys_averaged_inverted_cdf():
    """Bit for bit, for every n from 1 and ties, at the grid's levels, the trim cuts and
    arbitrary levels (numpy's own copy-and-partition path is what it replaces)."""
    from replisynth.stats.marginals import sorted_percentiles

    rng = np.random.default_rng(0)
    for it in range(600):
        n = 1 + it % 50 if it < 300 else int(rng.integers(1, 5000))
        x = rng.normal(size=n) if it % 2 else rng.integers(-3, 4, size=n).astype("float64")
        xs = np.sort(x)
        t = min(max(1.0, 200.0 / n), 50.0)
        p = np.concatenate([np.arange(101.0), [t, 100 - t], rng.uniform(0, 100, 5)])
        want = np.percentile(xs, p, method="averaged_inverted_cdf")
        assert sorted_percentiles(xs, p).tobytes() == want.tobytes()


def test_many_level_ordinal_inside_a_stratum_is_a_table_when_no_level_is_small():
    """Inside a stratum, a 12-level integer code with every level at or above the cell size is
    released as its exact frequency table (a percentile grid rounds each share to 1%); with a
    level below the cell size it falls back to the grid, so no small count is released."""
    from replisynth.extract.extract import _marginal

    rng = np.random.default_rng(3)
    big = pd.Series(
        rng.permutation(
            np.repeat(np.arange(1, 13), [83, 90, 77, 81, 86, 79, 84, 88, 80, 82, 85, 78])
        )
    )
    spec = ColumnSpec(
        name="sector",
        logical_type="integer",
        storage_type="int64",
        role="categorical",
        integer=True,
        ordered=True,
        missing=0,
        rows=len(big),
    )
    m = _marginal(big, spec, 50, 1.0, pool=False)
    assert m["kind"] == "categorical"
    assert m["table"]["levels"] == list(range(1, 13))
    assert m["table"]["counts"] == [int((big == v).sum()) for v in range(1, 13)]
    small = pd.concat([big[big != 12], pd.Series([12] * 20)], ignore_index=True)
    m2 = _marginal(small, spec, 50, 1.0, pool=False)
    assert m2["kind"] == "ordinal_grid" and "table" not in m2


def test_checkpoint_fits_do_not_depend_on_the_thread_count(tmp_path, restore_threads):
    """The checkpoint fits run one per thread; the released file and the SDC log are the same
    bytes for 1, 2 and 3 threads, in manifest order, a rejected checkpoint among them."""
    from replisynth.workflow.pipeline import stage_extract_checkpoints

    make_people(1500, seed=4).to_csv(tmp_path / "p.csv", index=False)
    raw = manifest_for(tmp_path / "p.csv", categorical=["region"])
    raw["checkpoints"] = [
        {
            "tag": "ols",
            "source": "people",
            "model": "ols",
            "formula": "y ~ x1 + x2 + female",
            "vcov": "HC1",
        },
        {
            "tag": "fac",
            "source": "people",
            "model": "ols",
            "formula": "y ~ x1 * female + C(region)",
        },
        {"tag": "logit", "source": "people", "model": "logit", "formula": "female ~ x1 + y"},
        {
            "tag": "tiny",
            "source": "people",
            "model": "ols",
            "formula": "y ~ x1",
            "subset": "age < 19",
        },
    ]
    m = load_manifest(raw)
    out = []
    for n in (1, 2, 3):
        set_threads(n)
        stage_extract_checkpoints(m, tmp_path / f"c{n}.json", tmp_path / f"s{n}.json")
        out.append(((tmp_path / f"c{n}.json").read_bytes(), (tmp_path / f"s{n}.json").read_bytes()))
    rel = json.loads(out[0][0])
    assert [c["tag"] for c in rel] == ["ols", "fac", "logit", "tiny"]
    assert rel[3]["status"] == "rejected" and rel[0]["status"] != "rejected"
    assert out[0] == out[1] == out[2]
