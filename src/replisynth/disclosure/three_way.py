"""Three-way tables of released categorical columns bounded by linear programs from what a
bundle releases about their pairs (margins, empty-cell flags, Spearman correlations of their
dims, linear in the cells once the margins are known): a 3-way cell forced into 1..k-1 rows is
a disclosure even when every two-way table passes. Rule and limits: docs/disclosure.md,
"Three-way cells"."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from replisynth.disclosure.linked_correlations import released_digits
from replisynth.disclosure.lp import LinearProgram, LPResult
from replisynth.stats.copula_dims import norm_key

Finding = dict[str, Any]
Triple = tuple[str, str, str]
# The true 3-way table of a triple in a block (extended coding: released levels, bucket,
# missing), on the secure side; None in the review.
TrueTable = Callable[[str, Triple], np.ndarray | None]
MAX_COLUMNS = 48  # categorical columns examined per block, in release order
MAX_CELLS = 4096  # cells of a 3-way table bounded by LP (larger tables are not bounded)


@dataclass(frozen=True)
class _Col:
    """A categorical column in one block: counts of its extended levels (released levels,
    the suppressed bucket, missing rows) and its dims' scores per extended level."""

    name: str
    levels: list[Any]
    counts: np.ndarray
    dims: list[tuple[int, np.ndarray]]  # (dim index, score; NaN where the dim is not observed)


@dataclass(frozen=True)
class _Row:
    """One released correlation as a linear constraint on a pair's two-way table."""

    cols: tuple[str, str]
    dims: tuple[int, int]
    weights: np.ndarray  # La x Lb
    lo: float
    hi: float


def _raw_scores(dim: dict[str, Any], levels: list[Any]) -> np.ndarray:
    """A dim's value at each extended level (NaN: not observed there or not a function of the
    released level, as an ordered column's suppressed rows or a level released elsewhere)."""
    L = len(levels)
    if dim["kind"] == "missing":
        return np.asarray([0.0] * (L + 1) + [1.0])
    if dim["kind"] == "ordered":
        return np.asarray([*map(float, range(L)), np.nan, np.nan])
    at = {norm_key(v): i for i, v in enumerate(levels)}
    i = at.get(norm_key(dim["level"]))
    out = np.zeros(L + 2)
    if i is None:
        out[L] = np.nan  # the indicator's level is in this block's bucket
    else:
        out[i] = 1.0
    out[L + 1] = np.nan
    return out


