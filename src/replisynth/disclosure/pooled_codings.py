"""The review's check of declared codings of a pooled column (`derive: {mid: "visits == 3"}`):
from the bundle alone, the counts a derived column's table must show if it were computed from
its input's released levels; a level that differs by 1..k−1 rows is the count of rows the
input's table pooled (the secure side refuses such a coding: `extract/relations.py`,
`check_pooled_codings`). Method: docs/disclosure.md, "A coding of a pooled column's true values".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.formula_grammar import derive_values, parse_derive
from replisynth.core.errors import ReplisynthError


def implied_counts(expression: str, table: Mapping[str, Any]) -> dict[float, int] | None:
    """Counts per value of a one-column coding evaluated at its input's released levels,
    each level with its released count (rows pooled into a level take that level's value);
    None when the expression reads more than one column or cannot be evaluated."""
    try:
        parsed = parse_derive(expression)
        if len(parsed.columns) != 1:
            return None
        (col,) = parsed.columns
        frame = pd.DataFrame({col: np.asarray(table["levels"], dtype="float64")})
        values = derive_values(frame, parsed, "derive")
    except (ReplisynthError, TypeError, ValueError):
        return None
    out: dict[float, int] = {}
    for v, c in zip(values, table["counts"], strict=True):
        if not np.isnan(v):
            out[float(v)] = out.get(float(v), 0) + int(c)
    return out


def check_pooled_codings(
    releases: Mapping[str, Mapping[str, Any]], manifest: Any, min_cell: int
) -> list[dict[str, Any]]:
    """A finding per declared derived column whose source-level table, beside the table of
    the pooled column it codes, gives a count of 1..min_cell−1 pooled rows."""
    found = []
    for name, rel in releases.items():
        marg = rel["blocks"]["all"]["marginals"]
        for col, expression in manifest.source(name).derive:
            own = (marg.get(col) or {}).get("table")
            inputs = _inputs(expression)
            if own is None or len(inputs) != 1:
                continue
            parent = (marg.get(inputs[0]) or {}).get("table")
            if parent is None or not parent.get("pooled_levels"):
                continue
            implied = implied_counts(expression, parent)
            if implied is None:
                continue
            shown = {float(v): int(c) for v, c in zip(own["levels"], own["counts"], strict=True)}
            gaps = [abs(shown.get(v, 0) - c) for v, c in implied.items() if v in shown]
            if any(0 < g < min_cell for g in gaps):
                found.append(
                    {
                        "check": "pooled codings",
                        "source": name,
                        "column": col,
                        "finding": f"its table differs from the one its expression gives on the "
                        f"released levels of {inputs[0]!r} by 1..{min_cell - 1} rows: the count "
                        "of the rows that table pools",
                    }
                )
    return found


def _inputs(expression: str) -> list[str]:
    try:
        return sorted(parse_derive(expression).columns)
    except ReplisynthError:
        return []
