"""Secure side: the survey weight's release (`sources.<name>.weight`): per source-level
frequency table its weighted shares on exactly the table's cells, gated by cell size and the
top-2 dominance rule on weights and rounded; the weight total, rounded. Method and disclosure
reasoning: docs/method.md and docs/disclosure.md, "Survey weights".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from replisynth.disclosure.linked_tables import n_classes
from replisynth.disclosure.sdc import SdcLog
from replisynth.extract.release_guards import WEIGHT_CLASS_REASON, weight_classes_split
from replisynth.stats.marginals import FrequencyTable
from replisynth.stats.weights import (
    GRID_STEP,
    SHARE_DECIMALS,
    class_top2_shares,
    class_weight_sums,
    round_total,
)


def weighted_table(
    cls: np.ndarray, w: np.ndarray, table: FrequencyTable, min_cell: int, dominance: float
) -> tuple[dict[str, Any] | None, str]:
    """The weighted shares of one source-level table over its classes (released levels, then
    the suppressed bucket), or None and the reason when a class fails the gates: every class
    must hold at least `min_cell` rows and no two rows more than `dominance` of its weight.
    A failing class withholds the whole table (one share alone follows from the others)."""
    n = n_classes(table)
    counts = np.bincount(cls[cls >= 0], minlength=n)[:n]
    if (counts < min_cell).any():
        return None, f"a cell holds fewer than min_cell_size={min_cell} rows"
    if weight_classes_split(cls, w, n, min_cell):
        return None, WEIGHT_CLASS_REASON
    if (class_top2_shares(cls, w, n) > dominance).any():
        return None, f"a cell's two largest weights exceed dominance={dominance:g} of its total"
    sums = class_weight_sums(cls, w, n)
    shares = np.round(sums / sums.sum(), SHARE_DECIMALS)
    k = len(table.levels)
    return {
        "levels": list(table.levels),
        "shares": [float(x) for x in shares[:k]],
        "suppressed": float(shares[k]) if n > k else 0.0,
    }, ""


def interval_classes(v: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Each value's interval among the cut points (0: at most the first cut, len(cuts): above
    the last; -1: missing)."""
    cls = np.searchsorted(cuts, v, side="left").astype(np.int64)
    return np.where(np.isnan(v), -1, cls)


def weighted_grid(
    v: np.ndarray, w: np.ndarray, grid: list[float | None], min_cell: int, dominance: float
) -> tuple[dict[str, Any] | None, str]:
    """The weighted shares of a continuous column's decile intervals, cut at its released
    grid's 10th..90th points (released numbers, so no new value leaves), under the gates of
    `weighted_table` (each interval a cell)."""
    pts = [g for g in grid[GRID_STEP::GRID_STEP][: 100 // GRID_STEP - 1] if g is not None]
    cuts = np.unique(np.asarray(pts, dtype="float64"))
    if not len(cuts):
        return None, "no grid to cut"
    cls = interval_classes(v, cuts)
    n = len(cuts) + 1
    counts = np.bincount(cls[cls >= 0], minlength=n)[:n]
    if (counts < min_cell).any():
        return None, f"an interval holds fewer than min_cell_size={min_cell} rows"
    if weight_classes_split(cls, w, n, min_cell):
        return None, WEIGHT_CLASS_REASON
    if (class_top2_shares(cls, w, n) > dominance).any():
        return (
            None,
            f"an interval's two largest weights exceed dominance={dominance:g} of its total",
        )
    sums = class_weight_sums(cls, w, n)
    return {
        "cuts": [float(c) for c in cuts],
        "shares": [float(x) for x in np.round(sums / sums.sum(), SHARE_DECIMALS)],
    }, ""


def release_grids(
    w: np.ndarray,
    values: dict[str, tuple[np.ndarray, list[float | None]]],
    source: str,
    sdc: Any,
    log: SdcLog,
) -> dict[str, Any]:
    """Per continuous column (its values and released grid), its weighted decile shares."""
    out: dict[str, Any] = {}
    for c, (v, grid) in values.items():
        entry, reason = weighted_grid(v, w, grid, sdc.min_cell_size, sdc.dominance)
        if entry is None:
            log.add(
                "weights",
                "suppressed",
                f"weighted decile shares withheld: {reason}",
                source=source,
                column=c,
            )
            continue
        out[c] = entry
    return out


def release_weights(
    w: np.ndarray,
    classes: dict[str, tuple[np.ndarray, FrequencyTable]],
    continuous: dict[str, tuple[np.ndarray, list[float | None]]],
    derived: dict[str, str],
    source: str,
    column: str,
    sdc: Any,
    log: SdcLog,
) -> dict[str, Any]:
    """The release's `weights` record: the column, the rounded total, the weighted tables and
    grids that pass the gates (`classes`: per categorical column its rows' classes and table;
    `continuous`: per continuous column its values and released grid). A derived column
    (`derived`: column -> the column it is a function of) releases no weighted table: its
    cells are unions of its parent's, the parent's bucket included, so the difference of a
    derived cell and the parent's released cells would give the weight of the bucket's rare
    categories (and synthesis computes it from the parent anyway)."""
    tables: dict[str, Any] = {}
    for c, (cls, table) in classes.items():
        entry, reason = (
            (None, f"released as a function of {derived[c]!r}, whose weighted shares give its own")
            if c in derived
            else weighted_table(cls, w, table, sdc.min_cell_size, sdc.dominance)
        )
        if entry is None:
            log.add(
                "weights",
                "suppressed",
                f"weighted shares withheld: {reason}",
                source=source,
                column=c,
            )
            continue
        tables[c] = entry
    grids = release_grids(w, continuous, source, sdc, log)
    log.add(
        "weights",
        "released",
        f"weighted by {column!r}: shares of {len(tables)} table(s) on the unweighted tables' cells "
        f"and of {len(grids)} continuous column(s)' decile intervals (cut at released grid "
        f"points), rounded to {10**-SHARE_DECIMALS:g}; weight total rounded",
        source=source,
        column=column,
    )
    return {
        "column": column,
        "total": round_total(float(w.sum())),
        "tables": tables,
        "grids": grids,
    }
