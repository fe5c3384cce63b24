"""Atoms of a continuous column: the values held by at least `min_cell_size` rows, released
with their counts like the cells of a frequency table, beside a grid of the remaining values.
Synthesis draws the atoms with their exact shares and the rest from that grid.
Method: docs/method.md, "Atoms of continuous columns".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from replisynth.stats.marginals import (
    GRID,
    apportion,
    exact_quantile_sample,
    grid_cdf,
    grid_releasable,
    grid_release,
)


@dataclass(frozen=True)
class AtomSplit:
    """A column's non-missing values split into atoms (ascending values and their counts,
    pooled rows included) and the sorted remaining values; `pooled` rows of values below
    the cell size joined their nearest atom because too few were left for a grid."""

    values: np.ndarray
    counts: np.ndarray
    rest: np.ndarray
    pooled: int = 0


def split_atoms(values: np.ndarray, min_cell: int, dominance: float | None = None) -> AtomSplit:
    """Split finite `values` into atoms and the rest. A value is an atom when at least
    `min_cell` rows hold it and, for a magnitude under the dominance rule, its cell total is
    not dominated by two of them (2/count at most `dominance`; a cell of zeros has no total to
    dominate). When 1..min_cell−1 rows are left over they join the nearest atom (ties go
    down), as an ordered frequency table pools a level below the cell size: the rest is then
    empty or holds at least min_cell rows."""
    x = np.sort(np.asarray(values, dtype="float64"))
    u, c = _sorted_runs(x)
    keep = c >= min_cell
    if dominance is not None:  # the top-two share of `count` equal values is 2/count
        keep &= (u == 0) | (2.0 / c <= dominance)
    atoms, counts = u[keep], c[keep].astype("int64")
    rest = np.repeat(u[~keep], c[~keep])
    if len(atoms) == 0 or len(rest) == 0 or len(rest) >= min_cell:
        return AtomSplit(atoms, counts, rest)
    counts = counts.copy()
    np.add.at(counts, nearest_atom(atoms, rest), 1)
    return AtomSplit(atoms, counts, rest[:0], int(len(rest)))


def _sorted_runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(x, return_counts=True)` of an already sorted `x`, without sorting it again.
    NaN (one value to np.unique) and -0.0 (equal to 0.0, and which of the two np.unique's own
    sort puts first is the value it returns) go through np.unique itself."""
    if len(x) == 0 or np.isnan(x[-1]) or _negative_zero(x):
        return np.unique(x, return_counts=True)
    starts = np.flatnonzero(np.concatenate(([True], x[1:] != x[:-1])))
    return x[starts], np.diff(np.append(starts, len(x)))


def _negative_zero(x: np.ndarray) -> bool:
    """Whether the sorted `x` holds a -0.0 (its zeros are one run)."""
    lo, hi = np.searchsorted(x, 0.0, side="left"), np.searchsorted(x, 0.0, side="right")
    return bool(np.signbit(x[lo:hi]).any())


