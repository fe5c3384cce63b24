"""Outside side: rebuild a source from its release alone (Layers 1-3; Layer 4 is `pin`),
block by block, then stack, shuffle and restore dtypes, groups and the panel.
Method: docs/method.md, "Correlations and the copula".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from replisynth.core.parallel import thread_map
from replisynth.core.seeds import rng as make_rng
from replisynth.io.schema import EPOCH, ColumnSpec, date_period, period_start
from replisynth.stats.atoms import mixed_sample
from replisynth.stats.codings import apply_derived
from replisynth.stats.copula import (
    correlated_normals,
    fill_by_rank,
    nominal_values,
    ordered_values,
    rank_order,
)
from replisynth.stats.copula_dims import synthetic_dim_matrix
from replisynth.stats.correlations import Margin, latent_matrix, nearest_correlation, tie_atoms
from replisynth.stats.marginals import apportion, exact_quantile_sample, released_group_sizes
from replisynth.stats.weights import calibrate_frame
from replisynth.synthesize.cells import cell_veto, repair_empty_cells
from replisynth.synthesize.entities import (
    complete_untargeted,
    entity_columns,
    entity_fixed,
    entity_frozen,
    entity_normals,
    refine_blocks,
    refine_invariant,
    skeleton,
    trend_columns,
)
from replisynth.synthesize.plan import ALL, BlockPlan, ColumnPlan, source_plan
from replisynth.synthesize.refine import block_target, refine_swaps, settled_views, view_samples


def _active_dims(dims: list[dict[str, Any]], bp: BlockPlan) -> list[int]:
    """Dims that vary inside the block (continuous, or a categorical with 2+ levels present)."""
    act = []
    for i, d in enumerate(dims):
        cp = bp.columns.get(d["column"])
        if d["kind"] == "missing":
            if cp is not None and cp.kind != "empty" and 0 < cp.missing < bp.rows:
                act.append(i)
            continue
        if cp is None or cp.kind == "empty" or bp.rows - cp.missing < 2:
            continue
        if cp.kind == "continuous":
            act.append(i)
            continue
        present = [lev for lev, c in zip(cp.levels or [], cp.counts or [], strict=True) if c > 0]
        if len(present) < 2:
            continue
        if d["kind"] == "indicator" and d["level"] not in present:
            continue
        act.append(i)
    return act


def continuous_sample(cp: ColumnPlan, nn: int, integer: bool) -> np.ndarray:
    """The nn values (ascending) a continuous column of a block is filled with: the exact
    quantile sample of its grid, or with released atoms their exact shares and the rest's
    grid (`stats.atoms.mixed_sample`)."""
    if cp.atoms:
        return mixed_sample(cp.atoms, nn, integer)
    return exact_quantile_sample(np.asarray(cp.grid), nn, integer)


def _margin(d: dict[str, Any], cp: ColumnPlan, rows: int, integer: bool = False) -> Margin:
    """The dim's margin in the block, as calibration sees it. A continuous column carries the
    ties of the values it will be filled with (`exact_quantile_sample`: a mass point of the
    grid, the integers of a rounded column), so a mass at zero is calibrated as such."""
    if d["kind"] == "continuous":
        nn = rows - cp.missing
        if cp.grid is None or nn < 2:
            return Margin(None)
        return Margin(None, tie_atoms(continuous_sample(cp, nn, integer)))
    if d["kind"] == "missing":
        p = cp.missing / rows
        return Margin((1.0 - p, p))
    counts = np.asarray(cp.counts, dtype="float64")
    p = counts / counts.sum()
    if d["kind"] == "ordered":
        return Margin(tuple(float(x) for x in p if x > 0))
    k = (cp.levels or []).index(d["level"])
    return Margin((1.0 - float(p[k]), float(p[k])))


def _fill_block(
    bp: BlockPlan,
    dims: list[dict[str, Any]],
    act: list[int],
    Z: np.ndarray,
    missing: dict[str, np.ndarray],
    specs: dict[str, ColumnSpec],
    as_float: frozenset[str] = frozenset(),
) -> dict[str, np.ndarray]:
    """Column values of a block given latent Z (n × len(act)). Columns are filled
    independently (their sorts on threads), each from its own latent column. Categorical
    columns in `as_float` (levels that are plain numbers) come as float64, the others as
    object arrays of their levels."""
    n = bp.rows
    col_dims: dict[str, list[tuple[int, int]]] = {}
    for j, i in enumerate(act):
        if dims[i]["kind"] != "missing":
            col_dims.setdefault(dims[i]["column"], []).append((j, i))

    def fill(item: tuple[str, ColumnPlan]) -> np.ndarray:
        col, cp = item
        ok = ~missing[col]
        nn = int(ok.sum())
        if cp.kind == "empty":
            return np.full(n, np.nan, dtype=object)
        jd = col_dims.get(col, [])
        if cp.kind == "continuous":
            z = Z[ok, jd[0][0]] if jd else np.arange(nn, dtype="float64")
            vals = continuous_sample(cp, nn, specs[col].integer)
            v = np.full(n, np.nan)
            v[ok] = fill_by_rank(z, vals)
            return v
        levels = cp.levels or []
        counts = list(cp.counts or [])
        if len(levels) == 1 or not jd:
            codes = np.repeat(np.arange(len(levels)), counts) if levels else np.zeros(0, dtype=int)
        elif dims[jd[0][1]]["kind"] == "ordered":
            codes = ordered_values(Z[ok, jd[0][0]], counts)
        else:
            dim_levels = [levels.index(dims[i]["level"]) for _, i in jd]
            baseline = max(
                (k for k in range(len(levels)) if k not in dim_levels),
                key=lambda k: (counts[k], -k),
                default=int(np.argmax(counts)),
            )
            codes = nominal_values(Z[ok][:, [j for j, _ in jd]], counts, baseline, dim_levels)
        if col in as_float and len(levels):
            v = np.full(n, np.nan)
            v[ok] = np.asarray(levels, dtype="float64")[codes]
            return v
        vals = np.full(n, np.nan, dtype=object)
        lev_arr = np.empty(len(levels), dtype=object)
        lev_arr[:] = levels
        vals[ok] = lev_arr[codes] if len(levels) else []
        return vals

    items = list(bp.columns.items())
    return dict(zip([c for c, _ in items], thread_map(fill, items), strict=True))


def _missing_masks(
    bp: BlockPlan, release: dict[str, Any], seed: int, source: str
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Missing rows of every column (released counts at random rows, shared within a
    missing-pattern set), and each set's followers for the latent placement below."""
    n = bp.rows
    r_miss = make_rng(seed, source, bp.id, "missing")
    leader = {c: grp[0] for grp in release.get("missing_groups", []) for c in grp}
    followers = {grp[0]: grp[1:] for grp in release.get("missing_groups", [])}
    missing: dict[str, np.ndarray] = {}
    for col, cp in bp.columns.items():
        m = np.zeros(n, dtype=bool)
        if cp.kind == "empty":
            m[:] = True
        elif cp.missing:
            lead = leader.get(col)
            if lead in missing and lead != col and int(missing[lead].sum()) == cp.missing:
                m = missing[lead].copy()  # the same rows as the rest of its missing-pattern set
            else:
                m[r_miss.choice(n, size=cp.missing, replace=False)] = True
        missing[col] = m
    return missing, followers


