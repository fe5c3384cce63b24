"""Deterministic codings between categorical columns (B a function of A), released as a map
of released levels. Method: docs/method.md, "Deterministic codings".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from replisynth.stats.copula_dims import norm_key
from replisynth.stats.marginals import FrequencyTable, level_positions


def functional_dependencies(
    cats: dict[str, pd.Series],
    tables: dict[str, FrequencyTable],
    all_levels: dict[str, list[Any]],
    order: list[str],
) -> dict[str, dict[str, Any]]:
    """{B: {"from": A, "map": [[a, b], ...]}} for every categorical column B that is a
    function of another one A (its root: A itself is not derived). `cats` holds the
    JSON-friendly category values of each candidate column, in `order`."""
    coded = {}
    for c, s in cats.items():
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
        coded[c] = (codes, list(uniques))
    return coded_dependencies(coded, tables, all_levels, order)


def released_codes(
    codes: np.ndarray, values: list[Any], table: FrequencyTable, all_levels: list[Any] | None
) -> np.ndarray:
    """Each row's released level as its position in `table.levels` (ordered tables: pooled
    levels mapped to their neighbour; nominal: released levels only), -1 for rows whose value
    is not released or missing. `codes`/`values`: the column factorized (-1 missing)."""
    pos = level_positions(values, table, all_levels if table.ordered else None)
    lookup = np.where(np.isnan(pos), -1, np.nan_to_num(pos, nan=-1.0)).astype(np.int64)
    return lookup[codes]


def _is_function_on(ca: np.ndarray, cb: np.ndarray, nb: int) -> bool:
    """Whether level codes `cb` are a function of codes `ca` on the rows where `ca` is present
    (and `cb` present wherever `ca` is): as many distinct (a, b) pairs as distinct a."""
    ok = ca >= 0
    if not ok.any() or np.any(cb[ok] < 0):
        return False
    # distinct (a, b) pairs against distinct a, counted on the level positions
    pair = ca[ok] * (nb + 1) + cb[ok]
    return np.count_nonzero(np.bincount(pair)) == np.count_nonzero(np.bincount(ca[ok]))


def _level_map(
    ca: np.ndarray, cb: np.ndarray, table_a: FrequencyTable, table_b: FrequencyTable
) -> list[list[Any]]:
    """[level of a, level of b (None: missing)] for each of a's levels present, read on the
    first row of each of a's levels."""
    ok = np.flatnonzero(ca >= 0)
    first_a, first = np.unique(ca[ok], return_index=True)
    lev_b = table_b.levels
    mapping = {
        table_a.levels[i]: (lev_b[k] if k >= 0 else None)
        for i, k in zip(first_a.tolist(), cb[ok[first]].tolist(), strict=True)
    }
    return [[lev, mapping[lev]] for lev in table_a.levels if lev in mapping]


def _root_parent(parent: dict[str, str], b: str) -> str | None:
    """The column at the top of b's chain of determining columns; None on a cycle."""
    a = parent[b]
    seen = {b}
    while a in parent and a not in seen:
        seen.add(a)
        a = parent[a]
    if a in parent or a == b:
        return None
    return a


def coded_dependencies(
    coded: dict[str, tuple[np.ndarray, list[Any]]],
    tables: dict[str, FrequencyTable],
    all_levels: dict[str, list[Any]],
    order: list[str],
) -> dict[str, dict[str, Any]]:
    """`functional_dependencies` from each candidate column factorized once: `coded[c]` is
    (codes with -1 for missing, the JSON-friendly value of each code). The relation is
    counted on released-level positions (small integers), never on per-row objects."""
    cols = [c for c in order if c in coded and c in tables and len(tables[c].levels) >= 2]
    codes = {c: released_codes(*coded[c], tables[c], all_levels.get(c)) for c in cols}
    miss = {c: coded[c][0] < 0 for c in cols}
    nlev = {c: len(tables[c].levels) for c in cols}
    pos = {c: i for i, c in enumerate(cols)}

    def determines(a: str, b: str) -> bool:
        if nlev[a] < nlev[b] or not np.array_equal(miss[a], miss[b]):
            return False
        ca, cb = codes[a], codes[b]
        # A contradiction among the first rows settles most pairs without a pass over all
        # rows (it is one on all rows too); the full count decides the rest.
        head = ca[:4096]
        if (head >= 0).any() and not _is_function_on(head, cb[:4096], nlev[b]):
            return False
        return _is_function_on(ca, cb, nlev[b])

    det: dict[str, list[str]] = {b: [a for a in cols if a != b and determines(a, b)] for b in cols}
    parent: dict[str, str] = {}
    for b in cols:
        cands = [a for a in det[b] if not (b in det.get(a, []) and pos[a] > pos[b])]
        if cands:
            parent[b] = max(cands, key=lambda a: (nlev[a], -pos[a]))
    out: dict[str, dict[str, Any]] = {}
    for b in parent:
        root = _root_parent(parent, b)
        if root is None:
            continue
        out[b] = {"from": root, "map": _level_map(codes[root], codes[b], tables[root], tables[b])}
    return out


def apply_derived(
    cols: dict[str, np.ndarray], derived: dict[str, dict[str, Any]]
) -> dict[str, np.ndarray]:
    """Recompute each derived column from its root's synthetic values (missing stays missing;
    a root level without a mapped value gives missing)."""

    out = dict(cols)
    for b, spec in derived.items():
        a = spec["from"]
        if a not in cols or b not in cols:
            continue
        lookup = {norm_key(k): v for k, v in spec["map"]}
        codes, uniques = pd.factorize(pd.Series(cols[a], dtype=object), use_na_sentinel=True)
        mapped = np.empty(len(uniques) + 1, dtype=object)
        mapped[:-1] = [lookup.get(norm_key(u), np.nan) for u in uniques]
        mapped[-1] = np.nan
        out[b] = mapped[codes]
    return out


def derived_counts(
    levels_a: list[Any], counts_a: list[int], levels_b: list[Any], spec: dict[str, Any]
) -> list[int]:
    """Exact counts of a derived column's levels from its root's counts."""

    lookup = {norm_key(k): v for k, v in spec["map"]}
    pos = {norm_key(v): i for i, v in enumerate(levels_b)}
    out = [0] * len(levels_b)
    for lev, c in zip(levels_a, counts_a, strict=True):
        b = lookup.get(norm_key(lev))
        if b is not None and norm_key(b) in pos:
            out[pos[norm_key(b)]] += int(c)
    return out