def nearest_atom(atoms: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the atom nearest each value of `x` (ties to the lower atom)."""
    hi = np.clip(np.searchsorted(atoms, x, side="left"), 0, len(atoms) - 1)
    lo = np.clip(hi - 1, 0, len(atoms) - 1)
    return np.where(np.abs(x - atoms[lo]) <= np.abs(atoms[hi] - x), lo, hi)


def atom_release(
    values: np.ndarray,
    min_cell: int,
    trim: float,
    method: str = "fixed",
    dominance: float | None = None,
) -> dict[str, Any] | None:
    """The `atoms` record of a continuous marginal: atom values and counts (rows pooled into
    them included; whether any were is logged at extract, never how many), and `rest` (the grid record of the remaining values, None when none remain). None
    when no value is an atom, or when the remaining values cannot release a grid."""
    split = split_atoms(values, min_cell, dominance)
    if len(split.values) == 0:
        return None
    rest: dict[str, Any] | None = None
    if len(split.rest):
        if not grid_releasable(len(split.rest), trim, method):
            return None
        try:
            g = grid_release(split.rest, trim, method, dominance)
        except ValueError:
            return None
        rest = {"n": int(len(split.rest)), "grid": g.grid.tolist(), **g.fields(method)}
    return {
        "values": [float(v) for v in split.values],
        "counts": [int(c) for c in split.counts],
        "rest": rest,
    }


def _parts(atoms: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Atom values, counts, the rest's grid (None when empty) and its row count."""
    vals = np.asarray(atoms["values"], dtype="float64")
    counts = np.asarray(atoms["counts"], dtype="float64")
    rest = atoms.get("rest") or None
    if rest is None or not rest.get("n"):
        return vals, counts, None, 0
    return vals, counts, np.asarray(rest["grid"], dtype="float64"), int(rest["n"])


def mixture_components(
    atoms: dict[str, Any], weight: float = 1.0
) -> list[tuple[float, np.ndarray]]:
    """The released mixed marginal as weighted 101-point grids: a constant grid per atom (a
    point mass) and the rest's grid, weights summing to `weight`."""
    vals, counts, rest_grid, n_rest = _parts(atoms)
    total = float(counts.sum()) + n_rest
    out = [(weight * c / total, np.full(len(GRID), v)) for v, c in zip(vals, counts, strict=True)]
    if rest_grid is not None:
        out.append((weight * n_rest / total, rest_grid))
    return out


def _rest_left_cdf(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """F(x−) of a grid's distribution: at a grid point, the level of its first occurrence."""
    i = np.searchsorted(g, x, side="left")
    on = (i < len(g)) & (g[np.minimum(i, len(g) - 1)] == x)
    return np.where(on, GRID[np.minimum(i, len(g) - 1)], grid_cdf(g, x))


def mixed_grid(atoms: dict[str, Any]) -> np.ndarray:
    """The 101-point grid of the mixed marginal (Q(p) = inf{x: F(x) >= p}), a function of the
    released atoms and rest grid only: what readers of the plain `grid` key see."""
    vals, counts, rest_grid, n_rest = _parts(atoms)
    total = float(counts.sum()) + n_rest
    xs = np.unique(np.concatenate([vals, rest_grid if rest_grid is not None else []]))
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    below = cum[np.searchsorted(vals, xs, side="left")] / total
    upto = cum[np.searchsorted(vals, xs, side="right")] / total
    if rest_grid is not None:
        w = n_rest / total
        below = below + w * _rest_left_cdf(rest_grid, xs)
        upto = upto + w * grid_cdf(rest_grid, xs)
    P = np.column_stack([below, upto]).ravel()
    X = np.repeat(xs, 2)
    i = np.searchsorted(P, GRID, side="left")
    i0, i1 = np.clip(i - 1, 0, len(P) - 1), np.clip(i, 0, len(P) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(P[i1] > P[i0], (GRID - P[i0]) / (P[i1] - P[i0]), 1.0)
    q = np.where(i == 0, X[0], X[i0] + np.clip(frac, 0.0, 1.0) * (X[i1] - X[i0]))
    q[-1] = X[-1]
    return np.maximum.accumulate(q)


def mixed_sample(atoms: dict[str, Any], n: int, integer: bool) -> np.ndarray:
    """The n values (ascending) of the mixed marginal: each atom's count and the rest's by
    largest-remainder apportionment of the released counts, the rest as the exact quantile
    sample of its grid (rounded for integer columns). No randomness."""
    vals, counts, rest_grid, n_rest = _parts(atoms)
    shares = np.concatenate([counts, [float(n_rest)] if rest_grid is not None else []])
    k = apportion(shares, n)
    parts = [np.repeat(vals, k[: len(vals)])]
    if rest_grid is not None:
        parts.append(exact_quantile_sample(rest_grid, int(k[-1]), integer))
    return np.sort(np.concatenate(parts))


def marginal_sample(marginal: dict[str, Any], n: int, integer: bool) -> np.ndarray:
    """Sorted n values of a continuous marginal: its atoms when released, else its grid."""
    if marginal.get("atoms"):
        return mixed_sample(marginal["atoms"], n, integer)
    return np.sort(exact_quantile_sample(np.asarray(marginal["grid"]), n, integer))
