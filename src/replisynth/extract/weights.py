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
from replisynth.stats.marginals import FrequencyTable
from replisynth.stats.weights import (
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


def release_weights(
    w: np.ndarray,
    classes: dict[str, tuple[np.ndarray, FrequencyTable]],
    source: str,
    column: str,
    sdc: Any,
    log: SdcLog,
) -> dict[str, Any]:
    """The release's `weights` record: the column, the rounded total and the weighted tables
    that pass the gates (`classes`: per categorical column its rows' classes and table)."""
    tables: dict[str, Any] = {}
    for c, (cls, table) in classes.items():
        entry, reason = weighted_table(cls, w, table, sdc.min_cell_size, sdc.dominance)
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
    log.add(
        "weights",
        "released",
        f"weighted by {column!r}: shares of {len(tables)} table(s) rounded to "
        f"{10**-SHARE_DECIMALS:g} on the unweighted tables' cells, weight total rounded",
        source=source,
        column=column,
    )
    return {"column": column, "total": round_total(float(w.sum())), "tables": tables}
