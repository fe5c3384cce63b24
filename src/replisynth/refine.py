"""Rank-correlation refinement by swapping values between rows.

A Gaussian copula cannot express every dependence real data have: structural zeros
(never both 'lived with both parents' and 'with a single mother'), one column a function of
another (the 1966 south dummy of the 1966 region), mutually exclusive dummies. Its latent
target is then not positive definite, and the repaired matrix misses such pairs by 0.3 or
more. This step starts from the copula draw and swaps the values of one column between two
rows of the same block (stratum) whenever that brings the Spearman matrices closer to their
released targets: the block's own and, for stratified sources, the source-level one. A swap
moves no value out of its column or block and never moves a missing value, so exact
marginals, stratum contents and missing positions are untouched.

Each column is scored by its mid-ranks, centred and scaled to unit norm over the view's
rows (missing rows score 0). For a pair (i, j) the correlation over the rows where both are
present is tracked exactly through five sums: C = sum u_i u_j, A_ij = sum over j-present
rows of u_i, Q_ij = the same of u_i^2, and N_ij = the number of rows where both are present:
  corr_ij = (C - A_ij A_ji / N) / sqrt((Q_ij - A_ij^2 / N) (Q_ji - A_ji^2 / N)),
the Pearson correlation of the ranks over the pair's common rows (equal to Spearman when
nothing is missing, close to it otherwise). Swapping rows r, s of column i changes C, A_ij
and Q_ij by amounts linear in the pair's row values, so every proposal is scored in O(d);
proposals come in batches of disjoint row pairs and the best improving ones are accepted
together, as many as the exact objective of their combined change still improves. Columns
that belong together (the indicators of one nominal column) swap together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


def scores(x: np.ndarray) -> np.ndarray:
    """Mid-rank scores of a column, centred and scaled to unit norm; missing rows score 0."""
    u = np.zeros(len(x))
    ok = ~np.isnan(x)
    if ok.sum() < 2:
        return u
    r = stats.rankdata(x[ok], method="average")
    r = r - r.mean()
    nrm = np.sqrt(np.sum(r * r))
    if nrm > 0:
        u[ok] = r / nrm
    return u


def _corr(C: np.ndarray, Aij: np.ndarray, Aji: np.ndarray, Qij: np.ndarray, Qji: np.ndarray, N: np.ndarray) -> np.ndarray:
    """Pearson correlation over common rows from the running sums (0 where undefined)."""
    Nn = np.maximum(N, 1.0)
    num = C - Aij * Aji / Nn
    den = (Qij - Aij * Aij / Nn) * (Qji - Aji * Aji / Nn)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / np.sqrt(np.maximum(den, 1e-300))
    return np.where((den > 1e-300) & (N >= 3), r, 0.0)


@dataclass
class _View:
    """Running sums of a set of rows (`rows`: their indices in the data) and the error of
    their correlation matrix against `target` on the masked pairs."""

    rows: np.ndarray
    pos: np.ndarray  # position of each data row in `rows` (-1 when absent)
    U: np.ndarray
    P: np.ndarray
    C: np.ndarray
    A: np.ndarray
    Q: np.ndarray
    N: np.ndarray
    T: np.ndarray
    M: np.ndarray

    def corr(self) -> np.ndarray:
        return _corr(self.C, self.A, self.A.T, self.Q, self.Q.T, self.N)

    def error(self) -> np.ndarray:
        return (self.corr() - self.T) * self.M


def _view(X: np.ndarray, rows: np.ndarray, target: np.ndarray, n: int) -> _View:
    """Running sums of the rows `rows` of X (n rows in all) against `target`."""
    sub = X[rows]
    U = np.column_stack([scores(sub[:, j]) for j in range(X.shape[1])])
    P = (~np.isnan(sub)).astype("float64")
    M = np.isfinite(target).astype("float64")
    np.fill_diagonal(M, 0.0)
    pos = np.full(n, -1, dtype="int64")
    pos[rows] = np.arange(len(rows))
    return _View(rows, pos, U, P, U.T @ U, U.T @ P, (U * U).T @ P, P.T @ P, np.where(M > 0, target, 0.0), M)


def _proposal_terms(v: _View, r: np.ndarray, s: np.ndarray, dims: list[int], out: np.ndarray):
    """Per proposal and unit dim: the changes of C, A and Q with every dim outside the unit."""
    pr, ps = v.pos[r], v.pos[s]
    ur, us = v.U[pr][:, dims], v.U[ps][:, dims]  # (K, |unit|)
    du = us - ur
    dq = us * us - ur * ur
    dU_other = v.U[pr][:, out] - v.U[ps][:, out]  # (K, d')
    dP_other = v.P[pr][:, out] - v.P[ps][:, out]
    dC = du[:, :, None] * dU_other[:, None, :]  # (K, |unit|, d')
    dA = du[:, :, None] * dP_other[:, None, :]
    dQ = dq[:, :, None] * dP_other[:, None, :]
    return pr, ps, dC, dA, dQ


def _block(v: _View, dims: list[int], out: np.ndarray) -> tuple[np.ndarray, ...]:
    """The running sums of a unit's pairs with every dim outside it (copied once per batch)."""
    ix, xi = np.ix_(dims, out), np.ix_(out, dims)
    return (v.C[ix], v.A[ix], v.A[xi].T, v.Q[ix], v.Q[xi].T, v.N[ix], v.T[ix], v.M[ix])


