"""Keep the released empty cells empty: swaps of one column's values between two rows of one
block (or entity) that take rows out of flagged cells of every flagged pair jointly, so every
margin stays exact; the partner is the nearest row in the other columns, so rank correlations
move least. Method: docs/method.md, "Empty cells"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from replisynth.stats.cells import (
    CellGuard,
    flag_matrix,
    level_codes,
    rows_in_cells,
    source_levels,
)
from replisynth.synthesize.refine import Allowed

MAX_PASSES = 8  # rounds over the flagged columns; each round only lowers the violations
PER_TYPE = 48  # candidate partners looked at per kind of row, the nearest taken


@dataclass(frozen=True)
class _Pair:
    a: str
    b: str
    empty: np.ndarray  # levels_a x levels_b


@dataclass
class _State:
    cols: dict[str, np.ndarray]
    codes: dict[str, np.ndarray]
    levels: dict[str, list[Any]]
    pairs: list[_Pair]
    group: np.ndarray
    features: np.ndarray  # rows x columns, ranks in [0, 1]
    feature_at: dict[str, int]
    followers: dict[str, list[str]] = field(default_factory=dict)


def flagged_pairs(release: dict[str, Any]) -> list[_Pair]:
    """The released flags as level matrices (flags of columns without released levels are
    dropped: nothing can fall in them)."""
    out = []
    for f in release.get("empty_cells") or []:
        a, b = f["columns"]
        la, lb = source_levels(release, a), source_levels(release, b)
        if la and lb:
            out.append(_Pair(a, b, flag_matrix(f, la, lb)))
    return out


def violations(state: _State) -> int:
    """Rows in flagged cells, summed over the flagged pairs."""
    return int(
        sum(rows_in_cells(state.codes[p.a], state.codes[p.b], p.empty).sum() for p in state.pairs)
    )


def _rank_features(cols: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, int]]:
    """Each column's values as ranks in [0, 1] (missing at 0.5): the space in which the
    nearest partner is chosen."""
    names = list(cols)
    n = len(next(iter(cols.values()))) if cols else 0
    F = np.full((n, len(names)), 0.5, dtype="float32")
    for j, c in enumerate(names):
        s = pd.Series(cols[c])
        if s.dtype == object:
            codes, _ = pd.factorize(s, sort=False)
            s = pd.Series(np.where(codes < 0, np.nan, codes.astype("float64")))
        r = s.rank(pct=True, method="average").to_numpy(dtype="float64", na_value=np.nan)
        F[:, j] = np.where(np.isnan(r), 0.5, r)
    return F, {c: j for j, c in enumerate(names)}


def _bad(state: _State, col: str) -> np.ndarray:
    """rows x levels of `col`: flagged cells each row would sit in with each level of `col`."""
    n, L = len(state.codes[col]), len(state.levels[col])
    bad = np.zeros((n, L), dtype=np.int16)
    for p in state.pairs:
        if col not in (p.a, p.b):
            continue
        other = state.codes[p.b] if p.a == col else state.codes[p.a]
        m = p.empty if p.a == col else p.empty.T
        ok = other >= 0
        bad[ok] += m[:, other[ok]].T
    return bad


def _swap(state: _State, col: str, i: int, j: int) -> None:
    for c in (col, *state.followers.get(col, [])):
        v = state.cols[c]
        v[i], v[j] = v[j], v[i]
    x = state.codes[col]
    x[i], x[j] = x[j], x[i]


@dataclass
class _Buckets:
    """Eligible rows sorted by (group, kind), shuffled inside each; a pointer per bucket."""

    rows: np.ndarray
    start: dict[tuple[int, int], int]
    end: dict[tuple[int, int], int]
    kinds: list[int]


def _buckets(group: np.ndarray, kind: np.ndarray, rng: np.random.Generator) -> _Buckets:
    rows = np.flatnonzero(kind >= 0)
    order = np.lexsort((rng.random(len(rows)), kind[rows], group[rows]))
    rows = rows[order]
    g, k = group[rows], kind[rows]
    cut = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (k[1:] != k[:-1]), True])
    start, end = {}, {}
    for s, e in zip(cut[:-1], cut[1:], strict=True):
        start[(int(g[s]), int(k[s]))] = int(s)
        end[(int(g[s]), int(k[s]))] = int(e)
    return _Buckets(rows, start, end, sorted({int(v) for v in np.unique(k)}))


def _candidates(bk: _Buckets, g: int, kinds: list[int], used: np.ndarray) -> list[int]:
    """Up to PER_TYPE unused rows of each of `kinds` in group `g`."""
    out: list[int] = []
    for t in kinds:
        s = bk.start.get((g, t))
        if s is None:
            continue
        e, taken = bk.end[(g, t)], 0
        while s < e and taken < PER_TYPE:
            r = int(bk.rows[s])
            if used[r] and taken == 0:
                bk.start[(g, t)] = s + 1  # leading used rows are skipped for good
            elif not used[r]:
                out.append(r)
                taken += 1
            s += 1
    return out


def _column_pass(state: _State, col: str, rng: np.random.Generator) -> int:
    """One round of swaps of `col`: each row in a flagged cell (of a pair with `col`) trades
    its value with the nearest row whose value it may hold and which may hold its value.
    Returns the number of swaps."""
    x = state.codes[col]
    L = len(state.levels[col])
    bad = _bad(state, col)
    mask = ((bad > 0).astype(np.int64) << np.arange(L, dtype=np.int64)).sum(axis=1)
    kind = np.where(x >= 0, x * (1 << L) + mask, -1)
    cur = np.zeros(len(x), dtype=bool)
    cur[x >= 0] = bad[np.flatnonzero(x >= 0), x[x >= 0]] > 0
    todo = np.flatnonzero(cur)
    if not len(todo):
        return 0
    bk = _buckets(state.group, kind, rng)
    used = np.zeros(len(x), dtype=bool)
    keep = np.ones(state.features.shape[1], dtype=bool)
    keep[state.feature_at[col]] = False
    valid: dict[int, list[int]] = {}
    swaps = 0
    for i in rng.permutation(todo):
        if used[i]:
            continue
        ki = int(kind[i])
        if ki not in valid:  # partners: a value i may hold, and i's value allowed for them
            xi, mi = ki >> L, ki & ((1 << L) - 1)
            valid[ki] = [t for t in bk.kinds if not (mi >> (t >> L)) & 1 and not (t >> xi) & 1]
        cand = _candidates(bk, int(state.group[i]), valid[ki], used)
        if not cand:
            continue
        d = np.abs(state.features[cand][:, keep] - state.features[i, keep]).sum(axis=1)
        j = cand[int(np.argmin(d))]
        _swap(state, col, int(i), j)
        used[i] = used[j] = True
        swaps += 1
    return swaps


def _state(
    cols: dict[str, np.ndarray],
    release: dict[str, Any],
    pairs: list[_Pair],
    group: np.ndarray,
) -> _State:
    names = sorted({c for p in pairs for c in (p.a, p.b)})
    levels = {c: source_levels(release, c) for c in names}
    codes = {c: level_codes(cols[c], levels[c]) for c in names}
    F, at = _rank_features(cols)
    followers: dict[str, list[str]] = {}
    for b, d in (release.get("derived") or {}).items():
        if b in cols:
            followers.setdefault(d["from"], []).append(b)
    return _State(cols, codes, levels, pairs, group, F, at, followers)


def repair_empty_cells(
    cols: dict[str, np.ndarray],
    group: np.ndarray,
    release: dict[str, Any],
    rng: np.random.Generator,
    frozen: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict[str, np.ndarray], int]:
    """`cols` with no row left in a released empty cell where swaps inside `group` (block or
    entity) can manage it, and the rows still in one (0 when every cell is empty). Columns in
    `frozen` do not move. Without flags `cols` comes back as it is (old bundles unchanged)."""
    pairs = flagged_pairs(release)
    if not pairs or not cols:
        return cols, 0
    out = {c: v.copy() for c, v in cols.items()}
    state = _state(out, release, pairs, np.asarray(group))
    order = [c for p in pairs for c in (p.a, p.b)]
    movable = [c for c in dict.fromkeys(order) if c not in frozen]
    left = violations(state)
    for _ in range(MAX_PASSES):
        if not left or not sum(_column_pass(state, c, rng) for c in movable):
            break
        left = violations(state)
    return out, left


def cell_veto(
    cols: dict[str, np.ndarray], release: dict[str, Any], unit_columns: list[list[str]]
) -> Allowed | None:
    """The refinement's veto (`refine_swaps(allowed=...)`): a swap pair of the units moved
    may not put more rows into released empty cells than there are. `unit_columns[i]` names
    the columns unit i moves; None without flags."""
    guard = CellGuard.of(cols, release)
    if guard is None:
        return None
    owner = {c: i for i, names in enumerate(unit_columns) for c in names}

    def allowed(
        members: list[int], r: np.ndarray, s: np.ndarray, perms: list[np.ndarray]
    ) -> np.ndarray:
        moved = {c for m in members for c in unit_columns[m]}
        return guard.allowed(moved, lambda c: perms[owner[c]] if c in owner else None, r, s)

    return allowed
