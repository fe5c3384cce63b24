"""The copula's dimensions and their numeric coding, shared by extraction (original data),
synthesis, verification and the report, so every stage codes a column the same way.

A *dim* is one latent normal of the copula: a continuous column, an ordered categorical
(coded by level position), one indicator per non-baseline category of a nominal column, or
the missingness of a column (1 = missing).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .marginals import FrequencyTable, py_value
from .schema import EPOCH, ColumnSpec


def numeric_values(s: pd.Series, spec: ColumnSpec) -> np.ndarray:
    """Float view of a continuous column (dates in days since 1970-01-01; synthesis works in
    days already)."""
    if spec.logical_type == "date" and pd.api.types.is_datetime64_any_dtype(s.dtype):
        return ((s - EPOCH) / pd.Timedelta(days=1)).to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def category_values(s: pd.Series) -> pd.Series:
    """Categories as JSON-friendly scalars (object Series, NaN for missing)."""
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    lookup = np.empty(len(uniques) + 1, dtype=object)
    lookup[:-1] = [py_value(v) for v in uniques]
    lookup[-1] = np.nan
    return pd.Series(lookup[codes], index=s.index, dtype=object)


def ordered_codes(values: pd.Series, table: FrequencyTable, all_levels: list[Any]) -> np.ndarray:
    """Position of each value among the released levels of an ordered table, pooled levels
    mapped to their nearest released neighbour (the pooling rule of `frequency_table`)."""
    kept = {v: i for i, v in enumerate(table.levels)}
    pos_all = {v: i for i, v in enumerate(all_levels)}
    kept_pos = np.asarray([pos_all[v] for v in table.levels])
    mapping: dict[Any, float] = {}
    for v, i in pos_all.items():
        if v in kept:
            mapping[v] = float(kept[v])
        elif len(kept_pos):
            dist = np.abs(kept_pos - i)
            j = int(np.lexsort((kept_pos, dist))[0])
            mapping[v] = float(j)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    lookup = np.append(np.asarray([mapping.get(u, np.nan) for u in uniques], dtype="float64"), np.nan)
    return lookup[codes]


def copula_dims(
    specs: list[ColumnSpec],
    marginals: dict[str, dict[str, Any]],
    missing_groups: list[list[str]] | None = None,
    min_cell: int = 0,
    skip_missing: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """The latent dimensions of the copula, from the source-level release: one per continuous
    or ordered column, one per non-baseline category of a nominal column (baseline = the
    largest released category), then one *missing* dim per column whose missing and
    non-missing groups both reach `min_cell` (one per set of columns sharing a missing
    pattern), so missingness keeps its association with the other columns."""
    dims: list[dict[str, Any]] = []
    for spec in specs:
        m = marginals.get(spec.name)
        if m is None or m["kind"] == "suppressed":
            continue
        if m["kind"] == "continuous":
            dims.append({"column": spec.name, "kind": "continuous"})
            continue
        t = m["table"]
        if len(t["levels"]) < 2:
            continue
        if t["ordered"]:
            dims.append({"column": spec.name, "kind": "ordered"})
        else:
            counts = t["counts"]
            base = int(np.argmax(counts))
            for i, lev in enumerate(t["levels"]):
                if i != base:
                    dims.append({"column": spec.name, "kind": "indicator", "level": lev})
    followers = {c for grp in (missing_groups or []) for c in grp[1:]}
    for spec in specs:
        m = marginals.get(spec.name)
        if m is None or m["kind"] == "suppressed" or spec.name in followers or spec.name in skip_missing:
            continue
        if min(spec.missing, spec.rows - spec.missing) >= max(min_cell, 1):
            dims.append({"column": spec.name, "kind": "missing"})
    return dims


def dim_matrix(
    df: pd.DataFrame,
    specs: dict[str, ColumnSpec],
    dims: list[dict[str, Any]],
    tables: dict[str, FrequencyTable],
    all_levels: dict[str, list[Any]],
    order: str = "C",
) -> np.ndarray:
    """Numeric matrix (rows × dims) whose Spearman correlations are released: continuous
    values, ordered-level positions (raw values pooled as in `frequency_table`), 0/1
    indicators, 0/1 missingness; NaN where missing (never for missing dims).

    `order="F"` lays it out column by column (what `spearman_matrix` reads); the values are
    the same either way. Each column is written straight into the matrix (no list of
    columns to stack), and a nominal column's indicators come from its codes, one pass each."""
    X = np.empty((len(df), len(dims)), dtype="float64", order=order)
    codes_of: dict[str, tuple[np.ndarray, dict[Any, list[int]], int]] = {}
    for k, d in enumerate(dims):
        c = d["column"]
        spec = specs[c]
        if d["kind"] == "missing":
            X[:, k] = df[c].isna().to_numpy()
            continue
        if d["kind"] == "continuous":
            X[:, k] = numeric_values(df[c], spec)
            continue
        if d["kind"] == "ordered":
            X[:, k] = ordered_codes(category_values(df[c]), tables[c], all_levels[c])
            continue
        if c not in codes_of:
            # category_values' JSON scalar of each distinct raw value, looked up once
            codes, uniques = pd.factorize(df[c], use_na_sentinel=True)
            pos: dict[Any, list[int]] = {}
            for i, u in enumerate(uniques):
                pos.setdefault(py_value(u), []).append(i)
            codes_of[c] = (codes, pos, len(uniques))
        codes, pos, nu = codes_of[c]
        hit = np.zeros(nu + 1, dtype="float64")
        for i in _level_positions(pos, d["level"]):
            hit[i] = 1.0
        hit[-1] = np.nan  # missing (code -1)
        X[:, k] = hit[codes]
    return X


