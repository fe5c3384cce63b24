"""Secure side, per source: from the data to a disclosure-safe *release* (schema, marginals,
rank correlations, strata, group sizes), every decision logged. Method: docs/method.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd

from replisynth.config.manifest import Manifest, Sdc, Source
from replisynth.core.errors import DataError
from replisynth.core.options import GLM_ORDERED
from replisynth.core.parallel import thread_map
from replisynth.disclosure.bundle_types import SourceRelease
from replisynth.disclosure.linked_tables import (
    block_table,
    class_codes,
    class_counts,
    n_classes,
    protect_release,
    widen_bucket,
    withhold_bucket_split,
)
from replisynth.disclosure.sdc import SdcLog, check_release
from replisynth.disclosure.stratum_codings import stratum_codings, withhold_coding_tables
from replisynth.extract.empty_cells import detect_empty_cells, log_empty_cells
from replisynth.extract.missing_codes import free_text_columns, release_missing_codes
from replisynth.extract.orderings import detect_orderings, gate_orderings
from replisynth.extract.release_guards import leftover_rows, withheld_atom_columns
from replisynth.extract.triples import gate_three_way
from replisynth.extract.weights import release_weights
from replisynth.io.files import FileMeta
from replisynth.io.schema import (
    ColumnSpec,
    infer_schema,
    pandera_schema,
    validation_summary,
)
from replisynth.stats.atoms import atom_release, mixed_grid
from replisynth.stats.codings import coded_dependencies
from replisynth.stats.copula_dims import (
    copula_dims,
    numeric_values,
    synthetic_dim_matrix,
)
from replisynth.stats.correlations import spearman_matrix
from replisynth.stats.marginals import (
    EXACT_SHARE,
    FrequencyTable,
    frequency_table,
    grid_releasable,
    grid_release,
    level_order,
    level_positions,
    py_value,
    size_step,
    size_windows,
)
from replisynth.synthesize.entities import (
    TREND_SHARE,
    entity_structure,
    period_trend,
    round_released,
    within_lag1,
)

FACTOR_CALL = re.compile(
    r"\bC\(\s*([A-Za-z_][A-Za-z0-9_.]*)"
)  # columns a formula treats as factors


def _level_order_of(s: pd.Series, spec: ColumnSpec) -> list[Any] | None:
    if isinstance(s.dtype, pd.CategoricalDtype):
        return [py_value(v) for v in s.dtype.categories]
    return None


def _grid_marginal(
    kind: str, missing: int, v: np.ndarray, trim: float, method: str, dominance: float | None = None
) -> dict[str, Any]:
    """A grid release; adaptive and window grids also say which percent levels they were built
    from, window grids the number of values behind each window and its mean."""
    g = grid_release(v, trim, method, dominance)
    out: dict[str, Any] = {
        "kind": kind,
        "missing": missing,
        "n": int(len(v)),
        "grid": g.grid.tolist(),
    }
    if dominance is not None:
        out["dominance"] = dominance
    return {**out, **g.fields(method)}


def _atom_marginal(
    missing: int, v: np.ndarray, min_cell: int, trim: float, method: str, dominance: float | None
) -> dict[str, Any] | None:
    """A continuous marginal with atoms (docs/bundle.md, `atoms`): the values held by at
    least `min_cell` rows with their counts, the grid of the other values, and as `grid`
    the 101-point grid of the mixture (a function of those two). None without atoms."""
    atoms = atom_release(v, min_cell, trim, method, dominance)
    if atoms is None or leftover_rows(v, min_cell, dominance):
        return None
    out: dict[str, Any] = {
        "kind": "continuous",
        "missing": missing,
        "n": int(len(v)),
        "grid": mixed_grid(atoms).tolist(),
        "atoms": atoms,
    }
    if dominance is not None:
        out["dominance"] = dominance
    return out


def _grid_args(column: str, source: Source, sdc: Any) -> dict[str, Any]:
    """Grid method for a column: the profile's, with pseudo-percentiles and the dominance
    rule forced on for columns listed as `sensitive`."""
    if column not in source.sensitive:
        return {"grid": sdc.grid}
    method = (
        sdc.grid
        if "pseudo" in sdc.grid
        else ("adaptive+pseudo" if "adaptive" in sdc.grid else "pseudo")
    )
    return {"grid": method, "dominance": sdc.dominance}


def _marginal(
    s: pd.Series,
    spec: ColumnSpec,
    min_cell: int,
    trim: float,
    pool: bool = True,
    source_levels: np.ndarray | None = None,
    grid: str = "fixed",
    dominance: float | None = None,
    atoms: bool = False,
) -> dict[str, Any]:
    """The released marginal of one column in one block. Inside a stratum (`pool` False) a
    many-level ordinal becomes a grid of its values mapped onto the source-level released
    levels (`source_levels`, pooled codes already replaced), so a rare code never shows.
    With `atoms` (source level only) a continuous column releases its atoms beside the
    grid of its other values (`_atom_marginal`)."""
    missing = int(s.isna().sum())
    if spec.role == "continuous":
        v = numeric_values(s, spec)
        v = v[~np.isnan(v)]
        if len(v) < min_cell or not grid_releasable(len(v), trim, grid):
            return {"kind": "suppressed", "missing": missing, "n": int(len(v))}
        mixed = _atom_marginal(missing, v, min_cell, trim, grid, dominance) if atoms else None
        return mixed or _grid_marginal("continuous", missing, v, trim, grid, dominance)
    table = None
    if not pool and spec.ordered and spec.logical_type in ("integer", "float"):
        # Inside a stratum a many-level ordinal is released as its frequency table when no
        # level falls below the cell size (a level pooled at source level is below it in every
        # stratum, so such a table holds source-level levels only), and otherwise as a
        # percentile grid (like a continuous column) rather than a table that suppresses
        # levels. The grid rounds every level's share to the grid's 1% steps (12 levels of
        # ~8.3% came out as 8% or 9% of their stratum), so the table is preferred. The table
        # counts every distinct value (numeric: one JSON value each), so it also tells
        # whether there are 3 or more; fewer, and it is the table released below.
        table = frequency_table(s, min_cell, True, order=_level_order_of(s, spec), pool=False)
    if table is not None and len(table.levels) + table.suppressed_levels >= 3:
        if table.levels and table.suppressed == 0:
            return {"kind": "categorical", "missing": missing, "table": table.to_dict()}
        v = (
            pd.to_numeric(s, errors="coerce").dropna().to_numpy(dtype="float64")
            if source_levels is None
            else source_levels[~np.isnan(source_levels)]
        )
        if len(v) < min_cell or not grid_releasable(len(v), trim, grid):
            return {"kind": "suppressed", "missing": missing, "n": int(len(v))}
        return _grid_marginal("ordinal_grid", missing, v, trim, grid)
    # Counted on the raw values (frequency_table maps each distinct value to its JSON
    # scalar, as category_values would per row).
    if table is None:
        table = frequency_table(
            s, min_cell, spec.ordered, order=_level_order_of(s, spec), pool=pool
        )
    if not table.levels:
        return {"kind": "suppressed", "missing": missing, "n": int(s.notna().sum())}
    return {"kind": "categorical", "missing": missing, "table": table.to_dict()}


@dataclass(frozen=True)
class CorrelationGate:
    """A gated Spearman matrix and what the gates blanked: `bad_dims` (every correlation of
    the dim withheld) and `blanked_pairs` (single pairs of two-valued dims withheld)."""

    matrix: np.ndarray
    bad_dims: list[int]
    blanked_pairs: int


def _sparse_dim(v: np.ndarray, min_cell: int) -> bool:
    """A dim that describes a small group: fewer than `min_cell` non-missing rows, or 1 to
    `min_cell`-1 rows off its modal value (a small group of a 0/1 dim, a near-constant or
    sparse continuous column: zero except for a few people)."""
    observed = np.flatnonzero(~np.isnan(v))
    nn = len(observed)
    if nn < min_cell:
        return True
    # With fewer than min_cell rows off the mode, the mode holds a strict majority of any
    # 2*min_cell-1 observed rows: the most common of the first ones is the only candidate.
    vals, counts = np.unique(v[observed[: 2 * min_cell - 1]], return_counts=True)
    return (
        0 < nn - int(np.count_nonzero(v == vals[np.argmax(counts)])) < min_cell
    )  # constant: no correlation anyway


def _two_valued_high(v: np.ndarray) -> np.ndarray | None:
    """For a dim with exactly two distinct non-missing values: True where it holds the higher
    one (False where missing); None for any other dim."""
    ok = ~np.isnan(v)
    if not ok.any():
        return None
    lo, hi = np.nanmin(v), np.nanmax(v)
    if lo == hi or np.count_nonzero(v == lo) + np.count_nonzero(v == hi) != np.count_nonzero(ok):
        return None
    return v == hi


def pair_cells(high: list[np.ndarray], observed: list[np.ndarray]) -> np.ndarray:
    """The 2x2 tables of every pair of two-valued dims on their pairwise-complete rows:
    array (4, m, m) of the cells (high,high), (high,low), (low,high), (low,low). Each 0/1
    column is packed into bits once; a cell count is the popcount of two columns' AND."""
    hp = np.stack([np.packbits(h) for h in high]) if high else np.zeros((0, 0), dtype=np.uint8)
    op = np.stack([np.packbits(o) for o in observed]) if observed else hp

    def counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (
            np.stack(
                [
                    np.bitwise_count(np.bitwise_and(row[None, :], b)).sum(axis=1, dtype=np.int64)
                    for row in a
                ]
            )
            if len(a)
            else np.zeros((0, 0))
        )

    hh, ho, oo = counts(hp, hp), counts(hp, op), counts(op, op)  # ho[i, j]: i high and j observed
    return np.stack([hh, ho - hh, ho.T - hh, oo - ho - ho.T + hh]).astype("float64")


