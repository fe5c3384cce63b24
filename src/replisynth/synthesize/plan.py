"""The synthesis plan of a source: rows per block, missing values per column and exact
category counts; shared by synthesis and verification so both follow the same arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from replisynth.io.schema import ColumnSpec, expected_missing
from replisynth.stats.codings import derived_counts
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

    kind: continuous | categorical | empty.  For continuous: the grid, and `atoms` when the
    marginal released them; for categorical: `levels` and exact `counts` (summing to
    rows - missing) and whether ordered."""

    kind: str
    missing: int
    grid: list[float] | None = None
    levels: list[Any] | None = None
    counts: list[int] | None = None
    ordered: bool = False
    from_source_level: bool = False
    atoms: dict[str, Any] | None = None


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


def _missing_weights(
    release: dict[str, Any], blocks: list[tuple[str, int, list[Any] | None]], name: str
) -> np.ndarray:
    """Each block's released missing count of column `name` (the residual block: the source
    total less the other blocks', at least 0)."""
    all_m = release["blocks"][ALL]["marginals"]
    weights = []
    for bid, _, _ in blocks:
        if bid == RESIDUAL:
            rel = sum(
                release["blocks"][b]["marginals"][name]["missing"]
                for b, _, _ in blocks
                if b != RESIDUAL
            )
            weights.append(max(all_m[name]["missing"] - rel, 0))
        else:
            weights.append(release["blocks"][bid]["marginals"][name]["missing"])
    return np.asarray(weights, dtype="float64")


def _missing_counts(
    release: dict[str, Any],
    blocks: list[tuple[str, int, list[Any] | None]],
    data_cols: list[ColumnSpec],
    rows: int,
) -> dict[str, np.ndarray]:
    """Missing counts per column and block: the source-level total (tier 0 rounding), split
    over blocks in proportion to the blocks' released missing counts."""
    strata = set(release["strata"]["columns"])
    missing: dict[str, np.ndarray] = {}
    for spec in data_cols:
        total = expected_missing(spec, rows)
        if len(blocks) == 1:
            missing[spec.name] = np.asarray([total])
            continue
        if spec.name in strata:
            missing[spec.name] = np.asarray([b[1] if b[0] == RESIDUAL else 0 for b in blocks])
            continue
        weights = _missing_weights(release, blocks, spec.name)
        sizes = np.asarray([b[1] for b in blocks])
        counts = (
            apportion(weights, total) if weights.sum() > 0 else np.zeros(len(blocks), dtype="int64")
        )
        missing[spec.name] = np.minimum(counts, sizes)
    return missing


def _categorical_plan(
    spec: ColumnSpec,
    marginal: dict[str, Any],
    source_marginal: dict[str, Any],
    raked: tuple[list[Any], list[np.ndarray]] | None,
    index: int,
    n_missing: int,
    n_present: int,
    fallback: bool,
) -> ColumnPlan:
    """A categorical column's plan in one block: its raked shares when the block's table had
    suppressed cells (`_raked_tables`), else the shares of its own table."""
    table = FrequencyTable.from_dict(marginal["table"])
    if raked is not None and not fallback:
        levels, shares = raked[0], raked[1][index]
    else:
        ref = (
            FrequencyTable.from_dict(source_marginal["table"])
            if source_marginal["kind"] == "categorical"
            else None
        )
        levels, shares = synthesis_shares(table, ref)
    return ColumnPlan(
        "categorical",
        n_missing,
        levels=levels,
        counts=apportion(shares, n_present).tolist(),
        ordered=table.ordered,
        from_source_level=fallback,
    )


