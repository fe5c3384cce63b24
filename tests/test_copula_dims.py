"""The copula's dim coding: the level-index path of `synthetic_dim_matrix` gives the values
of the mapped-column path through `dim_matrix` bit for bit, whatever the column's dtype."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

import replisynth.stats.copula_dims as D


def _release(levels: dict[str, list[Any]], ordered: dict[str, bool]) -> dict[str, Any]:
    """A minimal release: categorical columns with `levels`, one continuous column `x`."""
    base = {"storage_type": "float64", "integer": False, "ordered": False, "missing": 0, "rows": 0}
    cols = [base | {"name": "x", "logical_type": "float", "role": "continuous"}]
    marg: dict[str, Any] = {"x": {"kind": "continuous"}}
    dims: list[dict[str, Any]] = [{"column": "x", "kind": "continuous"}]
    for c, lev in levels.items():
        cols.append(
            base
            | {
                "name": c,
                "logical_type": "categorical",
                "role": "categorical",
                "ordered": ordered[c],
            }
        )
        counts = [10 + i for i in range(len(lev))]
        marg[c] = {
            "kind": "categorical",
            "table": {"levels": lev, "counts": counts, "ordered": ordered[c]},
        }
        if ordered[c]:
            dims.append({"column": c, "kind": "ordered"})
        else:
            dims += [{"column": c, "kind": "indicator", "level": v} for v in lev[:-1]]
        dims.append({"column": c, "kind": "missing"})
    dims.append({"column": "x", "kind": "missing"})
    return {"columns": cols, "dims": dims, "blocks": {"all": {"marginals": marg}}}


def _old(
    df: pd.DataFrame, release: dict[str, Any], order: str, monkeypatch: pytest.MonkeyPatch
) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setattr(D, "_distinct_levels", lambda levels: False)
        return D.synthetic_dim_matrix(df, release, order=order)


@pytest.mark.parametrize("order", ["C", "F"])
def test_level_path_equals_mapped_path(order: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    n = 40_000
    rel = _release(
        {"o": [0, 1, 2, 5], "f": [1.5, 2.5, 3.0], "s": ["a", "b", "10"], "u": [3, 4, 9]},
        {"o": True, "f": True, "s": False, "u": False},
    )
    o = rng.integers(0, 7, n)  # 3, 4 and 6 are not released levels
    f = rng.choice([1.5, 2.5, 3.0, 7.25], n)
    s = rng.choice(np.asarray(["a", "b", "10", "zz"], dtype=object), n)
    u = rng.choice([3, 4, 9, 11], n)
    x = rng.standard_normal(n)
    x[::13] = np.nan
    frames = {
        "int64": pd.DataFrame({"o": o, "f": f, "s": s, "u": u, "x": x}),
        "Int64 with NA": pd.DataFrame(
            {
                "o": pd.array(np.where(np.arange(n) % 11 == 0, None, o), dtype="Int64"),
                "f": np.where(np.arange(n) % 7 == 0, np.nan, f),
                "s": s,
                "u": u.astype("float64"),
                "x": x,
            }
        ),
        "object": pd.DataFrame(
            {
                "o": o.astype(object),
                "f": f.astype(object),
                "s": s,
                "u": np.where(np.arange(n) % 5 == 0, None, u.astype(object)),
                "x": x,
            }
        ),
        "float ints and strings": pd.DataFrame(
            {
                "o": o.astype("float64"),
                "f": f,
                "s": np.where(s == "10", 10, s),
                "u": u.astype(str),
                "x": x,
            }
        ),
        "categorical": pd.DataFrame(
            {c: pd.Categorical(v) for c, v in {"o": o, "f": f, "s": s, "u": u}.items()} | {"x": x}
        ),
        "wide integers": pd.DataFrame(
            {"o": np.where(np.arange(n) % 3 == 0, 10**7, o), "f": f, "s": s, "u": u, "x": x}
        ),
    }
    for name, df in frames.items():
        new = D.synthetic_dim_matrix(df, rel, order=order)
        old = _old(df, rel, order, monkeypatch)
        assert new.shape == old.shape
        assert np.array_equal(new.view(np.uint64), old.view(np.uint64)), name
        assert new.flags["C_CONTIGUOUS" if order == "C" else "F_CONTIGUOUS"]


def test_levels_pandas_would_merge_take_the_mapped_path(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not D._distinct_levels([1, True])
    assert not D._distinct_levels([1, 1.0])
    assert D._distinct_levels([1, "1", 2.5])
    rel = _release({"o": [True, 1, 2]}, {"o": True})
    df = pd.DataFrame(
        {"o": np.asarray([True, 1, 2, 2.0, None, 1], dtype=object), "x": np.arange(6.0)}
    )
    assert np.array_equal(
        D.synthetic_dim_matrix(df, rel), _old(df, rel, "C", monkeypatch), equal_nan=True
    )


def test_small_int_codes_match_factorize() -> None:
    s = pd.Series(pd.array([3, None, 5, 3, -2, None], dtype="Int64"))
    codes, uniques = D._small_int_codes(s, 1024)
    f_codes, f_uniques = pd.factorize(s, use_na_sentinel=True)
    assert np.array_equal(
        np.append(uniques, np.nan)[codes],
        np.append(np.asarray(f_uniques, dtype="float64"), np.nan)[f_codes],
        equal_nan=True,
    )
    assert D._small_int_codes(pd.Series([0.5, 1.0]), 1024) is None
    assert D._small_int_codes(pd.Series([0, 10**6]), 1024) is None
    assert D._small_int_codes(pd.Series([True, False]), 1024) is None
