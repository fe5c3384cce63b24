"""The synthesis plan of a source: rows per block, missing values per column and exact
category counts; shared by synthesis and verification so both follow the same arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from replisynth.io.schema import ColumnSpec, expected_missing
from replisynth.stats.derive import derived_counts
from replisynth.stats.marginals import (
    FrequencyTable,
    apportion,
    grid_level_shares,
    rake_blocks,
    synthesis_shares,
)

ALL = "all"
RESIDUAL = "residual"


@dataclass(frozen=True)
class ColumnPlan:
    """What one column of one block must contain.

    kind: continuous | categorical | empty.  For continuous: the grid; for categorical:
    `levels` and exact `counts` (summing to rows - missing) and whether ordered."""

    kind: str
    missing: int
    grid: list[float] | None = None
    levels: list[Any] | None = None
    counts: list[int] | None = None
    ordered: bool = False
    from_source_level: bool = False


@dataclass(frozen=True)
class BlockPlan:
    """One block: its id, released statistics block id, row count, strata key (None for the
    residual or an unstratified source) and per-column plans."""

    id: str
    stats: str
    rows: int
    key: list[Any] | None
    columns: dict[str, ColumnPlan]


def block_rows(release: dict[str, Any], rows: int) -> list[tuple[str, int, list[Any] | None]]:
    """Rows per block by largest remainder over the released stratum sizes (the residual
    block takes the rows of strata too small to release)."""
    cells = release["strata"]["cells"]
    if not cells:
        return [(ALL, rows, None)]
    sizes = [c["rows"] for c in cells]
    resid = release["strata"]["residual_rows"]
    ids = [c["id"] for c in cells]
    keys: list[list[Any] | None] = [c["key"] for c in cells]
    if resid > 0:
        sizes.append(resid)
        ids.append(RESIDUAL)
        keys.append(None)
    n = apportion(np.asarray(sizes, dtype="float64"), rows)
    return [(i, int(k), key) for i, k, key in zip(ids, n, keys, strict=True)]


def source_plan(release: dict[str, Any], rows: int) -> list[BlockPlan]:
    """The full plan of a source for `rows` synthetic rows."""
    specs = [ColumnSpec.from_dict(c) for c in release["columns"]]
    data_cols = [s for s in specs if s.role in ("continuous", "categorical")]
    strata = set(release["strata"]["columns"])
    blocks = block_rows(release, rows)
    all_m = release["blocks"][ALL]["marginals"]
    # Missing counts: the source-level total (tier 0 rounding), split over blocks in
    # proportion to the blocks' released missing counts.
    missing: dict[str, np.ndarray] = {}
    for s in data_cols:
        total = expected_missing(s, rows)
        if len(blocks) == 1:
            missing[s.name] = np.asarray([total])
            continue
        if s.name in strata:
            missing[s.name] = np.asarray([b[1] if b[0] == RESIDUAL else 0 for b in blocks])
            continue
        w = []
        for bid, _, _ in blocks:
            if bid == RESIDUAL:
                rel = sum(
                    release["blocks"][b]["marginals"][s.name]["missing"]
                    for b, _, _ in blocks
                    if b != RESIDUAL
                )
                w.append(max(all_m[s.name]["missing"] - rel, 0))
            else:
                w.append(release["blocks"][bid]["marginals"][s.name]["missing"])
        w = np.asarray(w, dtype="float64")
        sizes = np.asarray([b[1] for b in blocks])
        m = apportion(w, total) if w.sum() > 0 else np.zeros(len(blocks), dtype="int64")
        missing[s.name] = np.minimum(m, sizes)
    raked = _raked_tables(release, blocks, data_cols, strata)
    out = []
    for bi, (bid, n, key) in enumerate(blocks):
        stats = ALL if bid in (ALL, RESIDUAL) else bid
        bm = release["blocks"][stats]["marginals"]
        cols: dict[str, ColumnPlan] = {}
        for s in data_cols:
            m_count = int(missing[s.name][bi])
            if s.name in strata and key is not None:
                value = key[release["strata"]["columns"].index(s.name)]
                cols[s.name] = ColumnPlan(
                    "categorical", 0, levels=[value], counts=[n], ordered=True
                )
                continue
            m = bm.get(s.name)
            fallback = False
            if m is None or m["kind"] == "suppressed":
                m, fallback = all_m[s.name], stats != ALL
            if s.name in strata or m["kind"] == "suppressed" or s.missing >= s.rows:
                cols[s.name] = ColumnPlan("empty", n)
                continue
            nn = n - m_count
            if m["kind"] == "continuous":
                cols[s.name] = ColumnPlan(
                    "continuous", m_count, grid=m["grid"], from_source_level=fallback
                )
            elif m["kind"] == "ordinal_grid":
                levels = list(all_m[s.name]["table"]["levels"])
                shares = grid_level_shares(np.asarray(m["grid"]), levels)
                if shares.sum() <= 0:
                    shares = np.asarray(all_m[s.name]["table"]["counts"], dtype="float64")
                cols[s.name] = ColumnPlan(
                    "categorical",
                    m_count,
                    levels=levels,
                    counts=apportion(shares, nn).tolist(),
                    ordered=True,
                )
            else:
                t = FrequencyTable.from_dict(m["table"])
                if s.name in raked and not fallback:
                    levels, shares = raked[s.name][0], raked[s.name][1][bi]
                else:
                    ref = (
                        FrequencyTable.from_dict(all_m[s.name]["table"])
                        if all_m[s.name]["kind"] == "categorical"
                        else None
                    )
                    levels, shares = synthesis_shares(t, ref)
                cols[s.name] = ColumnPlan(
                    "categorical",
                    m_count,
                    levels=levels,
                    counts=apportion(shares, nn).tolist(),
                    ordered=t.ordered,
                    from_source_level=fallback,
                )
        for b, spec in release.get("derived", {}).items():
            cpa = cols.get(spec["from"])
            tb = all_m.get(b)
            if cpa is None or tb is None or tb["kind"] != "categorical":
                continue
            if cpa.kind == "categorical":
                levels_b = list(tb["table"]["levels"])
                counts = derived_counts(cpa.levels or [], cpa.counts or [], levels_b, spec)
                cols[b] = ColumnPlan(
                    "categorical",
                    cpa.missing,
                    levels=levels_b,
                    counts=counts,
                    ordered=tb["table"]["ordered"],
                )
            elif cpa.kind == "empty":
                cols[b] = ColumnPlan("empty", cpa.missing)
        out.append(BlockPlan(id=bid, stats=stats, rows=n, key=key, columns=cols))
    return out


def _raked_tables(
    release: dict[str, Any],
    blocks: list[tuple[str, int, Any]],
    data_cols: list[ColumnSpec],
    strata: set[str],
) -> dict[str, tuple[list[Any], list[np.ndarray]]]:
    """For stratified sources: each categorical column's per-block shares with suppressed
    cells estimated by raking against the source-level table (see `rake_blocks`). The
    residual block has no table of its own: all its mass is free."""
    if len(blocks) < 2:
        return {}
    all_m = release["blocks"][ALL]["marginals"]
    out: dict[str, tuple[list[Any], list[np.ndarray]]] = {}
    for s in data_cols:
        am = all_m.get(s.name)
        if s.name in strata or am is None or am["kind"] != "categorical":
            continue
        src = FrequencyTable.from_dict(am["table"])
        levels, src_shares = synthesis_shares(src)
        nonmissing_all = src.total
        fixed, free_mass, free_levels = [], [], []
        ok = True
        for bid, _, _ in blocks:
            if bid == RESIDUAL:
                rel_nm = sum(
                    FrequencyTable.from_dict(
                        release["blocks"][b]["marginals"][s.name]["table"]
                    ).total
                    for b, _, _ in blocks
                    if b != RESIDUAL
                )
                fixed.append({})
                free_mass.append(max(nonmissing_all - rel_nm, 0))
                free_levels.append(list(levels))
                continue
            m = release["blocks"][bid]["marginals"].get(s.name)
            if m is None or m["kind"] != "categorical":
                ok = False
                break
            t = FrequencyTable.from_dict(m["table"])
            fixed.append(dict(zip(t.levels, t.counts, strict=True)))
            free_mass.append(t.suppressed)
            free_levels.append([v for v in levels if v not in set(t.levels)] or list(t.levels))
        if not ok:
            continue
        est = rake_blocks(levels, src_shares * nonmissing_all, fixed, free_mass, free_levels)
        shares = [
            e / e.sum() if e.sum() > 0 else np.full(len(levels), 1.0 / max(len(levels), 1))
            for e in est
        ]
        out[s.name] = (levels, shares)
    return out


def expected_counts(plan: list[BlockPlan], column: str) -> dict[Any, int]:
    """Exact category counts of `column` over the whole source, summed over blocks."""
    total: dict[Any, int] = {}
    for b in plan:
        cp = b.columns.get(column)
        if cp is None or cp.kind != "categorical":
            continue
        for lev, c in zip(cp.levels or [], cp.counts or [], strict=True):
            total[lev] = total.get(lev, 0) + int(c)
    return total
