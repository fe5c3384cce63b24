"""Marginal distributions: percentile grids, frequency tables with small-cell suppression,
and the apportioning of released shares into exact counts. Method: docs/method.md,
"Marginals".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

GRID = np.linspace(0.0, 1.0, 101)


# IAB practice: the percentiles a group of n observations may release.
ADAPTIVE_LEVELS: list[tuple[int, list[float]]] = [
    (2000, [float(p) for p in range(101)]),
    (400, [1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99]),
    (200, [5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95]),
    (80, [10, 20, 30, 40, 50, 60, 70, 80, 90]),
    (40, [25, 50, 75]),
    (20, [50]),
]
GRID_METHODS = ("fixed", "adaptive", "pseudo", "adaptive+pseudo")


def adaptive_levels(n: int) -> list[float]:
    """Percent levels an IAB-style adaptive grid releases for n observations (none below 20)."""
    for size, levels in ADAPTIVE_LEVELS:
        if n >= size:
            return levels
    return []


def pseudo_percentiles(
    v: np.ndarray, levels: np.ndarray, window: int = 11, dominance: float | None = None
) -> np.ndarray:
    """FSRDC pseudo-percentiles: each the mean of the `window` order statistics centred on
    the percentile's rank (shifted inside the sample at the ends), never an observed value
    unless ties make it one.

    With `dominance` (a share in (0, 1]), a window whose two largest contributors (by
    absolute value) exceed that share of its absolute total is widened (21, 43, ... values)
    until it passes: a mean dominated by one or two units would disclose them."""
    x = np.sort(np.asarray(v, dtype="float64"))
    n = len(x)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    ax = np.abs(x)
    rank = np.round(np.asarray(levels, dtype="float64") / 100.0 * (n - 1)).astype(int)
    out = np.empty(len(rank))
    for i, r in enumerate(rank):
        w = min(window, n)
        while True:
            start = int(np.clip(r - w // 2, 0, n - w))
            if dominance is None or w >= n:
                break
            seg = ax[start : start + w]
            total = seg.sum()
            top2 = np.sort(seg)[-2:].sum() if w >= 2 else total
            if total <= 0 or top2 <= dominance * total:
                break
            w = min(2 * w + 1, n)
        out[i] = (csum[start + w] - csum[start]) / w
    return out


def dominance_share(values: np.ndarray) -> float:
    """Share of the absolute total held by the two largest contributors."""
    a = np.sort(np.abs(np.asarray(values, dtype="float64")))
    total = a.sum()
    return float(a[-2:].sum() / total) if total > 0 else 0.0


# Thinned grids (docs/method.md, "Percentile grids"): a percentile is an order statistic, so a
# grid of L percent levels releases up to L of a block's values exactly. Percentiles are
# released only while that is at most EXACT_SHARE of the block's n; smaller blocks (and every
# pseudo-percentile grid) release means of non-overlapping windows of consecutive order
# statistics instead, after the extremes are coded.
EXACT_SHARE = 0.05
THIN_WINDOW = 5  # values per window of a thinned grid, at least
PSEUDO_WINDOW = 11  # FSRDC: a pseudo-percentile is a mean of at least 11 values
MAX_WINDOWS = 100


@dataclass(frozen=True)
class GridRelease:
    """A released grid: the 101-point grid synthesis and verification read, the percent
    levels it was built from (None: all 101 percentiles), and for window grids the number
    of values behind each window and its mean (the released points, at the window's
    mid-rank level)."""

    grid: np.ndarray
    levels: list[float] | None = None
    window_sizes: list[int] | None = None
    window_means: list[float] | None = None

    def fields(self, method: str) -> dict[str, Any]:
        """The bundle fields beside `grid` that say how it was built: the method (unless
        fixed), the percent levels (unless all 101), the windows' sizes and means."""
        out: dict[str, Any] = {} if method == "fixed" else {"method": method}
        if self.levels is not None:
            out["released_levels"] = self.levels
        if self.window_sizes is not None:
            out["window_sizes"] = self.window_sizes
            out["window_means"] = self.window_means
        return out