def _column_plan(
    release: dict[str, Any],
    spec: ColumnSpec,
    block: tuple[str, int, list[Any] | None],
    index: int,
    n_missing: int,
    raked: tuple[list[Any], list[np.ndarray]] | None,
) -> ColumnPlan:
    """One data column's plan in one block: a stratum's single value, empty, or its block
    marginal (the source-level one where the block's is suppressed)."""
    bid, n, key = block
    strata_cols = release["strata"]["columns"]
    if spec.name in strata_cols and key is not None:
        value = key[strata_cols.index(spec.name)]
        return ColumnPlan("categorical", 0, levels=[value], counts=[n], ordered=True)
    stats = ALL if bid in (ALL, RESIDUAL) else bid
    all_m = release["blocks"][ALL]["marginals"]
    marginal = release["blocks"][stats]["marginals"].get(spec.name)
    fallback = False
    if marginal is None or marginal["kind"] == "suppressed":
        marginal, fallback = all_m[spec.name], stats != ALL
    if spec.name in strata_cols or marginal["kind"] == "suppressed" or spec.missing >= spec.rows:
        return ColumnPlan("empty", n)
    n_present = n - n_missing
    if marginal["kind"] == "continuous":
        return ColumnPlan(
            "continuous",
            n_missing,
            grid=marginal["grid"],
            from_source_level=fallback,
            atoms=marginal.get("atoms") or None,
        )
    if marginal["kind"] == "ordinal_grid":
        levels = list(all_m[spec.name]["table"]["levels"])
        shares = grid_level_shares(np.asarray(marginal["grid"]), levels)
        if shares.sum() <= 0:
            shares = np.asarray(all_m[spec.name]["table"]["counts"], dtype="float64")
        return ColumnPlan(
            "categorical",
            n_missing,
            levels=levels,
            counts=apportion(shares, n_present).tolist(),
            ordered=True,
        )
    return _categorical_plan(
        spec, marginal, all_m[spec.name], raked, index, n_missing, n_present, fallback
    )


def _derived_plans(release: dict[str, Any], cols: dict[str, ColumnPlan]) -> None:
    """Add (in place) the plans of categorical derived columns, from their source column's."""
    all_m = release["blocks"][ALL]["marginals"]
    for name, spec in release.get("derived", {}).items():
        parent = cols.get(spec["from"])
        marginal = all_m.get(name)
        if parent is None or marginal is None or marginal["kind"] != "categorical":
            continue
        if parent.kind == "categorical":
            levels = list(marginal["table"]["levels"])
            counts = derived_counts(parent.levels or [], parent.counts or [], levels, spec)
            cols[name] = ColumnPlan(
                "categorical",
                parent.missing,
                levels=levels,
                counts=counts,
                ordered=marginal["table"]["ordered"],
            )
        elif parent.kind == "empty":
            cols[name] = ColumnPlan("empty", parent.missing)


def source_plan(release: dict[str, Any], rows: int) -> list[BlockPlan]:
    """The full plan of a source for `rows` synthetic rows."""
    specs = [ColumnSpec.from_dict(c) for c in release["columns"]]
    data_cols = [s for s in specs if s.role in ("continuous", "categorical")]
    strata = set(release["strata"]["columns"])
    blocks = block_rows(release, rows)
    missing = _missing_counts(release, blocks, data_cols, rows)
    raked = _raked_tables(release, blocks, data_cols, strata)
    out = []
    for index, (bid, n, key) in enumerate(blocks):
        cols: dict[str, ColumnPlan] = {}
        for spec in data_cols:
            cols[spec.name] = _column_plan(
                release,
                spec,
                (bid, n, key),
                index,
                int(missing[spec.name][index]),
                raked.get(spec.name),
            )
        _derived_plans(release, cols)
        stats = ALL if bid in (ALL, RESIDUAL) else bid
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
        fixed: list[dict[Any, float]] = []
        free_mass: list[float] = []
        free_levels: list[list[Any]] = []
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
        col_plan = b.columns.get(column)
        if col_plan is None or col_plan.kind != "categorical":
            continue
        for lev, c in zip(col_plan.levels or [], col_plan.counts or [], strict=True):
            total[lev] = total.get(lev, 0) + int(c)
    return total
