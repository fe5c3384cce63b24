"""Gaussian copula sampling with exact marginals.
Method: docs/method.md, "Correlations and the copula".
"""

from __future__ import annotations

import numpy as np

from replisynth.stats.correlations import cholesky


def correlated_normals(
    R: np.ndarray, n: int, rng: np.random.Generator, exact: bool = True
) -> np.ndarray:
    """n draws of a d-variate standard normal with correlation R (n × d). With `exact` and
    n > d + 1 the sample correlation equals R up to floating point."""
    d = R.shape[0]
    G = rng.standard_normal((n, d))
    if d == 0 or n == 0:
        return G
    L = cholesky(R)
    if exact and n > d + 1:
        G -= G.mean(axis=0)
        C = (G.T @ G) / (n - 1)
        Lc = np.linalg.cholesky(C)
        # whiten and colour in one n x d product: G Lc^-T L^T (a d x d matrix on the right)
        return G @ np.linalg.solve(Lc.T, L.T)
    return G @ L.T


def rank_order(z: np.ndarray) -> np.ndarray:
    """Indices that sort z ascending (stable, so ties keep row order).

    Latent normals almost never tie, and without ties the sorting permutation is unique, so
    the SIMD quicksort (faster than the stable merge sort on floats) gives the same
    indices; the stable sort runs only when a tie shows up in the sorted values."""
    z = np.asarray(z)
    if z.dtype.kind != "f":
        return np.argsort(z, kind="stable")
    order = np.argsort(z)
    zs = z[order]
    if len(zs) > 1 and (np.any(zs[1:] == zs[:-1]) or np.isnan(zs[-1])):
        return np.argsort(z, kind="stable")
    return order


def fill_by_rank(z: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """Give the k-th smallest z the k-th smallest value."""
    out = np.empty(len(z), dtype=sorted_values.dtype)
    out[rank_order(z)] = sorted_values
    return out


def ordered_values(z: np.ndarray, counts: list[int]) -> np.ndarray:
    """Level index per row: the counts[0] lowest z get level 0, the next counts[1] level 1, ..."""
    codes = _ordered_by_cuts(np.asarray(z), counts)
    if codes is not None:
        return codes
    sorted_codes = np.repeat(np.arange(len(counts)), counts)
    return fill_by_rank(z, sorted_codes)


def _ordered_by_cuts(z: np.ndarray, counts: list[int]) -> np.ndarray | None:
    """`ordered_values` without a full sort: the z at each level's first rank found by a
    partial sort, each row's level counted against those cuts. The same levels whenever the
    counts come out exact (no tie across a cut); None otherwise, and for non-float z."""
    n = len(z)
    if z.dtype.kind != "f" or len(counts) < 2 or n < 2 or int(np.sum(counts)) != n:
        return None
    first = np.cumsum(np.asarray(counts, dtype=np.int64))[:-1]  # first rank of levels 1..k-1
    inside = np.unique(first[first < n])
    cuts = np.full(len(first), np.inf)
    if len(inside):
        at = np.partition(z, inside)[inside]
        cuts[first < n] = at[np.searchsorted(inside, first[first < n])]
    if np.isnan(cuts).any():
        return None
    codes = np.searchsorted(cuts, z, side="right")
    if not np.array_equal(np.bincount(codes, minlength=len(counts)), np.asarray(counts)):
        return None
    return codes


def nominal_values(
    Z: np.ndarray, counts: list[int], baseline: int, dim_levels: list[int]
) -> np.ndarray:
    """Level index per row for a nominal column: levels other than the baseline are filled in
    ascending order of their counts, each taking the unassigned rows with the largest latent
    utility (its column of Z); the baseline takes the rest. `dim_levels[j]` is the level of
    Z's column j; levels without a latent column take random-order rows (Z's absence)."""
    n = Z.shape[0]
    out = np.full(n, baseline, dtype="int64")
    free = np.ones(n, dtype=bool)
    col_of = {lev: j for j, lev in enumerate(dim_levels)}
    order = sorted((k for k in range(len(counts)) if k != baseline), key=lambda k: (counts[k], k))
    for k in order:
        c = counts[k]
        if c <= 0:
            continue
        idx = np.where(free)[0]
        if k in col_of:
            score = Z[idx, col_of[k]]
            take = idx[rank_order(-score)[:c]]
        else:
            take = idx[:c]
        out[take] = k
        free[take] = False
    return out