def _objective(blk: tuple[np.ndarray, ...], dC, dA, dQ) -> np.ndarray:
    """Squared error over the unit's pairs after adding the changes (leading axes broadcast)."""
    C, Aij, Aji, Qij, Qji, N, T, M = blk
    e = (_corr(C + dC, Aij + dA, Aji, Qij + dQ, Qji, N) - T) * M
    return (e * e).sum(axis=(-1, -2))


def penalty(blk: tuple[np.ndarray, ...], dC, dA, dQ, tau: float, weight: float) -> np.ndarray:
    """`_objective` plus `weight` × the squared excess of each |error| over `tau`: a soft
    wall that keeps rank correlations inside a tolerance while another objective moves rows."""
    C, Aij, Aji, Qij, Qji, N, T, M = blk
    e = (_corr(C + dC, Aij + dA, Aji, Qij + dQ, Qji, N) - T) * M
    h = np.maximum(np.abs(e) - tau, 0.0)
    return (e * e + weight * h * h).sum(axis=(-1, -2))


def accept_swaps(v: _View, a_r: np.ndarray, a_s: np.ndarray, dims: list[int], out: np.ndarray, dC: np.ndarray, dA: np.ndarray, dQ: np.ndarray) -> None:
    """Apply accepted disjoint swaps (view positions a_r <-> a_s of the unit `dims`) to a
    view: its scores and the running sums of the unit's pairs (dC, dA, dQ: summed changes)."""
    for a in dims:
        ur, us = v.U[a_r, a].copy(), v.U[a_s, a].copy()
        v.U[a_r, a], v.U[a_s, a] = us, ur
    v.C[np.ix_(dims, out)] += dC
    v.C[np.ix_(out, dims)] = v.C[np.ix_(dims, out)].T
    v.A[np.ix_(dims, out)] += dA
    v.Q[np.ix_(dims, out)] += dQ