def correlation_gates(
    X: np.ndarray, min_cell: int, rows: np.ndarray | None = None
) -> CorrelationGate:
    """Spearman matrix of the dims (over `rows` when given) with two gates applied:
    (1) every correlation of a dim with fewer than `min_cell` non-missing rows or fewer than
    `min_cell` rows off its modal value is blanked (`_sparse_dim`); (2) for each pair of
    two-valued dims (indicators, binaries, missingness), whose correlation (phi) with the two
    shares gives their whole 2x2 table, the pair is blanked when a cell of that table on the
    pairwise-complete rows holds 1..min_cell-1 rows."""
    S = spearman_matrix(X, rows)
    cols = [X[:, j] if rows is None else X[:, j][rows] for j in range(X.shape[1])]
    bad = [j for j, v in enumerate(cols) if _sparse_dim(v, min_cell)]
    for j in bad:
        S[j, :] = np.nan
        S[:, j] = np.nan
    bad_set = set(bad)
    two = [
        (j, h)
        for j, v in enumerate(cols)
        if j not in bad_set and (h := _two_valued_high(v)) is not None
    ]
    blanked = 0
    if len(two) > 1:
        cells = pair_cells([h for _, h in two], [~np.isnan(cols[j]) for j, _ in two])
        small = ((cells > 0) & (cells < min_cell)).any(axis=0)
        for a, b in zip(*np.nonzero(np.triu(small, 1)), strict=True):
            i, j = two[a][0], two[b][0]
            if np.isfinite(S[i, j]):
                blanked += 1
            S[i, j] = S[j, i] = np.nan
    return CorrelationGate(S, bad, blanked)


