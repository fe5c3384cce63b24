"""The copula's dimensions and their numeric coding, shared by every stage. A *dim* is one
latent normal: a continuous or ordered column, one indicator per non-baseline nominal
category, or a column's missingness.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from replisynth.io.schema import EPOCH, ColumnSpec
from replisynth.stats.marginals import FrequencyTable, py_value


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
    mapping = _ordered_mapping(table, all_levels)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    lookup = np.append(
        np.asarray([mapping.get(u, np.nan) for u in uniques], dtype="float64"), np.nan
    )
    return lookup[codes]


def _ordered_mapping(table: FrequencyTable, all_levels: list[Any]) -> dict[Any, float]:
    """Each of `all_levels` -> its position among the table's released levels (`ordered_codes`)."""
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
    return mapping


def _value_dims(name: str, marginal: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The value dims of one column (see `copula_dims`): none when suppressed or constant,
    one when continuous or ordered, one indicator per non-baseline level when nominal."""
    if marginal is None or marginal["kind"] == "suppressed":
        return []
    if marginal["kind"] == "continuous":
        return [{"column": name, "kind": "continuous"}]
    table = marginal["table"]
    if len(table["levels"]) < 2:
        return []
    if table["ordered"]:
        return [{"column": name, "kind": "ordered"}]
    base = int(np.argmax(table["counts"]))
    return [
        {"column": name, "kind": "indicator", "level": lev}
        for i, lev in enumerate(table["levels"])
        if i != base
    ]


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
        dims += _value_dims(spec.name, marginals.get(spec.name))
    followers = {c for grp in (missing_groups or []) for c in grp[1:]}
    for spec in specs:
        m = marginals.get(spec.name)
        if (
            m is None
            or m["kind"] == "suppressed"
            or spec.name in followers
            or spec.name in skip_missing
        ):
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
    order: Literal["C", "F"] = "C",
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


def _distinct_levels(levels: list[Any]) -> bool:
    """Levels no two of which pandas would hash together (1, 1.0 and True do), none missing:
    then a value's level index stands for the value itself in `dim_matrix`."""
    try:
        return len(set(levels)) == len(levels) and not any(pd.isna(v) for v in levels)
    except TypeError:
        return False


def _small_int_codes(s: pd.Series, span: int) -> tuple[np.ndarray, np.ndarray] | None:
    """`pd.factorize` of an integer-valued numeric column by offset and `bincount` (no
    hashing): codes (-1 = missing) into the distinct values, which come back as floats in
    ascending order (factorize's come in order of appearance; only the coding differs).
    None when the column is not numeric, holds a non-integer, or spans more than `span`."""
    dt = s.dtype
    if pd.api.types.is_bool_dtype(dt) or not (
        pd.api.types.is_integer_dtype(dt) or pd.api.types.is_float_dtype(dt)
    ):
        return None
    if isinstance(dt, np.dtype) and dt.kind in "iu":  # no missing values: the codes are the offsets
        v = s.to_numpy()
        if not len(v):
            return np.zeros(0, dtype=np.intp), np.zeros(0)
        lo, hi = int(v.min()), int(v.max())
        if hi - lo > span or max(abs(lo), abs(hi)) > 2**52:
            return None
        codes = (v - lo).astype(np.intp)
    else:
        x = s.to_numpy(dtype="float64", na_value=np.nan)
        ok = ~np.isnan(x)
        if not ok.any():
            return np.full(len(x), -1, dtype=np.intp), np.zeros(0)
        lo_f, hi_f = (
            float(np.min(x, where=ok, initial=np.inf)),
            float(np.max(x, where=ok, initial=-np.inf)),
        )
        if (
            not (np.isfinite(lo_f) and np.isfinite(hi_f))
            or hi_f - lo_f > span
            or max(abs(lo_f), abs(hi_f)) > 2.0**52
        ):
            return None
        c = x - lo_f
        c[~ok] = -1.0
        codes = c.astype(np.intp)
        if not np.array_equal(codes, c):
            return None
        lo, hi = int(lo_f), int(hi_f)
    counts = np.bincount(codes + 1, minlength=hi - lo + 2)[1:]  # slot 0: missing
    used = np.flatnonzero(counts)
    remap = np.full(hi - lo + 2, -1, dtype=np.intp)  # last slot: missing (code -1)
    remap[used] = np.arange(len(used))
    return remap[codes], (lo + used).astype("float64")


def _level_index(s: pd.Series, levels: list[Any]) -> np.ndarray:
    """Index in `levels` of each value matched on one footing (`norm_key`: 1 == 1.0), -1 for
    missing or unmatched values: one coding pass (category codes, offset + bincount for
    small integers, else one factorize) and a lookup per distinct value."""
    at = {
        norm_key(v): i for i, v in enumerate(levels)
    }  # the last level of a key wins, as in a dict
    if isinstance(s.dtype, pd.CategoricalDtype):
        codes = s.cat.codes.to_numpy().astype(np.intp)
        uniques: Any = s.cat.categories
    else:
        fast = _small_int_codes(s, max(4 * len(levels), 1024))
        if fast is not None:
            codes, uniques = fast
        else:
            codes, uniques = pd.factorize(s, use_na_sentinel=True)
    lut = np.append(np.asarray([at.get(norm_key(u), -1) for u in uniques], dtype=np.intp), -1)
    return lut[codes]


def synthetic_dim_matrix(
    df: pd.DataFrame, release: dict[str, Any], order: Literal["C", "F"] = "C"
) -> np.ndarray:
    """`dim_matrix` of data whose categories are released levels (synthetic data), matching
    values on one footing (1 == 1.0).

    A categorical column is coded once as level indices (`_level_index`) and each of its
    dims is a lookup by level: the values `dim_matrix` gives the mapped column (three hashing
    passes per column before), bit for bit. Releases whose levels pandas would merge (1 and
    True) go through `dim_matrix`."""
    specs = {c["name"]: ColumnSpec.from_dict(c) for c in release["columns"]}
    all_m = release["blocks"]["all"]["marginals"]
    tables = {
        c: FrequencyTable.from_dict(m["table"])
        for c, m in all_m.items()
        if m["kind"] == "categorical"
    }
    levels = {c: list(t.levels) for c, t in tables.items()}
    dims = release["dims"]
    if all(_distinct_levels(levels[d["column"]]) for d in dims if d["column"] in tables):
        return _synthetic_by_level(df, specs, dims, tables, levels, order)
    work = pd.DataFrame(index=df.index)
    for c in {d["column"] for d in release["dims"]}:
        s = df[c]
        if c in tables:
            lookup = {norm_key(v): v for v in levels[c]}
            codes, uniques = pd.factorize(
                s, use_na_sentinel=True
            )  # norm_key puts numpy scalars on the same footing
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


def _synthetic_by_level(
    df: pd.DataFrame,
    specs: dict[str, ColumnSpec],
    dims: list[dict[str, Any]],
    tables: dict[str, FrequencyTable],
    levels: dict[str, list[Any]],
    order: Literal["C", "F"],
) -> np.ndarray:
    """`synthetic_dim_matrix` through level indices (levels pairwise distinct, none missing):
    a value's dims depend only on its level, so each dim is a table lookup per level. A
    row-major matrix is written in blocks of rows, all dims of a block at once (a whole
    column at a time strides through the full matrix once per dim)."""
    index: dict[str, np.ndarray] = {}
    parts: list[
        tuple[np.ndarray, np.ndarray | None]
    ] = []  # (values, None) or (level index, lookup)
    for d in dims:
        c = d["column"]
        if c not in tables:
            parts.append(
                (
                    df[c].isna().to_numpy()
                    if d["kind"] == "missing"
                    else numeric_values(df[c], specs[c]),
                    None,
                )
            )
            continue
        if c not in index:
            index[c] = _level_index(df[c], levels[c])
        li = index[c]
        if d["kind"] == "missing":
            parts.append((li < 0, None))
            continue
        lv = [py_value(v) for v in levels[c]]  # category_values' scalar of each level
        if d["kind"] == "ordered":
            mapping = _ordered_mapping(tables[c], levels[c])
            lut = np.asarray([mapping.get(v, np.nan) for v in lv] + [np.nan], dtype="float64")
        else:
            pos = {v: [i] for i, v in enumerate(lv)}
            lut = np.zeros(len(lv) + 1, dtype="float64")
            lut[_level_positions(pos, d["level"])] = 1.0
            lut[-1] = np.nan
        parts.append((li, lut))
    n = len(df)
    X = np.empty((n, len(dims)), dtype="float64", order=order)
    step = n if order == "F" else 1 << 14
    for a in range(0, n, step):
        b = min(a + step, n)
        for k, (values, lookup) in enumerate(parts):
            X[a:b, k] = values[a:b] if lookup is None else lookup[values[a:b]]
    return X