def _midrank_scores(raw: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
    """Each extended level's mid-rank (over n, so in (0, 1]) of the dim's value; None when
    the dim is unobserved on rows of the block (its correlations then run over a subset of
    rows: not linear in the cells) or constant."""
    held = counts > 0
    if np.isnan(raw[held]).any():
        return None
    values = np.unique(raw[held])
    if len(values) < 2:
        return None
    per = np.asarray([counts[held & (raw == v)].sum() for v in values], dtype="float64")
    mid = (np.cumsum(per) - (per - 1) / 2.0) / counts.sum()
    out = np.zeros(len(raw))
    for v, m in zip(values, mid, strict=True):
        out[held & (raw == v)] = m
    return out


def block_columns(release: dict[str, Any], bid: str) -> dict[str, _Col]:
    """The categorical columns with a released table in block `bid` and 2+ levels."""
    block = release["blocks"][bid]
    strata = set(release["strata"]["columns"])
    out: dict[str, _Col] = {}
    for name, m in block["marginals"].items():
        if m.get("kind") != "categorical" or name in strata or len(out) >= MAX_COLUMNS:
            continue
        t = m["table"]
        sup = int(t.get("suppressed", 0))
        seen = int(sum(t["counts"])) + sup
        counts = np.asarray([*t["counts"], sup, int(block["rows"]) - seen], dtype="float64")
        if len(t["levels"]) < 2:
            continue
        dims = [
            (j, _raw_scores(d, list(t["levels"])))
            for j, d in enumerate(release["dims"])
            if d["column"] == name
        ]
        out[name] = _Col(name, list(t["levels"]), counts, dims)
    return out


def _half_width(rho: float, digits: int, n: float) -> float:
    """Half the interval a released correlation stands for, on the cross-product sum (a
    rounded correlation is an interval, an unrounded one is exact up to float error)."""
    slack = 1e-6 * n  # float error, wide enough for the solver's feasibility tolerance
    if digits >= 15:
        return slack
    unit = math.floor(math.log10(abs(rho))) - digits + 1 if rho else -digits
    return 0.5 * 10.0**unit * n + slack


def pair_rows(release: dict[str, Any], bid: str, a: _Col, b: _Col, digits: int) -> list[_Row]:
    """The released correlations between dims of `a` and `b` in block `bid` that are linear
    in their two-way table: sum x_ij (s_a(i) - m_a)(s_b(j) - m_b) = n rho sd_a sd_b."""
    S = release["blocks"][bid]["spearman"]
    n = float(a.counts.sum())
    out: list[_Row] = []
    for p, ra in a.dims:
        sa = _midrank_scores(ra, a.counts)
        if sa is None:
            continue
        ca = sa - float(sa @ a.counts) / n
        sd_a = math.sqrt(float(ca**2 @ a.counts) / n)
        for q, rb in b.dims:
            rho = S[p][q]
            sb = _midrank_scores(rb, b.counts)
            if rho is None or not math.isfinite(rho) or sb is None:
                continue
            cb = sb - float(sb @ b.counts) / n
            sd_b = math.sqrt(float(cb**2 @ b.counts) / n)
            target = n * rho * sd_a * sd_b
            half = _half_width(rho, digits, n) * sd_a * sd_b
            out.append(
                _Row((a.name, b.name), (p, q), np.outer(ca, cb), target - half, target + half)
            )
    return out


def flag_zeros(release: dict[str, Any], a: _Col, b: _Col) -> np.ndarray:
    """The flagged empty cells of the pair as a boolean matrix over extended levels."""
    out = np.zeros((len(a.counts), len(b.counts)), dtype=bool)
    at_a = {norm_key(v): i for i, v in enumerate(a.levels)}
    at_b = {norm_key(v): i for i, v in enumerate(b.levels)}
    for f in release.get("empty_cells") or []:
        if set(f["columns"]) != {a.name, b.name}:
            continue
        swap = f["columns"][0] != a.name
        for cell in f["cells"]:
            va, vb = (cell[1], cell[0]) if swap else (cell[0], cell[1])
            i, j = at_a.get(norm_key(va)), at_b.get(norm_key(vb))
            if i is not None and j is not None:
                out[i, j] = True
    return out


@dataclass
class TripleLP:
    """The attacker's linear program over one triple's 3-way table in one block."""

    cols: tuple[_Col, _Col, _Col]
    rows: list[_Row]
    zeros: list[np.ndarray]  # per pair (0,1), (0,2), (1,2): flagged cells

    def __post_init__(self) -> None:
        a, b, c = self.cols
        self.shape = (len(a.counts), len(b.counts), len(c.counts))

    def open_cells(self) -> np.ndarray:
        """Cells that neither a flag nor an empty margin fixes at 0."""
        a, b, c = self.cols
        held = (a.counts > 0)[:, None, None] & (b.counts > 0)[None, :, None]
        held = held & (c.counts > 0)[None, None, :]
        for pair, z in enumerate(self.zeros):
            held = held & ~self._expand(pair, z)
        return held

    def _expand(self, pair: int, w: np.ndarray) -> np.ndarray:
        """A two-way functional of pair (0,1), (0,2) or (1,2) over the 3-way table."""
        if pair == 0:
            return np.broadcast_to(w[:, :, None], self.shape)
        if pair == 1:
            return np.broadcast_to(w[:, None, :], self.shape)
        return np.broadcast_to(w[None, :, :], self.shape)

    def _pair_of(self, cols: tuple[str, str]) -> int:
        names = [c.name for c in self.cols]
        i, j = sorted((names.index(cols[0]), names.index(cols[1])))
        return {(0, 1): 0, (0, 2): 1, (1, 2): 2}[(i, j)]

    def system(self) -> tuple[Any, ...]:
        """A_eq, b_eq (margins), A_ub, b_ub (correlation intervals), variable bounds."""
        shape = self.shape
        eq, rhs = [], []
        for axis, col in enumerate(self.cols):
            for v in range(shape[axis]):
                w = np.zeros(shape)
                w[(slice(None),) * axis + (v,)] = 1.0
                eq.append(w.ravel())
                rhs.append(col.counts[v])
        ub, ub_rhs = [], []
        for r in self.rows:
            row = self._expand(self._pair_of(r.cols), r.weights).ravel()
            ub += [row, -row]
            ub_rhs += [r.hi, -r.lo]
        zero = np.zeros(shape, dtype=bool)
        for pair, z in enumerate(self.zeros):
            zero |= self._expand(pair, z)
        bounds = np.where(zero.ravel()[:, None], [0.0, 0.0], [0.0, np.inf])
        A_ub = np.asarray(ub) if ub else None
        return np.asarray(eq), np.asarray(rhs), A_ub, np.asarray(ub_rhs) if ub else None, bounds

    def _reduced(self) -> tuple[Any, ...]:
        """`system` over the open cells only (the others are fixed at 0), and their indices."""
        A_eq, b_eq, A_ub, b_ub, _ = self.system()
        act = np.flatnonzero(self.open_cells().ravel())
        A_eq = A_eq[:, act]
        keep = np.any(A_eq != 0, axis=1) | (b_eq != 0)
        A_ub = None if A_ub is None else A_ub[:, act]
        return A_eq[keep], b_eq[keep], A_ub, b_ub, act

    def _clear(self, open_: dict[Any, int], x: np.ndarray, act: np.ndarray, k: int) -> None:
        """Drop from `open_` the cells that the feasible table `x` (over `act`) leaves empty
        or at >= k rows, or from which 2x2x2 moves reach an empty cell. A value in (k-1, k)
        clears nothing: the maximum may still round down to k-1, which `pinned` counts."""
        for c in [c for c, i in open_.items() if x[i] < 1e-6 or x[i] >= k - 1e-6]:
            del open_[c]
        full = np.zeros(int(np.prod(self.shape)))
        full[act] = np.clip(x, 0.0, None)
        table = full.reshape(self.shape)
        cells = list(open_)
        for c, zero in zip(cells, zeros_certified(table, cells), strict=True):
            if zero:
                del open_[c]

    def pinned(self, cells: list[tuple[int, int, int]], k: int) -> list[tuple[int, int, int]]:
        """The `cells` whose every feasible count lies in 1..k-1 (integer rounding). Every
        solution found is a feasible table: a cell it leaves empty or at >= k rows is cleared
        without its own programs (the sums of the open cells, minimised and maximised, clear
        most of them in two programs)."""
        A_eq, b_eq, A_ub, b_ub, act = self._reduced()
        var = {int(j): v for v, j in enumerate(act)}
        at = {c: var[j] for c in cells if (j := int(np.ravel_multi_index(c, self.shape))) in var}
        open_ = dict(at)
        program = LinearProgram(A_ub, b_ub, A_eq, b_eq)

        def solve(objective: np.ndarray) -> LPResult:
            res = program.minimize(objective)
            if res.status == 0 and res.x is not None:
                self._clear(open_, res.x, act, k)
            return res

        for sign in (1.0, -1.0):
            e = np.zeros(len(act))
            e[list(open_.values())] = sign
            if open_ and solve(e).status == 2:
                return []  # no table fits (inconsistent numbers): nothing is pinned
        out = []
        for cell in cells:
            if cell not in open_:
                continue
            e = np.zeros(len(act))
            e[at[cell]] = 1.0
            lo = solve(e)
            if lo.status != 0 or lo.fun is None or math.ceil(lo.fun - 1e-6) < 1:
                continue
            hi = solve(-e)
            # a maximum the solver cannot settle counts as small (the safe side)
            if hi.status != 0 or hi.fun is None or math.floor(-hi.fun + 1e-6) <= k - 1:
                out.append(cell)
        return out


def zero_certified(T: np.ndarray, cell: tuple[int, int, int]) -> bool:
    """Whether a nonnegative table (integer when T is) with T's two-way margins has `cell`
    empty, found by 2x2x2 moves (each keeps every two-way table): then no constraint on the
    pairs, however many are released, forces the cell to hold a row."""
    T = T.astype(np.float64 if T.dtype.kind == "f" else np.int64)  # a copy
    tiny = 1e-9 if T.dtype.kind == "f" else 0
    i, j, h = cell
    for _ in range(4 * T.size):  # each move empties a cell; a few suffice when any do
        if T[i, j, h] <= tiny:
            return True
        cap = np.minimum(
            np.minimum(T[:, :, h][:, :, None], T[:, j, :][:, None, :]), T[i, :, :][None, :, :]
        )
        cap[i, :, :] = 0
        cap[:, j, :] = 0
        cap[:, :, h] = 0
        best = np.unravel_index(int(np.argmax(cap)), cap.shape)
        a = min(cap[best], T[i, j, h])
        if a <= tiny:
            return False
        p, q, r = (int(x) for x in best)
        for c in ((i, j, h), (p, q, h), (p, j, r), (i, q, r)):
            T[c] -= a
        for c in ((p, j, h), (i, q, h), (i, j, r), (p, q, r)):
            T[c] += a
    return bool(T[i, j, h] <= tiny)


def _caps(Ts: np.ndarray, i: np.ndarray, j: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per table of `Ts` (one per cell), the room of each 2x2x2 move that takes rows from its
    cell (i, j, h): the smallest of the three cells it takes from, 0 on the cell's planes
    (zeroed in the two-way slices before they are combined: the tables are non-negative)."""
    n = np.arange(len(Ts))
    A, B, C = Ts[n, :, :, h], Ts[n, :, j, :], Ts[n, i, :, :]  # copies
    A[n, i, :] = 0
    A[n, :, j] = 0
    B[n, :, h] = 0
    cap = np.minimum(A[:, :, :, None], B[:, :, None, :])
    np.minimum(cap, C[:, None, :, :], out=cap)
    return cap.reshape(len(Ts), -1)


def _greedy_moves(T: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """`zero_certified` of each cell (rows of `cells`), every cell's move of a round in one
    array pass; a cell leaves once settled, and gets its own copy of T for its moves only
    when the first round leaves it open."""
    tiny = 1e-9 if T.dtype.kind == "f" else 0
    out = np.zeros(len(cells), dtype=bool)
    Ts = np.broadcast_to(T[None], (len(cells), *T.shape))  # read-only until copied below
    idx = np.arange(len(cells))
    i, j, h = (cells[:, k].copy() for k in range(3))
    for _ in range(4 * T.size):
        at = Ts[np.arange(len(Ts)), i, j, h]
        out[idx[at <= tiny]] = True
        Ts, idx, i, j, h, at = _kept(at > tiny, Ts, idx, i, j, h, at)
        if not len(Ts):
            return out
        flat = _caps(Ts, i, j, h)
        best = flat.argmax(axis=1)
        a = np.minimum(flat[np.arange(len(Ts)), best], at)
        Ts, idx, i, j, h, a, best = _kept(a > tiny, Ts, idx, i, j, h, a, best, writable=True)
        if not len(Ts):
            return out
        n = np.arange(len(Ts))
        p, q, r = np.unravel_index(best, T.shape)
        for c in ((i, j, h), (p, q, h), (p, j, r), (i, q, r)):
            Ts[(n, *c)] -= a
        for c in ((p, j, h), (i, q, h), (i, j, r), (p, q, r)):
            Ts[(n, *c)] += a
    out[idx] = Ts[np.arange(len(Ts)), i, j, h] <= tiny
    return out


def _kept(keep: np.ndarray, *arrays: np.ndarray, writable: bool = False) -> tuple[np.ndarray, ...]:
    """The rows in `keep` of each array (the first, the tables, copied when `writable` asks
    for a read-only view to be: its cells are about to move)."""
    if keep.all() and (arrays[0].flags.writeable or not writable):
        return arrays
    return tuple(v[keep] for v in arrays)


def zeros_certified(T: np.ndarray, cells: list[tuple[int, int, int]]) -> list[bool]:
    """`zero_certified` of each cell, the same greedy moves made for many cells at once (in
    chunks of bounded memory)."""
    T = T.astype(np.float64 if T.dtype.kind == "f" else np.int64, copy=False)
    if T.dtype.kind == "i" and T.size and T.min() >= 0 and T.sum() < 2**31:
        T = T.astype(np.int32)  # the moves keep the total, so every count stays below it
    out: list[bool] = []
    step = max(1, (1 << 20) // max(T.size, 1))
    for at in range(0, len(cells), step):
        part = np.asarray(cells[at : at + step], dtype=np.intp).reshape(-1, 3)
        out += _greedy_moves(T, part).tolist()
    return out


def candidate_cells(lp: TripleLP, true: np.ndarray | None, k: int) -> list[tuple[int, int, int]]:
    """Cells worth bounding: with the true table, those holding 1..k-1 rows that no table of
    the same two-way margins leaves empty; without it, every cell not flagged empty."""
    if true is None:
        return [(c[0], c[1], c[2]) for c in np.argwhere(lp.open_cells()).tolist()]
    small = [(c[0], c[1], c[2]) for c in np.argwhere((true > 0) & (true < k)).tolist()]
    return [c for c, zero in zip(small, zeros_certified(true, small), strict=True) if not zero]


def _triples(cols: dict[str, _Col]) -> Iterator[Triple]:
    yield from combinations(list(cols), 3)


@dataclass
class _Block:
    """One block's columns, their pairs' correlation rows and flags."""

    bid: str
    cols: dict[str, _Col]
    rows: dict[tuple[str, str], list[_Row]]

    @classmethod
    def of(cls, release: dict[str, Any], bid: str, digits: int) -> _Block:
        cols = block_columns(release, bid)
        rows = {
            (a, b): pair_rows(release, bid, cols[a], cols[b], digits)
            for a, b in combinations(list(cols), 2)
        }
        return cls(bid, cols, rows)

    def lp(self, release: dict[str, Any], t: Triple) -> TripleLP:
        a, b, c = (self.cols[x] for x in t)
        rows = [r for p in combinations(t, 2) for r in self.rows[p]]
        zeros = [flag_zeros(release, x, y) for x, y in ((a, b), (a, c), (b, c))]
        return TripleLP((a, b, c), rows, zeros)

    def informed(self, release: dict[str, Any], t: Triple) -> bool:
        """At least two pairs of the triple constrained beyond their margins (a flag or a
        linear correlation): with one, the third column meets the pair only through margins."""
        n = 0
        for x, y in combinations(t, 2):
            flagged = flag_zeros(release, self.cols[x], self.cols[y]).any()
            n += bool(self.rows[(x, y)]) or bool(flagged)
        return n >= 2


def _size_ok(lp: TripleLP) -> bool:
    return int(np.prod(lp.shape)) <= MAX_CELLS


def _pinned_triples(
    release: dict[str, Any],
    blocks: list[str],
    k: int,
    true: TrueTable | None,
    budget: int,
    left: list[int],
) -> Iterator[tuple[_Block, Triple, list[tuple[int, int, int]]]]:
    """(block, triple, pinned cells) for each informed triple with a 3-way cell forced into
    1..k-1, bounded by LP while `budget` lasts; triples past it (or too large) are counted in
    `left[0]`. Lazy, so a caller that withholds numbers between triples is seen by the next."""
    digits = released_digits(release)
    for bid in blocks:
        blk = _Block.of(release, bid, digits)
        for t in _triples(blk.cols):
            if not blk.informed(release, t):
                continue
            lp = blk.lp(release, t)
            cells = candidate_cells(lp, true(bid, t) if true else None, k)
            if not cells:
                continue
            if budget <= 0 or not _size_ok(lp):
                left[0] += 1
                continue
            budget -= 1
            pinned = lp.pinned(cells, k)
            if pinned:
                yield blk, t, pinned


def find_pins(
    release: dict[str, Any], k: int, true: TrueTable | None = None, budget: int = 2000
) -> tuple[list[tuple[str, Triple, list[tuple[int, int, int]]]], int]:
    """(block, triple, pinned cells) for every triple with a 3-way cell forced into 1..k-1,
    and the number of triples left unbounded when `budget` (triples bounded by LP) ran out."""
    left = [0]
    found = _pinned_triples(release, list(release["blocks"]), k, true, budget, left)
    out = [(blk.bid, t, pinned) for blk, t, pinned in found]
    return out, left[0]


def _still_pinned(
    release: dict[str, Any], blk: _Block, t: Triple, k: int, true: TrueTable | None
) -> bool:
    lp = blk.lp(release, t)
    cells = candidate_cells(lp, true(blk.bid, t) if true else None, k)
    return bool(cells) and bool(lp.pinned(cells, k))


def _flagged_cells(release: dict[str, Any], t: Triple) -> list[tuple[int, int]]:
    """(flag index, cell index) of every flagged cell of the triple's pairs."""
    return [
        (i, j)
        for i, f in enumerate(release.get("empty_cells") or [])
        if set(f["columns"]) <= set(t)
        for j in range(len(f["cells"]))
    ]


def _drop_cells(release: dict[str, Any], cells: list[tuple[int, int]]) -> None:
    """Withdraw these flagged cells; a pair left without cells loses its flag."""
    gone = set(cells)
    flags = []
    for i, f in enumerate(release.get("empty_cells") or []):
        kept = [c for j, c in enumerate(f["cells"]) if (i, j) not in gone]
        if kept:
            flags.append({**f, "cells": kept})
    if flags:
        release["empty_cells"] = flags
    else:
        release.pop("empty_cells", None)


def _withdraw_flags(release: dict[str, Any], blk: _Block, t: Triple, k: int, true: Any) -> int:
    """Withdraw flagged cells of the triple's pairs: one that unpins every cell alone, else
    one after another in release order until none is pinned; the number withdrawn."""
    cells = _flagged_cells(release, t)
    saved = release.get("empty_cells")
    for c in cells:
        _drop_cells(release, [c])
        if not _still_pinned(release, blk, t, k, true):
            return 1
        release.pop("empty_cells", None)
        release.update({"empty_cells": saved} if saved else {})
    for n in range(1, len(cells) + 1):
        release.pop("empty_cells", None)
        release.update({"empty_cells": saved} if saved else {})
        _drop_cells(release, cells[:n])
        if not _still_pinned(release, blk, t, k, true):
            return n
    return len(cells)


def _blank(release: dict[str, Any], blk: _Block, rows: list[_Row]) -> None:
    S = release["blocks"][blk.bid]["spearman"]
    gone = set()
    for r in rows:
        p, q = r.dims
        S[p][q] = S[q][p] = None
        gone.add(r.dims)
    for pair in blk.rows:
        blk.rows[pair] = [r for r in blk.rows[pair] if r.dims not in gone]


def _withhold_correlations(
    release: dict[str, Any], blk: _Block, t: Triple, k: int, true: Any
) -> int:
    """Blank the fewest of the triple's correlations in the block that unpin its cells: one
    that does alone, else one after another in release order; the number blanked."""
    rows = [r for p in combinations(t, 2) for r in blk.rows[p]]
    S = release["blocks"][blk.bid]["spearman"]
    for r in rows:
        p, q = r.dims
        saved = S[p][q]
        S[p][q] = S[q][p] = None
        kept = {pair: list(v) for pair, v in blk.rows.items()}
        _blank(release, blk, [r])
        if not _still_pinned(release, blk, t, k, true):
            return 1
        S[p][q] = S[q][p] = saved
        blk.rows = kept
    n = 0
    for r in rows:
        _blank(release, blk, [r])
        n += 1
        if not _still_pinned(release, blk, t, k, true):
            break
    return n


def withhold_pins(
    release: dict[str, Any],
    k: int,
    true: TrueTable | None = None,
    budget: int = 2000,
    blocks: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Secure side, on a release whose blocks and flags are built: for each triple of
    categorical columns with a 3-way cell forced into 1..k-1 in some block, withdraw the
    flags of its pairs, then withhold correlations of its dims in that block, until none is.
    Without `true` (the gather of a scattered extraction) every cell is bounded, within
    `budget` triples. Returns the SDC log entries (column names and counts only)."""
    entries: list[dict[str, Any]] = []
    left = [0]
    ids = blocks if blocks is not None else list(release["blocks"])
    for blk, t, _ in _pinned_triples(release, ids, k, true, budget, left):
        flags = _withdraw_flags(release, blk, t, k, true)
        blanked = 0
        if _still_pinned(release, blk, t, k, true):
            blanked = _withhold_correlations(release, blk, t, k, true)
        entries.append(_entry(release, blk.bid, t, flags, blanked, k))
    if left[0]:
        entries.append(_left_entry(release, left[0]))
    return entries


def _entry(
    release: dict[str, Any], bid: str, t: Triple, flags: int, blanked: int, k: int
) -> dict[str, Any]:
    where = "" if bid == "all" else f" in block {bid}"
    return {
        "stage": "three_way",
        "action": "secondary_suppression",
        "source": release["source"],
        "block": bid,
        "column": t[0],
        "reason": f"the released margins, flags and correlations of {', '.join(t)} would force "
        f"a cell of their 3-way table{where} into 1..{k - 1} rows: "
        f"{flags} empty-cell flag(s) withdrawn, {blanked} correlation(s) not released",
    }


def _left_entry(release: dict[str, Any], left: int) -> dict[str, Any]:
    return {
        "stage": "three_way",
        "action": "not_checked",
        "source": release["source"],
        "reason": f"{left} triple(s) of categorical columns not bounded (LP budget or table size)",
    }


def check_three_way(release: Any, k: int, budget: int = 400) -> tuple[list[Finding], list[str]]:
    """The review's check from the bundle alone: findings for each triple with a 3-way cell
    forced into 1..k-1; a note when triples were left unbounded."""
    found, left = find_pins(release, k, None, budget)
    findings = [
        {
            "check": "three_way",
            "source": release["source"],
            "block": bid,
            "column": t[0],
            "finding": f"margins, flags and correlations of {', '.join(t)} force "
            f"{len(cells)} cell(s) of their 3-way table into 1..{k - 1} rows",
        }
        for bid, t, cells in found
    ]
    notes = [f"{release['source']}: {left} triple(s) not bounded (budget {budget})"] if left else []
    return findings, notes