def gated_spearman(
    X: np.ndarray, min_cell: int, rows: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """`correlation_gates` as (matrix, number of dims blanked entirely)."""
    g = correlation_gates(X, min_cell, rows)
    return g.matrix, len(g.bad_dims)


def log_correlation_gates(
    log: SdcLog, gate: CorrelationGate, min_cell: int, source: str, block: str
) -> None:
    """The correlation gates' decisions in `log`, as counts of dims and pairs."""
    where = "inside the stratum " if block != "all" else ""
    if gate.bad_dims:
        log.add(
            "correlations",
            "suppressed",
            f"correlations of {len(gate.bad_dims)} dim(s) with fewer than min_cell_size={min_cell} "
            f"rows off their modal value (a small group, a sparse or near-constant column) {where}not released",
            source=source,
            block=block,
            dims=len(gate.bad_dims),
        )
    if gate.blanked_pairs:
        log.add(
            "correlations",
            "suppressed",
            f"{gate.blanked_pairs} correlation(s) of two-valued dims whose 2x2 table has a cell "
            f"of 1..{min_cell - 1} rows {where}not released (the correlation and the shares would give the cell)",
            source=source,
            block=block,
            pairs=gate.blanked_pairs,
        )


def linked_correlation_gate(release: dict[str, Any], min_cell: int) -> SdcLog:
    """The secondary correlation gate on a complete release (every block built): pairs whose
    released correlations across the linked blocks would pin a withheld 2x2 cell are
    withheld too (replisynth.disclosure.linked_correlations); the decision, as a count, in the log returned."""
    from replisynth.disclosure.linked_correlations import suppress_linked_pairs

    log = SdcLog()
    n = suppress_linked_pairs(release, min_cell)
    if n:
        log.add(
            "correlations",
            "suppressed",
            f"{n} further correlation(s) of two-valued dims not released: with the other blocks' "
            f"correlations and shares they would give a withheld cell of 1..{min_cell - 1} rows (secondary suppression)",
            source=release["source"],
            block="all",
            pairs=n,
        )
    return log


def identity_pairs(S: np.ndarray) -> int:
    """Number of off-diagonal pairs with |rank correlation| == 1 (to 1e-12)."""
    iu = np.triu_indices(len(S), 1)
    v = S[iu]
    return int(np.sum(np.isfinite(v) & (np.abs(np.abs(v) - 1.0) < 1e-12)))


def shared_missing_patterns(df: pd.DataFrame, columns: list[str]) -> list[list[str]]:
    """Sets of columns whose missing values fall on exactly the same rows (a survey module
    skipped together, a derived column and its source). Synthesis gives each set one
    shared missing pattern, so their pairwise-complete statistics stay what they were."""
    by_mask: dict[bytes, list[str]] = {}
    for c in columns:
        key = np.packbits(df[c].isna().to_numpy()).tobytes()
        by_mask.setdefault(key, []).append(c)
    return [cols for cols in by_mask.values() if len(cols) > 1]


def _widen_residual(
    released: list[tuple[Any, ...]],
    size: dict[tuple[Any, ...], int],
    rows: int,
    min_cell: int,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Secondary suppression of strata: while the residual block (rows outside the released
    strata) holds 1..min_cell-1 rows, the smallest released stratum (ties: the last in release
    order) joins it. Returns the strata still released and those moved."""
    kept, moved = list(released), []
    while kept and 0 < rows - sum(size[k] for k in kept) < min_cell:
        k = min(reversed(kept), key=lambda c: size[c])
        kept.remove(k)
        moved.append(k)
    return kept, moved


def _strata_keys(
    df: pd.DataFrame, strata: tuple[str, ...]
) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """Each row's stratum as an index into a list of keys (tuples of the strata values as
    JSON-friendly scalars), -1 when any strata value is missing. Computed per distinct
    combination, never per row."""
    n = len(df)
    if not strata:
        return np.zeros(n, dtype=np.intp), [()]
    combined = np.zeros(n, dtype=np.int64)
    missing = np.zeros(n, dtype=bool)
    uniq: list[list[Any]] = []
    for c in strata:
        codes, uniques = pd.factorize(df[c], use_na_sentinel=True)
        vals = [py_value(v) for v in uniques]
        bad = [pd.isna(v) for v in vals]  # category_values keeps NaN-like strings as NaN
        missing |= codes < 0
        if any(bad):
            missing |= np.append(np.asarray(bad, dtype=bool), False)[codes]
        combined = combined * (len(vals) + 1) + codes + 1
        uniq.append(vals)
    present, inverse = np.unique(np.where(missing, -1, combined), return_inverse=True)
    keys: list[tuple[Any, ...]] = []
    index: dict[tuple[Any, ...], int] = {}
    remap = np.empty(len(present), dtype=np.intp)
    for u, code in enumerate(present.tolist()):
        if code < 0:
            remap[u] = -1
            continue
        parts = []
        for vals in reversed(uniq):
            parts.append(vals[code % (len(vals) + 1) - 1])
            code //= len(vals) + 1
        key = tuple(reversed(parts))
        if key not in index:  # 1 and 1.0 in one object column are one stratum
            index[key] = len(keys)
            keys.append(key)
        remap[u] = index[key]
    return remap[inverse.ravel()], keys


def _group_release(
    s: pd.Series,
    min_cell: int,
    trim: float,
    log: SdcLog,
    source: str,
    grid: str = "fixed",
    dominance: float | None = None,
) -> dict[str, Any]:
    """Number of groups, mean size and the size distribution as means of non-overlapping
    windows of at least min_cell groups (`marginals.size_windows`), never one group's size."""
    sizes = s.dropna().value_counts().to_numpy()
    g = int(len(sizes))
    if g == 0:
        raise DataError(f"sources.{source}: group column {s.name!r} is entirely missing")
    windows = size_windows(sizes, min_cell, dominance)
    if windows is None:
        log.add(
            "groups",
            "coarsened",
            f"{g} groups (< 2 x min_cell_size): only the number of groups and the mean size are released",
            source=source,
            column=str(s.name),
        )
        return {"groups": g, "size_grid": None, "mean_size": float(sizes.mean())}
    log.add(
        "groups",
        "coarsened",
        f"group-size distribution released as the mean sizes of {len(windows)} non-overlapping windows of at least "
        f"min_cell_size={min_cell} consecutive groups (rounded to {size_step(min_cell):g}): no group's exact size is released",
        source=source,
        column=str(s.name),
    )
    return {
        "groups": g,
        "size_grid": None,
        "size_windows": windows,
        "mean_size": float(sizes.mean()),
    }


def column_codes(s: pd.Series) -> tuple[np.ndarray, list[Any]]:
    """A categorical column factorized once: each row's code (-1 missing) and the JSON-friendly
    value of each code (what `dims.category_values` gives per row, per distinct value)."""
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    return codes, [py_value(v) for v in uniques]


def coded_level_order(s: pd.Series, spec: ColumnSpec, values: list[Any]) -> list[Any]:
    """All levels of a categorical column in release order: a pandas categorical's own order,
    else `level_order` of its distinct JSON values (`values` from `column_codes`; first
    occurrences kept, as `category_values(s).dropna().unique()` keeps them)."""
    own = _level_order_of(s, spec)
    if own:
        return own
    return level_order(list(pd.Series(values, dtype=object).dropna().unique()))


def pooled_level_values(
    work: pd.DataFrame,
    tables: dict[str, FrequencyTable],
    spec_by: dict[str, ColumnSpec],
    all_levels: dict[str, list[Any]],
    coded: dict[str, tuple[np.ndarray, list[Any]]] | None = None,
) -> dict[str, np.ndarray]:
    """Per many-level ordered numeric column, its values with pooled (suppressed) codes
    replaced by their released level: the per-stratum grids are built on these. `coded`:
    the columns already factorized (`column_codes`), else they are factorized here."""
    out: dict[str, np.ndarray] = {}
    for c, t in tables.items():
        if t.ordered and spec_by[c].logical_type in ("integer", "float") and len(t.levels) >= 3:
            codes, values = coded[c] if coded is not None and c in coded else column_codes(work[c])
            pos = level_positions(values, t, all_levels[c])
            lev = np.asarray(t.levels, dtype="float64")
            out[c] = np.where(np.isnan(pos), np.nan, lev[np.nan_to_num(pos).astype(int)])[codes]
    return out


def coded_dim_matrix(
    work: pd.DataFrame,
    spec_by: dict[str, ColumnSpec],
    dims: list[dict[str, Any]],
    tables: dict[str, FrequencyTable],
    all_levels: dict[str, list[Any]],
    coded: dict[str, tuple[np.ndarray, list[Any]]],
) -> np.ndarray:
    """`dims.dim_matrix(..., order="F")` of the original data with its categorical columns
    factorized once (`coded`, from `column_codes`): an ordered dim is one gather of level
    positions, an indicator one gather of 0/1 per distinct value. Same values as dim_matrix."""
    X = np.empty((len(work), len(dims)), dtype="float64", order="F")
    for k, d in enumerate(dims):
        c = d["column"]
        if d["kind"] == "missing":
            X[:, k] = work[c].isna().to_numpy()
        elif d["kind"] == "continuous":
            X[:, k] = numeric_values(work[c], spec_by[c])
        elif d["kind"] == "ordered":
            codes, values = coded[c]
            X[:, k] = level_positions(values, tables[c], all_levels[c])[codes]
        else:
            codes, values = coded[c]
            hit = np.zeros(len(values) + 1, dtype="float64")
            for i, v in enumerate(values):
                try:
                    hit[i] = 1.0 if bool(v == d["level"]) else 0.0
                except (TypeError, ValueError):
                    pass
            hit[-1] = np.nan  # missing (code -1)
            X[:, k] = hit[codes]
    return X


def source_classes(
    tables: dict[str, FrequencyTable],
    coded: dict[str, tuple[np.ndarray, list[Any]]],
    all_levels: dict[str, list[Any]],
    strata: tuple[str, ...],
) -> dict[str, tuple[np.ndarray, FrequencyTable]]:
    """Per categorical column (strata columns aside) each row's class in its source-level table
    (`linked_tables.class_codes`) with that table: what the strata's tables count."""
    return {
        c: (class_codes(*coded[c], t, all_levels[c]), t)
        for c, t in tables.items()
        if c not in strata
    }


def stratum_counts(
    classes: dict[str, tuple[np.ndarray, FrequencyTable]], mask: np.ndarray
) -> dict[str, list[int]]:
    """A stratum's true class counts per column (secure side only: the input of secondary
    suppression, never released)."""
    return {c: class_counts(cls[mask], n_classes(t)) for c, (cls, t) in classes.items()}


def rows_of(X: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The rows of X where `mask` is True, in order, column-major (what `spearman_matrix`
    reads): one gather per column, instead of a boolean scan of every row per column and use."""
    idx = np.flatnonzero(mask)
    out = np.empty((len(idx), X.shape[1]), dtype=X.dtype, order="F")
    for j in range(X.shape[1]):
        np.take(X[:, j], idx, out=out[:, j])
    return out


def _class_marginal(cls: np.ndarray, table: FrequencyTable, k: int) -> dict[str, Any]:
    """The released marginal of a categorical column inside a stratum, over the source-level
    classes (`cls`: `linked_tables.class_codes` of the stratum's rows): a table listing the
    classes of at least min_cell_size rows, protected with the other blocks as one linked table
    (`linked_tables.protect_release`). Many-level ordinals too: window means or percentiles of
    their few distinct values would give every small class's count exactly."""
    counts = class_counts(cls, n_classes(table))
    missing = int(np.count_nonzero(cls < 0))
    t = block_table(counts, table.levels, table.ordered, k)
    if not t["levels"]:
        return {"kind": "suppressed", "missing": missing, "n": int(sum(counts))}
    return {"kind": "categorical", "missing": missing, "table": t}


def stratum_block(
    work: pd.DataFrame,
    mask: np.ndarray,
    bid: str,
    key: tuple[Any, ...],
    released_cols: list[ColumnSpec],
    source: Source,
    sdc: Any,
    X: np.ndarray,
    pooled_values: dict[str, np.ndarray],
    log: SdcLog,
    classes: dict[str, tuple[np.ndarray, FrequencyTable]] | None = None,
) -> dict[str, Any]:
    """The released block of one stratum (rows `mask` of `work`): its marginals and gated
    Spearman matrix over the source's dims `X`; its SDC decisions go to `log`. `classes`:
    per categorical column its rows' source-level classes and table (`source_classes`); such
    columns are tabulated over those classes (the linked tables of docs/method.md)."""
    sub = work.loc[mask]
    bm: dict[str, dict[str, Any]] = {}
    for s in released_cols:
        if s.name in source.strata:
            continue
        lv = pooled_values.get(s.name)
        if classes is not None and s.name in classes:
            cls, table = classes[s.name]
            m = _class_marginal(cls[mask], table, sdc.min_cell_size)
        else:
            m = _marginal(
                sub[s.name],
                s,
                sdc.min_cell_size,
                sdc.quantile_trim,
                pool=False,
                source_levels=lv[mask] if lv is not None else None,
                **_grid_args(s.name, source, sdc),
            )
        bm[s.name] = m
        _log_marginal(log, source.name, bid, s, m, sdc)
    gate = correlation_gates(rows_of(X, mask), sdc.min_cell_size)
    log_correlation_gates(log, gate, sdc.min_cell_size, source.name, bid)
    return {
        "rows": int(mask.sum()),
        "key": list(key),
        "marginals": bm,
        "spearman": _matrix_json(gate.matrix),
    }


def weight_released(marginals: dict[str, dict[str, Any]], source: Source, log: SdcLog) -> bool:
    """Weighted statistics only beside the weight column's own released grid (without it the
    synthetic file has no weights to calibrate); the decision is logged."""
    if marginals[str(source.weight)]["kind"] == "continuous":
        return True
    log.add(
        "weights",
        "suppressed",
        "no weighted statistic released: the weight column's own marginal is suppressed",
        source=source.name,
        column=source.weight,
    )
    return False


def weighted_grid_columns(
    work: pd.DataFrame,
    spec_by: dict[str, ColumnSpec],
    marginals: dict[str, dict[str, Any]],
    weight: str,
) -> dict[str, tuple[np.ndarray, list[float | None]]]:
    """Numeric continuous columns (dates aside) with a released source-level grid: their values
    and grid, for the weighted decile shares (replisynth.extract.weights)."""
    return {
        c: (numeric_values(work[c], spec_by[c]), m["grid"])
        for c, m in marginals.items()
        if m["kind"] == "continuous"
        and c != weight
        and spec_by[c].logical_type in ("integer", "float")
    }


@dataclass(frozen=True)
class _SourceContext:
    """The source being extracted, its SDC settings, its decision log and progress callback."""

    source: Source
    sdc: Sdc
    log: SdcLog
    say: Callable[[str], None]


@dataclass(frozen=True)
class _StrataCells:
    """Each row's stratum cell, the cells' sizes, the released cells and the residual block."""

    key_idx: np.ndarray
    key_pos: dict[Any, int]
    sizes: np.ndarray
    released_keys: list[Any]
    small: list[Any]
    residual_mask: pd.Series


@dataclass(frozen=True)
class _CodedRelease:
    """What the coded categorical columns give: dims, their matrix, derived columns, pooled
    values, classes for linked tables, and the weighted statistics."""

    missing_groups: list[list[str]]
    dims: list[dict[str, Any]]
    X: np.ndarray
    derived: dict[str, Any]
    pooled_values: Any
    classes: Any
    weights: Any
    marginals: dict[str, dict[str, Any]]  # with derived tables that split a bucket rewritten
    split: list[str]  # derived columns rewritten so (their correlations are blanked)


def _kept_categorical(manifest: Manifest, source: Source) -> set[str]:
    """Columns kept categorical whatever their count of values: strata, the panel's time,
    factors of checkpoint formulas and ordered outcomes."""
    keep = set(source.strata) | ({source.panel.time} if source.panel else set())
    for cp in manifest.checkpoints_of(source.name):
        keep |= set(FACTOR_CALL.findall(cp.formula))
        if cp.model in GLM_ORDERED:  # an ordered outcome keeps its categories
            keep.add(cp.outcome)
    return keep


def _log_integer_spread(ctx: _SourceContext, spread: dict[str, tuple[int, float, float]]) -> None:
    """Log the integer columns released as continuous, with what pooling would have cost."""
    source, sdc, log = ctx.source, ctx.sdc, ctx.log
    for name, (values, pooled, trimmed) in spread.items():
        log.add(
            "schema",
            "continuous",
            f"integer column with {values} values released as continuous (percentiles, integer-rounded): "
            f"pooling its values below min_cell_size={sdc.min_cell_size} into their neighbours would remove {pooled:.0%} of its variance, "
            f"top/bottom-coding its percentiles {trimmed:.0%}; list it under categorical to override",
            source=source.name,
            column=name,
        )


def _check_own_schema(df: pd.DataFrame, specs: list[ColumnSpec], source: Source) -> None:
    """Fail unless the source validates against the schema about to be released."""
    failures = validation_summary(pandera_schema(specs), df[[s.name for s in specs]])
    if failures:
        detail = "; ".join(f"{f['column']}: {f['check']} ({f['failures']} rows)" for f in failures)
        raise DataError(
            f"{source.path}: the data does not validate against its own schema: {detail}"
        )


def _log_all_missing(ctx: _SourceContext, specs: list[ColumnSpec]) -> None:
    """Log the columns that are entirely missing (released as all-missing columns)."""
    for s in specs:
        if s.rows and s.missing == s.rows and s.role in ("continuous", "categorical"):
            ctx.log.add(
                "schema",
                "all_missing",
                "column is entirely missing: released as an all-missing column",
                source=ctx.source.name,
                column=s.name,
            )


def _strata_cells(ctx: _SourceContext, work: pd.DataFrame) -> _StrataCells:
    """The strata cells and the released ones: small cells are suppressed locally and the
    smallest released cells join them when the residual block would be small (logged)."""
    source, sdc, log = ctx.source, ctx.sdc, ctx.log
    key_idx, key_list = _strata_keys(work, source.strata)
    sizes = np.bincount(key_idx[key_idx >= 0], minlength=len(key_list))
    released_keys = sorted(
        [k for k, n in zip(key_list, sizes, strict=True) if n >= sdc.min_cell_size],
        key=lambda k: tuple(map(str, k)),
    )
    small = [k for k, n in zip(key_list, sizes, strict=True) if 0 < n < sdc.min_cell_size] + (
        [None] if (key_idx < 0).any() else []
    )
    key_pos = {k: i for i, k in enumerate(key_list)}
    if source.strata:
        released_keys, merged = _widen_residual(
            released_keys,
            {k: int(sizes[key_pos[k]]) for k in released_keys},
            len(work),
            sdc.min_cell_size,
        )
        small += merged
        if merged:
            log.add(
                "strata",
                "secondary_suppression",
                f"the residual block of locally suppressed strata would hold fewer than min_cell_size={sdc.min_cell_size} rows "
                f"(its rows' categories would follow from the source totals): {len(merged)} smallest released stratum cell(s) join it",
                source=source.name,
                cells=len(merged),
            )
    released_idx = np.zeros(len(key_list) + 1, dtype=bool)  # last slot: a missing stratum value
    released_idx[[key_pos[k] for k in released_keys]] = True
    residual_mask = pd.Series(~released_idx[key_idx] if source.strata else False, index=work.index)
    return _StrataCells(key_idx, key_pos, sizes, released_keys, small, residual_mask)


def _suppress_small_strata(
    ctx: _SourceContext,
    work: pd.DataFrame,
    spec_by: dict[str, ColumnSpec],
    specs: list[ColumnSpec],
    strata: _StrataCells,
) -> list[ColumnSpec]:
    """Blank the strata columns of the residual block's rows (logged) and recount their
    missing values in the specs, which are returned."""
    source, sdc, log = ctx.source, ctx.sdc, ctx.log
    small, residual_mask = strata.small, strata.residual_mask
    if source.strata and small:
        log.add(
            "strata",
            "local_suppression",
            f"{len(small)} strata cell(s) below min_cell_size={sdc.min_cell_size} (or with a missing stratum value) "
            "form one residual block: its rows are synthesized from the source-level statistics and "
            "their strata columns are released as missing",
            source=source.name,
            cells=len(small),
        )
        work.loc[residual_mask, list(source.strata)] = np.nan
        for c in source.strata:
            spec_by[c] = ColumnSpec(
                **{**spec_by[c].to_dict(), "missing": int(work[c].isna().sum())}
            )
        specs = [spec_by[s.name] for s in specs]
    return specs


def _source_marginals(
    ctx: _SourceContext,
    work: pd.DataFrame,
    released_cols: list[ColumnSpec],
    no_atoms: frozenset[str] = frozenset(),
) -> dict[str, dict[str, Any]]:
    """The source-level marginal of every released column, with secondary suppression of
    small suppressed buckets (each decision logged)."""
    source, sdc, log = ctx.source, ctx.sdc, ctx.log
    marginals: dict[str, dict[str, Any]] = {}
    for s in released_cols:
        m = _marginal(
            work[s.name],
            s,
            sdc.min_cell_size,
            sdc.quantile_trim,
            atoms=s.name not in no_atoms,
            **_grid_args(s.name, source, sdc),
        )
        if s.name not in source.strata:
            m, moved = widen_bucket(m, sdc.min_cell_size)
            if moved:
                log.add(
                    "marginals",
                    "secondary_suppression",
                    f"the suppressed categories held fewer than min_cell_size={sdc.min_cell_size} rows "
                    f"(almost known by subtraction): the {moved} smallest released level(s) join them",
                    source=source.name,
                    block="all",
                    column=s.name,
                )
        marginals[s.name] = m
        _log_marginal(log, source.name, "all", s, m, sdc)
    for c in source.sensitive:
        if c in marginals and marginals[c]["kind"] == "continuous":
            log.add(
                "marginals",
                "dominance",
                f"sensitive magnitude: pseudo-percentiles whose windows satisfy the top-2 dominance rule at {sdc.dominance:g}",
                source=source.name,
                column=c,
            )
    return marginals


def _suppressed_to_missing(
    released_cols: list[ColumnSpec],
    marginals: dict[str, dict[str, Any]],
    spec_by: dict[str, ColumnSpec],
    specs: list[ColumnSpec],
) -> list[ColumnSpec]:
    """Columns that released nothing become all-missing columns of the release."""
    for s in released_cols:
        if marginals[s.name]["kind"] == "suppressed" and s.missing < s.rows:
            spec_by[s.name] = ColumnSpec(**{**s.to_dict(), "missing": s.rows})
    return [spec_by[s.name] for s in specs]


def _log_derived(ctx: _SourceContext, derived: dict[str, Any]) -> None:
    """Log the columns released as functions of another column."""
    for b, d in derived.items():
        ctx.log.add(
            "derived",
            "coded",
            f"released as a function of {d['from']!r} (every released level of {d['from']!r} has one value of {b!r}); synthesis computes it from {d['from']!r}",
            source=ctx.source.name,
            column=b,
        )


def _coded_release(
    ctx: _SourceContext,
    work: pd.DataFrame,
    spec_by: dict[str, ColumnSpec],
    specs: list[ColumnSpec],
    marginals: dict[str, dict[str, Any]],
) -> _CodedRelease:
    """Dims, dim matrix, derived columns, pooled values, classes and weighted statistics,
    all from one factorization of the categorical columns (freed on return)."""
    source, sdc, log = ctx.source, ctx.sdc, ctx.log
    missing_groups = shared_missing_patterns(
        work,
        [
            s.name
            for s in specs
            if s.role in ("continuous", "categorical")
            and 0 < s.missing < s.rows
            and s.name not in source.strata
        ],
    )
    tables = _tables(marginals)
    # Each categorical column factorized once; its level order, dims, released levels and
    # pooled values all come from these codes.
    coded = {c: column_codes(work[c]) for c in tables}
    all_levels = {c: coded_level_order(work[c], spec_by[c], coded[c][1]) for c in tables}
    derived = coded_dependencies(
        {c: v for c, v in coded.items() if c not in source.strata},
        tables,
        all_levels,
        [s.name for s in specs],
    )
    marginals, split = withhold_bucket_split(marginals, derived, sdc.min_cell_size)
    if split:
        tables = _tables(marginals)
        _log_bucket_split(log, source.name, split, derived, sdc.min_cell_size)
    dims = copula_dims(
        specs, marginals, missing_groups, sdc.min_cell_size, skip_missing=source.strata
    )
    X = coded_dim_matrix(work, spec_by, dims, tables, all_levels, coded)
    _log_derived(ctx, derived)
    # Ordered numeric values with pooled codes replaced by their released level (used for
    # the per-stratum grids of many-level ordinals).
    pooled_values = pooled_level_values(work, tables, spec_by, all_levels, coded)
    classes = source_classes(tables, coded, all_levels, source.strata)
    weights = (
        release_weights(
            numeric_values(work[source.weight], spec_by[source.weight]),
            source_classes(tables, coded, all_levels, ()),
            weighted_grid_columns(work, spec_by, marginals, source.weight),
            {b: d["from"] for b, d in derived.items()},
            source.name,
            source.weight,
            sdc,
            log,
        )
        if source.weight and weight_released(marginals, source, log)
        else None
    )
    del coded  # ~8 MB per column at 1M rows: freed before the strata's row copies
    return _CodedRelease(
        missing_groups, dims, X, derived, pooled_values, classes, weights, marginals, split
    )


def _log_identity(ctx: _SourceContext, S_all: np.ndarray) -> None:
    """Log pairs of dims with a rank correlation of exactly ±1, released as such."""
    n_ident = identity_pairs(S_all)
    if n_ident:
        ctx.log.add(
            "correlations",
            "identity",
            f"{n_ident} pair(s) of dims with a rank correlation of exactly ±1 (one column a monotone function of another); released as such, check that this is intended",
            source=ctx.source.name,
            block="all",
            pairs=n_ident,
        )


@dataclass(frozen=True)
class _StrataCounts:
    """Secure side, per stratum block: its true class counts per column (for secondary
    suppression) and its codings (`stratum_codings`); never released."""

    classes: dict[str, dict[str, list[int]]]
    codings: dict[str, list[dict[str, Any]]]


def _source_blocks(
    ctx: _SourceContext,
    work: pd.DataFrame,
    released_cols: list[ColumnSpec],
    marginals: dict[str, dict[str, Any]],
    strata: _StrataCells,
    cr: _CodedRelease,
    strata_blocks: bool,
) -> tuple[dict[str, dict[str, Any]], _StrataCounts, int, int]:
    """The source-level block and the strata's blocks with their class counts and codings,
    and where in the log the strata's and the linked tables' decisions go."""
    source, sdc, log, say = ctx.source, ctx.sdc, ctx.log, ctx.say
    X, pooled_values, classes = cr.X, cr.pooled_values, cr.classes
    key_idx, key_pos = strata.key_idx, strata.key_pos
    # The source-level matrix and the strata's blocks are independent: one thread each
    # (results and their SDC decisions collected in order, so the same for any thread count).
    keys = list(enumerate(strata.released_keys)) if source.strata and strata_blocks else []

    def piece(item: tuple[int, tuple[Any, ...]] | None) -> tuple[Any, SdcLog]:
        lg = SdcLog()
        if item is None:
            say(f"extract: {source.name} correlations of {X.shape[1]} dims")
            return correlation_gates(X, sdc.min_cell_size), lg
        i, key = item
        say(f"extract: {source.name} stratum {i + 1} of {len(keys)}")
        mask = key_idx == key_pos[key]
        block = stratum_block(
            work, mask, f"s{i}", key, released_cols, source, sdc, X, pooled_values, lg, classes
        )
        codings = stratum_codings(classes, mask, sdc.min_cell_size)
        return (block, stratum_counts(classes, mask), codings), lg

    done = thread_map(piece, [None, *keys])
    gate = done[0][0]
    S_all = _blank_columns(gate.matrix, cr.dims, cr.split)
    _log_identity(ctx, S_all)
    log_correlation_gates(log, gate, sdc.min_cell_size, source.name, "all")
    blocks: dict[str, dict[str, Any]] = {
        "all": {
            "rows": int(len(work)),
            "key": None,
            "marginals": marginals,
            "spearman": _matrix_json(S_all),
        }
    }
    log_at = len(
        log.entries
    )  # where the strata's SDC decisions go (scatter: see replisynth.workflow.scatter)
    counts: dict[str, dict[str, list[int]]] = {}
    codings: dict[str, list[dict[str, Any]]] = {}
    for (i, _key), ((block, cnt, cod), lg) in zip(keys, done[1:], strict=True):
        blocks[f"s{i}"] = block
        counts[f"s{i}"] = cnt
        codings[f"s{i}"] = cod
        log.extend(lg)
    linked_at = len(log.entries)  # where the linked tables' decisions go (after the strata's)
    return blocks, _StrataCounts(counts, codings), log_at, linked_at


def _key_column_groups(ctx: _SourceContext, df: pd.DataFrame) -> dict[str, Any]:
    """The released group-size distribution of every key column (decisions logged)."""
    source, sdc, log = ctx.source, ctx.sdc, ctx.log
    return {
        c: _group_release(
            df[c], sdc.min_cell_size, sdc.quantile_trim, log, source.name, sdc.grid, sdc.dominance
        )
        for c in source.key_columns
    }


def extract_source(
    df: pd.DataFrame,
    meta: FileMeta,
    manifest: Manifest,
    source: Source,
    strata_blocks: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[SourceRelease, SdcLog]:
    """Build the release of one source and the log of its SDC decisions.

    `strata_blocks=False` leaves out the strata's blocks (the cells are still listed) and
    records under release["strata"]["log_at"] where their SDC decisions belong: the
    source-level half of a scattered extraction (replisynth.workflow.scatter fills the blocks in).
    `progress` is told each stratum as it starts (by number, never by its key's values)."""
    say = progress or (lambda _msg: None)
    sdc = manifest.sdc
    log = SdcLog()
    ctx = _SourceContext(source, sdc, log, say)
    keep = _kept_categorical(manifest, source)
    spread: dict[str, tuple[int, float, float]] = {}
    specs = infer_schema(
        df, source, meta, sdc.min_cell_size, keep, sdc.quantile_trim / 100.0, spread
    )
    _log_integer_spread(ctx, spread)
    # The source must validate against the schema we are about to release.
    _check_own_schema(df, specs, source)

    work = df[[s.name for s in specs]]  # copy-on-write: only columns written below are copied
    spec_by = {s.name: s for s in specs}
    _log_all_missing(ctx, specs)

    # Strata and local suppression of small cells.
    strata = _strata_cells(ctx, work)
    sizes, key_pos, released_keys = strata.sizes, strata.key_pos, strata.released_keys
    n_residual = int(strata.residual_mask.sum())
    specs = _suppress_small_strata(ctx, work, spec_by, specs, strata)

    # Source-level marginals.
    released_cols = [s for s in specs if s.role in ("continuous", "categorical")]
    no_atoms = withheld_atom_columns(df, work, released_cols, manifest, source, log)
    marginals = _source_marginals(ctx, work, released_cols, no_atoms)
    specs = _suppressed_to_missing(released_cols, marginals, spec_by, specs)

    cr = _coded_release(ctx, work, spec_by, specs, marginals)
    marginals = cr.marginals
    missing_groups, dims, derived, weights = cr.missing_groups, cr.dims, cr.derived, cr.weights
    blocks, counts, log_at, linked_at = _source_blocks(
        ctx, work, released_cols, marginals, strata, cr, strata_blocks
    )
    cells = [
        {"id": f"s{i}", "key": list(key), "rows": int(sizes[key_pos[key]])}
        for i, key in enumerate(released_keys if source.strata else [])
    ]

    groups = _key_column_groups(ctx, df)
    value_labels = _released_value_labels(meta, marginals)
    codes = release_missing_codes(meta, specs, marginals, source, sdc.min_cell_size, log)
    free_text = free_text_columns(df, specs, source)
    release: dict[str, Any] = {
        "source": source.name,
        "format": source.format,
        "rows": int(len(df)),
        "columns": [s.to_dict() for s in specs],
        "value_labels": value_labels,
        "dims": dims,
        "strata": {
            "columns": list(source.strata),
            "cells": cells,
            "residual_rows": n_residual if source.strata else 0,
        },
        "blocks": blocks,
        "groups": groups,
        "missing_groups": missing_groups,
        "derived": derived,
        "panel": {"entity": source.panel.entity, "time": source.panel.time}
        if source.panel
        else None,
    }
    release.update({"missing_codes": codes} if codes else {})
    release.update({"free_text": free_text} if free_text else {})
    orderings = detect_orderings(work, specs, marginals, sdc.min_cell_size, set(source.strata))
    if orderings:
        release["orderings"] = orderings
    empty_cells = _empty_cells(ctx, work, specs, marginals, strata, set(derived))
    release.update({"empty_cells": empty_cells} if empty_cells else {})
    release.update({"weights": weights} if weights else {})
    # Entity structure on the dims as synthesis and verification code them (synthetic_dim_matrix
    # maps pooled levels as the synthetic data will hold them).
    structure = _entity_release(
        df, work, lambda: synthetic_dim_matrix(work, release), dims, specs, source, sdc, log
    )
    if structure is not None:
        release["entity_structure"] = structure
    if not strata_blocks:
        log.extend(gate_three_way(work, release, {"all": slice(None)}, sdc.min_cell_size))
        release["strata"]["log_at"] = log_at
        return cast(SourceRelease, release), log
    release, entries = protect_release(release, counts.classes, sdc.min_cell_size)
    release, withheld = withhold_coding_tables(release, counts.codings)
    log.entries[linked_at:linked_at] = [*entries, *withheld]
    log.extend(gate_three_way(work, release, _block_rows(strata), sdc.min_cell_size))
    log.extend(linked_correlation_gate(release, sdc.min_cell_size))
    log.extend(gate_orderings(release))
    check_release(release, sdc.min_cell_size)
    return cast(SourceRelease, release), log


def _block_rows(strata: _StrataCells) -> dict[str, np.ndarray | slice]:
    """Each released block's rows: every row, and each stratum cell's by its key."""
    out: dict[str, np.ndarray | slice] = {"all": slice(None)}
    for i, key in enumerate(strata.released_keys):
        out[f"s{i}"] = strata.key_idx == strata.key_pos[key]
    return out


def _empty_cells(
    ctx: _SourceContext,
    work: pd.DataFrame,
    specs: list[ColumnSpec],
    marginals: dict[str, Any],
    strata: _StrataCells,
    derived: set[str],
) -> list[dict[str, Any]]:
    """Empty-cell flags of pairs of released categorical columns (extract/empty_cells.py),
    checked in every released block (stratum cells by key, the residual as one), logged;
    strata, derived and `sensitive` columns are never flagged."""
    block_of = (
        np.where(strata.residual_mask.to_numpy(), -1, strata.key_idx)
        if ctx.source.strata
        else np.zeros(len(work), dtype=np.intp)
    )
    skip = set(ctx.source.strata) | derived | set(ctx.source.sensitive)
    flags = detect_empty_cells(work, specs, marginals, ctx.sdc.min_cell_size, block_of, skip)
    ctx.log.extend(log_empty_cells(flags, ctx.source.name))
    return flags


def _tables(marginals: dict[str, dict[str, Any]]) -> dict[str, FrequencyTable]:
    """The released categorical tables of a source's marginals."""
    return {
        c: FrequencyTable.from_dict(m["table"])
        for c, m in marginals.items()
        if m["kind"] == "categorical"
    }


def _log_bucket_split(
    log: SdcLog, source: str, split: list[str], derived: dict[str, dict[str, Any]], k: int
) -> None:
    """One entry per derived column whose table `withhold_bucket_split` replaced."""
    for col in split:
        log.add(
            "derived",
            "secondary_suppression",
            f"its table with that of {derived[col]['from']!r} would give rows of the suppressed categories of {derived[col]['from']!r} "
            f"by subtraction (a share of 1..{k - 1}): released as the sum of the released levels of {derived[col]['from']!r}, "
            "their suppressed rows in its suppressed count, and its correlations not released",
            source=source,
            column=col,
        )


def _blank_columns(S: np.ndarray, dims: list[dict[str, Any]], columns: list[str]) -> np.ndarray:
    """The correlations of every dim of `columns` blanked (NaN, released as null): a derived
    column's indicator correlations would give its true level shares back."""
    idx = [j for j, d in enumerate(dims) if d["column"] in columns]
    if not idx:
        return S
    S = S.copy()
    S[idx, :] = np.nan
    S[:, idx] = np.nan
    return S


def _entity_release(
    df: pd.DataFrame,
    work: pd.DataFrame,
    dim_matrix_of: Callable[[], np.ndarray],
    dims: list[dict[str, Any]],
    specs: list[ColumnSpec],
    source: Source,
    sdc: Any,
    log: SdcLog,
) -> dict[str, Any] | None:
    """The entity structure (replisynth.synthesize.entities) of the panel's entity, or of the one
    grouping column, when there are at least min_cell_size entities; the decision is logged.
    `dim_matrix_of` builds the dims as synthesis codes them, called only when needed (a
    cross-section without groups never needs it)."""
    col = (
        source.panel.entity
        if source.panel
        else (source.groups[0] if len(source.groups) == 1 else None)
    )
    if col is None:
        return None
    g = int(df[col].nunique(dropna=True))
    if g < sdc.min_cell_size:
        log.add(
            "entities",
            "suppressed",
            f"{g} entities (< min_cell_size={sdc.min_cell_size}): entity structure not released; rows are assigned to entities at random",
            source=source.name,
            column=col,
        )
        return None
    cols = [s.name for s in specs if s.role in ("continuous", "categorical")]
    X = dim_matrix_of()
    out = entity_structure(work[cols], df[col], X, dims, col, sdc.round_significant)
    log.add(
        "entities",
        "released",
        f"aggregates over {g} entities: per column whether it is constant within every entity, per copula dim the "
        "between-entity share of the normal-score variance and the between-entity correlation matrix (rounded)",
        source=source.name,
        column=col,
    )
    if source.panel is not None:
        _dynamics_release(out, df, X, dims, cols, out["invariant"], source, sdc, log)
    return out


def _dynamics_release(
    out: dict[str, Any],
    df: pd.DataFrame,
    X: np.ndarray,
    dims: list[dict[str, Any]],
    cols: list[str],
    invariant: dict[str, bool],
    source: Source,
    sdc: Any,
    log: SdcLog,
) -> None:
    """Time dynamics inside a panel's entities (replisynth.synthesize.entities), added to `out` in place:
    `period_trend` (columns whose within-entity deviation is slope × period deviation in at
    least TREND_SHARE of the entities with two or more periods: the rounded slope and share)
    and `within_lag1` (per copula dim, the lag-1 autocorrelation of its within-entity
    normal-score deviations in period order). Aggregates over entities, released only when
    at least min_cell_size entities have two or more periods; each decision is logged."""
    assert source.panel is not None
    ent, time = source.panel.entity, source.panel.time
    codes, _ = pd.factorize(df[ent], use_na_sentinel=True)
    t = (
        pd.to_numeric(df[time], errors="coerce").to_numpy(dtype="float64")
        if time in df
        else np.full(len(df), np.nan)
    )
    if not np.isfinite(t).any():
        log.add(
            "entities",
            "not_applicable",
            f"time column {time!r} is not numeric: no period trends or serial correlation released",
            source=source.name,
            column=time,
        )
        return
    trends: dict[str, dict[str, float]] = {}
    for c in cols:
        if c == time or invariant.get(c):
            continue
        try:
            x = pd.Series(df[c]).astype("float64").to_numpy()
        except (TypeError, ValueError):  # strings, dates: no numeric trend
            continue
        if not np.isfinite(x).any():
            continue
        slope, share, m = period_trend(x, t, codes)
        if share < TREND_SHARE or slope == 0.0:
            continue
        if m < sdc.min_cell_size:
            log.add(
                "entities",
                "suppressed",
                f"period trend not released: {m} entities with two or more periods (< min_cell_size={sdc.min_cell_size})",
                source=source.name,
                column=c,
            )
            continue
        trends[c] = {
            "slope": round_released(slope, sdc.round_significant),
            "share": round_released(share, sdc.round_significant),
        }
        log.add(
            "entities",
            "released",
            f"period trend: within {share:.3f} of {m} entities the column moves by slope x period (slope rounded); aggregate over entities",
            source=source.name,
            column=c,
        )
    r, m = within_lag1(X, codes, t)
    if m < sdc.min_cell_size:
        log.add(
            "entities",
            "suppressed",
            f"within-entity lag-1 autocorrelations not released: {m} entities with two or more periods (< min_cell_size={sdc.min_cell_size})",
            source=source.name,
            column=ent,
        )
    else:
        skip = {time, *trends, *(c for c, v in invariant.items() if v)}
        out["within_lag1"] = [
            None
            if (d["column"] in skip or d["kind"] == "missing" or not np.isfinite(v))
            else round_released(float(v), sdc.round_significant)
            for d, v in zip(dims, r, strict=True)
        ]
        log.add(
            "entities",
            "released",
            f"per copula dim the lag-1 autocorrelation of within-entity normal-score deviations in period order, pooled over {m} entities (rounded)",
            source=source.name,
            column=ent,
        )
    out["period_trend"] = trends


def _released_value_labels(
    meta: FileMeta, marginals: dict[str, dict[str, Any]]
) -> dict[str, dict[str, str]]:
    """Value labels of released categories only (a label set may name rare codes)."""
    out: dict[str, dict[str, str]] = {}
    for col, labs in meta.value_labels.items():
        m = marginals.get(col)
        if not m or m["kind"] != "categorical":
            continue
        levels = set(m["table"]["levels"])
        keep = {str(py_value(k)): v for k, v in labs.items() if py_value(k) in levels}
        if keep:
            out[col] = keep
    return out


def _log_marginal(
    log: SdcLog, source: str, block: str, spec: ColumnSpec, m: dict[str, Any], sdc: Any
) -> None:
    where = {"source": source, "block": block, "column": spec.name}
    if m["kind"] == "suppressed":
        if m.get("n", 0) == 0:
            return
        log.add(
            "marginals",
            "suppressed",
            f"fewer than min_cell_size={sdc.min_cell_size} usable values or no releasable category: nothing released",
            **where,
        )
    elif m["kind"] == "ordinal_grid":
        log.add(
            "marginals",
            "grid",
            f"many-level ordinal released inside the stratum as a {sdc.quantile_trim:g}%-trimmed percentile grid: its frequency table there would have a level below min_cell_size={sdc.min_cell_size}",
            **where,
        )
    elif m["kind"] == "continuous":
        _log_continuous(log, block, m, sdc, where)
    else:
        t = m["table"]
        if t.get(
            "classes"
        ):  # a stratum's table over the source-level classes: logged per column (protect_release)
            return
        if t["pooled_levels"]:
            log.add(
                "marginals",
                "pooled",
                f"{t['pooled_levels']} level(s) below min_cell_size={sdc.min_cell_size} pooled into the nearest released level",
                **where,
            )
        if t["suppressed_levels"]:
            log.add(
                "marginals",
                "suppressed",
                f"{t['suppressed_levels']} categor(ies) suppressed (below min_cell_size={sdc.min_cell_size}, or joining them so that they hold at least min_cell_size rows); their rows are spread over released categories at synthesis",
                **where,
            )
    if m.get("window_sizes"):
        why = (
            "pseudo-percentiles"
            if "pseudo" in m.get("method", "")
            else f"percentiles would release more than {EXACT_SHARE:.0%} of the block's values exactly, or put a flat tail on one of them"
        )
        log.add(
            "marginals",
            "thinned",
            f"grid released as the means of {len(m['window_sizes'])} non-overlapping windows of at least "
            f"{min(m['window_sizes'])} consecutive values, the most extreme values at each end coded first ({why})",
            **where,
        )


def _log_continuous(
    log: SdcLog, block: str, m: dict[str, Any], sdc: Any, where: dict[str, Any]
) -> None:
    """Log a continuous marginal's atoms and, at source level, its top/bottom coding."""
    if m.get("atoms"):
        _log_atoms(log, m, sdc, where)
    if sdc.quantile_trim > 0 and block == "all":
        log.add(
            "marginals",
            "trimmed",
            f"q0..q{sdc.quantile_trim:g} and q{100 - sdc.quantile_trim:g}..q100 top/bottom coded",
            **where,
        )


def _log_atoms(log: SdcLog, m: dict[str, Any], sdc: Any, where: dict[str, Any]) -> None:
    """Log a continuous column's atoms: how many, and how the other values are released
    (never how many rows joined an atom: that number is below the cell size)."""
    atoms = m["atoms"]
    rest = atoms.get("rest")
    log.add(
        "marginals",
        "atoms",
        f"{len(atoms['values'])} value(s) held by at least min_cell_size={sdc.min_cell_size} rows released with their counts"
        + (
            "; the other values as their own grid"
            if rest
            else "; every non-missing row holds an atom (none left over)"
        ),
        **where,
    )
    if rest and rest.get("window_sizes"):
        log.add(
            "marginals",
            "thinned",
            f"the grid of the values other than atoms released as the means of {len(rest['window_sizes'])} non-overlapping windows of at least {min(rest['window_sizes'])} consecutive values, the most extreme values at each end coded first",
            **where,
        )


def _matrix_json(M: np.ndarray) -> list[list[float | None]]:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in M]