def _spearman_target(
    bp: BlockPlan, release: dict[str, Any], act: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The released Spearman matrix on the active dims (unknown pairs set to 0) and the mask
    of the pairs it targets."""
    dims = release["dims"]
    S_full = np.asarray(
        [
            [np.nan if v is None else v for v in row]
            for row in release["blocks"][bp.stats]["spearman"]
        ],
        dtype="float64",
    )
    target = S_full[np.ix_(act, act)] if act else np.zeros((0, 0))
    finite = np.isfinite(target)
    # Indicators of one nominal column are made mutually exclusive by the allocation itself,
    # so their latent utilities stay independent and their pairs are not targeted.
    cols_act = [dims[i]["column"] for i in act]
    same = np.asarray(
        [
            [a == b and dims[act[i]]["kind"] == "indicator" for b in cols_act]
            for i, a in enumerate(cols_act)
        ],
        dtype=bool,
    ).reshape(len(act), len(act))
    finite &= ~same
    target = np.where(finite, target, 0.0)
    np.fill_diagonal(target, 1.0)
    return target, finite


def _time_dim(release: dict[str, Any], act: list[int]) -> int | None:
    """Position among the active dims of the panel's time column (ordered or continuous)."""
    dims = release["dims"]
    time = (release.get("panel") or {}).get("time")
    return next(
        (
            j
            for j, i in enumerate(act)
            if dims[i]["column"] == time and dims[i]["kind"] in ("ordered", "continuous")
        ),
        None,
    )


def _place_latent_missing(
    bp: BlockPlan,
    dims: list[dict[str, Any]],
    act: list[int],
    Z: np.ndarray,
    missing: dict[str, np.ndarray],
    followers: dict[str, list[str]],
) -> None:
    """Move the missing rows of columns with a missingness dim (and of their set) to the
    rows with the largest latent, so missingness keeps its released correlations."""
    n = bp.rows
    for j, i in enumerate(act):
        if dims[i]["kind"] == "missing":
            col = dims[i]["column"]
            mask = np.zeros(n, dtype=bool)
            mask[rank_order(-Z[:, j])[: bp.columns[col].missing]] = True
            for c in [col] + followers.get(col, []):
                if c in missing and int(missing[c].sum()) == int(mask.sum()):
                    missing[c] = mask


def synthesize_block(
    bp: BlockPlan,
    release: dict[str, Any],
    specs: dict[str, ColumnSpec],
    seed: int,
    source: str,
    ent: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Values of every column of one block (object/float arrays, NaN = missing). With `ent`
    (entity index per row, `entities.skeleton`) the latent normals are hierarchical and
    time-invariant and period columns are filled per entity (replisynth.synthesize.entities)."""
    dims = release["dims"]
    n = bp.rows
    act = _active_dims(dims, bp)
    missing, followers = _missing_masks(bp, release, seed, source)
    target, finite = _spearman_target(bp, release, act)
    margins = [
        _margin(dims[i], bp.columns[dims[i]["column"]], n, specs[dims[i]["column"]].integer)
        for i in act
    ]
    r_cop = make_rng(seed, source, bp.id, "copula")
    R = nearest_correlation(latent_matrix(target, margins))
    if ent is None:
        Z = correlated_normals(R, n, r_cop, exact=True)
    else:
        R = complete_untargeted(R, ~finite)
        Z = entity_normals(
            R,
            act,
            release["entity_structure"],
            ent,
            r_cop,
            margins,
            _time_dim(release, act),
            make_rng(seed, source, bp.id, "serial"),
            columns=[
                dims[i]["column"] if dims[i]["kind"] in ("ordered", "continuous") else ""
                for i in act
            ],
            free=~finite,
        )
    _place_latent_missing(bp, dims, act, Z, missing, followers)
    numeric = frozenset(numeric_level_columns([bp], release)) if ent is None else frozenset()
    cols = _fill_block(
        bp,
        dims,
        act,
        Z,
        missing,
        specs,
        frozenset(c for c in numeric if specs[c].logical_type in ("integer", "float")),
    )
    if ent is not None:
        cols = entity_columns(cols, bp, release, specs, act, Z, ent, missing)
        cols = trend_columns(cols, bp, release, specs, ent, missing)
    return apply_derived(cols, release.get("derived", {}))


def _numeric(values: np.ndarray) -> np.ndarray | None:
    """float64 of a float column or of an object column of numbers and NaN (released
    numeric levels), without a per-element pandas pass; None when anything else is there."""
    if values.dtype == np.float64:
        return values
    if values.dtype.kind in "iub":
        return values.astype("float64")
    if values.dtype == object:
        try:
            kinds = {type(v) for v in pd.unique(values)}
        except TypeError:
            return None
        if kinds <= {int, float, bool, type(None)}:
            return values.astype("float64")
    return None


def _restore_dtype(values: np.ndarray, spec: ColumnSpec, release: dict[str, Any]) -> pd.Series:
    lt = spec.logical_type
    if lt in ("integer", "float"):
        num = _numeric(values)
        if num is not None:  # same values as the to_numeric path below, faster
            f = pd.Series(num, dtype="float64")
            if lt == "integer" and spec.integer:
                if not np.isnan(num).any():
                    return f.astype("int64")
                return f.round().astype("Int64")
            return f
    s = pd.Series(values, dtype=object)
    miss = s.isna()
    if lt == "date":
        days = pd.to_numeric(s, errors="coerce").astype("float64")
        if spec.integer:  # whole days in the source: whole days here
            days = np.round(days)
        t = EPOCH + pd.to_timedelta(np.round(days * 86400.0), unit="s")
        period = date_period(spec.display_format)
        return period_start(t, period) if period else t
    if lt == "boolean":
        b = s.map(lambda v: v if pd.isna(v) else bool(v))
        return b.astype("boolean") if miss.any() else b.astype(bool)
    if lt in ("integer", "float"):
        f = pd.to_numeric(s, errors="coerce").astype("float64")
        if lt == "integer" and spec.integer:
            if not miss.any():
                return f.astype("int64")
            return f.round().astype("Int64")
        return f
    if lt == "categorical":
        cats = _released_levels(release, spec.name)
        return pd.Series(
            pd.Categorical(s.where(~miss, None), categories=cats, ordered=spec.ordered)
        )
    return (
        s.where(~miss, np.nan).astype("str")
        if not miss.all()
        else pd.Series([np.nan] * len(s), dtype="str")
    )


def _released_levels(release: dict[str, Any], col: str) -> list[Any]:
    m = release["blocks"][ALL]["marginals"].get(col)
    if m and m["kind"] == "categorical":
        return list(m["table"]["levels"])
    return []


def _group_ids(n: int, g: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Re-keyed group ids 1..G with sizes from the released size distribution, rows assigned
    to groups at random."""
    G = int(g["groups"])
    sizes = released_group_sizes(g, G)

    counts = apportion(sizes, n)
    ids = np.repeat(np.arange(1, G + 1), counts)
    return ids[rng.permutation(n)]


def _panel(df: pd.DataFrame, entity: str, time: str) -> pd.DataFrame:
    """Make time values distinct within each synthetic entity by re-assigning the (random,
    re-keyed) entity ids rather than the time values: the time column keeps its drawn values,
    so its exact counts and its correlations with the other columns survive. Entities
    (largest first) take one row from each of the time values with most rows left."""
    t = df[time]
    ok = t.notna().to_numpy()
    keys = t.astype(str).to_numpy()
    ent = df[entity].to_numpy()
    pools: dict[str, list[int]] = {}
    for pos in np.flatnonzero(ok)[::-1]:  # reversed so that pop() hands out rows in order
        pools.setdefault(keys[pos], []).append(int(pos))
    sizes = pd.Series(ent[ok]).value_counts().sort_values(ascending=False, kind="stable")
    new_ent = ent.copy()
    for e, size in sizes.items():
        avail = sorted(pools, key=lambda v: (-len(pools[v]), v))[:size]
        for v in avail:
            new_ent[pools[v].pop()] = e
            if not pools[v]:
                del pools[v]
    # rows left over (an entity with more rows than distinct time values) keep their entity
    df[entity] = pd.Series(new_ent, index=df.index, dtype=df[entity].dtype)
    return df


def numeric_level_columns(plan: list[BlockPlan], release: dict[str, Any]) -> set[str]:
    """Categorical columns whose sampled values are all released levels that are plain
    numbers (Python int or float, not bool; no derived column) in every block: their object
    arrays convert to float64 exactly, and coding or restoring the floats gives what the
    objects give, without a hashing pass over a million Python objects."""
    derived = release.get("derived", {})
    out = set()
    for c in plan[0].columns if plan else {}:
        cps = [bp.columns.get(c) for bp in plan]
        if c in derived or any(cp is None or cp.kind not in ("categorical", "empty") for cp in cps):
            continue
        levels = [v for cp in cps if cp is not None for v in (cp.levels or [])]
        if levels and all(type(v) in (int, float) and abs(v) < 2.0**53 for v in levels):
            out.add(c)
    return out


def _as_float(cols: dict[str, np.ndarray], names: set[str]) -> dict[str, np.ndarray]:
    """`cols` with the columns `names` (object arrays of numbers and NaN) as float64."""
    return {
        c: v.astype("float64") if c in names and v.dtype == object else v for c, v in cols.items()
    }


def value_pairs(dims: list[dict[str, Any]]) -> np.ndarray:
    """Pairs of value dims (neither a missingness indicator): the pairs tier 2 decides on
    (`verify.tier2_matrix`), so the ones the refinement's stopping rule judges."""
    value = np.asarray([d["kind"] != "missing" for d in dims], dtype=bool)
    return value[:, None] & value[None, :]


def refine_source(
    cols: dict[str, np.ndarray],
    plan: list[BlockPlan],
    release: dict[str, Any],
    seed: int,
    source: str,
    ent: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Swap-refine the stacked blocks towards each block's and the source's Spearman targets.
    With `ent` (entity per row) swaps stay inside an entity and time-invariant columns and
    the period column do not move, so the entity structure is kept exactly."""
    dims = release["dims"]
    if len(dims) < 2:
        return cols
    if ent is not None:
        cols = refine_invariant(cols, release, ent, make_rng(seed, source, "refine", "entities"))
        cols = refine_blocks(cols, release, ent, make_rng(seed, source, "refine", "blocks"))
    bounds = np.cumsum([0] + [b.rows for b in plan])
    groups = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(plan))]
    targets = [block_target(release, b.stats) for b in plan]
    glob = block_target(release, ALL) if len(plan) > 1 else None
    numeric = numeric_level_columns(plan, release) if ent is None else set()
    settled = None
    if ent is None:  # large blocks within comfort stay as drawn, judged on a sample of their rows
        samples = view_samples(
            groups + ([np.arange(bounds[-1])] if glob is not None else []),
            make_rng(seed, source, "refine", "check"),
        )
        settled = [False] * len(samples)
        if any(s is not None for s in samples):
            union = np.unique(np.concatenate([s for s in samples if s is not None]))
            Xs = synthetic_dim_matrix(
                pd.DataFrame(_as_float({c: v[union] for c, v in cols.items()}, numeric)),
                release,
                order="F",
            )
            at = [
                None if s is None else np.searchsorted(union, s) for s in samples
            ]  # their rows of Xs
            settled = settled_views(Xs, at, targets + ([glob] if glob is not None else []))
            del Xs
            if all(settled):
                return cols
    # One unit per root column: a derived column moves with the column it is computed from.
    root = {b: d["from"] for b, d in release.get("derived", {}).items()}
    units: dict[str, list[int]] = {}
    fixed = entity_frozen(release) if ent is not None else set()
    for j, d in enumerate(dims):
        if (
            d["kind"] != "missing" and root.get(d["column"], d["column"]) not in fixed
        ):  # missing positions only steer
            units.setdefault(root.get(d["column"], d["column"]), []).append(j)
    perms = refine_swaps(  # X is built in the call: refine_swaps drops it once its views hold
        # the scores (column-major: the views read X column by column; same values either way)
        synthetic_dim_matrix(pd.DataFrame(_as_float(cols, numeric)), release, order="F"),
        groups,
        targets,
        glob,
        list(units.values()),
        make_rng(seed, source, "refine"),
        labels=ent,
        settled=settled,
        decisive=value_pairs(dims),
        allowed=cell_veto(
            cols, release, [[u, *[b for b, a in root.items() if a == u]] for u in units]
        ),
    )
    out = dict(cols)
    for unit_root, perm in zip(units, perms, strict=True):
        for col in [unit_root, *[b for b, a in root.items() if a == unit_root]]:
            out[col] = cols[col][perm]
    return out


def _keep_cells_empty(
    cols: dict[str, np.ndarray],
    plan: list[BlockPlan],
    release: dict[str, Any],
    seed: int,
    source: str,
    ent: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Rows out of the released empty cells by swaps inside each block, from the stream
    (source, "cells"). With an entity structure: pairs of time-invariant columns by swaps
    between whole entities of one size, the rest by swaps inside an entity (the frozen
    columns stay)."""
    if not release.get("empty_cells"):
        return cols
    rng = make_rng(seed, source, "cells")
    if ent is None:
        group = np.repeat(np.arange(len(plan)), [b.rows for b in plan])
        return repair_empty_cells(cols, group, release, rng)[0]
    fixed = entity_fixed(release)
    whole = [f for f in release["empty_cells"] if set(f["columns"]) <= fixed]
    if whole:
        first = np.flatnonzero(np.r_[True, ent[1:] != ent[:-1]])  # rows grouped by entity
        sizes = np.diff(np.r_[first, len(ent)])
        names = sorted({c for f in whole for c in f["columns"]} | fixed & set(cols))
        sub, _ = repair_empty_cells(
            {c: cols[c][first] for c in names}, sizes, {**release, "empty_cells": whole}, rng
        )
        cols = {**cols, **{c: sub[c][ent] for c in names}}
    return repair_empty_cells(cols, ent, release, rng, entity_frozen(release))[0]


def _group_column(ids: np.ndarray, spec: ColumnSpec) -> pd.Series:
    """Re-keyed group ids 1..G (or row ids 1..rows), as text when the original ids were text
    (firm names, state codes, "P00017"), so the column keeps its released logical type and code
    that reads it as text runs."""
    if spec.logical_type == "string":
        return pd.Series(np.asarray(ids).astype(str), dtype=object)
    return pd.Series(ids, dtype="int64")


def synthesize_source(
    release: dict[str, Any],
    seed: int,
    rows: int | None = None,
    blocks: dict[str, dict[str, np.ndarray]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """The synthetic data of one source (before Layer 4), from its release and the seed.
    `blocks` (block id -> column values) are blocks already sampled by `synthesize_block`
    in other jobs (replisynth.workflow.scatter); every block of the plan must be there.
    `progress` is told each block and the refinement as they start."""
    say = progress or (lambda _msg: None)
    source = release["source"]
    rows = int(rows or release["rows"])
    specs_list = [ColumnSpec.from_dict(c) for c in release["columns"]]
    specs = {s.name: s for s in specs_list}
    plan = source_plan(release, rows)
    # Entity structure released and one block: the hierarchical copula (replisynth.synthesize.entities).
    ent = (
        skeleton(plan[0], release)
        if release.get("entity_structure") and len(plan) == 1 and blocks is None
        else None
    )
    parts: dict[str, list[np.ndarray]] = {
        s.name: [] for s in specs_list if s.role in ("continuous", "categorical")
    }

    def sample(bp: BlockPlan) -> dict[str, np.ndarray]:
        say(f"synthesize: {source} block {bp.id} ({bp.rows} rows; {len(plan)} block(s))")
        return synthesize_block(bp, release, specs, seed, source, ent=ent)

    # blocks draw from their own seeded streams, so they are sampled on threads (results in plan order)
    sampled = [blocks[bp.id] for bp in plan] if blocks is not None else thread_map(sample, plan)
    for vals in sampled:
        for c in parts:
            parts[c].append(vals[c])
    del sampled
    cols = {
        c: np.concatenate(v) if v else np.full(rows, np.nan, dtype=object) for c, v in parts.items()
    }
    del (
        parts
    )  # the per-block pieces would otherwise stay alive through refinement (its memory peak)
    say(f"synthesize: {source} refining across {len(plan)} block(s)")
    if ent is None:  # out of the empty cells first; the refinement then never refills them
        cols = _keep_cells_empty(cols, plan, release, seed, source, ent)
    cols = refine_source(cols, plan, release, seed, source, ent=ent)
    if ent is not None:  # the entity refinements are not vetoed: the repair comes after them
        cols = _keep_cells_empty(cols, plan, release, seed, source, ent)
    if ent is None:  # numeric levels of integer and float columns restore from floats (same values)
        numeric = {
            s.name for s in specs_list if s.logical_type in ("integer", "float")
        } & numeric_level_columns(plan, release)
        cols = _as_float(cols, numeric)
    perm = make_rng(seed, source, "shuffle").permutation(rows)
    data: dict[str, pd.Series] = {}
    for s in specs_list:
        if s.role == "id":
            data[s.name] = _group_column(np.arange(1, rows + 1, dtype="int64"), s)
        elif (
            s.role == "group"
            and ent is not None
            and s.name == release["entity_structure"]["column"]
        ):
            data[s.name] = _group_column(ent[perm] + 1, s)
        elif s.role == "group":
            data[s.name] = _group_column(
                _group_ids(
                    rows, release["groups"][s.name], make_rng(seed, source, "groups", s.name)
                ),
                s,
            )
        else:  # each drawn column freed once shuffled: one copy of the data alive, not two
            data[s.name] = _restore_dtype(cols.pop(s.name)[perm], s, release)
    del cols
    df = pd.DataFrame(data)
    del data
    df = df[[s.name for s in specs_list]]
    if release.get("panel") and ent is None:
        df = _panel(df, release["panel"]["entity"], release["panel"]["time"])
    # survey weights calibrated to the released weighted shares (docs/method.md, "Survey weights")
    return calibrate_frame(df, release)[0]