def _level_positions(pos: dict[Any, list[int]], level: Any) -> list[int]:
    """Factorize positions whose JSON scalar equals `level` (== as pandas compares it)."""
    out: list[int] = []
    for v, idx in pos.items():
        try:
            eq = bool(v == level)
        except (TypeError, ValueError):
            eq = False
        if eq:
            out.extend(idx)
    return out


def norm_key(v: Any) -> str:
    """A category value as text on one footing: 1, 1.0 and True-as-1 compare equal."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    return str(v)


def synthetic_dim_matrix(df: pd.DataFrame, release: dict[str, Any], order: str = "C") -> np.ndarray:
    """`dim_matrix` of data whose categories are released levels (synthetic data), matching
    values on one footing (1 == 1.0)."""
    specs = {c["name"]: ColumnSpec.from_dict(c) for c in release["columns"]}
    all_m = release["blocks"]["all"]["marginals"]
    tables = {c: FrequencyTable.from_dict(m["table"]) for c, m in all_m.items() if m["kind"] == "categorical"}
    levels = {c: list(t.levels) for c, t in tables.items()}
    work = pd.DataFrame(index=df.index)
    for c in {d["column"] for d in release["dims"]}:
        s = df[c]
        if c in tables:
            lookup = {norm_key(v): v for v in levels[c]}
            codes, uniques = pd.factorize(s.astype(object), use_na_sentinel=True)
            mapped = np.empty(len(uniques) + 1, dtype=object)
            mapped[:-1] = [lookup.get(norm_key(u), np.nan) for u in uniques]
            mapped[-1] = np.nan
            s = pd.Series(mapped[codes], index=df.index, dtype=object)
        work[c] = s
    return dim_matrix(work, specs, release["dims"], tables, levels, order)


def dim_label(d: dict[str, Any]) -> str:
    """Readable name of a dim: `col`, `col==level` (indicator) or `missing(col)`."""
    if d["kind"] == "indicator":
        return f"{d['column']}=={d['level']}"
    if d["kind"] == "missing":
        return f"missing({d['column']})"
    return str(d["column"])
