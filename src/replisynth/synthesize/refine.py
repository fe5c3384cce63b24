"""Rank-correlation refinement by swapping values between rows of one block, for dependence
a Gaussian copula cannot express; marginals, strata and missing positions stay untouched.
Method: docs/method.md, "Correlations and the copula" (swap refinement).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from replisynth.core.options import CORR_TOL
from replisynth.core.parallel import thread_map, threads
from replisynth.stats.correlations import _Ranker

# Sweep budget tied to tier 2: once every targeted error is within COMFORT (the tier's
# tolerance with room left for the design-moment alignment, whose own wall is at 0.03), a
# sweep must gain at least SETTLE_GAIN of the squared error to be followed by another.
# Later sweeps gain little on large data without moving the worst pair.
COMFORT = 0.7 * CORR_TOL
SETTLE_GAIN = 0.05


# A view of at least 1/tol² rows is large: the released correlations' own sampling error
# (~1/sqrt(rows)) is then within the refinement's precision `tol`, and so is the copula
# draw's, so sweeps there pay only for errors past `comfort`. A large view is measured on
# SAMPLE_ROWS of its rows (the estimate is within ~0.006 of the whole view's, against the
# 0.015 between `comfort` and the tier's tolerance) and left as drawn when within comfort.
SAMPLE_ROWS = 1 << 15
TOL = 0.004
BACKOFF = 2  # a block whose batches keep failing waits 1, then 3 sweeps before the next try


# A veto on swap pairs: (units moved, r, s, the units' permutations) -> allowed per pair.
Allowed = Callable[[list[int], np.ndarray, np.ndarray, list[np.ndarray]], np.ndarray]


def view_samples(
    views: list[np.ndarray], rng: np.random.Generator, tol: float = TOL, size: int = SAMPLE_ROWS
) -> list[np.ndarray | None]:
    """For each view (its rows), a sorted random `size` of its rows when it is large (at
    least 1/tol² rows), None when it is refined in full."""
    big = int(np.ceil(1.0 / tol**2)) if tol > 0 else None
    out: list[np.ndarray | None] = []
    for rows in views:
        if big is None or len(rows) < big:
            out.append(None)
        else:
            out.append(
                np.sort(rows[rng.choice(len(rows), size, replace=False)])
                if len(rows) > size
                else rows
            )
    return out


def _is_large(view: _View, tol: float) -> bool:
    """Whether a view has at least 1/tol² rows (`view_samples`): its released correlations'
    own sampling error is then within `tol`, and a draw within `comfort` is left as drawn."""
    return tol > 0 and len(view.rows) >= int(np.ceil(1.0 / tol**2))


def worst_error(X: np.ndarray, rows: np.ndarray, target: np.ndarray) -> float:
    """Largest targeted |error| of the correlations of X's `rows` (the refinement's measure)."""
    v = _view(X, rows, target, X.shape[0])
    return float(np.max(np.abs(v.error()), initial=0.0))


def settled_views(
    X: np.ndarray,
    samples: list[np.ndarray | None],
    targets: list[np.ndarray],
    comfort: float = COMFORT,
) -> list[bool]:
    """Per view: large (sampled, `view_samples`) and within `comfort` of its target on its
    sample (rows of X), so it is left as drawn."""
    return [
        s is not None and worst_error(X, s, t) <= comfort
        for s, t in zip(samples, targets, strict=True)
    ]


def best_prefix(change: Callable[[int], float], n: int) -> tuple[int, float]:
    """How many of `n` candidate swaps (sorted best first) to accept together: the prefix
    length m (1, 2, 4, ...) whose joint objective change `change(m)` is lowest and negative,
    doubling until it stops improving past 16 (0 when no prefix improves), and that change.
    Swaps scored one by one interact, so the batch is judged jointly."""
    best_m, best_f, m = 0, 0.0, 1
    while True:
        f = change(m)
        if f < best_f:
            best_f, best_m = f, m
        elif m >= 16:
            break
        if m == n:
            break
        m = min(2 * m, n)
    return best_m, best_f


def scores(x: np.ndarray) -> np.ndarray:
    """Mid-rank scores of a column, centred and scaled to unit norm; missing rows score 0."""
    ok = ~np.isnan(x)
    if len(x) >= 2 and ok.all():  # nothing missing: the same arithmetic without the masks
        return _unit_scores(_Ranker(x).ranks(), None, len(x))
    if ok.sum() < 2:
        return np.zeros(len(x))
    # bit-identical to scipy.stats.rankdata(method="average")
    return _unit_scores(_Ranker(x[ok]).ranks(), ok, len(x))


def _unit_scores(r: np.ndarray, ok: np.ndarray | None, n: int) -> np.ndarray:
    """Mid-ranks `r` of the rows `ok` (None: all n) centred and scaled to unit norm, as n
    scores (0 on the other rows, and everywhere when the ranks are constant)."""
    r = r - r.mean()
    nrm = np.sqrt(np.sum(r * r))
    if ok is None:
        return r / nrm if nrm > 0 else np.zeros(n)
    u = np.zeros(n)
    if nrm > 0:
        u[ok] = r / nrm
    return u


class ColumnRanks:
    """Each column of X prepared for ranking once (`_Ranker` over its non-missing rows), so
    the scores of any ascending set of rows (a block, all rows) are counted in O(n) instead
    of sorting every view's rows again: the same mid-ranks, so the same scores bit for bit."""

    def __init__(self, X: np.ndarray) -> None:
        self.n = X.shape[0]
        self.columns: list[tuple[np.ndarray | None, _Ranker]] = []
        for j in range(X.shape[1]):
            col = np.array(X[:, j], dtype="float64")
            ok = ~np.isnan(col)
            ranker = _Ranker(col) if ok.all() else _Ranker(col[ok])
            if ranker.size < 2**31:  # the codes of every column are held at once: half the memory
                ranker.codes = ranker.codes.astype(np.int32)
            self.columns.append((None, ranker) if ok.all() else (ok, ranker))

    def scores(self, j: int, inside: np.ndarray) -> np.ndarray:
        """`scores` of column j over the rows where `inside` (n booleans) is True, in row order."""
        ok, ranker = self.columns[j]
        if ok is None:
            m = int(np.count_nonzero(inside))
            if m < 2:
                return np.zeros(m)
            return _unit_scores(ranker.ranks(inside), None, m)
        here = ok[inside]
        if np.count_nonzero(here) < 2:
            return np.zeros(len(here))
        return _unit_scores(ranker.ranks(inside[ok]), here, len(here))


