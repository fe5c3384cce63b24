"""Correlations of two-valued dims as an attacker reads them (each pair's 2x2 table, linked
across blocks), for the review and the secondary gate. Method: docs/method.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Finding = dict[str, Any]


def _memo(
    memo: dict[tuple[str, str, int], Any] | None, what: str, bid: str, k: int, compute: Any
) -> Any:
    """A per-check cache of the lookups below (each block's dims are looked up once)."""
    if memo is None:
        return compute()
    key = (what, bid, k)
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def _observed_rows_of(
    release: dict[str, Any], bid: str, dim: dict[str, Any]
) -> tuple[int, int] | None:
    """(rows on which the dim is observed, rows where it is high) in block `bid`, when the
    release gives both exactly and the dim is two-valued there; else None. Missing dims are
    observed on every row (high = missing); indicators and two-level ordered dims on the
    column's non-missing rows, with the level's count from the block's table."""
    block = release["blocks"][bid]
    m = block["marginals"].get(dim["column"])
    if m is None:
        return None
    rows = int(block["rows"])
    if dim["kind"] == "missing":
        return rows, int(m["missing"])
    if m["kind"] != "categorical":
        return None
    obs = rows - int(m["missing"])
    t = m["table"]
    counts = dict(zip(map(repr, t["levels"]), t["counts"], strict=True))
    if dim["kind"] == "indicator":
        level = repr(dim["level"])
    elif dim["kind"] == "ordered":
        src = release["blocks"]["all"]["marginals"][dim["column"]]["table"]
        if len(src["levels"]) != 2 or not set(counts) <= set(map(repr, src["levels"])):
            return None
        level = repr(src["levels"][1])
    else:
        return None
    if level in counts:
        return obs, int(counts[level])
    return (obs, 0) if int(t.get("suppressed", 0)) == 0 else None


def _pattern(release: dict[str, Any], bid: str, dim: dict[str, Any]) -> str:
    """A name for the rows a dim is observed on: every row, or a column's non-missing rows
    (columns sharing a missing pattern share one name)."""
    m = release["blocks"][bid]["marginals"].get(dim["column"], {})
    if dim["kind"] == "missing" or int(m.get("missing", 0)) == 0:
        return "*"
    for grp in release.get("missing_groups", []):
        if dim["column"] in grp:
            return grp[0]
    return dim["column"]


def _significant_digits(v: float) -> int:
    return len(repr(abs(v)).split("e")[0].replace(".", "").lstrip("0")) if v else 1


def released_digits(release: dict[str, Any]) -> int:
    """Significant digits the release's correlations carry: the most any of them shows (an
    unrounded float shows 15-17; a correlation that happens to be short, 0.2, is not a
    rounded one when its neighbours are not)."""
    most = 0
    for block in release["blocks"].values():
        for row in block["spearman"]:
            for v in row:
                if v is not None and v not in (0.0, 1.0, -1.0):
                    most = max(most, _significant_digits(v))
                    if most >= 15:
                        return most
    return most or 17


def _half_unit(v: float, digits: int) -> float:
    """Half a unit in the last released digit of correlation `v` (`digits` significant)."""
    if digits >= 15:
        return 1e-12
    return 0.5 * 10.0 ** (math.floor(math.log10(abs(v))) - digits + 1) if v else 0.5 * 10.0**-digits


def implied_cells(
    n: int, a: int | np.ndarray, b: int, r: float, digits: int = 17
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on the 2x2 cells (hh, hl, lh, ll) of two 0/1 dims with `a` and `b` high rows of
    `n`, given their phi (Spearman) `r` up to its released precision; `a` may be an array of
    candidate counts (the bounds then cover them all)."""
    av = np.atleast_1d(np.asarray(a, dtype="float64"))
    pa, pb = av / n, b / n
    scale = n * np.sqrt(pa * (1 - pa) * pb * (1 - pb))
    half = _half_unit(r, digits)
    hh = np.concatenate([n * pa * pb + (r - half) * scale, n * pa * pb + (r + half) * scale])
    aa = np.concatenate([av, av])
    cells = np.stack([hh, aa - hh, b - hh, n - aa - b + hh])
    return cells.min(axis=1), cells.max(axis=1)


def _small(lo: np.ndarray, hi: np.ndarray, k: int) -> bool:
    """Some cell whose every feasible integer value lies in 1..k-1."""
    first, last = np.ceil(lo - 1e-6), np.floor(hi + 1e-6)
    return bool(np.any((first <= last) & (first >= 1) & (last <= k - 1)))


def _dim_name(d: dict[str, Any]) -> str:
    return (
        f"{d['column']}={d['level']}"
        if d["kind"] == "indicator"
        else (f"{d['column']} missing" if d["kind"] == "missing" else d["column"])
    )


def _high_where_observed(
    release: dict[str, Any],
    bid: str,
    i: int,
    pattern: str,
    a: tuple[int, int],
    digits: int,
    memo: dict[tuple[str, str, int], Any] | None,
) -> tuple[int, int, int]:
    """(rows, fewest and most high rows) of dim i (observed on every row) on the rows where
    column `pattern` is observed: its high rows less those among the column's missing rows,
    exactly from the 2x2 table of i with the column's missing dim when that is derivable,
    else bounded by the column's missing count."""
    col = release["blocks"][bid]["marginals"][pattern]
    n_obs = int(release["blocks"][bid]["rows"]) - int(col["missing"])
    miss = next(
        (
            k
            for k, d in enumerate(release["dims"])
            if d["kind"] == "missing" and d["column"] == pattern
        ),
        None,
    )
    cells = (
        block_pair_cells(release, bid, i, miss, digits, memo)
        if miss is not None and miss != i
        else None
    )
    if cells is not None and np.allclose(cells[0], cells[1], atol=0.25):
        high = a[1] - int(round(float(cells[0][0])))  # less: i high and the column missing
        return n_obs, high, high
    return n_obs, max(0, a[1] - int(col["missing"])), min(a[1], n_obs)


def block_pair_cells(
    release: dict[str, Any],
    bid: str,
    i: int,
    j: int,
    digits: int | None = None,
    memo: dict[tuple[str, str, int], Any] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Bounds on the 2x2 cells of dims i, j in block `bid` derivable from the release alone
    (the released correlation and shares, or the shares when one dim is constant), or None.
    When one dim is observed on every row and the other on a column's observed rows only,
    the first one's share there is bounded (`_high_where_observed`) and the bounds widen."""
    dims = release["dims"]
    digits = released_digits(release) if digits is None else digits
    a = _memo(memo, "obs", bid, i, lambda: _observed_rows_of(release, bid, dims[i]))
    b = _memo(memo, "obs", bid, j, lambda: _observed_rows_of(release, bid, dims[j]))
    if a is None or b is None:
        return None
    pa = _memo(memo, "pattern", bid, i, lambda: _pattern(release, bid, dims[i]))
    pb = _memo(memo, "pattern", bid, j, lambda: _pattern(release, bid, dims[j]))
    if pa != pb and "*" in (pa, pb):  # i on every row, j on a column's observed rows
        if pa != "*":
            i, j, a, b, pb = j, i, b, a, pa
        span = _high_where_observed(release, bid, i, pb, a, digits, memo)
    elif pa == pb and a[0] == b[0]:
        span = (a[0], a[1], a[1])
    else:
        return None
    n, r = b[0], release["blocks"][bid]["spearman"][i][j]
    if n == 0:
        return np.zeros(4), np.zeros(4)
    highs = np.arange(span[1], span[2] + 1)
    if b[1] in (0, n) or (span[1] == span[2] and span[1] in (0, n)):
        bounds = [_cells_given(n, int(h), b[1], r, digits) for h in highs]
        if any(c is None for c in bounds):
            return None
        return np.min([c[0] for c in bounds], axis=0), np.max([c[1] for c in bounds], axis=0)  # type: ignore[index]
    if r is None or highs[0] <= 0 or highs[-1] >= n:  # withheld, or a constant among the candidates
        return None if r is None else _cells_span(n, highs, b[1], r, digits)
    return implied_cells(n, highs, b[1], float(r), digits)


def _cells_span(
    n: int, highs: np.ndarray, b: int, r: float, digits: int
) -> tuple[np.ndarray, np.ndarray]:
    """`implied_cells` over candidate counts some of which make a dim constant."""
    parts = [_cells_given(n, int(h), b, r, digits) for h in highs]
    return np.min([c[0] for c in parts], axis=0), np.max([c[1] for c in parts], axis=0)  # type: ignore[index]


def _cells_given(
    n: int, a: int, b: int, r: float | None, digits: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Bounds on the 2x2 cells given both high counts and the correlation (None: withheld)."""
    if a in (0, n) or b in (0, n):  # a constant dim: the table follows from the shares
        hh = a if b == n else (b if a == n else 0)
        cells = np.asarray([hh, a - hh, b - hh, n - a - b + hh], dtype="float64")
        return cells, cells
    if r is None:
        return None
    return implied_cells(n, a, b, float(r), digits)


def _two_valued(release: dict[str, Any]) -> list[int]:
    """Dims two-valued by the release: missingness, indicators, two-level ordered columns."""
    out = []
    for k, d in enumerate(release["dims"]):
        if d["kind"] in ("missing", "indicator"):
            out.append(k)
        elif d["kind"] == "ordered":
            m = release["blocks"]["all"]["marginals"].get(d["column"], {})
            if m.get("kind") == "categorical" and len(m["table"]["levels"]) == 2:
                out.append(k)
    return out


def _pair_finding(
    release: dict[str, Any], block: str, i: int, j: int, withhold: str, finding: str
) -> Finding:
    """A correlations finding on the pair of dims (i, j) in `block`."""
    return {
        "check": "correlations",
        "source": release["source"],
        "block": block,
        "dims": [_dim_name(release["dims"][i]), _dim_name(release["dims"][j])],
        "pair": [i, j],
        "withhold": withhold,
        "finding": finding,
    }


def _block_pair_checks(
    release: dict[str, Any],
    i: int,
    j: int,
    min_cell: int,
    context: tuple[dict[str, int], dict[tuple[str, str, int], Any], int],
    findings: list[Finding],
) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """Check the pair (i, j) in every block where its correlation is released (`context`:
    the counters, the memo of `block_pair_cells` and the release's digits); returns each
    block's cell bounds."""
    stats, memo, digits = context
    known: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
    for bid in release["blocks"]:
        known[bid] = bounds = block_pair_cells(release, bid, i, j, digits, memo)
        if release["blocks"][bid]["spearman"][i][j] is None:
            continue
        if bounds is None:
            stats["pairs_not_derivable"] += 1
            continue
        stats["pairs_checked"] += 1
        if _small(*bounds, min_cell):
            findings.append(
                _pair_finding(
                    release,
                    bid,
                    i,
                    j,
                    bid,
                    f"the released correlation and shares pin a cell of their 2x2 table to 1..{min_cell - 1} rows",
                )
            )
    return known


def _linked_pair_check(
    release: dict[str, Any],
    i: int,
    j: int,
    min_cell: int,
    known: dict[str, tuple[np.ndarray, np.ndarray] | None],
    stats: dict[str, int],
) -> Finding | None:
    """The pair (i, j) across the linked blocks: when exactly one member block's table is
    unknown, it is the source's minus the others' (a finding when that pins a cell)."""
    strata = [c["id"] for c in release["strata"]["cells"]] if release["strata"]["columns"] else []
    source_bounds = known.get("all")
    if not strata or source_bounds is None:
        return None
    members = {bid: known.get(bid) for bid in strata}
    if int(release["strata"].get("residual_rows", 0)):
        members["residual"] = None
    unknown = [bid for bid, v in members.items() if v is None]
    if len(unknown) != 1:
        return None
    stats["linked_checked"] += 1
    others = [bounds for b, bounds in members.items() if b not in unknown and bounds is not None]
    lo = source_bounds[0] - sum(bounds[1] for bounds in others)
    hi = source_bounds[1] - sum(bounds[0] for bounds in others)
    if not _small(lo, hi, min_cell):
        return None
    return _pair_finding(
        release,
        unknown[0],
        i,
        j,
        "all",
        f"the source-level 2x2 table minus the other blocks' pins a cell of this block's table to 1..{min_cell - 1} rows",
    )


def check_correlations(
    release: dict[str, Any], min_cell: int
) -> tuple[list[Finding], dict[str, int]]:
    """Every released correlation of two two-valued dims, in every block: the 2x2 cells its
    value implies with the released shares; a finding when a cell is pinned to 1..k-1 rows.
    Then across the linked blocks (source = strata + residual): a block whose pair table is
    the source's minus the others' is checked the same way."""
    findings: list[Finding] = []
    stats = {"pairs_checked": 0, "pairs_not_derivable": 0, "linked_checked": 0}
    memo: dict[tuple[str, str, int], Any] = {}
    two = _two_valued(release)
    digits = released_digits(release)
    for x, i in enumerate(two):
        for j in two[x + 1 :]:
            known = _block_pair_checks(release, i, j, min_cell, (stats, memo, digits), findings)
            linked = _linked_pair_check(release, i, j, min_cell, known, stats)
            if linked is not None:
                findings.append(linked)
    return findings, stats


def suppress_linked_pairs(release: dict[str, Any], min_cell: int) -> int:
    """Secure side, after every block is built: withhold (set to None) each correlation of
    two-valued dims whose release would pin a cell of some block's 2x2 table to
    1..min_cell-1 rows (`check_correlations`): the source-level one when the pin comes from
    the linked blocks, the block's own otherwise. Returns the number withheld."""
    n = 0
    for _ in range(len(release["blocks"]) + 1):  # each pass withholds or ends; one usually suffices
        found, _stats = check_correlations(release, min_cell)
        if not found:
            break
        for f in found:
            i, j = f["pair"]
            S = release["blocks"][f["withhold"]]["spearman"]
            if S[i][j] is not None:
                S[i][j] = S[j][i] = None
                n += 1
    return n
