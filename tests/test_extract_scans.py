"""The secure side's faster column scans give the answers of the plain computations they
replace: atoms read off the runs of the sorted values equal `np.unique`'s; a column is passed
over by the value-count gates only when its first rows already hold more distinct values than
the bound, and a column whose first rows are few-valued but whose tail is not is still counted
in full; categorical codes gathered per distinct value equal the row-by-row coding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import manifest_for
from hypothesis import given, settings
from hypothesis import strategies as st

from replisynth.config.manifest import load_manifest
from replisynth.extract.checkpoints import _PREFIX_ROWS, _rare_parents
from replisynth.extract.empty_cells import _coded
from replisynth.extract.release_guards import (
    PREFIX_ROWS,
    pooled_numeric_columns,
    unchanged_frames,
)
from replisynth.stats.atoms import _sorted_runs, split_atoms
from replisynth.stats.cells import level_codes
from replisynth.stats.copula_dims import category_values
from replisynth.stats.marginals import FrequencyTable, level_order, level_positions

K = 50

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(floats, st.sampled_from([0.0, -0.0, 1.0, 2.5])), max_size=200))
def test_sorted_runs_are_numpy_unique_of_the_sorted_values(values: list[float]) -> None:
    x = np.sort(np.asarray(values, dtype="float64"))
    u, c = _sorted_runs(x)
    ref_u, ref_c = np.unique(x, return_counts=True)
    assert np.array_equal(u, ref_u, equal_nan=True)
    assert np.array_equal(np.signbit(u), np.signbit(ref_u))
    assert np.array_equal(c, ref_c) and c.dtype == ref_c.dtype


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=400),
    st.integers(1, 12),
    st.one_of(st.none(), st.floats(0.05, 1.0)),
)
def test_split_atoms_counts_every_row_once(values: list[int], k: int, dom: float | None) -> None:
    x = np.asarray(values, dtype="float64")
    split = split_atoms(x, k, dom)
    assert int(split.counts.sum()) + len(split.rest) == len(x)
    assert np.all(np.diff(split.values) > 0)
    held = {v: int(c) for v, c in zip(*np.unique(x, return_counts=True), strict=True)}
    assert all(held[float(v)] >= k for v in split.values)


def _reference_rare_parents(df: pd.DataFrame, min_cell: int, most: int = 200) -> list[str]:
    """Every column counted in full, as the gate reads (no shortcut)."""
    out = []
    for c in df.columns:
        s = df[c]
        if pd.api.types.is_float_dtype(s) or s.nunique(dropna=True) > most:
            continue
        counts = s.value_counts(dropna=True).to_numpy()
        if np.any((counts > 0) & (counts < min_cell)):
            out.append(str(c))
    return out


def _late_values(n: int, head_value: int, tail_levels: int, seed: int) -> np.ndarray:
    """The first PREFIX rows one value, the rest `tail_levels` values, the last one rare."""
    rng = np.random.default_rng(seed)
    tail = rng.integers(100, 100 + tail_levels - 1, n - _PREFIX_ROWS - 1)
    return np.r_[np.full(_PREFIX_ROWS, head_value), tail, [99]]


@pytest.mark.parametrize(("seed", "tail_levels"), [(1, 150), (2, 900), (5, 40)])
def test_rare_parents_count_a_column_whose_tail_holds_the_values(
    seed: int, tail_levels: int
) -> None:
    n = _PREFIX_ROWS + 6000
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "late_code": _late_values(n, 7, tail_levels, seed),
            "early_many": rng.permutation(n),  # many values in the first rows: passed over
            "grade": pd.Categorical(rng.choice(list("abcd"), n), categories=list("abcdefgh")),
            "rare_kind": np.r_[np.zeros(n - 3, dtype=int), [1, 1, 2]],
            "score": rng.normal(size=n),
        }
    )
    for k in (3, K):
        for most in (2, 5, 200):
            assert _rare_parents(df, k, most) == _reference_rare_parents(df, k, most)
    assert ("late_code" in _rare_parents(df, K)) == (tail_levels <= 200)


def _raw(**source: Any) -> dict[str, Any]:
    return manifest_for(Path("/nonexistent") / "people.csv", **source)


@pytest.mark.parametrize("seed", [4, 11])
def test_pooled_numeric_columns_count_a_column_with_few_values_at_first(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = PREFIX_ROWS + 3000
    tail_small = np.r_[np.full(PREFIX_ROWS, 2), rng.integers(0, 6, n - PREFIX_ROWS - 1), [9]]
    df = pd.DataFrame(
        {
            "kids": tail_small,  # six values and one rare (9): a table with a pooled value
            "earnings": np.r_[np.zeros(PREFIX_ROWS), rng.normal(size=n - PREFIX_ROWS)],
            "age": rng.integers(18, 90, n),  # many values early: not a table
        }
    )
    src = load_manifest(_raw()).source("people")
    assert pooled_numeric_columns(df, src, K) == {"kids"}


def _reference_coded(col: pd.Series, table: FrequencyTable) -> np.ndarray:
    """Row by row, as the extraction coded before it coded each distinct value once."""
    L = len(table.levels)
    values = category_values(col)
    if table.ordered and table.pooled_levels:
        uniques = [v for v in pd.unique(values) if not pd.isna(v)]
        pos = level_positions(uniques, table, level_order(uniques))
        at = {u: p for u, p in zip(uniques, pos[:-1], strict=True)}
        codes = np.asarray([at.get(v, np.nan) if not pd.isna(v) else np.nan for v in values])
        out = np.where(np.isnan(codes), L, codes).astype(np.intp)
    else:
        out = level_codes(values.to_numpy(), table.levels)
        out = np.where(out < 0, L, out)
    out[values.isna().to_numpy()] = L + 1
    return out


def _columns(rng: np.random.Generator, n: int) -> list[pd.Series]:
    miss = rng.random(n) < 0.1
    ints = pd.Series(np.where(miss, np.nan, rng.integers(0, 6, n)))
    text = pd.Series(np.where(miss, None, rng.choice(list("pqrstu"), n)), dtype=object)
    cat = pd.Series(pd.Categorical(rng.choice(list("pqrs"), n), categories=list("pqrsxy")))
    mixed = pd.Series(rng.choice(np.array([1, 1.5, True, 2, 3.0, None], dtype=object), n))
    return [ints, text, cat, mixed]


@pytest.mark.parametrize("seed", [0, 7, 23])
@pytest.mark.parametrize("ordered", [False, True])
def test_codes_per_distinct_value_equal_the_row_by_row_codes(seed: int, ordered: bool) -> None:
    rng = np.random.default_rng(seed)
    for col in _columns(rng, 700):
        seen = [v for v in pd.unique(col.dropna())]
        keep = sorted(rng.choice(len(seen), size=max(1, len(seen) - 2), replace=False))
        levels = [seen[i] for i in keep]
        if all(isinstance(v, (int, float, bool, np.integer, np.floating)) for v in levels):
            levels = sorted(levels, key=float)
        table = FrequencyTable(levels, [K] * len(levels), ordered, pooled_levels=int(ordered))
        got = _coded(col, table)
        assert np.array_equal(got.codes, _reference_coded(col, table))
        assert got.levels == levels


def _kids(n: int, rare: bool, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    kids = rng.integers(0, 4, n)
    if rare:
        kids[-2:] = 8  # two rows hold a value below the cell size
    return pd.DataFrame({"kids": kids, "income": rng.integers(0, 90_000, n)})


@pytest.mark.parametrize("seed", [3, 8])
def test_scans_are_remembered_per_frame_only_while_the_frames_are_unchanged(seed: int) -> None:
    src = load_manifest(_raw()).source("people")
    with_rare, without = _kids(900, True, seed), _kids(900, False, seed + 1)
    with unchanged_frames():
        assert pooled_numeric_columns(with_rare, src, K) == {"kids"}
        assert pooled_numeric_columns(without, src, K) == set()  # each frame its own answer
        assert pooled_numeric_columns(with_rare, src, K) == {"kids"}
        assert _rare_parents(with_rare, K) == ["kids"] and _rare_parents(without, K) == []
    with_rare.loc[with_rare.index[-2:], "kids"] = 1  # outside: a changed frame is counted anew
    assert pooled_numeric_columns(with_rare, src, K) == set()
    assert _rare_parents(with_rare, K) == []
