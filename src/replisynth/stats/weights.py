"""Survey weights: weighted class totals and their dominance, the released shares as targets,
and the calibration (raking) of synthetic weights to them. Method: docs/method.md, "Survey
weights".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.manifest import formula_variables
from replisynth.stats.marginals import py_value

SHARE_DECIMALS = 3  # released weighted shares: multiples of 0.001
TOTAL_SIGNIFICANT = 3  # released weight total: 3 significant digits
SHARE_TOLERANCE = 0.005  # tier 1: synthetic weighted share within 0.5 points of the released one
RAKE_ITERATIONS = 200
GRID_STEP = 10  # weighted grids: the shares of the decile intervals of the released grid
REASSIGN_STEP = 0.5  # class shifts move by half the log share gap per round
# The scaling to the released total may move the weights' own distribution (tier 1's KS test
# of the weight column) by at most this over sqrt(rows) in KS distance: a grid trimmed at its
# ends holds less weight than the original's tails, and a full scaling then fails that test.
TOTAL_KS_BUDGET = 0.5
KS_POINTS = 1 << 16  # jumps of the weights' distribution `total_scale` reads the distance at


def class_weight_sums(cls: np.ndarray, w: np.ndarray, n: int) -> np.ndarray:
    """Sum of the weights `w` per class 0..n-1 of the class codes `cls` (-1: left out)."""
    keep = cls >= 0
    return np.bincount(cls[keep], weights=w[keep], minlength=n)[:n]


def class_top2_shares(cls: np.ndarray, w: np.ndarray, n: int) -> np.ndarray:
    """Per class, the share of its weight total held by its two largest weights (the top-2
    dominance of `marginals.dominance_share`, per cell); 0 for an empty class."""
    keep = cls >= 0
    c, v = cls[keep], w[keep]
    order = np.lexsort((v, c))
    c, v = c[order], v[order]
    out = np.zeros(n)
    ends = np.searchsorted(c, np.arange(n), side="right")
    starts = np.searchsorted(c, np.arange(n), side="left")
    totals = class_weight_sums(cls, w, n)
    for j in range(n):
        if ends[j] > starts[j] and totals[j] > 0:
            out[j] = v[max(starts[j], ends[j] - 2) : ends[j]].sum() / totals[j]
    return out


def round_total(total: float, significant: int = TOTAL_SIGNIFICANT) -> float:
    """`total` rounded to `significant` significant digits."""
    if total <= 0:
        return 0.0
    digits = significant - 1 - int(np.floor(np.log10(total)))
    return float(round(total, digits))


def target_shares(entry: dict[str, Any]) -> np.ndarray:
    """The weighted shares synthesis aims at over a table's released levels: the released
    shares with the suppressed bucket's share spread over the levels in proportion to theirs
    (as `marginals.synthesis_shares` spreads the bucket's rows), summing to 1."""
    s = np.asarray(entry["shares"], dtype="float64")
    s = s + s * float(entry.get("suppressed", 0.0)) / max(s.sum(), 1e-300)
    return s / max(s.sum(), 1e-300)


def level_classes(s: pd.Series, levels: list[Any]) -> np.ndarray:
    """Each row's position among the released `levels` (-1: missing or not a released level),
    matching values as the release writes them (`py_value`)."""
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    pos = {v: i for i, v in enumerate(levels)}
    lookup = np.asarray([pos.get(py_value(u), -1) for u in uniques] + [-1], dtype="int64")
    return lookup[codes]


@dataclass(frozen=True)
class Calibration:
    """Calibrated weights and the largest gap left between a synthetic weighted share and
    its target (over every calibrated column)."""

    weights: np.ndarray
    max_gap: float


def share_gap(cls: np.ndarray, w: np.ndarray, target: np.ndarray) -> float:
    """Largest |weighted share - target| over the classes of `cls`."""
    sums = class_weight_sums(cls, w, len(target))
    tot = sums.sum()
    return float(np.max(np.abs(sums / tot - target))) if tot > 0 else 1.0


Margins = list[tuple[np.ndarray, np.ndarray]]  # (class codes, -1: left out; target shares)


def _extended(margins: Margins) -> Margins:
    """Class codes with -1 moved to an extra last class, so one bincount needs no mask."""
    return [(np.where(c >= 0, c, len(t)).astype(np.intp), t) for c, t in margins]


def _sums(ext: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(ext, weights=w, minlength=k + 1)[:k]


def _gap(w: np.ndarray, ext: Margins) -> float:
    """Largest share gap over the margins (extended codes)."""
    out = 0.0
    for c, t in ext:
        sums = _sums(c, w, len(t))
        out = max(out, float(np.max(np.abs(sums / max(sums.sum(), 1e-300) - t))))
    return out


def rake(
    w0: np.ndarray,
    margins: Margins,
    total: float | None,
    lo: float,
    hi: float,
    tol: float = 1e-5,
) -> Calibration:
    """Raking (iterative proportional fitting, Deming & Stephan 1940) of the weights `w0` so
    each margin's weighted shares (class codes, targets) meet their targets, then scaled
    towards `total` as far as `total_scale` allows; every step bounded to [lo, hi] (bounded
    raking), so weights stay positive and in the released range."""
    ext = _extended(margins)
    w = np.clip(np.asarray(w0, dtype="float64"), lo, hi)
    reach = float(w.sum()) * total_scale(w, total) if total else None  # the total aimed at
    gap = 1.0
    for _ in range(RAKE_ITERATIONS):
        for c, target in ext:
            sums = _sums(c, w, len(target))
            tot = sums.sum()
            factor = np.where(sums > 0, target * tot / np.where(sums > 0, sums, 1.0), 1.0)
            w = w * np.append(factor, 1.0)[c]
        if reach:
            w = w * reach / w.sum()
        w = np.clip(w, lo, hi)
        gap = _gap(w, ext)
        if gap < tol:
            break
    return Calibration(weights=w, max_gap=gap)


def total_scale(w: np.ndarray, total: float, budget: float = TOTAL_KS_BUDGET) -> float:
    """The factor f towards total / sum(w) that moves the distribution of w by at most
    budget / sqrt(n) in KS distance (sup |F_w(x) - F_w(x / f)|), by bisection on f."""
    n = len(w)
    full = float(total) / float(w.sum()) if n and w.sum() > 0 else 1.0
    if not np.isfinite(full) or full <= 0 or n == 0:
        return 1.0
    srt = np.sort(w)
    # the jumps of F_w where the distance is read: all of them, or KS_POINTS evenly spaced in
    # rank above that (F_w moves by n / KS_POINTS between two, far below the budget)
    pts = srt if n <= KS_POINTS else srt[np.linspace(0, n - 1, KS_POINTS).astype(np.int64)]
    below = np.searchsorted(srt, pts, side="right")  # n F_w at each point

    def distance(f: float) -> float:
        """KS distance of f w from w, at the points and at f times them."""
        at_w = np.abs(below - np.searchsorted(srt, pts / f, side="right"))
        at_fw = np.abs(np.searchsorted(srt, pts * f, side="right") - below)
        return float(max(at_w.max(), at_fw.max())) / n

    limit = budget / np.sqrt(n)
    if distance(full) <= limit:
        return full
    near, far = 1.0, full
    for _ in range(12):
        mid = (near + far) / 2
        near, far = (mid, far) if distance(mid) <= limit else (near, mid)
    return near


def calibrate(
    w0: np.ndarray,
    margins: Margins,
    total: float | None,
    lo: float,
    hi: float,
) -> Calibration:
    """Weights whose weighted shares meet the margins' targets while their own distribution
    stays the synthesized one (the released grid's): the synthesized values are given back
    to the rows in the order of a score, each row's weight rank plus one shift per class of
    each margin, the shifts moved until the shares fit (`reassign`); a last raking (and the
    scaling to `total`) closes the small gap left, with factors near 1."""
    return rake(reassign(np.asarray(w0, dtype="float64"), margins), margins, total, lo, hi)


def reassign(w0: np.ndarray, margins: Margins, iterations: int = 60) -> np.ndarray:
    """The values of `w0` permuted over the rows so the margins' weighted shares come near
    their targets (the permutation with the smallest gap found). After 3 rounds without a
    better one the shifts go back to the best permutation's and their step halves (heavy
    weights make the large step overshoot); it stops when the step falls below 1/64."""
    ext = _extended(margins)
    n = len(w0)
    order = np.argsort(w0, kind="stable")
    pool = w0[order]
    u = np.empty(n)
    u[order] = (np.arange(n) + 0.5) / max(n, 1)
    shifts = [np.zeros(len(t) + 1) for _, t in ext]  # the last class (left out) never moves
    w, best, best_gap, best_shifts = w0, w0, np.inf, shifts
    step, stall = REASSIGN_STEP, 0
    for _ in range(iterations + 1):
        gaps = [_log_gap(c, w, t) for c, t in ext]
        gap = max((g for g, _ in gaps), default=0.0)
        if gap < best_gap:
            best, best_gap, best_shifts, stall = w, gap, [b.copy() for b in shifts], 0
        else:
            stall += 1
        if stall >= 3:
            shifts, step, stall = [b.copy() for b in best_shifts], step / 2, 0
            gaps = [_log_gap(c, best, t) for c, t in ext]
        if best_gap < 1e-4 or step < REASSIGN_STEP / 64:
            break
        for b, (_, log_ratio) in zip(shifts, gaps, strict=True):
            b[:-1] += step * log_ratio
        score = u.copy()
        for (c, _), b in zip(ext, shifts, strict=True):
            score += b[c]
        w = np.empty(n)
        w[np.argsort(score, kind="stable")] = pool
    return best


def _log_gap(c: np.ndarray, w: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """A margin's largest share gap and log(target / share) per class."""
    sums = _sums(c, w, len(target))
    now = sums / max(sums.sum(), 1e-300)
    ratio = np.log(np.maximum(target, 1e-12)) - np.log(np.maximum(now, 1e-12))
    return float(np.max(np.abs(now - target))), ratio


def weight_range(release: dict[str, Any], column: str) -> tuple[float, float]:
    """The released range of the weight column (its source-level grid's ends), positive."""
    m = release["blocks"]["all"]["marginals"].get(column, {})
    grid = [g for g in m.get("grid") or [] if g is not None]
    lo = float(min(grid)) if grid else 0.0
    hi = float(max(grid)) if grid else np.inf
    return (lo if lo > 0 else np.finfo("float64").tiny, hi)


def weighted_margins(
    df: pd.DataFrame, weights: dict[str, Any]
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Per released weighted table and grid: its column, the synthetic rows' classes (levels;
    decile intervals) and its target shares."""
    out = [
        (c, level_classes(df[c], e["levels"]), target_shares(e))
        for c, e in weights["tables"].items()
        if c in df.columns
    ]
    for c, e in (weights.get("grids") or {}).items():
        if c in df.columns:
            v = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            cls = np.searchsorted(np.asarray(e["cuts"]), v, side="left").astype(np.int64)
            shares = np.asarray(e["shares"], dtype="float64")
            out.append((c, np.where(np.isnan(v), -1, cls), shares / max(shares.sum(), 1e-300)))
    return out


def calibrate_frame(
    df: pd.DataFrame, release: dict[str, Any]
) -> tuple[pd.DataFrame, Calibration | None]:
    """`df` with its weight column calibrated to the release's weighted shares and total
    (no change, and None, when the release declares no weight)."""
    weights = release.get("weights")
    if not weights or weights["column"] not in df.columns:
        return df, None
    col = weights["column"]
    if release["blocks"]["all"]["marginals"].get(col, {}).get("kind") != "continuous":
        return df, None
    w0 = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    lo, hi = weight_range(release, col)
    w0 = np.where(np.isfinite(w0), w0, np.nanmedian(w0) if np.isfinite(w0).any() else 1.0)
    margins = [(c, t) for _, c, t in weighted_margins(df, weights)]
    cal = calibrate(w0, margins, weights.get("total"), lo, hi)
    spec: dict[str, Any] = next((c for c in release["columns"] if c["name"] == col), {})
    if not (spec.get("integer") or spec.get("logical_type") == "integer"):
        return df.assign(**{col: cal.weights}), cal
    # whole weights (Stata fweight) stay whole, in their storage: rounded, inside the range
    whole = np.clip(np.round(cal.weights), max(1.0, np.ceil(lo)), max(1.0, np.floor(hi)))
    dtype = df[col].dtype if pd.api.types.is_integer_dtype(df[col].dtype) else "int64"
    gap = _gap(whole, _extended(margins))
    return df.assign(**{col: whole.astype(dtype)}), Calibration(weights=whole, max_gap=gap)


def weighted_share_gaps(df: pd.DataFrame, weights: dict[str, Any]) -> dict[str, float]:
    """Per released weighted table or grid, the largest gap between a synthetic weighted share
    (of a level; of a decile interval) and its target (what tier 1 checks and reports)."""
    w = pd.to_numeric(df[weights["column"]], errors="coerce").to_numpy(
        dtype="float64", na_value=np.nan
    )
    w = np.where(np.isfinite(w), w, 0.0)
    return {c: share_gap(cls, w, t) for c, cls, t in weighted_margins(df, weights)}


def checkpoints_reading(checkpoints: list[Any], source: str, column: str) -> list[str]:
    """Tags of the source's released checkpoint records that read the weight column (as
    their `weights` or in their formula): pinning them fixes the weights as they are."""
    return [
        c["tag"]
        for c in checkpoints
        if c["source"] == source
        and (c.get("weights") == column or column in formula_variables(c["formula"]))
    ]