def coded_per_end(n: int, trim: float) -> int:
    """Values coded at each end of a window grid: the `trim` percent, and at least two (so a
    window never holds the minimum or maximum); none when `trim` is 0."""
    if trim <= 0:
        return 0
    return int(max(np.ceil(n * trim / 100.0 - 1e-9), 2))


def uses_windows(n: int, method: str) -> bool:
    """Whether a block of n values gets a window grid: always for pseudo-percentiles, and
    whenever its percentile levels would release more than EXACT_SHARE of its values or stop
    short of p1 and p99 (synthesis puts the whole flat tail beyond the outermost level on
    that one order statistic: a quarter of a stratum's synthetic rows on its q25)."""
    if "pseudo" in method:
        return True
    levels = released_levels(n, method)
    return len(levels) > EXACT_SHARE * n or not levels or min(levels) > 1 or max(levels) < 99


def window_bounds(n: int, trim: float, min_window: int, max_windows: int) -> np.ndarray | None:
    """Boundaries (indices into the sorted values, ascending) of the non-overlapping windows
    of a window grid: the values left after coding `coded_per_end` at each end, split into
    at most `max_windows` windows of at least `min_window` values (sizes differ by at most
    one). None when fewer than `min_window` values are left."""
    c = coded_per_end(n, trim)
    core = n - 2 * c
    if core < min_window or max_windows < 1:
        return None
    m = max(min(max_windows, core // min_window), 1)
    return c + np.round(np.linspace(0, core, m + 1)).astype(int)


def merge_dominated(x: np.ndarray, bounds: np.ndarray, dominance: float) -> np.ndarray:
    """Merge windows (of sorted `x`) whose two largest absolute values exceed `dominance` of
    the window's absolute total into their smaller neighbour until none does: a mean
    dominated by one or two units would disclose them."""
    b = list(bounds)
    share = [dominance_share(x[b[j] : b[j + 1]]) for j in range(len(b) - 1)]
    while len(b) > 2:
        bad = [j for j, v in enumerate(share) if v > dominance]
        if not bad:
            break
        j = bad[0]
        left = b[j] - b[j - 1] if j > 0 else None
        right = b[j + 2] - b[j + 1] if j + 2 < len(b) else None
        if right is None or (left is not None and left <= right):
            del b[j], share[j]  # merged with the window on the left, now window j - 1
            j -= 1
        else:
            del b[j + 1], share[j + 1]
        share[j] = dominance_share(x[b[j] : b[j + 1]])
    return np.asarray(b, dtype=int)


def window_release(
    values: np.ndarray,
    trim: float,
    min_window: int,
    max_windows: int,
    dominance: float | None = None,
) -> GridRelease | None:
    """A window grid: means of non-overlapping windows of consecutive order statistics (none
    of them among the coded extremes), each placed at its window's mid-rank level, the
    101-point grid interpolated through them and flat beyond the outermost. None when the
    block is too small for one window."""
    x = np.sort(np.asarray(values, dtype="float64"))
    n = len(x)
    b = window_bounds(n, trim, min_window, max_windows)
    if b is None:
        return None
    if dominance is not None:
        b = merge_dominated(x, b, dominance)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    sizes = np.diff(b)
    means = np.maximum.accumulate((csum[b[1:]] - csum[b[:-1]]) / sizes)
    levels = 100.0 * (b[1:] + b[:-1]) / (2.0 * n)
    grid = np.interp(np.arange(101, dtype="float64"), levels, means)
    return GridRelease(
        np.maximum.accumulate(grid),
        [float(v) for v in levels],
        [int(v) for v in sizes],
        [float(v) for v in means],
    )


def grid_release(
    values: np.ndarray, trim: float, method: str = "fixed", dominance: float | None = None
) -> GridRelease:
    """The released grid of a block: percentiles (`percentile_grid`) when their levels number
    at most EXACT_SHARE of its n and the values they expose (`exposed_share`) too, else a
    window grid (`window_release`) with at most as many windows as the method's percentile
    levels (100 for fixed and pseudo), windows of THIN_WINDOW values or PSEUDO_WINDOW for
    pseudo-percentiles."""
    n = len(values)
    if not uses_windows(n, method):
        x = np.sort(np.asarray(values, dtype="float64"))
        levels = released_levels(n, method)
        grid = percentile_grid(x, trim, method, presorted=True)
        if exposed_share(x, grid) <= EXACT_SHARE:
            return GridRelease(grid, None if len(levels) == 101 else levels)
    cap = min(len(released_levels(n, method)), MAX_WINDOWS) if "adaptive" in method else MAX_WINDOWS
    out = window_release(
        values, trim, PSEUDO_WINDOW if "pseudo" in method else THIN_WINDOW, cap, dominance
    )
    if out is None:
        raise ValueError(f"a {method} grid releases nothing for {n} values")
    return out


def exposed_share(x: np.ndarray, points: np.ndarray, atom: int = THIN_WINDOW) -> float:
    """Share of the sorted values `x` that equal one of `points` and are held by fewer than
    `atom` values (with ties, one released percentile can expose up to atom − 1 rows)."""
    if len(x) == 0:
        return 0.0
    u = np.unique(np.asarray(points, dtype="float64"))
    held = np.searchsorted(x, u, side="right") - np.searchsorted(x, u, side="left")
    return float(held[held < atom].sum() / len(x))


def grid_releasable(n: int, trim: float, method: str) -> bool:
    """Whether a block of n values releases a grid under `method` (a percentile grid that
    exposes too many tied values falls back to windows, which n >= 20 always allows)."""
    if not uses_windows(n, method):
        return bool(released_levels(n, method))
    cap = min(len(released_levels(n, method)), MAX_WINDOWS) if "adaptive" in method else MAX_WINDOWS
    return (
        window_bounds(n, trim, PSEUDO_WINDOW if "pseudo" in method else THIN_WINDOW, cap)
        is not None
    )


def quantile_grid(
    values: np.ndarray, trim: float, method: str = "fixed", dominance: float | None = None
) -> np.ndarray:
    """The 101-point grid of `grid_release` (percentiles or window means, top/bottom coded)."""
    return grid_release(values, trim, method, dominance).grid


def percentile_grid(
    values: np.ndarray, trim: float, method: str = "fixed", presorted: bool = False
) -> np.ndarray:
    """101 percentiles of `values` (non-missing) with `trim` percent top/bottom coding.

    method: fixed (every percentile), adaptive (only the percentiles n supports, the grid
    interpolated through them and flat beyond the outermost). The result is always the
    101-point grid synthesis uses; with adaptive grids it is a function of the released
    points only (see `released_levels`). `presorted`: `values` are sorted float64 already."""
    # One sort serves every percentile (np.percentile on sorted data selects in linear
    # time; the order statistics, hence the result, are the same).
    v = values if presorted else np.sort(np.asarray(values, dtype="float64"))
    n = len(v)
    levels = np.asarray(
        adaptive_levels(n) if "adaptive" in method else list(range(101)), dtype="float64"
    )
    if len(levels) == 0:
        raise ValueError(f"an adaptive grid releases nothing for {n} values")
    q = sorted_percentiles(v, levels)
    if trim > 0 and len(levels) > 1:
        # With fewer than 100/trim values the trim percentile would be the raw extreme
        # itself; code at least the two most extreme values (the cut is then an average of
        # the 2nd and 3rd order statistics, never an observed extreme).
        t = min(max(trim, 200.0 / n), 50.0)
        lo, hi = sorted_percentiles(v, np.asarray([t, 100 - t]))
        q = np.clip(q, lo, hi)
    q = np.maximum.accumulate(q)
    if len(levels) == 101:
        return q
    return np.interp(np.arange(101, dtype="float64"), levels, q)


def size_step(min_cell: int) -> float:
    """Rounding step of a released group-size window mean: a power of ten at least
    2/min_cell, so a window of min_cell groups has its total known only to within ±1 row or
    more (a window's exact total, with its neighbours, can pin a size held by one group)."""
    return float(10.0 ** np.ceil(np.log10(2.0 / max(min_cell, 1)) - 1e-9))


def size_windows(
    sizes: np.ndarray, min_cell: int, dominance: float | None = None
) -> list[dict[str, float]] | None:
    """Group sizes as non-overlapping windows of at least `min_cell` consecutive sorted sizes
    (at most MAX_WINDOWS of them): per window its number of groups and its mean size rounded
    to `size_step`. None with fewer than 2·min_cell groups (only the count and mean leave).
    Disjoint windows cannot be differenced: no sum of fewer than min_cell sizes follows."""
    x = np.sort(np.asarray(sizes, dtype="float64"))
    if len(x) < 2 * min_cell:
        return None
    b = window_bounds(len(x), 0.0, min_cell, MAX_WINDOWS)
    assert b is not None
    if dominance is not None:
        b = merge_dominated(x, b, dominance)
    step = size_step(min_cell)
    out = []
    for lo, hi in zip(b[:-1], b[1:], strict=True):
        mean = float(np.round(x[lo:hi].mean() / step) * step)
        out.append({"groups": int(hi - lo), "mean": round(mean, 6)})
    return out


def released_group_sizes(group: dict[str, Any], G: int) -> np.ndarray:
    """G group sizes (ascending, at least 1, not yet scaled to the rows) from a released
    group-size distribution: `size_windows` (each window's mean at its mid-rank, linear in
    between, flat beyond), a `size_grid` of older bundles, else the mean size."""
    wins = group.get("size_windows")
    u = (np.arange(G) + 0.5) / max(G, 1)
    if wins:
        counts = np.asarray([w["groups"] for w in wins], dtype="float64")
        ends = np.cumsum(counts)
        mids = (ends - counts / 2.0) / ends[-1]
        sizes = np.interp(u, mids, np.asarray([w["mean"] for w in wins], dtype="float64"))
    elif group.get("size_grid") is not None:
        sizes = quantile_function(np.asarray(group["size_grid"]), u)
    else:
        return np.full(G, float(group["mean_size"]))
    return np.maximum(np.round(sizes), 1.0)


def largest_group_size(group: dict[str, Any]) -> int | None:
    """The largest size a released distribution supports (None when only the mean left)."""
    wins = group.get("size_windows")
    if wins:
        return int(np.ceil(max(w["mean"] for w in wins) - 1e-9))
    if group.get("size_grid") is not None:
        return int(np.ceil(max(group["size_grid"]) - 1e-9))
    return None


def sorted_percentiles(xs: np.ndarray, p: np.ndarray) -> np.ndarray:
    """`np.percentile(xs, p, method="averaged_inverted_cdf")` of sorted, finite `xs`, read
    off the order statistics without numpy's copy and partition: with h = n·p/100 − 1, the
    mean of x_(h) and x_(h+1) where h is whole, else x_(⌊h⌋+1), clamped to the extremes.
    The same float operations as numpy's (b − (b − a)·0.5 for the mean), so the same bits."""
    xs = np.asarray(xs, dtype="float64")
    n = len(xs)
    if n == 0:
        return np.full(len(p), np.nan)
    virt = n * np.true_divide(np.asarray(p, dtype="float64"), 100) - 1
    prev = np.floor(virt)
    inside = (virt >= 0) & (virt < n - 1)
    i = np.where(inside, prev, 0).astype(np.intp)
    a, b = xs[i], xs[np.minimum(i + 1, n - 1)]
    mid = np.where(virt - prev == 0, b - (b - a) * 0.5, b)
    return np.where(inside, mid, np.where(virt < 0, xs[0], xs[-1]))


def released_levels(n: int, method: str) -> list[float]:
    """The percent levels a grid of `method` actually releases for n values."""
    return adaptive_levels(n) if "adaptive" in method else [float(p) for p in range(101)]


def quantile_function(grid: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse CDF piecewise linear through the released grid (p = 0, .01, ..., 1)."""
    return np.interp(u, GRID, np.asarray(grid, dtype="float64"))


def grid_cdf(grid: np.ndarray, x: np.ndarray, integer: bool = False) -> np.ndarray:
    """CDF of the released distribution at `x`; for integer columns, of its rounding to
    integers (P(round(Q(U)) <= x) = F(floor(x) + 0.5), rounding half away from zero aside)."""
    g = np.asarray(grid, dtype="float64")
    x = np.asarray(x, dtype="float64")
    if integer:
        x = np.floor(x) + 0.5
    # F(x) = sup{p : Q(p) <= x}; np.interp over the (monotone) grid with right-continuity
    # For each x find the last grid index with g <= x
    idx = np.searchsorted(g, x, side="right") - 1
    if len(g) >= 2:
        # The interpolation runs over every x (indices clipped into range), then the two
        # tails are overwritten: the same arithmetic per value as the masked form below,
        # without its gathers and scatters.
        i = np.clip(idx, 0, len(g) - 2)
        g0, g1 = g[i], g[i + 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(g1 > g0, (x - g0) / (g1 - g0), 1.0)
        out = GRID[i] + frac * (GRID[i + 1] - GRID[i])
        out[idx < 0] = 0.0
        out[idx >= len(g) - 1] = 1.0
        return np.clip(out, 0.0, 1.0)
    out = np.empty_like(x)
    below = idx < 0
    above = idx >= len(g) - 1
    mid = ~(below | above)
    i = idx[mid]
    g0, g1 = g[i], g[i + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(g1 > g0, (x[mid] - g0) / (g1 - g0), 1.0)
    out[mid] = GRID[i] + frac * (GRID[i + 1] - GRID[i])
    out[below] = 0.0
    out[above] = 1.0
    return np.clip(out, 0.0, 1.0)


def grid_cdf_sorted(grid: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`grid_cdf(grid, x)` for ascending `x`, bit for bit, in a fraction of the time: the
    values between two grid points are one slice of x (found by searching the ~101 grid
    points in x, not each value in the grid), interpolated with that interval's scalars."""
    g = np.asarray(grid, dtype="float64")
    x = np.asarray(x, dtype="float64")
    if len(g) < 2 or len(x) == 0:
        return grid_cdf(g, x)
    # x[b[i]:b[i+1]] is where the last grid point <= x is g[i] (empty for flat stretches)
    b = np.searchsorted(x, g, side="left")
    out = np.empty_like(x)
    out[: b[0]] = 0.0
    out[b[-1] :] = 1.0
    for i in range(len(g) - 1):
        s, e = b[i], b[i + 1]
        if s == e:
            continue
        # the arithmetic of grid_cdf: GRID[i] + (x - g0) / (g1 - g0) * (GRID[i+1] - GRID[i])
        o = out[s:e]
        np.subtract(x[s:e], g[i], out=o)
        np.divide(o, g[i + 1] - g[i], out=o)
        np.multiply(o, GRID[i + 1] - GRID[i], out=o)
        np.add(GRID[i], o, out=o)
    return np.clip(out, 0.0, 1.0, out=out)


def exact_quantile_sample(grid: np.ndarray, n: int, integer: bool) -> np.ndarray:
    """The n values (ascending) whose empirical distribution is closest to the released one:
    Q((i - 0.5)/n), rounded for integer-valued columns."""
    u = (np.arange(n) + 0.5) / max(n, 1)
    x = quantile_function(grid, u)
    return np.round(x) if integer else x


@dataclass(frozen=True)
class FrequencyTable:
    """A released frequency table: released levels (in order) and their counts; `suppressed`
    rows (nominal tables) whose categories could not be released; `pooled` levels count."""

    levels: list[Any]
    counts: list[int]
    ordered: bool
    suppressed: int = 0
    pooled_levels: int = 0
    suppressed_levels: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": self.levels,
            "counts": self.counts,
            "ordered": self.ordered,
            "suppressed": self.suppressed,
            "pooled_levels": self.pooled_levels,
            "suppressed_levels": self.suppressed_levels,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrequencyTable:
        return cls(
            levels=list(d["levels"]),
            counts=[int(c) for c in d["counts"]],
            ordered=bool(d["ordered"]),
            suppressed=int(d.get("suppressed", 0)),
            pooled_levels=int(d.get("pooled_levels", 0)),
            suppressed_levels=int(d.get("suppressed_levels", 0)),
        )

    @property
    def total(self) -> int:
        return int(sum(self.counts)) + self.suppressed


def py_value(v: Any) -> Any:
    """A JSON-friendly Python scalar for a category value."""
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return int(f) if f.is_integer() else f
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return v if isinstance(v, (int, str)) else str(v)


def level_positions(
    values: list[Any], table: FrequencyTable, all_levels: list[Any] | None = None
) -> np.ndarray:
    """Position among `table.levels` of each distinct value in `values` (NaN: not released),
    plus a trailing NaN for the missing code -1, so `level_positions(...)[codes]` codes a
    factorized column in one gather. An ordered table with `all_levels` maps pooled levels to
    their nearest released neighbour (ties to the lower position, the pooling rule of
    `frequency_table`, as `dims.ordered_codes` does); otherwise only released levels count."""
    kept = {v: i for i, v in enumerate(table.levels)}
    mapping: dict[Any, float] = {v: float(i) for v, i in kept.items()}
    if table.ordered and all_levels is not None:
        pos_all = {v: i for i, v in enumerate(all_levels)}
        kept_pos = np.asarray([pos_all[v] for v in table.levels])
        mapping = {}
        for v, i in pos_all.items():
            if v in kept:
                mapping[v] = float(kept[v])
            elif len(kept_pos):
                dist = np.abs(kept_pos - i)
                mapping[v] = float(int(np.lexsort((kept_pos, dist))[0]))
    return np.asarray([mapping.get(v, np.nan) for v in values] + [np.nan], dtype="float64")


def level_order(values: list[Any]) -> list[Any]:
    """Sort category values: numerically when all are numbers or booleans, else as text."""
    if all(isinstance(v, (int, float, bool, np.integer, np.floating, np.bool_)) for v in values):
        return sorted(values, key=float)
    return sorted(values, key=str)


def frequency_table(
    s: pd.Series, min_cell: int, ordered: bool, order: list[Any] | None = None, pool: bool = True
) -> FrequencyTable:
    """Counts of the non-missing values of `s` with cells below `min_cell` suppressed.

    Ordered with `pool` (source-level tables): suppressed levels are pooled into the nearest
    released level (ties go down). Otherwise (nominal, or any table inside a stratum, which
    has the source-level table as reference): suppressed rows are kept as one count.
    `order` gives the level order of an ordered pandas categorical.
    """
    vc = s.value_counts(sort=False, dropna=True)
    raw: dict[Any, int] = {}
    for k, v in vc.items():
        if v > 0:  # raw values of one JSON value (1 and 1.0 in an object column) add up
            raw[py_value(k)] = raw.get(py_value(k), 0) + int(v)
    if order is not None:
        levels = [py_value(v) for v in order if py_value(v) in raw]
    else:
        levels = level_order(list(raw))
    counts = [raw[v] for v in levels]
    keep = [c >= min_cell for c in counts]
    if not any(keep):
        return FrequencyTable(
            [], [], ordered, suppressed=int(sum(counts)), suppressed_levels=len(levels)
        )
    if ordered and pool:
        kept_idx = [i for i, k in enumerate(keep) if k]
        pooled = {i: counts[i] for i in kept_idx}
        n_pooled = 0
        for i, k in enumerate(keep):
            if k:
                continue
            nearest = min(kept_idx, key=lambda j: (abs(j - i), j))
            pooled[nearest] += counts[i]
            n_pooled += 1
        return FrequencyTable(
            levels=[levels[i] for i in kept_idx],
            counts=[pooled[i] for i in kept_idx],
            ordered=True,
            pooled_levels=n_pooled,
        )
    sup = sum(c for c, k in zip(counts, keep, strict=True) if not k)
    return FrequencyTable(
        levels=[v for v, k in zip(levels, keep, strict=True) if k],
        counts=[c for c, k in zip(counts, keep, strict=True) if k],
        ordered=ordered,
        suppressed=int(sup),
        suppressed_levels=int(sum(not k for k in keep)),
    )


def synthesis_shares(
    table: FrequencyTable, reference: FrequencyTable | None = None
) -> tuple[list[Any], np.ndarray]:
    """Levels and shares synthesis uses: released counts plus the suppressed rows spread over
    (a) the reference table's released levels this table lacks, else (b) this table's levels,
    in proportion to the reference (or own) counts. Shares sum to 1 (empty table: no levels)."""
    levels = list(table.levels)
    mass = np.asarray(table.counts, dtype="float64")
    if table.suppressed > 0:
        ref = reference or table
        ref_counts = dict(zip(ref.levels, ref.counts, strict=True))
        extra = [v for v in ref.levels if v not in set(levels)]
        if extra:
            w = np.asarray([ref_counts[v] for v in extra], dtype="float64")
            levels = levels + extra
            mass = np.concatenate([mass, w * table.suppressed / w.sum()])
            if reference is not None and table.ordered:  # keep the reference's level order
                pos = {v: i for i, v in enumerate(reference.levels)}
                order = sorted(range(len(levels)), key=lambda i: pos.get(levels[i], i))
                levels = [levels[i] for i in order]
                mass = mass[order]
        elif len(levels):
            w = np.asarray(
                [ref_counts.get(v, c) for v, c in zip(levels, table.counts, strict=True)],
                dtype="float64",
            )
            mass = mass + w * table.suppressed / w.sum()
    total = mass.sum()
    return levels, (mass / total if total > 0 else mass)


def apportion(shares: np.ndarray, total: int) -> np.ndarray:
    """Largest-remainder (Hamilton) apportionment of `total` over `shares`; ties go to the
    earlier level, so the result is a pure function of its inputs."""
    shares = np.asarray(shares, dtype="float64")
    if total <= 0 or len(shares) == 0:
        return np.zeros(len(shares), dtype="int64")
    s = shares / shares.sum()
    quota = s * total
    base = np.floor(quota + 1e-9).astype("int64")
    rest = int(total - base.sum())
    if rest > 0:
        frac = quota - base
        order = np.lexsort((np.arange(len(s)), -np.round(frac, 12)))
        base[order[:rest]] += 1
    elif rest < 0:  # only through floating error
        order = np.argsort(-base, kind="stable")
        base[order[:-rest]] -= 1
    return base


def grid_level_shares(grid: np.ndarray, levels: list[Any]) -> np.ndarray:
    """Shares of ordered numeric `levels` under a released percentile grid: each level takes
    the probability between the midpoints to its neighbours."""
    x = np.asarray(levels, dtype="float64")
    cuts = (x[1:] + x[:-1]) / 2
    F = grid_cdf(np.asarray(grid, dtype="float64"), cuts)
    cdf = np.concatenate([[0.0], F, [1.0]])
    p = np.diff(cdf)
    return np.maximum(p, 0.0)


def rake_blocks(
    levels: list[Any],
    col_totals: np.ndarray,
    fixed: list[dict[Any, float]],
    free_mass: list[float],
    free_levels: list[list[Any]],
    iterations: int = 200,
) -> list[np.ndarray]:
    """Estimate the suppressed cells of a blocks × levels table by iterative proportional
    fitting (Deming & Stephan 1940): released cells stay fixed; each block's suppressed mass
    (`free_mass`) is spread over its unreleased levels (`free_levels`) so that, over all
    blocks, every level's total approaches `col_totals`. Returns per block the full vector
    of (released + estimated) counts over `levels`."""
    L = len(levels)
    idx = {v: i for i, v in enumerate(levels)}
    B = len(fixed)
    F = np.zeros((B, L))
    allowed = np.zeros((B, L), dtype=bool)
    for b in range(B):
        for v, c in fixed[b].items():
            if v in idx:
                F[b, idx[v]] = c
        for v in free_levels[b]:
            if v in idx:
                allowed[b, idx[v]] = True
    rem = np.maximum(np.asarray(col_totals, dtype="float64") - F.sum(axis=0), 0.0)
    rows = np.asarray(free_mass, dtype="float64")
    X = np.where(allowed, 1.0, 0.0) * np.where(rem > 0, rem, 1e-9)[None, :]
    for _ in range(iterations):
        rs = X.sum(axis=1)
        X = X * np.where(rs > 0, rows / np.where(rs > 0, rs, 1), 0)[:, None]
        cs = X.sum(axis=0)
        X = X * np.where(cs > 0, rem / np.where(cs > 0, cs, 1), 1)[None, :]
    rs = X.sum(axis=1)  # end on the row margins: block totals must hold exactly
    X = X * np.where(rs > 0, rows / np.where(rs > 0, rs, 1), 0)[:, None]
    # a block whose suppressed mass found no allowed level spreads it like the column totals
    for b in range(B):
        if rows[b] > 0 and X[b].sum() <= 0:
            w = (
                np.where(allowed[b], col_totals, 0.0)
                if allowed[b].any()
                else np.asarray(col_totals, dtype="float64")
            )
            X[b] = rows[b] * w / max(w.sum(), 1e-300)
    return [F[b] + X[b] for b in range(B)]
