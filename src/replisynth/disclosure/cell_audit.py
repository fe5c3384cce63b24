"""The review's recheck of empty-cell flags from the bundle alone: each flag names two
released categorical columns outside the strata, and in every block where both tables are
released no cell of their two-way table is forced into 1..k-1 rows by the flags and the
released margins (linear programs over the table). Rule: docs/disclosure.md, "Empty-cell flags"."""

from __future__ import annotations

from typing import Any

import numpy as np

from replisynth.disclosure.bundle_types import SourceRelease, untyped
from replisynth.stats.cells import flag_matrix

Finding = dict[str, Any]
MAX_TABLES = 400  # (pair, block) tables bounded per source; the rest are listed as not bounded


def _margin(block: dict[str, Any], col: str) -> np.ndarray | None:
    """Counts of the released levels, the suppressed bucket and the missing rows of `col` in
    `block`; None when the block does not release `col` as a table."""
    m = block["marginals"].get(col) or {}
    if m.get("kind") != "categorical":
        return None
    t = m["table"]
    seen = int(sum(t["counts"])) + int(t.get("suppressed", 0))
    return np.asarray([*t["counts"], int(t.get("suppressed", 0)), int(block["rows"]) - seen])


def cell_bounds(row: np.ndarray, col: np.ndarray, zero: np.ndarray) -> tuple[np.ndarray, ...]:
    """Smallest and largest count of every cell of a table with these margins and these cells
    zero (NaN where the margins and zeros are inconsistent)."""
    from scipy.optimize import linprog

    r, c = len(row), len(col)
    A = np.vstack([np.kron(np.eye(r), np.ones(c)), np.kron(np.ones(r), np.eye(c))])
    b = np.concatenate([row, col]).astype(float)
    bounds = [(0.0, 0.0) if z else (0.0, None) for z in zero.ravel()]
    lo, hi = np.full(r * c, np.nan), np.full(r * c, np.nan)
    for i in range(r * c):
        if zero.ravel()[i]:
            lo[i] = hi[i] = 0.0
            continue
        e = np.zeros(r * c)
        e[i] = 1.0
        for sign, out in ((1.0, lo), (-1.0, hi)):
            res = linprog(sign * e, A_eq=A, b_eq=b, bounds=bounds, method="highs")
            if res.status == 0:
                out[i] = sign * res.fun
    return lo.reshape(r, c), hi.reshape(r, c)


def _forced_small(
    block: dict[str, Any], flag: dict[str, Any], levels: tuple[list[Any], list[Any]], k: int
) -> bool | None:
    """Whether a cell of the pair's table in `block` lies in 1..k-1 by the flags and margins
    (None: a table not released in the block)."""
    a, b = flag["columns"]
    ra, cb = _margin(block, a), _margin(block, b)
    if ra is None or cb is None:
        return None
    at_a = {repr(v): i for i, v in enumerate(block["marginals"][a]["table"]["levels"])}
    at_b = {repr(v): i for i, v in enumerate(block["marginals"][b]["table"]["levels"])}
    zero = np.zeros((len(ra), len(cb)), dtype=bool)
    src = flag_matrix(flag, *levels)
    for i, j in zip(*np.nonzero(src), strict=True):
        ia, jb = at_a.get(repr(levels[0][i])), at_b.get(repr(levels[1][j]))
        if ia is not None and jb is not None:
            zero[ia, jb] = True
    lo, hi = cell_bounds(ra, cb, zero)
    ok = np.isfinite(lo) & np.isfinite(hi)
    return bool(np.any(ok & (lo > 0.5) & (hi < k - 0.5)))


def check_empty_cells(release: SourceRelease, k: int) -> tuple[list[Finding], list[str]]:
    """Findings for flags on strata or unreleased columns and for tables in which the flags
    force a cell into 1..k-1; notes name each flagged pair and the cell count."""
    rel = untyped(release)
    findings: list[Finding] = []
    notes: list[str] = []
    strata = set(rel["strata"]["columns"])
    top = rel["blocks"]["all"]["marginals"]
    budget = MAX_TABLES
    for f in rel.get("empty_cells") or []:
        a, b = f["columns"]
        notes.append(f"{rel['source']}: {a} x {b}: {len(f['cells'])} empty cell(s)")
        bad = [c for c in (a, b) if c in strata or (top.get(c) or {}).get("kind") != "categorical"]
        if bad:
            findings.append(
                _finding(
                    rel,
                    bad[0],
                    "all",
                    "flag on a strata column or a column without a released table",
                )
            )
            continue
        levels = (list(top[a]["table"]["levels"]), list(top[b]["table"]["levels"]))
        for bid, block in rel["blocks"].items():
            if budget <= 0:
                notes.append(f"{rel['source']}: further tables not bounded (cap {MAX_TABLES})")
                return findings, notes
            forced = _forced_small(block, f, levels, k)
            budget -= forced is not None
            if forced:
                findings.append(
                    _finding(
                        rel,
                        a,
                        bid,
                        f"the empty-cell flags of {a} x {b} with the released margins put a cell at 1..{k - 1} rows",
                    )
                )
    return findings, notes


def _finding(rel: dict[str, Any], column: str, block: str, what: str) -> Finding:
    return {
        "check": "empty_cells",
        "source": rel["source"],
        "block": block,
        "column": column,
        "finding": what,
    }