def refine_swaps(
    X: np.ndarray,
    groups: list[np.ndarray],
    group_targets: list[np.ndarray],
    global_target: np.ndarray | None,
    units: list[list[int]],
    rng: np.random.Generator,
    tol: float = 0.004,
    max_sweeps: int = 60,
    patience: int = 3,
    min_gain: float = 0.01,
    max_pairs: int = 512,
) -> list[np.ndarray]:
    """Row permutations, one per unit (a list of dims that move together), that bring the
    correlation matrices of X (rows × dims, NaN = missing) towards their targets (NaN =
    untargeted): each group's rows towards its target, all rows towards `global_target`.
    Swaps stay inside a group and among rows where the unit is present. Dims in no unit
    never move but still steer the others. Sweeps stop when every targeted error is within
    `tol`, or a sweep improves the squared error by less than `min_gain` (relative).

    Returns `perms`: for each unit, new_values = old_values[perm] (row-wise)."""
    n, d = X.shape
    perms = [np.arange(n) for _ in units]
    if n < 4 or d < 2:
        return perms
    views = [_view(X, g, t, n) for g, t in zip(groups, group_targets, strict=True)]
    gview = _view(X, np.arange(n), global_target, n) if global_target is not None else None
    if not any(v.M.any() for v in views) and (gview is None or not gview.M.any()):
        return perms
    # Pairs of two dims that never move cannot be improved: leave them out of the objective.
    movable = np.zeros(d, dtype=bool)
    for dims in units:
        movable[dims] = True
    fixed_pair = ~movable[:, None] & ~movable[None, :]
    all_views = views + ([gview] if gview else [])
    for v in all_views:
        v.M[fixed_pair] = 0.0
    present = ~np.isnan(X)
    stale = 0
    prev = np.inf
    for _ in range(max_sweeps):
        errs = [v.error() for v in all_views]
        worst = max(float(np.max(np.abs(e))) for e in errs)
        total = sum(float(np.sum(e * e)) for e in errs)
        if worst <= tol or total > prev * (1 - min_gain):
            break
        prev = total
        improved = False
        for ui, dims in enumerate(units):
            inside = np.zeros(d, dtype=bool)
            inside[dims] = True
            out = np.where(~inside)[0]
            for view in views:
                active = [view] + ([gview] if gview is not None else [])
                if not any(v.M[np.ix_(dims, out)].any() for v in active):
                    continue
                rows = view.rows[present[view.rows, dims[0]]]
                if len(rows) < 4:
                    continue
                order = rows[rng.permutation(len(rows))]
                # at least a sixteenth of the block per batch: a correlation moves by O(1/n)
                # per swap, so 512 pairs cannot reach the targets in blocks of 10^5+ rows
                half = min(len(order) // 2, max(max_pairs, min(len(order) // 16, 1_500_000 // (len(dims) * len(out) + 1))))
                r, s = order[:half], order[half : 2 * half]
                parts = []
                gain = np.zeros(len(r))
                for v in active:
                    pr, ps, dC, dA, dQ = _proposal_terms(v, r, s, dims, out)
                    blk = _block(v, dims, out)
                    base = float(_objective(blk, 0.0, 0.0, 0.0))
                    gain += _objective(blk, dC, dA, dQ) - base
                    parts.append((v, pr, ps, dC, dA, dQ, base, blk))
                cand = np.where(gain < -1e-15)[0]
                if not len(cand):
                    continue
                cand = cand[np.argsort(gain[cand], kind="stable")]

                def combined(m: int, parts: list = parts, cand: np.ndarray = cand) -> float:
                    take = cand[:m]
                    return sum(
                        float(_objective(blk, dC[take].sum(0), dA[take].sum(0), dQ[take].sum(0))) - base
                        for _v, _pr, _ps, dC, dA, dQ, base, blk in parts
                    )

                best_m, best_f, m = 0, 0.0, 1
                while True:
                    f = combined(m)
                    if f < best_f:
                        best_f, best_m = f, m
                    elif m >= 16:
                        break
                    if m == len(cand):
                        break
                    m = min(2 * m, len(cand))
                if best_m == 0:
                    continue
                take = cand[:best_m]
                for v, pr, ps, dC, dA, dQ, _, _ in parts:
                    accept_swaps(v, pr[take], ps[take], dims, out, dC[take].sum(0), dA[take].sum(0), dQ[take].sum(0))
                rr, ss = r[take], s[take]
                p = perms[ui]
                p_r, p_s = p[rr].copy(), p[ss].copy()
                p[rr], p[ss] = p_s, p_r
                improved = True
        stale = 0 if improved else stale + 1
        if stale >= patience:
            break
    return perms
