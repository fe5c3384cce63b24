"""Rank-correlation refinement by swapping values between rows.

A Gaussian copula cannot express every dependence real data have: structural zeros
(never both 'lived with both parents' and 'with a single mother'), one column a function of
another (the 1966 south dummy of the 1966 region), mutually exclusive dummies. Its latent
target is then not positive definite, and the repaired matrix misses such pairs by 0.3 or
more. This step starts from the copula draw and swaps the values of one column between two
rows of the same block (stratum) whenever that brings the Spearman matrices closer to their
released targets: the block's own and, for stratified sources, the source-level one. A swap
moves no value out of its column or block and never moves a missing value, so exact
marginals, stratum contents and missing counts are untouched.

With mid-rank scores centred and scaled to unit norm over a view's rows (missing scored 0),
the Spearman correlation of columns i, j over their common rows is close to
C[i, j] / S[i, j], where C = U'U and S[i, j] is the geometric mean of the two columns' score
mass on the common rows (S = 1 without missing values, where the formula is exact).
Swapping rows r, s of column i changes C[i, j] by (u_si - u_ri)(u_rj - u_sj), so every
proposal is scored in O(d). Proposals come in batches of disjoint row pairs; the best
improving ones are accepted together, as many as the objective of their combined change
still improves. Columns that belong together (the indicators of one nominal column) swap
together.
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


@dataclass
class _View:
    """Scores of a set of rows (`rows`: their indices in the data) and the error of their
    Spearman matrix against `target` on the masked pairs."""

    rows: np.ndarray
    U: np.ndarray
    S: np.ndarray
    T: np.ndarray
    M: np.ndarray
    E: np.ndarray
    pos: np.ndarray  # position of each data row in `rows` (-1 when absent)


def _view(X: np.ndarray, rows: np.ndarray, target: np.ndarray, n: int) -> _View:
    sub = X[rows]
    U = np.column_stack([scores(sub[:, j]) for j in range(X.shape[1])])
    present = ~np.isnan(sub)
    if present.all():
        S = np.ones((X.shape[1], X.shape[1]))
    else:
        A = (U * U).T @ present.astype("float64")
        S = np.sqrt(np.maximum(A * A.T, 1e-300))
    M = np.isfinite(target).astype("float64")
    np.fill_diagonal(M, 0.0)
    T = np.where(M > 0, target, 0.0)
    E = (U.T @ U / S - T) * M
    pos = np.full(n, -1, dtype="int64")
    pos[rows] = np.arange(len(rows))
    return _View(rows, U, S, T, M, E, pos)


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
) -> list[np.ndarray]:
    """Row permutations, one per unit (a list of dims that move together), that bring the
    Spearman matrices of X (rows × dims, NaN = missing) towards their targets (NaN =
    untargeted): each group's rows towards its target, all rows towards `global_target`.
    Swaps stay inside a group.

    Returns `perms`: for each unit, new_values = old_values[perm] (row-wise)."""
    n, d = X.shape
    perms = [np.arange(n) for _ in units]
    if n < 4 or d < 2:
        return perms
    views = [_view(X, g, t, n) for g, t in zip(groups, group_targets, strict=True)]
    gview = _view(X, np.arange(n), global_target, n) if global_target is not None else None
    if not any(v.M.any() for v in views) and (gview is None or not gview.M.any()):
        return perms
    present = ~np.isnan(X)
    stale = 0
    for _ in range(max_sweeps):
        worst = max([float(np.max(np.abs(v.E))) for v in views] + ([float(np.max(np.abs(gview.E)))] if gview else []))
        if worst <= tol:
            break
        improved = False
        for ui, dims in enumerate(units):
            inside = np.zeros(d, dtype=bool)
            inside[dims] = True
            for view in views:
                active = [view] + ([gview] if gview is not None else [])
                if not any(v.M[dims][:, ~inside].any() for v in active):
                    continue
                rows = view.rows[present[view.rows, dims[0]]]
                if len(rows) < 4:
                    continue
                order = rows[rng.permutation(len(rows))]
                half = len(order) // 2
                r, s = order[:half], order[half : 2 * half]
                parts = []
                gain = np.zeros(len(r))
                for v in active:
                    pr, ps = v.pos[r], v.pos[s]
                    dU = v.U[ps][:, dims] - v.U[pr][:, dims]
                    other = v.U[pr][:, ~inside] - v.U[ps][:, ~inside]
                    W = (v.M / v.S)[dims][:, ~inside]
                    Ei = v.E[dims][:, ~inside]
                    for a in range(len(dims)):
                        D = dU[:, a : a + 1] * other * W[a][None, :]
                        gain += ((2 * Ei[a][None, :] + D) * D).sum(axis=1)
                    parts.append((v, pr, ps, dU, other, W, Ei))
                cand = np.where(gain < -1e-15)[0]
                if not len(cand):
                    continue
                cand = cand[np.argsort(gain[cand], kind="stable")]

                def objective(take: np.ndarray, parts: list = parts, dims: list[int] = dims) -> float:
                    f = 0.0
                    for _v, _pr, _ps, dU, other, W, Ei in parts:
                        Dsum = np.stack([(dU[take, a : a + 1] * other[take]).sum(axis=0) for a in range(len(dims))]) * W
                        f += float(np.sum((Ei + Dsum) ** 2))
                    return f

                best_m, best_f = 0, objective(cand[:0])
                m = 1
                while True:
                    f = objective(cand[:m])
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
                rr, ss = r[take], s[take]
                for v, pr, ps, *_ in parts:
                    a_r, a_s = pr[take], ps[take]
                    for a in dims:
                        ur, us = v.U[a_r, a].copy(), v.U[a_s, a].copy()
                        v.U[a_r, a], v.U[a_s, a] = us, ur
                    C_rows = v.U[:, dims].T @ v.U
                    v.E[dims, :] = (C_rows / v.S[dims, :] - v.T[dims, :]) * v.M[dims, :]
                    v.E[:, dims] = v.E[dims, :].T
                p = perms[ui]
                p_r, p_s = p[rr].copy(), p[ss].copy()
                p[rr], p[ss] = p_s, p_r
                improved = True
        stale = 0 if improved else stale + 1
        if stale >= patience:
            break
    return perms
