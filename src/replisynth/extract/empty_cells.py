"""Empty cells of two-way tables of released categorical columns (a plan that never has a
deductible, two categories never held together), released as flags when every non-empty cell
of the table holds at least min_cell_size rows, at source level and in every released block.
Method: docs/method.md, "Empty cells"; the rule and why: docs/disclosure.md, "Empty-cell flags"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from replisynth.disclosure.sdc import SdcLog
from replisynth.io.schema import ColumnSpec
from replisynth.stats.cells import level_codes
from replisynth.stats.marginals import FrequencyTable, level_order, level_positions, py_value

MAX_COLUMNS = 48  # categorical columns examined, in release order
MAX_LEVELS = 24  # released levels of a column examined (more: a code list, not a plan)
MAX_PAIRS = 512  # column pairs tabulated, in release order


@dataclass(frozen=True)
class _Coded:
    """A column coded by released level: 0..L-1, L for the suppressed bucket, L+1 missing."""

    codes: np.ndarray
    levels: list[Any]


def _coded(col: pd.Series, table: FrequencyTable) -> _Coded:
    """Each row's released level (pooled levels of an ordered table at their released
    neighbour, as synthesis holds them), the bucket of suppressed categories, or missing.
    Coded once per distinct value (`category_values`' lookup, missing last), then gathered."""
    L = len(table.levels)
    row_codes, found = pd.factorize(col, use_na_sentinel=True)
    lookup = np.empty(len(found) + 1, dtype=object)
    lookup[:-1] = [py_value(v) for v in found]
    lookup[-1] = np.nan
    values = pd.Series(lookup, dtype=object)
    if table.ordered and table.pooled_levels:
        # the factorized uniques are pd.unique's non-missing values, in the same order
        codes_u, found_u = pd.factorize(values, use_na_sentinel=True)
        uniques = list(found_u)
        pos = level_positions(uniques, table, level_order(uniques))
        at = {u: p for u, p in zip(uniques, pos[:-1], strict=True)}
        lut = np.append(np.asarray([at.get(u, np.nan) for u in uniques], dtype="float64"), np.nan)
        codes = lut[codes_u]
        out = np.where(np.isnan(codes), L, codes).astype(np.intp)
    else:
        out = level_codes(values.to_numpy(), table.levels)
        out = np.where(out < 0, L, out)
    out[values.isna().to_numpy()] = L + 1
    return _Coded(out[row_codes], list(table.levels))


def _columns(
    work: pd.DataFrame, specs: list[ColumnSpec], marginals: dict[str, Any], skip: set[str]
) -> dict[str, _Coded]:
    """Released categorical columns with 2..MAX_LEVELS source-level levels (at most
    MAX_COLUMNS); `skip`: strata and derived columns."""
    out: dict[str, _Coded] = {}
    for s in specs:
        m = marginals.get(s.name)
        if s.role != "categorical" or s.name in skip or m is None or m["kind"] != "categorical":
            continue
        table = FrequencyTable.from_dict(m["table"])
        if not 2 <= len(table.levels) <= MAX_LEVELS:
            continue
        out[s.name] = _coded(work[s.name], table)
        if len(out) >= MAX_COLUMNS:
            break
    return out


def _table(a: _Coded, b: _Coded, rows: np.ndarray | slice) -> np.ndarray:
    """The (La + 2) x (Lb + 2) counts of `rows`: released levels, bucket, missing."""
    wa, wb = len(a.levels) + 2, len(b.levels) + 2
    flat = a.codes[rows] * wb + b.codes[rows]
    return np.bincount(flat, minlength=wa * wb).reshape(wa, wb)


def _safe(a: _Coded, b: _Coded, blocks: list[np.ndarray], k: int) -> np.ndarray | None:
    """The empty released cells of the pair when flagging them is safe (docs/disclosure.md,
    "Empty-cell flags"): every non-empty cell of the whole table, bucket and missing rows
    included, holds >= k rows at source level and in every released block; else None."""
    whole = _table(a, b, slice(None))
    empty = whole[: len(a.levels), : len(b.levels)] == 0
    if not empty.any():
        return None
    for t in [whole, *(_table(a, b, r) for r in blocks)]:
        if np.any((t > 0) & (t < k)):
            return None
    return empty


def _block_rows(block_of: np.ndarray) -> list[np.ndarray]:
    """Row indices of each released block (one label per block)."""
    labels = np.unique(block_of)
    if len(labels) < 2:
        return []
    order = np.argsort(block_of, kind="stable")
    cuts = np.searchsorted(block_of[order], labels[1:])
    return list(np.split(order, cuts))


def detect_empty_cells(
    work: pd.DataFrame,
    specs: list[ColumnSpec],
    marginals: dict[str, Any],
    min_cell: int,
    block_of: np.ndarray,
    skip: set[str] | None = None,
) -> list[dict[str, Any]]:
    """Flags `{columns: [a, b], cells: [[a level, b level], ...]}` for the pairs of released
    categorical columns whose empty cells may be released (`_safe`); `block_of` labels each
    row's released block (stratum cell or residual), `skip` names columns left out."""
    cols = _columns(work, specs, marginals, skip or set())
    blocks = _block_rows(np.asarray(block_of))
    names = list(cols)
    out: list[dict[str, Any]] = []
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]][:MAX_PAIRS]
    for a, b in pairs:
        empty = _safe(cols[a], cols[b], blocks, min_cell)
        if empty is None:
            continue
        la, lb = cols[a].levels, cols[b].levels
        cells = [[la[i], lb[j]] for i, j in zip(*np.nonzero(empty), strict=True)]
        out.append({"columns": [a, b], "cells": cells})
    return out


def log_empty_cells(flags: list[dict[str, Any]], source: str) -> SdcLog:
    """One log entry per flagged pair: column names and the number of cells, never a count."""
    log = SdcLog()
    for f in flags:
        a, b = f["columns"]
        log.add(
            "empty_cells",
            "released",
            f"{len(f['cells'])} empty cell(s) of the table of {a} by {b} released as flags the "
            "synthesis keeps empty (every non-empty cell, at source level and in every released "
            "block, holds at least min_cell_size rows; docs/disclosure.md)",
            source=source,
            column=a,
        )
    return log
