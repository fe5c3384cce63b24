"""Deterministic codings (B a function of A) and missingness that depends on other columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import release_of

from replisynth.stats.correlations import spearman_matrix
from replisynth.synthesize.plan import expected_counts, source_plan
from replisynth.synthesize.synthesize import synthesize_source


def _release(df: pd.DataFrame, tmp_path, **keys):
    release, _data, log = release_of(df, tmp_path, **keys)
    return release, log


def _panel_like(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """year uniform on 87/88/89 with d88, d89 its dummies; region a..e with `south` = region
    in {d, e}; `code`/`label` a bijection; x continuous, correlated with year; z an
    independent binary (no coding relation to anything)."""
    rng = np.random.default_rng(seed)
    year = rng.choice([87, 88, 89], size=n)
    region = rng.choice(list("abcde"), size=n)
    code = rng.integers(1, 5, size=n)
    return pd.DataFrame(
        {
            "pid": np.arange(n),
            "year": year,
            "d88": (year == 88).astype(int),
            "d89": (year == 89).astype(int),
            "region": region,
            "south": np.isin(region, ["d", "e"]).astype(int),
            "code": code,
            "label": pd.Series(code).map({1: "one", 2: "two", 3: "three", 4: "four"}),
            "x": rng.normal(size=n) + 0.5 * (year - 88),
            "z": rng.binomial(1, 0.4, size=n),
        }
    )


def test_codings_are_detected_with_their_maps(tmp_path):
    rel, log = _release(_panel_like(), tmp_path)
    d = rel["derived"]
    assert d["d88"]["from"] == "year" and d["d89"]["from"] == "year"
    assert dict(map(tuple, d["d89"]["map"])) == {87: 0, 88: 0, 89: 1}
    assert d["south"]["from"] == "region"
    assert dict(map(tuple, d["south"]["map"])) == {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1}
    # a bijection has one root: the earlier column
    assert d["label"]["from"] == "code" and "code" not in d
    assert "z" not in d and "year" not in d and "x" not in d
    assert sum(e["stage"] == "derived" for e in log.entries) == len(d)


def test_one_contradicting_row_breaks_a_coding(tmp_path):
    df = _panel_like()
    df.loc[5, "d89"] = 1 - df.loc[5, "d89"]
    rel, _ = _release(df, tmp_path)
    assert "d89" not in rel["derived"] and "d88" in rel["derived"]


@pytest.mark.parametrize("rows", [None, 1777])
def test_synthetic_codings_hold_exactly_with_exact_counts(tmp_path, rows):
    rel, _ = _release(_panel_like(), tmp_path)
    syn = synthesize_source(rel, seed=5, rows=rows)
    assert (syn["d88"] == (syn["year"] == 88).astype(int)).all()
    assert (syn["d89"] == (syn["year"] == 89).astype(int)).all()
    assert (syn["south"] == syn["region"].isin(["d", "e"]).astype(int)).all()
    plan = source_plan(rel, len(syn))
    for col in ["d88", "d89", "south", "label", "year"]:
        want = {str(k): v for k, v in expected_counts(plan, col).items() if v}
        got = {str(k): int(v) for k, v in syn[col].value_counts().items()}
        assert got == want, col


def test_missingness_follows_the_columns_it_depends_on(tmp_path):
    """income is missing mostly for the old (P = 0.6 above 55, 0.05 below): the synthetic
    missing indicator keeps its rank correlation with age within 0.05."""
    rng = np.random.default_rng(1)
    n = 4000
    age = rng.integers(18, 80, size=n).astype(float)
    income = np.exp(10 + 0.01 * age + rng.normal(scale=0.4, size=n))
    miss = rng.random(n) < np.where(age > 55, 0.6, 0.05)
    income[miss] = np.nan
    df = pd.DataFrame(
        {
            "pid": np.arange(n),
            "age": age,
            "income": income,
            "spouse_income": np.where(miss, np.nan, income * 0.5),
        }
    )
    rel, _ = _release(df, tmp_path, continuous=["age"])
    kinds = [(d["column"], d["kind"]) for d in rel["dims"]]
    assert ("income", "missing") in kinds
    assert ("spouse_income", "missing") not in kinds  # same pattern: one shared missing dim
    assert rel["missing_groups"] == [["income", "spouse_income"]]
    syn = synthesize_source(rel, seed=3)
    assert (syn["income"].isna() == syn["spouse_income"].isna()).all()
    orig = spearman_matrix(np.column_stack([age, miss.astype(float)]))[0, 1]
    got = spearman_matrix(
        np.column_stack([syn["age"].to_numpy(float), syn["income"].isna().to_numpy(float)])
    )[0, 1]
    assert orig > 0.3
    assert abs(got - orig) < 0.05
    assert syn["income"].isna().sum() == miss.sum()
