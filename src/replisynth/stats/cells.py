"""Two-way tables of categorical columns coded by released level: the empty cells flagged at
extract, repaired at synthesis and checked at verification. Method: docs/method.md, "Empty
cells"; why the flags are safe: docs/disclosure.md, "Empty-cell flags"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from replisynth.stats.copula_dims import norm_key


def level_codes(values: Any, levels: list[Any]) -> np.ndarray:
    """Index in `levels` of each value matched on one footing (1 == 1.0), -1 for missing
    values and values that are not a released level."""
    at = {norm_key(v): i for i, v in enumerate(levels)}
    codes, uniques = pd.factorize(pd.Series(np.asarray(values, dtype=object)), use_na_sentinel=True)
    lut = np.append(np.asarray([at.get(norm_key(u), -1) for u in uniques], dtype=np.intp), -1)
    return lut[codes]


def flag_matrix(flag: dict[str, Any], levels_a: list[Any], levels_b: list[Any]) -> np.ndarray:
    """The flagged pair's empty cells as a boolean levels_a x levels_b matrix (a flagged value
    that is not a released level is ignored: the bundle reader refuses such a flag)."""
    at_a = {norm_key(v): i for i, v in enumerate(levels_a)}
    at_b = {norm_key(v): i for i, v in enumerate(levels_b)}
    out = np.zeros((len(levels_a), len(levels_b)), dtype=bool)
    for va, vb in flag["cells"]:
        i, j = at_a.get(norm_key(va)), at_b.get(norm_key(vb))
        if i is not None and j is not None:
            out[i, j] = True
    return out


def rows_in_cells(a: np.ndarray, b: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """Boolean per row: its (a, b) codes fall in a flagged cell (codes -1 never do)."""
    ok = (a >= 0) & (b >= 0)
    out = np.zeros(len(a), dtype=bool)
    out[ok] = empty[a[ok], b[ok]]
    return out


def source_levels(release: dict[str, Any], column: str) -> list[Any]:
    """The released levels of a categorical column at source level ([] when it has none)."""
    m = release["blocks"]["all"]["marginals"].get(column) or {}
    if m.get("kind") != "categorical":
        return []
    return list(m["table"]["levels"])


def flagged_rows(frame: Any, release: dict[str, Any], flag: dict[str, Any]) -> np.ndarray:
    """Rows of `frame` (a mapping column -> values) inside one flag's empty cells."""
    a_col, b_col = flag["columns"]
    la, lb = source_levels(release, a_col), source_levels(release, b_col)
    return rows_in_cells(
        level_codes(frame[a_col], la), level_codes(frame[b_col], lb), flag_matrix(flag, la, lb)
    )


@dataclass(frozen=True)
class CellGuard:
    """The flagged pairs of a frame's columns, for swap machinery outside synthesis (the pin's
    cross-moment alignment): which proposed swaps would put rows into flagged cells."""

    codes: dict[str, np.ndarray]
    pairs: list[tuple[str, str, np.ndarray]]

    @classmethod
    def of(cls, frame: Any, release: dict[str, Any]) -> CellGuard | None:
        """None when the release flags no pair of columns the frame holds."""
        pairs: list[tuple[str, str, np.ndarray]] = []
        codes: dict[str, np.ndarray] = {}
        for f in release.get("empty_cells") or []:
            a, b = f["columns"]
            la, lb = source_levels(release, a), source_levels(release, b)
            if not (la and lb) or a not in frame or b not in frame:
                continue
            pairs.append((a, b, flag_matrix(f, la, lb)))
            codes.setdefault(a, level_codes(frame[a], la))
            codes.setdefault(b, level_codes(frame[b], lb))
        return cls(codes, pairs) if pairs else None

    def allowed(
        self,
        moved: Any,
        perm_of: Callable[[str], np.ndarray | None],
        r: np.ndarray,
        s: np.ndarray,
    ) -> np.ndarray:
        """Per swap of the columns `moved` between rows r[i] and s[i] (each column's values
        read through `perm_of(column)`, None for none): the swap puts no more rows into
        flagged cells than there are now."""
        moved = set(moved)
        before = np.zeros(len(r), dtype=np.int64)
        after = np.zeros(len(r), dtype=np.int64)

        def code(col: str, rows: np.ndarray) -> np.ndarray:
            p = perm_of(col)
            return self.codes[col][rows if p is None else p[rows]]

        for a, b, empty in self.pairs:
            if a not in moved and b not in moved:
                continue
            for x, y in ((r, s), (s, r)):
                now_a, now_b = code(a, x), code(b, x)
                new_a = code(a, y) if a in moved else now_a
                new_b = code(b, y) if b in moved else now_b
                before += rows_in_cells(now_a, now_b, empty)
                after += rows_in_cells(new_a, new_b, empty)
        return after <= before