def _corr(
    C: np.ndarray, Aij: np.ndarray, Aji: np.ndarray, Qij: np.ndarray, Qji: np.ndarray, N: np.ndarray
) -> np.ndarray:
    """Pearson correlation over common rows from the running sums (0 where undefined)."""
    Nn = np.maximum(N, 1.0)
    num = C - Aij * Aji / Nn
    den = (Qij - Aij * Aij / Nn) * (Qji - Aji * Aji / Nn)
    r = num / np.sqrt(np.maximum(den, 1e-300))  # a positive divisor: nothing to silence
    return np.where((den > 1e-300) & (N >= 3), r, 0.0)


@dataclass
class _View:
    """Running sums of a set of rows (`rows`: their indices in the data) and the error of
    their correlation matrix against `target` on the masked pairs."""

    rows: np.ndarray
    pos: np.ndarray  # position of each data row in `rows` (-1 when absent)
    U: np.ndarray
    miss: np.ndarray  # dims with a missing value in the view's rows
    Pm: np.ndarray  # their presence (rows × len(miss)); every other dim is present on all rows
    C: np.ndarray
    A: np.ndarray
    Q: np.ndarray
    N: np.ndarray
    T: np.ndarray
    M: np.ndarray
    _miss_col: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def miss_col(self) -> np.ndarray:
        """Column of each dim in Pm, -1 for a complete dim (an index instead of a search in
        every one of the many small batches)."""
        if self._miss_col is None:
            col = np.full(self.M.shape[0], -1, dtype=np.intp)
            col[self.miss] = np.arange(len(self.miss))
            self._miss_col = col
        return self._miss_col

    def corr(self) -> np.ndarray:
        return _corr(self.C, self.A, self.A.T, self.Q, self.Q.T, self.N)

    def error(self) -> np.ndarray:
        return (self.corr() - self.T) * self.M

    def dP(self, pr: np.ndarray, ps: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Presence differences P[pr] - P[ps] over the dims `out` (zero on complete dims)."""
        d = np.zeros((len(pr), len(out)))
        if len(self.miss):
            at = self.miss_col()[out]
            hit = at >= 0
            if hit.any():
                cols = at[hit]
                d[:, hit] = self.Pm[_ix(pr, cols)] - self.Pm[_ix(ps, cols)]
        return d


def _rows_key(rows: np.ndarray) -> slice | np.ndarray:
    """`rows` as a slice when they are a contiguous ascending run (strata blocks, all rows):
    reading X through a slice skips the gather."""
    if (
        len(rows)
        and rows[-1] - rows[0] == len(rows) - 1
        and (len(rows) < 2 or bool(np.all(np.diff(rows) == 1)))
    ):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def _view(
    X: np.ndarray,
    rows: np.ndarray,
    target: np.ndarray,
    n: int,
    dtype: type = np.float32,
    ranks: ColumnRanks | None = None,
) -> _View:
    """Running sums of the rows `rows` of X (n rows in all) against `target`. Presence is
    kept only for dims with missing values: on the others P = 1, so A and Q are column sums of
    U and U², and N the count of rows. The columns' scores are independent (threads). Scores
    are stored as `dtype` (float32: half the memory; the sums are float64 either way).
    `ranks` (X's columns prepared once) counts the scores of ascending `rows` without a sort."""
    d = X.shape[1]
    at = _rows_key(rows)
    present: list[np.ndarray | None] = [None] * d
    inside = None
    if ranks is not None and (len(rows) < 2 or bool(np.all(np.diff(rows) > 0))):
        inside = np.zeros(n, dtype=bool)
        inside[rows] = True

    def score(j: int) -> np.ndarray:
        col = np.array(X[at, j], dtype="float64")
        nan = np.isnan(col)
        if nan.any():
            present[j] = ~nan
        return scores(col) if inside is None or ranks is None else ranks.scores(j, inside)

    U: np.ndarray = np.empty((len(rows), d), dtype=dtype)
    step, width = 1 << 14, 4 if threads() > 1 else 1  # one thread: one column's temporaries
    for g in range(0, d, width):  # a few columns at a time, written in row blocks (a whole
        group = range(g, min(g + width, d))  # column strides through all of U), few temporaries
        cols = thread_map(score, group)
        for a in range(0, len(rows), step):
            for j, c in zip(group, cols, strict=True):
                U[a : a + step, j] = c[a : a + step]
        del cols
    miss = np.asarray([j for j in range(d) if present[j] is not None], dtype=np.intp)
    Pm = (
        np.column_stack([present[j] for j in miss]).astype("float64")
        if len(miss)
        else np.zeros((len(rows), 0))
    )
    M = np.isfinite(target).astype("float64")
    np.fill_diagonal(M, 0.0)
    # n positions per view (96 strata views: 96 n-row arrays): int32 when they fit
    pos = np.full(n, -1, dtype=np.int32 if n < 2**31 else np.int64)
    pos[rows] = np.arange(len(rows))
    A, Q, N = view_sums(U, Pm, miss)
    M[N < 3] = 0.0  # no correlation on fewer than 3 common rows, and swaps never change N
    C = U.T @ U if U.dtype == np.float64 else _in_chunks(U, lambda part: part.T @ part, (d, d))
    return _View(rows, pos, U, miss, Pm, C, A, Q, N, np.where(M > 0, target, 0.0), M)


def _in_chunks(
    U: np.ndarray,
    term: Callable[[np.ndarray], np.ndarray],
    shape: tuple[int, ...],
    step: int = 1 << 16,
    at: np.ndarray | None = None,
) -> np.ndarray:
    """Σ over row chunks of `term` (of U's rows, and `at`'s when given) in float64: a float32
    U is widened a chunk at a time (its sums stay float64-exact; no n × d float64 copy)."""
    out = np.zeros(shape)
    for a in range(0, U.shape[0], step):
        part = U[a : a + step].astype(np.float64)
        out += term(part) if at is None else term(np.column_stack([part, at[a : a + step]]))
    return out


def view_sums(
    U: np.ndarray, Pm: np.ndarray, miss: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (Σ U over rows where the other dim is present), Q (the same of U²) and N (pairwise
    present counts) of a view with scores U (rows × d) and presence Pm of the dims `miss`
    (the others are present everywhere); sums of U² without an n × d temporary (the memory
    peak of the views on large data)."""
    rows, d = U.shape
    if U.dtype != np.float64:  # float32 scores (`_view`): the same sums, widened by chunks
        return _view_sums_wide(U, Pm, miss)
    A = np.repeat(U.sum(0)[:, None], d, axis=1)
    Q = np.repeat(np.einsum("ij,ij->j", U, U)[:, None], d, axis=1)
    N = np.full((d, d), float(rows))
    if len(miss):
        A[:, miss] = U.T @ Pm
        step = 1 << 16
        Q[:, miss] = sum(
            ((U[a : a + step] ** 2).T @ Pm[a : a + step] for a in range(0, rows, step)),
            np.zeros((d, len(miss))),
        )
        cnt = Pm.sum(0)
        N[miss, :] = cnt[:, None]
        N[:, miss] = cnt[None, :]
        N[np.ix_(miss, miss)] = Pm.T @ Pm
    return A, Q, N


def _view_sums_wide(
    U: np.ndarray, Pm: np.ndarray, miss: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`view_sums` of float32 scores, accumulated in float64 a chunk of rows at a time."""
    rows, d = U.shape
    col = _in_chunks(U, lambda p: np.stack([p.sum(0), np.einsum("ij,ij->j", p, p)]), (2, d))
    A = np.repeat(col[0][:, None], d, axis=1)
    Q = np.repeat(col[1][:, None], d, axis=1)
    N = np.full((d, d), float(rows))
    if len(miss):
        k = len(miss)
        both = _in_chunks(  # [U | Pm] chunks: U' Pm and (U²)' Pm
            U,
            lambda p: np.stack([p[:, :d].T @ p[:, d:], (p[:, :d] ** 2).T @ p[:, d:]]),
            (2, d, k),
            at=Pm,
        )
        A[:, miss], Q[:, miss] = both[0], both[1]
        cnt = Pm.sum(0)
        N[miss, :] = cnt[:, None]
        N[:, miss] = cnt[None, :]
        N[np.ix_(miss, miss)] = Pm.T @ Pm
    return A, Q, N


def _proposal_terms(v: _View, r: np.ndarray, s: np.ndarray, dims: list[int], out: np.ndarray):
    """Per proposal and unit dim: the changes of C, A and Q with every dim outside the unit."""
    pr, ps = v.pos[r], v.pos[s]
    Ur, Us = v.U[pr], v.U[ps]
    ur, us = Ur[:, dims], Us[:, dims]  # (K, |unit|)
    du = us - ur
    dq = us * us - ur * ur
    dU_other = Ur[:, out] - Us[:, out]  # (K, d')
    dP_other = v.dP(pr, ps, out)
    dC = du[:, :, None] * dU_other[:, None, :]  # (K, |unit|, d')
    dA = du[:, :, None] * dP_other[:, None, :]
    dQ = dq[:, :, None] * dP_other[:, None, :]
    return pr, ps, dC, dA, dQ


def _ix(a: list[int] | np.ndarray, b: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.ix_` of two integer index lists, without its per-call type checks (hot on small data,
    where thousands of small batches are scored)."""
    return np.asarray(a, dtype=np.intp).reshape(-1, 1), np.asarray(b, dtype=np.intp).reshape(1, -1)


def _block(v: _View, dims: list[int], out: np.ndarray) -> tuple[np.ndarray, ...]:
    """The running sums of a unit's pairs with every dim outside it (copied once per batch)."""
    ix, xi = _ix(dims, out), _ix(out, dims)
    return (v.C[ix], v.A[ix], v.A[xi].T, v.Q[ix], v.Q[xi].T, v.N[ix], v.T[ix], v.M[ix])


def _objective(blk: tuple[np.ndarray, ...], dC, dA, dQ) -> np.ndarray:
    """Squared error over the unit's pairs after adding the changes (leading axes broadcast)."""
    C, Aij, Aji, Qij, Qji, N, T, M = blk
    e = (_corr(C + dC, Aij + dA, Aji, Qij + dQ, Qji, N) - T) * M
    return (e * e).sum(axis=(-1, -2))


HARD_WALL = 0.045  # just inside verify.CORR_TOL (0.05): a pair past it would fail tier 2


def penalty(blk: tuple[np.ndarray, ...], dC, dA, dQ, tau: float, weight: float) -> np.ndarray:
    """`_objective` plus `weight` × the squared excess of each |error| over `tau`: a soft
    wall that keeps rank correlations inside a tolerance while another objective moves rows;
    and a stiff one (10⁴ × `weight`) past HARD_WALL, so no pair is pushed out of tier 2."""
    C, Aij, Aji, Qij, Qji, N, T, M = blk
    e = (_corr(C + dC, Aij + dA, Aji, Qij + dQ, Qji, N) - T) * M
    a = np.abs(e)
    h = np.maximum(a - tau, 0.0)
    g = np.maximum(a - HARD_WALL, 0.0)
    return (e * e + weight * (h * h + 1e4 * g * g)).sum(axis=(-1, -2))


def accept_swaps(
    v: _View,
    a_r: np.ndarray,
    a_s: np.ndarray,
    dims: list[int],
    out: np.ndarray,
    dC: np.ndarray,
    dA: np.ndarray,
    dQ: np.ndarray,
) -> None:
    """Apply accepted disjoint swaps (view positions a_r <-> a_s of the unit `dims`) to a
    view: its scores and the running sums of the unit's pairs (dC, dA, dQ: summed changes)."""
    for a in dims:
        ur, us = v.U[a_r, a].copy(), v.U[a_s, a].copy()
        v.U[a_r, a], v.U[a_s, a] = us, ur
    ix = _ix(dims, out)
    v.C[ix] += dC
    v.C[_ix(out, dims)] = v.C[ix].T
    v.A[ix] += dA
    v.Q[ix] += dQ


class _Proposals:
    """A batch of disjoint swaps of a unit's dims scored against one view.

    The change of C for a swap is the outer product du ⊗ dU (unit dims × other dims); A and Q
    change only on the other dims with missing values. On a complete other dim the pair's
    correlation is linear in C (its denominator does not move), so the squared error of the
    swap is e0² + 2 e0 g du dU + (g du dU)² with g = M / sqrt(den), and the gain over all
    complete dims is two small matrix products: O(K d) per batch instead of O(K |unit| d)
    intermediate arrays. Dims with missing values are scored through `_objective` as before.
    Accepted sums are du[take]' dU[take] (same changes as summing the outer products)."""

    def __init__(
        self,
        v: _View,
        r: np.ndarray,
        s: np.ndarray,
        dims: list[int],
        out: np.ndarray,
        bind: bool = True,
    ) -> None:
        self.v, self.dims, self.out = v, dims, out
        self.pr, self.ps = pr, ps = v.pos[r], v.pos[s]
        Ur = v.U.take(pr, axis=0).astype(np.float64, copy=False)
        Us = v.U.take(ps, axis=0).astype(np.float64, copy=False)
        ur, us = Ur[:, dims], Us[:, dims]
        self.du = us - ur
        self.dq = us * us - ur * ur
        self.dU = (Ur - Us).take(out, axis=1)
        miss = v.miss_col()[out] >= 0
        self.om = np.flatnonzero(miss)
        self.oc = np.flatnonzero(~miss)
        self.dPm = v.dP(pr, ps, out[self.om]) if len(self.om) else np.zeros((len(pr), 0))
        if bind:
            self.bind()

    def bind(self) -> None:
        """Read the view's current running sums of the unit's pairs (the scoring baseline).
        Everything else depends only on the rows of the swaps, so a batch can be prepared
        while the view's sums still move with another block's accepted swaps."""
        self.blk = _block(self.v, self.dims, self.out)
        self.base = float(_objective(self.blk, 0.0, 0.0, 0.0))

    def gain(self) -> np.ndarray:
        """Change of the view's squared error per single swap."""
        C, Aij, Aji, Qij, Qji, N, T, M = self.blk
        g = np.zeros(len(self.du))
        if len(self.oc):
            oc = self.oc
            Nn = np.maximum(N[:, oc], 1.0)
            den = (Qij[:, oc] - Aij[:, oc] ** 2 / Nn) * (Qji[:, oc] - Aji[:, oc] ** 2 / Nn)
            ok = (den > 1e-300) & (N[:, oc] >= 3)
            inv = np.where(ok, 1.0 / np.sqrt(np.maximum(den, 1e-300)), 0.0)
            r0 = np.where(ok, (C[:, oc] - Aij[:, oc] * Aji[:, oc] / Nn) * inv, 0.0)
            gm = inv * M[:, oc]
            e0 = (r0 - T[:, oc]) * M[:, oc]
            dU = self.dU[:, oc]
            g += 2.0 * np.einsum("ka,ka->k", self.du, dU @ (e0 * gm).T)
            g += np.einsum("ka,ka->k", self.du * self.du, (dU * dU) @ (gm * gm).T)
        if len(self.om):
            om = self.om
            sub = tuple(x[:, om] for x in self.blk)
            dC = self.du[:, :, None] * self.dU[:, None, om]
            dA = self.du[:, :, None] * self.dPm[:, None, :]
            dQ = self.dq[:, :, None] * self.dPm[:, None, :]
            g += _objective(sub, dC, dA, dQ) - float(_objective(sub, 0.0, 0.0, 0.0))
        return g

    def sums(self, take: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Summed changes (dC, dA, dQ) of the swaps `take`."""
        du, dq = self.du[take], self.dq[take]
        dC = du.T @ self.dU[take]
        dA = np.zeros_like(dC)
        dQ = np.zeros_like(dC)
        if len(self.om):
            dP = self.dPm[take]
            dA[:, self.om] = du.T @ dP
            dQ[:, self.om] = dq.T @ dP
        return dC, dA, dQ

    def change(self, take: np.ndarray) -> float:
        """Exact change of the view's squared error when the swaps `take` are made together."""
        return float(_objective(self.blk, *self.sums(take))) - self.base

    def accept(self, take: np.ndarray) -> None:
        accept_swaps(self.v, self.pr[take], self.ps[take], self.dims, self.out, *self.sums(take))


def _compound_units(
    units: list[list[int]], errs: list[np.ndarray], far: float, limit: int = 12
) -> list[tuple[list[int], list[int]]]:
    """Pairs of units to swap together while chasing: two units both off by more than `far`
    against a common third dim. Three-way structure (c = a or b, a and b exclusive) is a local
    optimum of single-column swaps; moving (a, b) as one keeps their own pair and fixes c's."""
    worst = np.max(np.abs(np.stack(errs)), axis=0)
    off = worst > far
    found: list[tuple[float, list[int], list[int]]] = []
    for i in range(len(units)):
        off_i = off[units[i]].any(axis=0)
        if not off_i.any():
            continue
        for j in range(i + 1, len(units)):
            common = off_i & off[units[j]].any(axis=0)
            common[units[i]] = common[units[j]] = False
            if common.any():
                both = np.asarray(units[i] + units[j], dtype=np.intp)
                score = float(worst[np.ix_(both, np.flatnonzero(common))].sum())
                found.append((-score, [i, j], units[i] + units[j]))
    found.sort(key=lambda f: (f[0], f[1]))
    return [(m, dims) for _, m, dims in found[:limit]]


@dataclass(frozen=True)
class SwapSettings:
    """The knobs of `refine_swaps` (documented there): precision, sweep budget and batch size."""

    tol: float = TOL
    max_sweeps: int = 60
    patience: int = 3
    min_gain: float = 0.01
    max_pairs: int = 512
    comfort: float = COMFORT
    settle_gain: float = SETTLE_GAIN
    far: float = COMFORT
    max_far_sweeps: int = 400
    guided: float = 1.0


class _SweepStop:
    """The stopping rule of `refine_swaps`' sweeps (see there); `chase` turns on once the
    usual rule would stop while a pair is still off by more than `far`."""

    def __init__(self, settings: SwapSettings, large: bool = False) -> None:
        self.settings = settings
        self.large = large  # every view large (`view_samples`): done once within `comfort`
        self.prev = np.inf
        self.chase = False
        self.best_excess = np.inf
        self.flat = 0

    def done(self, errs: list[np.ndarray], sweep: int) -> bool:
        """Whether to stop before sweep number `sweep`, given every view's errors now."""
        knobs = self.settings
        worst = max(float(np.max(np.abs(e))) for e in errs)
        total = sum(float(np.sum(e * e)) for e in errs)
        if worst <= knobs.tol or (
            worst <= knobs.comfort and (self.large or total > self.prev * (1 - knobs.settle_gain))
        ):
            return True
        if not self.chase and (
            total > self.prev * (1 - knobs.min_gain) or sweep >= knobs.max_sweeps
        ):
            if worst <= knobs.far:
                return True
            self.chase = (
                True  # past the usual stopping point, while a pair is off by more than `far`
            )
        if self.chase:  # progress: the summed squared excess of the pairs still beyond `far`
            excess = sum(float(np.sum(np.maximum(np.abs(e) - knobs.far, 0.0) ** 2)) for e in errs)
            self.flat = (
                self.flat + 1 if excess > self.best_excess * (1 - knobs.min_gain / 10) else 0
            )
            self.best_excess = min(self.best_excess, excess)
            last = knobs.max_sweeps + knobs.max_far_sweeps - 1
            if worst <= knobs.far or self.flat >= 4 * knobs.patience or sweep >= last:
                return True
        self.prev = total
        return False


def _active_views(
    X: np.ndarray,
    groups: list[np.ndarray],
    group_targets: list[np.ndarray],
    global_target: np.ndarray | None,
    rng: np.random.Generator,
    settings: SwapSettings,
    labels: np.ndarray | None,
    settled: list[bool] | None,
) -> tuple[list[_View], _View | None]:
    """The views `refine_swaps` refines: each group's and the global one, less those settled
    as drawn (given, or judged on a sample when there are no labels)."""
    n = X.shape[0]
    targets = group_targets + ([global_target] if global_target is not None else [])
    if settled is None and labels is None:
        samples = view_samples(
            groups + ([np.arange(n)] if global_target is not None else []), rng, settings.tol
        )
        settled = settled_views(X, samples, targets, settings.comfort)
    if settled is not None:
        keep = [not x for x in settled[: len(groups)]]
        groups = [g for g, k in zip(groups, keep, strict=True) if k]
        group_targets = [t for t, k in zip(group_targets, keep, strict=True) if k]
        if global_target is not None and settled[-1]:
            global_target = None
    count = len(groups) + (global_target is not None)
    ranks = ColumnRanks(X) if count > 1 else None  # each column sorted once for every view
    views = [_view(X, g, t, n, ranks=ranks) for g, t in zip(groups, group_targets, strict=True)]
    global_view = (
        _view(X, np.arange(n), global_target, n, ranks=ranks) if global_target is not None else None
    )
    del ranks
    return views, global_view


class _Swapper:
    """Batches of swaps of one unit (or of units moved together) across the blocks of
    `refine_swaps`, scored against the block's view and the global one, and accepted when
    they lower the squared errors jointly."""

    def __init__(
        self,
        X: np.ndarray,
        views: list[_View],
        global_view: _View | None,
        rng: np.random.Generator,
        settings: SwapSettings,
        labels: np.ndarray | None,
        allowed: Allowed | None = None,
    ) -> None:
        self.views, self.global_view = views, global_view
        self.rng, self.settings, self.labels = rng, settings, labels
        self.allowed = allowed
        self.n_dims = X.shape[1]
        # (units moved, block) -> (batches in a row that found no improving swap, sweeps left
        # to wait): after k failures the block waits 2^min(k, BACKOFF) - 1 sweeps. Late sweeps
        # on many small blocks find nothing in most of them; each block waits from its own
        # failure, so a sweep's gain does not alternate with the sweep's parity.
        self.fails: dict[tuple[tuple[int, ...], int], tuple[int, int]] = {}
        self.present = ~np.isnan(X)
        # Blocks that share no row can prepare their batches at once (threads): a block's swaps
        # move only its own rows, so another block's prepared scores stay valid; only the
        # shared view's running sums move, and those are read when a batch is scored, in order.
        self.disjoint = (
            not views
            or int(np.bincount(np.concatenate([v.rows for v in views]), minlength=len(X)).max())
            <= 1
        )
        # (unit dims, view) -> rows where the unit is present
        self.eligible: dict[tuple[tuple[int, ...], int], np.ndarray] = {}
        self.unit_ok: dict[tuple[int, ...], np.ndarray | None] = {}  # None: present on every row

    def _rows(self, dims: list[int], view_index: int, view: _View) -> np.ndarray:
        """The view's rows where every dim of the unit is present (swaps never move a missing
        value: fixed per unit, cached)."""
        key = (tuple(dims), view_index)
        if key not in self.eligible:
            if tuple(dims) not in self.unit_ok:
                ok = self.present[:, dims].all(axis=1)
                self.unit_ok[tuple(dims)] = None if ok.all() else ok
            ok = self.unit_ok[tuple(dims)]
            # no copy when complete
            self.eligible[key] = view.rows if ok is None else view.rows[ok[view.rows]]
        return self.eligible[key]

    def draw(
        self, dims: list[int], out: np.ndarray, members: tuple[int, ...]
    ) -> list[tuple[list[_View], np.ndarray, np.ndarray, int]]:
        """Every block's batch of swap pairs (r, s) for the unit `dims` (units `members`),
        with the views it is scored against and the block's index, drawn in block order; a
        block whose recent batches of these units all failed waits (`fails`)."""
        batches = []
        for view_index, view in enumerate(self.views):
            failed, wait = self.fails.get((members, view_index), (0, 0))
            if wait:
                self.fails[(members, view_index)] = (failed, wait - 1)
                continue
            active = [view] + ([self.global_view] if self.global_view is not None else [])
            if not any(v.M[_ix(dims, out)].any() for v in active):
                continue
            rows = self._rows(dims, view_index, view)
            if len(rows) < 4:
                continue
            # at least a sixteenth of the block per batch: a correlation moves by O(1/n)
            # per swap, so 512 pairs cannot reach the targets in blocks of 10^5+ rows
            half = min(
                len(rows) // 2,
                max(
                    self.settings.max_pairs,
                    min(len(rows) // 16, 1_500_000 // (len(dims) * len(out) + 1)),
                ),
            )
            if self.labels is None:  # 2 × half distinct rows in random order, paired
                pool = rows[self.rng.choice(len(rows), 2 * half, replace=False)]
                r, s = self._pairs(pool, 1.0 - half / len(rows), dims, out, active)
            else:
                r, s = draw_pairs(rows[self.rng.permutation(len(rows))], half, self.labels)
            if not len(r):
                continue
            batches.append((active, r, s, view_index))
        return batches

    def _pairs(
        self, pool: np.ndarray, fresh: float, dims: list[int], out: np.ndarray, active: list[_View]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Swap pairs from `pool` (distinct rows in random order): a share `guided` × `fresh`
        of them paired along the errors' direction (`guided_pairs`), the rest at random.
        `fresh` is 1 - pool / (2 × block): a pool that is the whole block would give the same
        guided pairs batch after batch, so half its pairs stay random."""
        k = int(len(pool) // 2 * self.settings.guided * fresh)
        z = direction(pool[: 2 * k], dims, out, active) if k else None
        return guided_pairs(pool, z, k if z is not None else 0)

    def move(self, members: list[int], dims: list[int], perms: list[np.ndarray]) -> bool:
        """One batch per block for the units `members` (dims `dims`), accepting in each the best
        prefix of improving swaps into `perms`; True when any swap was accepted."""
        inside = np.zeros(self.n_dims, dtype=bool)
        inside[dims] = True
        out = np.where(~inside)[0]
        key = tuple(members)
        batches = self.draw(dims, out, key)

        def prepare(batch: tuple[list[_View], np.ndarray, np.ndarray, int]) -> list[_Proposals]:
            active, r, s, _ = batch
            return [_Proposals(v, r, s, dims, out, bind=False) for v in active]

        prepared = thread_map(prepare, batches) if self.disjoint else None
        improved = False
        for index, batch in enumerate(batches):
            parts = prepared[index] if prepared is not None else prepare(batch)
            _, r, s, block = batch
            accepted = _accept_batch(parts, r, s, members, perms, self.allowed)
            failed = 0 if accepted else self.fails.get((key, block), (0, 0))[0] + 1
            self.fails[(key, block)] = (failed, (1 << min(failed, BACKOFF)) - 1)
            improved = improved or accepted
        return improved


def direction(
    rows: np.ndarray, dims: list[int], out: np.ndarray, active: list[_View]
) -> np.ndarray | None:
    """Per row of `rows`, u / sd(u) + h / sd(h): u the score of the unit's dim with the largest
    errors, h = Σ_j e_j u_j its errors' direction (over the views `active`). A swap of that
    dim between rows r and s changes the squared error by about -2 (u_r - u_s)(h_r - h_s), so
    pairing the rows of highest and lowest u + h proposes the swaps that gain most; None when
    there is no direction (no error, or u or h constant on `rows`)."""
    errs = [v.error()[_ix(dims, out)] for v in active]
    weight = sum(np.abs(e).sum(axis=1) for e in errs)
    at = int(np.argmax(weight))
    if not weight[at] > 0:
        return None
    first = active[0]
    u = first.U[first.pos[rows], dims[at]].astype("float64")
    h = np.zeros(len(rows))
    floor = 0.1 * max(float(np.max(np.abs(e[at]))) for e in errs)
    for v, e in zip(active, errs, strict=True):
        live = np.flatnonzero(np.abs(e[at]) >= floor)  # the others add little to h
        if len(live):
            h += v.U[_ix(v.pos[rows], out[live])] @ e[at, live]
    su, sh = float(u.std()), float(h.std())
    if not (su > 0 and sh > 0):
        return None
    return u / su + h / sh


def guided_pairs(pool: np.ndarray, z: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """len(pool) // 2 disjoint pairs (r, s) from `pool`: the first k pair the rows of
    pool[:2k] with the k highest `z` (descending) with those of the k lowest (ascending), the
    rest pair the remaining rows in pool order (first half with second half)."""
    half = len(pool) // 2
    if z is None or k <= 0:
        return pool[:half], pool[half : 2 * half]
    head, tail = pool[: 2 * k], pool[2 * k : 2 * half]
    order = np.argsort(-z, kind="stable")
    rest = len(tail) // 2
    r = np.concatenate([head[order[:k]], tail[:rest]])
    s = np.concatenate([head[order[::-1][:k]], tail[rest : 2 * rest]])
    return r, s


def _accept_batch(
    parts: list[_Proposals],
    r: np.ndarray,
    s: np.ndarray,
    members: list[int],
    perms: list[np.ndarray],
    allowed: Allowed | None = None,
) -> bool:
    """Score the swap pairs (r[i], s[i]) on every view (`parts`), accept the best prefix of
    the improving ones (`best_prefix`) and apply it to the units' permutations; `allowed`
    (members, r, s, perms) -> mask vetoes pairs (a swap into a released empty cell)."""
    gain = np.zeros(len(r))
    for part in parts:
        part.bind()
        gain += part.gain()
    if allowed is not None:
        gain[~allowed(members, r, s, perms)] = 0.0
    cand = np.where(gain < -1e-15)[0]
    if not len(cand):
        return False
    cand = cand[np.argsort(gain[cand], kind="stable")]
    best_m, _ = best_prefix(lambda m: sum(part.change(cand[:m]) for part in parts), len(cand))
    if best_m == 0:
        return False
    take = cand[:best_m]
    for part in parts:
        part.accept(take)
    rr, ss = r[take], s[take]
    for unit_index in members:
        perm = perms[unit_index]
        perm_r, perm_s = perm[rr].copy(), perm[ss].copy()
        perm[rr], perm[ss] = perm_s, perm_r
    return True


def off_moves(
    moves: list[tuple[list[int], list[int]]], errs: list[np.ndarray], comfort: float
) -> list[tuple[list[int], list[int]]]:
    """The moves (units, dims) with a dim in a pair whose |error| is past `comfort` in some
    view. A swap of a unit changes only the pairs of its own dims, so when the sweeps stop at
    the first check within comfort (every view large), moving a unit whose pairs are all within
    it cannot bring that check nearer."""
    off = np.zeros(errs[0].shape[0], dtype=bool) if errs else np.zeros(0, dtype=bool)
    for e in errs:
        off |= (np.abs(e) > comfort).any(axis=1)
    return [(members, dims) for members, dims in moves if off[dims].any()]


def _drop_fixed_pairs(views: list[_View], units: list[list[int]], n_dims: int) -> None:
    """Pairs of two dims that never move cannot be improved: leave them out of the objective
    (their mask entries become 0 in every view)."""
    movable = np.zeros(n_dims, dtype=bool)
    for dims in units:
        movable[dims] = True
    fixed_pair = ~movable[:, None] & ~movable[None, :]
    for v in views:
        v.M[fixed_pair] = 0.0


def refine_swaps(
    X: np.ndarray,
    groups: list[np.ndarray],
    group_targets: list[np.ndarray],
    global_target: np.ndarray | None,
    units: list[list[int]],
    rng: np.random.Generator,
    settings: SwapSettings | None = None,
    labels: np.ndarray | None = None,
    settled: list[bool] | None = None,
    decisive: np.ndarray | None = None,
    allowed: Allowed | None = None,
) -> list[np.ndarray]:
    """Row permutations, one per unit (a list of dims that move together), that bring the
    correlation matrices of X (rows × dims, NaN = missing) towards their targets (NaN =
    untargeted): each group's rows towards its target, all rows towards `global_target`.
    Swaps stay inside a group and among rows where the unit is present. Dims in no unit
    never move but still steer the others. With `settings` (default `SwapSettings()`):
    sweeps stop when every targeted error is within
    `tol`, or a sweep improves the squared error by less than `min_gain` (relative) while
    the worst error is within `far`, or by less than `settle_gain` once every targeted error
    is within `comfort` (the budget: the tier-2 check needs CORR_TOL, not the last percent of
    the squared error). While some pair is still off by more than `far` (a structural zero
    among three columns, such as blhisp = black or hisp, is a local optimum of single-column
    swaps) sweeps go on, also swapping pairs of units together, while the excess beyond `far`
    keeps shrinking, up to `max_far_sweeps` more. When every view refined is large (at least
    1/tol² rows), the sweeps end at the first check within `comfort`. A share `guided` of each
    batch (less when the pool is much of the block) pairs rows along the errors' direction
    (`direction`, `guided_pairs`); every pair is scored exactly either way.

    With `labels` (entity per row) swap partners share a label (`draw_pairs`).
    Without labels, a view of at least 1/tol² rows whose worst error on a sample of its rows
    (`view_samples`, `worst_error`) is within `comfort` is settled as drawn: its rows are not
    swapped and it leaves the objective (panels, whose rows are not independent draws, are
    always refined). `settled` (one flag per group, then the global view) gives that decision
    when the caller has taken it already. `decisive` (dims × dims, boolean): the pairs the
    stopping rule and the chase judge (those verification decides on); every targeted pair
    still steers the swaps. Default: all.

    `allowed` (units moved, r, s, perms) -> mask, when given, vetoes swap pairs.

    Returns `perms`: for each unit, new_values = old_values[perm] (row-wise)."""
    knobs = settings if settings is not None else SwapSettings()
    n, d = X.shape
    perms = [np.arange(n) for _ in units]
    if n < 4 or d < 2:
        return perms
    views, global_view = _active_views(
        X, groups, group_targets, global_target, rng, knobs, labels, settled
    )
    if not any(v.M.any() for v in views) and (global_view is None or not global_view.M.any()):
        return perms
    all_views = views + ([global_view] if global_view else [])
    _drop_fixed_pairs(all_views, units, d)
    swapper = _Swapper(X, views, global_view, rng, knobs, labels, allowed)
    del X  # the views hold what the sweeps read; a caller that kept no reference frees it
    stop = _SweepStop(knobs, labels is None and all(_is_large(v, knobs.tol) for v in all_views))
    stale = 0
    for sweep in range(knobs.max_sweeps + knobs.max_far_sweeps):
        errs = [v.error() for v in all_views]
        judged = errs if decisive is None else [e * decisive for e in errs]
        if stop.done(judged, sweep):
            break
        moves = [([unit_index], dims) for unit_index, dims in enumerate(units)]
        if stop.chase:
            moves += _compound_units(units, errs, knobs.far)
        if stop.large:  # only a unit with a pair past comfort can end the sweeps sooner
            moves = off_moves(moves, judged, knobs.comfort)
        improved = False
        for members, dims in moves:
            if swapper.move(members, dims, perms):
                improved = True
        stale = 0 if improved else stale + 1
        if stale >= knobs.patience:
            break
    return perms


def draw_pairs(
    order: np.ndarray, half: int, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint row arrays (r, s) of swap partners from `order` (rows in random order):
    the first and second halves, or with `labels`, up to `half` pairs of rows with equal labels
    (same entity), so a swap moves values only within an entity."""
    if labels is None:
        return order[:half], order[half : 2 * half]
    idx = stable_label_order(labels[order])
    o = order[idx]
    lab = labels[o]
    if len(o) < 2:
        return o[:0], o[:0]
    new = np.concatenate([[True], lab[1:] != lab[:-1]])
    run_start = np.maximum.accumulate(np.where(new, np.arange(len(o)), 0))
    pos = np.arange(len(o)) - run_start
    i = np.flatnonzero((pos % 2 == 0) & np.concatenate([lab[1:] == lab[:-1], [False]]))
    if len(i) > half:  # the pairs whose first row comes earliest in the random order
        i = np.sort(i[np.argpartition(idx[i], half - 1)[:half]])  # idx is a permutation
    return o[i], o[i + 1]


def stable_label_order(labels: np.ndarray) -> np.ndarray:
    """`np.argsort(labels, kind="stable")` for non-negative integer labels below 2^32, by
    one or two stable 16-bit radix passes (least significant first) instead of a comparison
    sort."""
    integer = np.issubdtype(labels.dtype, np.integer)
    if not integer or len(labels) == 0 or labels.min() < 0 or labels.max() >= 2**32:
        return np.argsort(labels, kind="stable")
    key = labels.astype(np.uint32)
    low = np.argsort((key & 0xFFFF).astype(np.uint16), kind="stable")
    if key.max() < 2**16:
        return low
    return low[np.argsort((key[low] >> 16).astype(np.uint16), kind="stable")]


def block_target(release: dict[str, Any], stats_id: str) -> np.ndarray:
    """Released Spearman matrix of a block over all dims, NaN where not targeted (gated
    pairs, and pairs of indicators of one nominal column, made exclusive by construction)."""
    dims = release["dims"]
    T = np.asarray(
        [
            [np.nan if v is None else v for v in row]
            for row in release["blocks"][stats_id]["spearman"]
        ],
        dtype="float64",
    )
    cols = [d["column"] for d in dims]
    ind = np.asarray([d["kind"] == "indicator" for d in dims])
    same = (np.asarray(cols)[:, None] == np.asarray(cols)[None, :]) & ind[:, None] & ind[None, :]
    T[same] = np.nan
    return T
