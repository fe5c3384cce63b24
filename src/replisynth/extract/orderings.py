"""Logical orderings that hold in every row of a source (x <= y between numeric columns of one
range; a = 1 => b = 1 between 0/1 columns), released as flags so that the pin keeps them.
Method: docs/method.md, "Orderings"; why the flags are safe: docs/disclosure.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from replisynth.disclosure.sdc import SdcLog, ordering_backed
from replisynth.io.schema import ColumnSpec

MAX_COLUMNS = 64  # numeric columns examined, in release order
MAX_PAIRS = 512  # column pairs checked against every row
PROBE = 4096  # rows checked first: most pairs that do not hold fail there
MIN_OVERLAP = 0.5  # a `le` pair's ranges share at least this share of the narrower one


@dataclass(frozen=True)
class _Column:
    values: np.ndarray  # float, missing as NaN
    integer: bool
    lo: float
    hi: float
    binary: bool


def _numeric_columns(
    work: pd.DataFrame, specs: list[ColumnSpec], marginals: dict[str, Any], skip: set[str]
) -> dict[str, _Column]:
    """Released numeric columns (at most MAX_COLUMNS) with their range and kind."""
    out: dict[str, _Column] = {}
    for s in specs:
        m = marginals.get(s.name)
        if s.role not in ("continuous", "categorical") or s.name in skip:
            continue
        if m is None or m.get("kind") == "suppressed":
            continue
        col = work[s.name]
        if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
            continue
        v = col.to_numpy(dtype="float64", na_value=np.nan)
        if np.isfinite(v).sum() == 0:
            continue
        out[s.name] = _Column(
            v,
            bool(s.integer) or pd.api.types.is_bool_dtype(col),
            float(np.nanmin(v)),
            float(np.nanmax(v)),
            _is_binary(v),
        )
        if len(out) >= MAX_COLUMNS:
            break
    return out


def _is_binary(v: np.ndarray) -> bool:
    f = v[np.isfinite(v)]
    return bool(np.all((f == 0) | (f == 1)) and (f == 0).any() and (f == 1).any())


def _violated(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether some row with both values observed has x > y (first rows probed alone)."""
    head = slice(0, PROBE)
    if np.any(x[head] > y[head]):  # NaN compares False: missing values never violate
        return True
    return bool(np.any(x > y))


def _similar(a: _Column, b: _Column) -> bool:
    """Same integer-ness, both ranges non-degenerate and sharing at least MIN_OVERLAP of the
    narrower one."""
    narrow = min(a.hi - a.lo, b.hi - b.lo)
    overlap = min(a.hi, b.hi) - max(a.lo, b.lo)
    return a.integer == b.integer and narrow > 0 and overlap >= MIN_OVERLAP * narrow


def _safe_le(x: np.ndarray, y: np.ndarray, k: int) -> bool:
    """x <= y may be released: at least k rows with x < y and k with x == y, and the rows
    whose value the ordering would fix (y at x's minimum, x at y's maximum) 0 or >= k."""
    both = np.isfinite(x) & np.isfinite(y)
    xb, yb = x[both], y[both]
    if len(xb) == 0:
        return False
    groups = (
        np.count_nonzero(xb < yb),
        np.count_nonzero(xb == yb),
    )
    fixed = (np.count_nonzero(yb <= xb.min()), np.count_nonzero(xb >= yb.max()))
    return bool(min(groups) >= k and all(f == 0 or f >= k for f in fixed))


def _safe_implies(a: np.ndarray, b: np.ndarray, k: int) -> bool:
    """a = 1 => b = 1 may be released: the three other cells of the 2 x 2 table hold >= k rows."""
    both = np.isfinite(a) & np.isfinite(b)
    ab, bb = a[both], b[both]
    cells = (
        np.count_nonzero((ab == 1) & (bb == 1)),
        np.count_nonzero((ab == 0) & (bb == 1)),
        np.count_nonzero((ab == 0) & (bb == 0)),
    )
    return bool(min(cells) >= k)


def _flag(lo: str, hi: str, binary: bool) -> dict[str, str]:
    if binary:
        return {"kind": "implies", "if": lo, "then": hi}
    return {"kind": "le", "lo": lo, "hi": hi}


def _candidate_pairs(cols: dict[str, _Column]) -> list[tuple[str, str, bool]]:
    """Pairs worth checking, at most MAX_PAIRS: two 0/1 columns, or two other numeric columns
    of one kind and range (`_similar`)."""
    names = list(cols)
    pairs: list[tuple[str, str, bool]] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ca, cb = cols[a], cols[b]
            if ca.binary and cb.binary:
                pairs.append((a, b, True))
            elif not ca.binary and not cb.binary and _similar(ca, cb):
                pairs.append((a, b, False))
            if len(pairs) >= MAX_PAIRS:
                return pairs
    return pairs


def detect_orderings(
    work: pd.DataFrame,
    specs: list[ColumnSpec],
    marginals: dict[str, Any],
    min_cell: int,
    skip: set[str] | None = None,
) -> list[dict[str, str]]:
    """The orderings that hold in every row where both columns are observed and pass the
    disclosure conditions (`_safe_le`, `_safe_implies`); `skip` names columns left out (the
    strata). Implications still need their pair's correlation released (`gate_orderings`)."""
    cols = _numeric_columns(work, specs, marginals, skip or set())
    out: list[dict[str, str]] = []
    for a, b, binary in _candidate_pairs(cols):
        x, y = cols[a].values, cols[b].values
        safe = _safe_implies if binary else _safe_le
        for lo, hi, u, v in ((a, b, x, y), (b, a, y, x)):
            if not _violated(u, v) and safe(u, v, min_cell):
                out.append(_flag(lo, hi, binary))
    return out


def gate_orderings(release: dict[str, Any]) -> SdcLog:
    """Keep an implication only where the source-level block releases its pair's correlation
    (with both shares and the row count it gives the 2 x 2 table, so the flag adds nothing);
    log each released flag. Call after the correlation gates (the final matrix)."""
    log = SdcLog()
    flags = release.get("orderings") or []
    if not flags:
        release.pop("orderings", None)
        return log
    keep = []
    for o in flags:
        if not ordering_backed(release, o):
            continue
        what = (
            f"{o['if']} = 1 implies {o['then']} = 1"
            if o["kind"] == "implies"
            else f"{o['lo']} <= {o['hi']}"
        )
        keep.append(o)
        log.add(
            "orderings",
            "released",
            f"{what} in every row where both are observed: released as a flag the pin keeps "
            "(each group it describes holds at least min_cell_size rows; docs/disclosure.md)",
            source=release["source"],
        )
    if keep:
        release["orderings"] = keep
    else:
        release.pop("orderings", None)
    return log
