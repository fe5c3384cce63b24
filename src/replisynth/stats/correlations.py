"""Rank correlations and their latent Gaussian-copula counterparts.
Method: docs/method.md, "Correlations and the copula".
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special  # scipy.optimize (a large import) only where a root is found


def _midranks(x: np.ndarray) -> np.ndarray:
    return _Ranker(x).ranks()


def pct_ranks(x: np.ndarray) -> np.ndarray:
    """`pandas.Series(x).rank(pct=True)`, the same values (ties averaged, over the count of
    non-missing values; NaN stays NaN) from `_Ranker`: small-integer columns are counted,
    not sorted (pandas sorts every column, about 0.3 s per column at 10^6 rows)."""
    x = np.asarray(x, dtype="float64")
    ok = ~np.isnan(x)
    out = np.full(len(x), np.nan)
    count = int(np.count_nonzero(ok))
    if count:
        out[ok] = _Ranker(x[ok]).ranks() / count
    return out


def _code_type(size: int) -> type[np.signedinteger]:
    """Codes below `size` as int32 when they fit (half the memory of intp), else intp."""
    return np.int32 if size < 2**31 else np.intp


class _Ranker:
    """Mid-ranks (ties averaged, as `scipy.stats.rankdata(method="average")`) of one column
    without missing values, over all rows or over a subset of them, each in O(n) once built.

    Every column becomes one small-integer code per row whose order is the value order, and a
    (subset's) ranks are counted on those codes with `bincount`: small-integer columns
    (indicators, level codes, counts: most dims) are their own codes, never sorted; other
    columns are sorted once and coded by their tie group along that order. Ranks are exact
    half-integers, so every path gives bit-identical values."""

    def __init__(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype="float64")
        self.n = n = len(x)
        if n == 0:
            self.codes, self.size = np.zeros(0, dtype=np.intp), 0
            return
        lo, hi = float(x.min()), float(x.max())
        head = x[:64] - lo  # a non-integer among the first values settles it without 3 passes
        if (
            hi - lo <= max(4 * n, 1024)
            and np.isfinite(lo)
            and np.isfinite(hi)
            and np.array_equal(head.astype(np.intp), head)
        ):
            c = x - lo
            ic = c.astype(_code_type(int(hi - lo) + 1))
            if np.array_equal(ic, c):
                self.codes, self.size = ic, int(ic.max()) + 1
                return
        order = np.argsort(x)  # ties share one mid-rank: no need for a stable sort
        xs = x[order]
        group = np.concatenate([[0], np.cumsum(xs[1:] != xs[:-1])])
        del xs
        self.codes = np.empty(n, dtype=_code_type(n))
        self.codes[order] = group  # each row's tie group: its code
        self.size = int(group[-1]) + 1

    def ranks(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Mid-ranks over all rows, or over the rows where `mask` is True (in row order)."""
        codes = self.codes if mask is None else self.codes[mask]
        counts = np.bincount(codes, minlength=self.size)
        mid = np.cumsum(counts) - (counts - 1) / 2.0
        return mid[codes]


def _pearson_in_place(R: np.ndarray) -> np.ndarray:
    """`np.corrcoef(R, rowvar=False)` computed in R's own buffer (R is overwritten): the
    same operations in the same order on the same memory layout, so bit-identical, without
    the two n x d copies corrcoef makes (hundreds of MB at register scale)."""
    XT = R.T
    avg = np.average(XT, axis=1)
    fact = XT.shape[1] - 1
    if fact <= 0:
        fact = 0.0
    XT -= avg[:, None]
    c = np.dot(XT, XT.T)
    c *= np.true_divide(1, fact)
    d = np.diag(c)
    stddev = np.sqrt(d.real)
    c /= stddev[:, None]
    c /= stddev[None, :]
    np.clip(c.real, -1, 1, out=c.real)
    return c


def _complete_correlations(
    ranker: Callable[[int], _Ranker], full: np.ndarray, n: int
) -> np.ndarray:
    """Spearman correlations among the columns `full` (no missing values; `n` rows), each
    ranked once."""
    if n <= 1:
        return np.full((len(full), len(full)), np.nan)
    ranks = np.empty((n, len(full)))
    for k, j in enumerate(full):
        ranks[:, k] = ranker(j).ranks()
    with np.errstate(invalid="ignore", divide="ignore"):
        return _pearson_in_place(ranks)


def _pair_ranks(
    i: int,
    j: int,
    cols: list[np.ndarray],
    miss: list[np.ndarray],
    own: dict[int, tuple[np.ndarray, np.ndarray, int]],
    ranker: Callable[[int], _Ranker],
) -> tuple[np.ndarray, np.ndarray] | None:
    """The ranks of columns i and j over their common rows, at least one of them with missing
    values (`own`: such a column's rows, own ranks and count); None below 3 common rows."""
    if i in own and j in own:
        ok = ~(miss[i] | miss[j])
        if ok.sum() < 3:
            return None
        return _Ranker(cols[i][ok]).ranks(), _Ranker(cols[j][ok]).ranks()
    k, f = (i, j) if i in own else (j, i)
    ok, rk, cnt = own[k]
    if cnt < 3:
        return None
    rf = ranker(f).ranks(ok)
    return (rk, rf) if k == i else (rf, rk)


def spearman_matrix(
    X: np.ndarray, rows: np.ndarray | None = None, columns: list[int] | None = None
) -> np.ndarray:
    """Spearman correlations of the columns of X (NaN = missing), pairwise complete; over the
    rows where `rows` is True and of the `columns` listed, when given (no copy of X is made
    for either).

    Columns without missing values are ranked once; a pair involving missing values is
    re-ranked over its complete rows (as pandas and Stata do). Constant columns give NaN.
    Each column is prepared for ranking once (`_Ranker`), so a re-rank costs O(n), and a
    column with missing values is ranked once per complete-row set it meets. X is best
    column-major (`dim_matrix(order="F")`): each column is then read contiguously.
    """
    X = np.asarray(X, dtype="float64")
    idx = list(range(X.shape[1])) if columns is None else list(columns)
    d = len(idx)
    cols = [X[:, j] if rows is None else X[:, j][rows] for j in idx]
    n = len(cols[0]) if d else (X.shape[0] if rows is None else int(np.count_nonzero(rows)))
    miss = [np.isnan(c) for c in cols]
    has_miss = np.asarray([m.any() for m in miss], dtype=bool)
    R = np.full((d, d), np.nan)
    full = np.where(~has_miss)[0]
    rankers: dict[int, _Ranker] = {}

    def ranker(j: int) -> _Ranker:
        if j not in rankers:
            rankers[j] = _Ranker(cols[j])
        return rankers[j]

    if len(full):
        R[np.ix_(full, full)] = np.atleast_2d(_complete_correlations(ranker, full, n))
    # A column with missing values, paired with a complete column, is ranked once over its
    # own non-missing rows; two columns with missing values meet over their common rows.
    own: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
    for i in np.where(has_miss)[0]:
        ok = ~miss[i]
        cnt = int(ok.sum())
        own[int(i)] = (ok, _Ranker(cols[i][ok]).ranks() if cnt >= 3 else np.zeros(0), cnt)
    for i in range(d):
        for j in range(i + 1, d):
            if not (has_miss[i] or has_miss[j]):
                continue
            pair = _pair_ranks(i, j, cols, miss, own, ranker)
            if pair is None:
                continue
            a, b = pair
            if a.min() == a.max() or b.min() == b.max():  # constant (for ranks: std == 0)
                continue
            R[i, j] = R[j, i] = float(np.corrcoef(a, b)[0, 1])
    np.fill_diagonal(R, 1.0)
    return R


# ---------------------------------------------------------------------------------------------
# latent calibration


@dataclass(frozen=True)
class Margin:
    """What calibration needs to know of a margin: None for continuous, else the
    probabilities of its ordered levels. A continuous margin with `atoms` (intervals of
    u = F(x) in [0, 1] over which the values tie: a mass at zero hours, a top code, the
    integers of a short count) is *mixed*: its mid-distribution score is flat on each atom and
    u elsewhere."""

    probs: tuple[float, ...] | None = None
    atoms: tuple[tuple[float, float], ...] = ()

    @property
    def discrete(self) -> bool:
        return self.probs is not None and len(self.probs) > 1

    @property
    def mixed(self) -> bool:
        return not self.discrete and len(self.atoms) > 0

    @property
    def tied(self) -> bool:
        """Ties anywhere: the closed form for two continuous margins does not apply."""
        return self.discrete or self.mixed


ATOM_MASS = 0.01  # a run of equal values is an atom from 1% of the rows on
ATOM_EFFECT = 2e-3  # ... and a column mixed when its atoms' sum of p^3 reaches this


def tie_atoms(sorted_values: np.ndarray) -> tuple[tuple[float, float], ...]:
    """Atoms of an ascending sample: the u-intervals of its runs of equal values holding at
    least ATOM_MASS of it, when together they shrink the score variance (1 - sum p^3)/12 by
    ATOM_EFFECT or more; below that, ties move a rank correlation by about 0.001 or less."""
    v = np.asarray(sorted_values, dtype="float64")
    n = len(v)
    if n < 2:
        return ()
    starts = np.flatnonzero(np.concatenate([[True], v[1:] != v[:-1]]))
    if len(starts) == 1:  # constant: no rank correlation to calibrate
        return ()
    lengths = np.diff(np.concatenate([starts, [n]]))
    big = lengths >= ATOM_MASS * n
    if not big.any():
        return ()
    p = lengths[big] / n
    if float(np.sum(p**3)) < ATOM_EFFECT:
        return ()
    return tuple(
        (float(a / n), float((a + k) / n)) for a, k in zip(starts[big], lengths[big], strict=True)
    )


def _cells(m: Margin, width: float = 1.0 / 32.0) -> Margin:
    """A discrete stand-in for a mixed margin: its atoms, and cells of at most `width` over
    the stretches between them (scores of cells are their midpoints, within O(width^2) of u)."""
    probs: list[float] = []
    at = 0.0
    for lo, hi in [*m.atoms, (1.0, 1.0)]:
        if lo > at:
            k = int(np.ceil((lo - at) / width))
            probs += [(lo - at) / k] * k
        if hi > lo:
            probs.append(hi - lo)
        at = hi
    return Margin(tuple(probs))


_GL = {k: np.polynomial.legendre.leggauss(k) for k in range(8, 25)}
_CONT_CUTS = np.concatenate(
    [[0.0, 1e-4, 1e-3, 1e-2], np.linspace(0.05, 0.95, 19), [0.99, 0.999, 0.9999, 1.0]]
)


@functools.lru_cache(maxsize=512)
def _nodes(m: Margin) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quadrature over p in (0,1): nodes, weights, and the margin's mid-distribution score
    (cached: a margin meets every other dim of its block; the arrays are not to be written)."""
    if m.discrete:
        p = np.asarray(m.probs, dtype="float64")
        cum = np.concatenate([[0.0], np.cumsum(p)])
        cum[-1] = 1.0
        edges = list(zip(cum[:-1], cum[1:], strict=True))
        scores = list(cum[:-1] + p / 2)
        order = [24] * len(edges)
    else:
        cuts = np.unique(np.concatenate([_CONT_CUTS, [x for a in m.atoms for x in a]]))
        edges = list(zip(cuts[:-1], cuts[1:], strict=True))
        scores = [None] * len(edges)
        for k, (a, b) in enumerate(edges):
            for lo, hi in m.atoms:  # an edge lies inside an atom or outside all of them
                if lo <= a and b <= hi:
                    scores[k] = (lo + hi) / 2
                    break
        # the continuous cuts keep 24 nodes; pieces cut by atoms get as many per unit of p
        # as a 0.05 cut has, at least 8 (a 25-level count would otherwise triple the nodes)
        base = set(zip(_CONT_CUTS[:-1], _CONT_CUTS[1:], strict=True))
        order = [
            24 if e in base else int(min(24, max(8, np.ceil(480 * (e[1] - e[0]))))) for e in edges
        ]
    xs, ws, ss = [], [], []
    for k, (a, b) in enumerate(edges):
        if b <= a:
            continue
        gx, gw = _GL[order[k]]
        x = (a + b) / 2 + (b - a) / 2 * gx
        xs.append(x)
        ws.append((b - a) / 2 * gw)
        ss.append(np.full_like(x, scores[k]) if scores[k] is not None else x)
    return np.concatenate(xs), np.concatenate(ws), np.concatenate(ss)


def _score_var(m: Margin) -> float:
    if m.discrete:
        p = np.asarray(m.probs, dtype="float64")
        return float((1.0 - np.sum(p**3)) / 12.0)
    return float((1.0 - sum((hi - lo) ** 3 for lo, hi in m.atoms)) / 12.0)


def _conditional_side(a: Margin, b: Margin) -> tuple[Margin, Margin]:
    """Order a pair for `_nodes(a)` x E[score(b) | z]: the conditional expectation is closed
    form for a continuous or discrete b, so a mixed margin goes to the quadrature side, and
    of two mixed margins the second is replaced by its cells (`_cells`)."""

    def rank(m: Margin) -> int:
        return 2 if m.mixed else 1 if m.discrete else 0

    if rank(b) > rank(a):
        a, b = b, a
    return a, (_cells(b) if b.mixed else b)


def _conditional_score(m: Margin, z: np.ndarray, r: float) -> np.ndarray:
    """E[score(Y) | Z1 = z] when (Z1, Z2) is standard bivariate normal with correlation r."""
    s = np.sqrt(max(1.0 - r * r, 1e-12))
    if not m.discrete:
        return special.ndtr(r * z / np.sqrt(1.0 + s * s))
    p = np.asarray(m.probs, dtype="float64")
    cum = np.cumsum(p)[:-1]
    tau = special.ndtri(np.clip(cum, 1e-300, 1 - 1e-16))
    scores = np.concatenate([[0.0], cum]) + p / 2
    # P(Z2 <= tau_k | z) for each threshold
    P = special.ndtr((tau[None, :] - r * z[:, None]) / s)
    P = np.column_stack([np.zeros(len(z)), P, np.ones(len(z))])
    return (np.diff(P, axis=1) * scores[None, :]).sum(axis=1)


def expected_spearman(r: float, a: Margin, b: Margin) -> float:
    """Population Spearman correlation (mid-ranks) of two margins joined by a normal copula."""
    var = _score_var(a) * _score_var(b)
    a, b = _conditional_side(a, b)
    p, w, score = _nodes(a)
    z = special.ndtri(p)
    e = float(np.sum(w * score * _conditional_score(b, z, r)))
    return (e - 0.25) / np.sqrt(var)


def latent_correlation(rho_s: float, a: Margin, b: Margin) -> float:
    """The normal-copula correlation whose margins a, b have Spearman correlation rho_s;
    clipped to the attainable range when rho_s lies outside it."""
    if not np.isfinite(rho_s):
        return 0.0
    if not (a.tied or b.tied):
        return float(np.clip(2.0 * np.sin(np.pi * rho_s / 6.0), -1.0, 1.0))
    lo, hi = -0.999, 0.999
    f_lo, f_hi = expected_spearman(lo, a, b), expected_spearman(hi, a, b)
    if rho_s <= f_lo:
        return lo
    if rho_s >= f_hi:
        return hi
    from scipy import optimize

    return float(optimize.brentq(lambda r: expected_spearman(r, a, b) - rho_s, lo, hi, xtol=1e-7))


R_GRID = np.concatenate([[-0.9999], np.linspace(-0.995, 0.995, 81), [0.9999]])


def spearman_curve(a: Margin, b: Margin, rs: np.ndarray = R_GRID) -> np.ndarray:
    """Expected Spearman correlation at each latent correlation in `rs` (vectorised)."""
    if not (a.tied or b.tied):
        return 6.0 / np.pi * np.arcsin(rs / 2.0)
    var = _score_var(a) * _score_var(b)
    a, b = _conditional_side(a, b)
    p, w, score = _nodes(a)
    z = special.ndtri(p)
    s = np.sqrt(np.maximum(1.0 - rs * rs, 1e-12))
    if not b.discrete:
        cond = special.ndtr(np.outer(z, rs) / np.sqrt(1.0 + s * s)[None, :])
    else:
        pb = np.asarray(b.probs, dtype="float64")
        cum = np.cumsum(pb)[:-1]
        tau = special.ndtri(np.clip(cum, 1e-300, 1 - 1e-16))
        scores = np.concatenate([[0.0], cum]) + pb / 2
        # P(Z2 <= tau_k | z, r): (nodes, thresholds, rs)
        P = special.ndtr(
            (tau[None, :, None] - z[:, None, None] * rs[None, None, :]) / s[None, None, :]
        )
        ones = np.ones((len(z), 1, len(rs)))
        P = np.concatenate([np.zeros_like(ones), P, ones], axis=1)
        cond = (np.diff(P, axis=1) * scores[None, :, None]).sum(axis=1)
    e = (w * score) @ cond
    return (e - 0.25) / np.sqrt(var)


def invert_curve(curve: np.ndarray, rho_s: float, rs: np.ndarray = R_GRID) -> float:
    """Latent correlation giving Spearman `rho_s` on a monotone curve (clipped to its range)."""
    c = np.maximum.accumulate(curve)
    return float(np.interp(rho_s, c, rs))


_COARSE = np.unique(np.concatenate([np.arange(0, len(R_GRID), 6), [len(R_GRID) - 1]]))
_COARSE_R = R_GRID[_COARSE]  # the stretches' ends


def invert_pair(a: Margin, b: Margin, rho_s: float) -> float:
    """`invert_curve` of the pair's Spearman curve without evaluating all of it: the stretch
    of R_GRID between two neighbouring points of every sixth one (at most seven points) whose
    curve brackets `rho_s` is evaluated and interpolated, as the whole curve would be there.
    The search starts at the stretch of the correlation without ties and jumps along the
    curve's slope (`_next_stretch`); after four stretches it brackets on the coarse curve."""
    last = len(_COARSE) - 2
    k = _stretch_of(2.0 * np.sin(np.pi * rho_s / 6.0))
    for _ in range(4):
        rs = R_GRID[_COARSE[k] : _COARSE[k + 1] + 1]
        curve = spearman_curve(a, b, rs)
        c = np.maximum.accumulate(curve)
        if c[0] < rho_s <= c[-1]:
            return invert_curve(curve, rho_s, rs)
        if rho_s <= c[0] and k == 0:
            return float(R_GRID[0])
        if rho_s > c[-1] and k == last:
            return float(R_GRID[-1])
        k = _next_stretch(k, rs, c, rho_s)
    return _invert_pair_coarse(a, b, rho_s)


def _stretch_of(r: float) -> int:
    """The stretch (index into _COARSE's intervals) holding latent correlation r."""
    return int(np.clip(np.searchsorted(_COARSE_R, r) - 1, 0, len(_COARSE) - 2))


def _next_stretch(k: int, rs: np.ndarray, c: np.ndarray, rho_s: float) -> int:
    """The stretch where the line through the curve's end nearest `rho_s` (its slope over the
    stretch `k`) reaches it; at least one stretch further in that direction."""
    slope = (c[-1] - c[0]) / (rs[-1] - rs[0])
    end = -1 if rho_s > c[-1] else 0
    guess = _stretch_of(rs[end] + (rho_s - c[end]) / slope) if slope > 0 else k
    return max(guess, k + 1) if end == -1 else min(guess, k - 1)


def _invert_pair_coarse(a: Margin, b: Margin, rho_s: float) -> float:
    """`invert_pair` bracketed on the curve at every sixth point of R_GRID."""
    c = np.maximum.accumulate(spearman_curve(a, b, _COARSE_R))
    k = int(np.searchsorted(c, rho_s))
    if k == 0:
        return float(R_GRID[0])
    if k == len(c):
        return float(R_GRID[-1])
    lo, hi = int(_COARSE[k - 1]), int(_COARSE[k])
    rs = R_GRID[lo : hi + 1]
    return invert_curve(spearman_curve(a, b, rs), rho_s, rs)


def latent_matrix(spearman: np.ndarray, margins: list[Margin]) -> np.ndarray:
    """Latent correlation matrix for a Spearman matrix (NaN treated as 0), symmetrised."""
    d = len(margins)
    R = np.eye(d)
    for i in range(d):
        for j in range(i + 1, d):
            rho = float(spearman[i, j]) if np.isfinite(spearman[i, j]) else 0.0
            if not (margins[i].tied or margins[j].tied):
                R[i, j] = R[j, i] = float(np.clip(2.0 * np.sin(np.pi * rho / 6.0), -0.9999, 0.9999))
                continue
            R[i, j] = R[j, i] = invert_pair(margins[i], margins[j], rho)
    return R


def nearest_correlation(
    A: np.ndarray, tol: float = 1e-10, max_iter: int = 500, eig_floor: float = 1e-8
) -> np.ndarray:
    """Nearest correlation matrix in Frobenius norm (Higham 2002, with Dykstra's correction),
    then eigenvalues floored at `eig_floor` so that a Cholesky factor exists."""
    A = (np.asarray(A, dtype="float64") + np.asarray(A, dtype="float64").T) / 2
    if A.size == 0:
        return A
    w = np.linalg.eigvalsh(A)
    if w.min() > eig_floor:
        return A
    Y = A.copy()
    dS = np.zeros_like(A)
    for _ in range(max_iter):
        Rk = Y - dS
        vals, vecs = np.linalg.eigh(Rk)
        X = (vecs * np.maximum(vals, 0)) @ vecs.T
        dS = X - Rk
        Y_new = X.copy()
        np.fill_diagonal(Y_new, 1.0)
        if np.linalg.norm(Y_new - Y, "fro") / max(float(np.linalg.norm(Y, "fro")), 1e-300) < tol:
            Y = Y_new
            break
        Y = Y_new
    vals, vecs = np.linalg.eigh((Y + Y.T) / 2)
    Y = (vecs * np.maximum(vals, eig_floor)) @ vecs.T
    dinv = 1.0 / np.sqrt(np.diag(Y))
    Y = Y * dinv[:, None] * dinv[None, :]
    return (Y + Y.T) / 2


def cholesky(R: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a correlation matrix, repairing it first when needed."""
    if R.size == 0:
        return R
    try:
        return np.linalg.cholesky(R)
    except np.linalg.LinAlgError:
        return np.linalg.cholesky(nearest_correlation(R, eig_floor=1e-6))
