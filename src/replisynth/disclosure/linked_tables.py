"""Frequency tables of a stratified source as one linked system, audited and protected by
secondary suppression. Pure functions. Method: docs/method.md, "Linked tables".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import bmat, coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

from replisynth.disclosure.lp import LinearProgram
from replisynth.stats.codings import derived_counts
from replisynth.stats.marginals import level_positions

RESIDUAL = "residual"


def protected(lo: int, hi: int, min_cell: int, cap: int) -> bool:
    """The protection rule for an unlisted cell known to lie in [lo, hi]: a known zero, a
    cell known to be at least `min_cell`, an interval at least `min_cell` wide, or one that
    covers 0..min_cell-1 (or 0..cap when the block's published non-missing total `cap` is
    smaller: the attacker then knows no more than that published total)."""
    return (
        hi <= 0
        or lo >= min_cell
        or hi - lo >= min_cell
        or (lo <= 0 and hi >= min(min_cell - 1, cap))
    )


@dataclass(frozen=True)
class LinkedTable:
    """One column's blocks × classes table as an attacker sees it. `listed[b, l]`: the cell is
    published with value `values[b, l]`; `pooled`: stratum listings are raw values while the
    source table pooled rare values into its levels (bundles made before linked tables), so a
    class total only bounds the listed raw cells (an extra unknown column of pooled values)."""

    source: str
    column: str
    blocks: list[str]
    row_totals: np.ndarray  # non-missing rows per block
    col_totals: np.ndarray  # per class: released levels, then the suppressed bucket if any
    listed: np.ndarray  # bool, blocks × classes
    values: np.ndarray  # int, blocks × classes (0 where not listed)
    pooled: bool = False


def class_codes(
    codes: np.ndarray, values: list[Any], table: Any, all_levels: list[Any]
) -> np.ndarray:
    """Each row's class in the source-level table: the position of its released level (pooled
    values in the level they were pooled into), len(levels) for the suppressed bucket, -1 for
    missing. `codes`/`values` from `extract.column_codes`."""
    pos = level_positions(values, table, all_levels)
    cls = np.where(np.isnan(pos), len(table.levels), np.nan_to_num(pos)).astype(np.int32)
    cls[-1] = -1  # the missing code
    return cls[codes]


def n_classes(table: Any) -> int:
    """Classes of a source-level table: its levels, plus the bucket when it suppressed rows."""
    return len(table.levels) + (1 if table.suppressed > 0 else 0)


def class_counts(cls: np.ndarray, n: int) -> list[int]:
    """Rows per class (of `n`) among the class codes `cls` (missing left out)."""
    return np.bincount(cls[cls >= 0], minlength=n)[:n].astype(int).tolist()


def block_table(
    counts: list[int], levels: list[Any], ordered: bool, min_cell: int
) -> dict[str, Any]:
    """A stratum's released table over the source-level classes: levels of at least
    `min_cell` rows listed, every other row (small cells, the suppressed bucket) as one
    `suppressed` count, which the block's row and missing counts imply anyway. The number of
    unlisted non-empty cells is not stated (it would tell which unlisted cells are positive)."""
    keep = [i for i, c in enumerate(counts[: len(levels)]) if c >= min_cell]
    listed = sum(counts[i] for i in keep)
    return {
        "levels": [levels[i] for i in keep],
        "counts": [int(counts[i]) for i in keep],
        "ordered": ordered,
        "suppressed": int(sum(counts) - listed),
        "pooled_levels": 0,
        "classes": True,
    }


# ------------------------------------------------------------------ the attacker's model


def linked_tables(release: dict[str, Any]) -> list[LinkedTable]:
    """The linked table of every categorical column of a stratified source release, built from
    what the release publishes only."""
    cells = release["strata"]["cells"]
    residual = int(release["strata"].get("residual_rows", 0))
    if not cells and not residual:
        return []
    strata = set(release["strata"]["columns"])
    all_m = release["blocks"]["all"]["marginals"]
    out = []
    for col, m in all_m.items():
        if col in strata or m["kind"] != "categorical":
            continue
        t = m["table"]
        levels = list(t["levels"])
        pos = {v: i for i, v in enumerate(levels)}
        bucket = int(t.get("suppressed", 0))
        L = len(levels) + (1 if bucket > 0 else 0)
        col_totals = np.asarray([*t["counts"], *([bucket] if bucket else [])], dtype="int64")
        ids, rows, listed, values = [], [], [], []
        old_style = False
        miss_strata = 0
        for cell in cells:
            block = release["blocks"].get(cell["id"])
            bm = (block or {}).get("marginals", {}).get(col)
            if block is None or bm is None:
                continue
            miss_strata += int(bm["missing"])
            ids.append(cell["id"])
            rows.append(int(block["rows"]) - int(bm["missing"]))
            lst, val = np.zeros(L, dtype=bool), np.zeros(L, dtype="int64")
            if bm["kind"] == "categorical":
                old_style |= not bm["table"].get("classes", False)
                for v, c in zip(bm["table"]["levels"], bm["table"]["counts"], strict=True):
                    if v in pos:
                        lst[pos[v]], val[pos[v]] = True, int(c)
            listed.append(lst)
            values.append(val)
        if residual:
            ids.append(RESIDUAL)
            rows.append(residual - (int(m["missing"]) - miss_strata))
            listed.append(np.zeros(L, dtype=bool))
            values.append(np.zeros(L, dtype="int64"))
        out.append(
            LinkedTable(
                release["source"],
                col,
                ids,
                np.asarray(rows, dtype="int64"),
                col_totals,
                np.asarray(listed, dtype=bool).reshape(len(ids), L),
                np.asarray(values, dtype="int64").reshape(len(ids), L),
                pooled=old_style and bool(t.get("ordered")) and int(t.get("pooled_levels", 0)) > 0,
            )
        )
    return out


def _put(r: list[int], c: list[int], v: list[float], row: int, col: int, value: float) -> None:
    """One nonzero of a sparse constraint matrix in coordinate form."""
    r.append(row)
    c.append(col)
    v.append(value)


def _total(
    r: list[int], c: list[int], v: list[float], rhs: list[float], cells: list[int], total: float
) -> None:
    """One equality: the variables `cells` (coefficient 1) sum to `total`."""
    for col in cells:
        _put(r, c, v, len(rhs), col, 1.0)
    rhs.append(total)


def _constraints(
    lt: LinkedTable, listed: np.ndarray
) -> tuple[Any, np.ndarray, dict[tuple[int, int], int]]:
    """Equalities A x = b over the unlisted cells (then, for a pooled table, one slack per
    class and one pooled-values cell per block, the cell (block, number of classes)):
    published row and column totals with the listed cells moved to the right-hand side.
    Returns A, b and each audited cell's variable."""
    B, L = listed.shape
    unknown = [(b, cl) for b in range(B) for cl in range(L) if not listed[b, cl]]
    var = {c: i for i, c in enumerate(unknown)}
    n = len(unknown) + (L + B if lt.pooled else 0)
    pooled_class = [len(unknown) + cl for cl in range(L)] if lt.pooled else []
    pooled_block = [len(unknown) + L + b for b in range(B)] if lt.pooled else []
    r: list[int] = []
    c: list[int] = []
    v: list[float] = []
    rhs: list[float] = []
    known = np.where(listed, lt.values, 0)
    for b in range(B):  # row totals (pooled: the block's pooled values count in its row)
        cells = [var[(b, cl)] for cl in range(L) if not listed[b, cl]] + pooled_block[b : b + 1]
        _total(r, c, v, rhs, cells, float(lt.row_totals[b] - known[b].sum()))
    for cl in range(L):  # column totals (pooled: plus the pooled values assigned to the class)
        cells = [var[(b, cl)] for b in range(B) if not listed[b, cl]] + pooled_class[cl : cl + 1]
        _total(r, c, v, rhs, cells, float(lt.col_totals[cl] - known[:, cl].sum()))
    if lt.pooled:  # the pooled values over blocks are those assigned to classes
        for col in pooled_class:
            _put(r, c, v, len(rhs), col, 1.0)
        for col in pooled_block:
            _put(r, c, v, len(rhs), col, -1.0)
        rhs.append(0.0)
    A = coo_matrix((v, (r, c)), shape=(len(rhs), n)).tocsr()
    if lt.pooled:
        var.update({(b, L): len(unknown) + L + b for b in range(B)})
    return A, np.asarray(rhs), var


def intervals(
    lt: LinkedTable,
    listed: np.ndarray | None = None,
    only: list[tuple[int, int]] | None = None,
    cache: dict[Any, Any] | None = None,
) -> dict[tuple[int, int], tuple[int, int]]:
    """The attacker LP: min and max of every unlisted cell (or of the cells `only`) subject to
    the published equalities and non-negativity, rounded inward to integers. An infeasible
    system (a release inconsistent with itself) gives (-1, -1) for every cell. Solved one
    independent part of the system at a time (`component_intervals`); `cache` keeps parts'
    answers across calls on the same table."""
    listed = lt.listed if listed is None else listed
    return component_intervals(lt, listed, only, {} if cache is None else cache)


@dataclass(frozen=True)
class _Part:
    """An independent part of the attacker's system: equations that share no unknown with the
    rest. `key` names it (its unknowns, its equations and their right-hand sides), so a part
    met again in another suppression pattern of the same table has the same answers."""

    key: tuple[Any, ...]
    A: Any  # csr, the part's equations over its unknowns
    b: np.ndarray
    pos: dict[tuple[int, int], int]  # audited cell -> its unknown inside the part


def _parts(A: Any, b: np.ndarray, var: dict[tuple[int, int], int]) -> tuple[list[_Part], bool]:
    """The connected components of the equation–unknown graph of A x = b, and whether some
    equation has no unknown but a nonzero right-hand side (the system is then infeasible)."""
    m, n = A.shape
    graph = bmat([[None, A], [A.T, None]]).tocsr() if m and n else csr_matrix((m + n, m + n))
    _, labels = connected_components(graph, directed=False)
    names: list[Any] = [("free", j) for j in range(n)]
    for cell, j in var.items():
        names[j] = cell
    audited = set(var.values())
    rows_of: dict[int, list[int]] = {}
    for i in range(m):
        rows_of.setdefault(int(labels[i]), []).append(i)
    parts, contradicted = [], False
    for label, rows in rows_of.items():
        cols = np.flatnonzero(labels[m:] == label)
        if not len(cols):
            contradicted |= bool(np.any(b[rows] != 0))
            continue
        sub = A[rows][:, cols]
        key = (tuple(names[j] for j in cols), tuple(rows), b[rows].tobytes())
        pos = {names[j]: k for k, j in enumerate(cols) if j in audited}
        parts.append(_Part(key, sub, b[rows], pos))
    return parts, contradicted


def _program(part: _Part, cache: dict[Any, Any]) -> LinearProgram:
    """The part's equations as one HiGHS model, kept in `cache` for its cells' programs."""
    if ("program", part.key) not in cache:
        cache[("program", part.key)] = LinearProgram(None, None, part.A, part.b)
    program: LinearProgram = cache[("program", part.key)]
    return program


def _part_bounds(
    part: _Part, cell: tuple[int, int], cache: dict[Any, Any]
) -> tuple[int, int] | None:
    """Min and max of one cell over its part, rounded inward; None when the part is infeasible;
    (-1, -1) when the solver fails otherwise."""
    if (part.key, cell) not in cache:
        obj = np.zeros(part.A.shape[1])
        obj[part.pos[cell]] = 1.0
        lo, hi = _program(part, cache).minimize(obj), _program(part, cache).minimize(-obj)
        cache[("feasible", part.key)] = lo.status != 2 and hi.status != 2
        points = cache.setdefault(("points", part.key), [])
        points.extend(res.x for res in (lo, hi) if res.status == 0)
        if lo.status == 2 or hi.status == 2:
            cache[(part.key, cell)] = None
        elif lo.status != 0 or hi.status != 0:
            cache[(part.key, cell)] = (-1, -1)
        else:
            assert lo.fun is not None and hi.fun is not None  # solved to optimality
            cache[(part.key, cell)] = (int(np.ceil(lo.fun - 1e-6)), int(np.floor(-hi.fun + 1e-6)))
    out: tuple[int, int] | None = cache[(part.key, cell)]
    return out


def _part_feasible(part: _Part, cache: dict[Any, Any]) -> bool:
    """Whether the part's equations have a non-negative solution."""
    if ("feasible", part.key) not in cache:
        res = _program(part, cache).minimize(np.zeros(part.A.shape[1]))
        cache[("feasible", part.key)] = res.status != 2
        if res.status == 0:
            cache.setdefault(("points", part.key), []).append(res.x)
    return bool(cache[("feasible", part.key)])


def component_intervals(
    lt: LinkedTable,
    listed: np.ndarray,
    only: list[tuple[int, int]] | None,
    cache: dict[Any, Any],
) -> dict[tuple[int, int], tuple[int, int]]:
    """`intervals` solved part by part: the feasible set is the product of the parts' feasible
    sets, so a cell's min and max over its part are those over the whole system, and the
    system is infeasible exactly when one part is. Parts are remembered in `cache` by what
    defines them, so a greedy suppression loop re-solves only the parts a new unlisting joins."""
    A, b, var = _constraints(lt, listed)
    cells = list(var) if only is None else only
    if not cells:
        return {}
    parts, contradicted = _parts(A, b, var)
    if contradicted:
        return {cell: (-1, -1) for cell in cells}
    part_of = {cell: part for part in parts for cell in part.pos}
    bounds = {cell: _part_bounds(part_of[cell], cell, cache) for cell in cells}
    if any(v is None for v in bounds.values()) or not all(_part_feasible(p, cache) for p in parts):
        return {cell: (-1, -1) for cell in cells}
    return {cell: v for cell, v in bounds.items() if v is not None}


# The audit needs exact intervals only for the cells that fail the protection rule. Every LP
# solve returns a feasible table; the values a cell takes in such tables lie inside its
# interval, so a cell seen at values at least min_cell apart, or at 0 and at min(min_cell - 1,
# cap), is protected without an LP of its own. A table feasible for one listing stays
# feasible when further cells are unlisted (they keep their listed values), so what was seen
# carries over while the secondary-suppression loop only unlists.


def _seen(
    cache: dict[Any, Any], listed: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[Any, int]]:
    """The smallest and largest value seen per cell in tables feasible for `listed` (and for
    every listing that unlists more), and how many points of each part were taken in."""
    mask, lo, hi, used = cache.get("seen", (None, None, None, None))
    if mask is None or mask.shape != listed.shape or np.any(listed & ~mask):
        lo, hi, used = np.full(listed.shape, np.inf), np.full(listed.shape, -np.inf), {}
    cache["seen"] = (listed.copy(), lo, hi, used)
    return lo, hi, used


def _take_in(
    seen: tuple[np.ndarray, np.ndarray, dict[Any, int]], part: _Part, cache: dict[Any, Any]
) -> None:
    """Add the part's solved tables not yet taken in to `seen` (values within 1e-6 of an
    integer only, as the LP's answers are rounded)."""
    lo, hi, used = seen
    points = cache.get(("points", part.key), [])
    cells = [c for c in part.pos if c[1] < lo.shape[1]]
    idx = tuple(np.asarray(cells).T) if cells else None
    for x in points[used.get(part.key, 0) :]:
        if idx is None:
            break
        v = np.asarray([x[part.pos[c]] for c in cells])
        r = np.round(v)
        ok = np.abs(v - r) <= 1e-6
        lo[idx] = np.where(ok, np.minimum(lo[idx], r), lo[idx])
        hi[idx] = np.where(ok, np.maximum(hi[idx], r), hi[idx])
    used[part.key] = len(points)


def _seen_protected(
    lt: LinkedTable, listed: np.ndarray, cell: tuple[int, int], min_cell: int, cache: dict[Any, Any]
) -> bool:
    """Whether the tables seen for a listing that lists `listed` and more prove the cell
    protected (its interval contains what was seen)."""
    got = cache.get("seen")
    if lt.pooled or got is None or got[0].shape != listed.shape or np.any(listed & ~got[0]):
        return False
    lo, hi = got[1][cell], got[2][cell]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return False
    cap = int(lt.row_totals[cell[0]])
    return bool(hi - lo >= min_cell or (lo <= 0 and hi >= min(min_cell - 1, cap)))


def _spread(
    lt: LinkedTable,
    listed: np.ndarray,
    part: _Part,
    min_cell: int,
    seen: tuple[np.ndarray, np.ndarray, dict[Any, int]],
    cache: dict[Any, Any],
    rounds: int = 12,
) -> None:
    """Look for feasible tables that prove many cells protected at once: alternately push the
    sum of the part's unproven cells down and up (randomly weighted, seeded: the answers do
    not depend on it, only how many cells are left to an LP of their own)."""
    rng = np.random.default_rng(len(part.pos))
    sign, before = 1.0, len(part.pos) + 1
    for _ in range(rounds):
        open_ = [c for c in part.pos if not _seen_protected(lt, listed, c, min_cell, cache)]
        if len(open_) < 4 or (sign > 0 and len(open_) >= before):
            return  # few left, or a down-and-up pair proved nothing new
        before = len(open_) if sign > 0 else before
        obj = np.zeros(part.A.shape[1])
        obj[[part.pos[c] for c in open_]] = sign * rng.uniform(1.0, 2.0, len(open_))
        res = _program(part, cache).minimize(obj)
        if res.status != 0:
            return
        cache.setdefault(("points", part.key), []).append(res.x)
        _take_in(seen, part, cache)
        sign = -sign


def _audited_intervals(
    lt: LinkedTable,
    listed: np.ndarray,
    min_cell: int,
    cache: dict[Any, Any],
    first: bool = False,
) -> dict[tuple[int, int], tuple[int, int]]:
    """`intervals` of every unlisted cell, except cells the tables already seen prove
    protected (left out); an infeasible system gives (-1, -1) for every cell. `first`: stop
    after the first cell that fails the protection rule."""
    A, b, var = _constraints(lt, listed)
    if not var:
        return {}
    parts, contradicted = _parts(A, b, var)
    if contradicted or not all(_part_feasible(p, cache) for p in parts):
        return {cell: (-1, -1) for cell in var}
    seen = _seen(cache, listed)
    part_of = {cell: part for part in parts for cell in part.pos}
    for part in parts:
        _take_in(seen, part, cache)
        _spread(lt, listed, part, min_cell, seen, cache)
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for cell in var:
        if _seen_protected(lt, listed, cell, min_cell, cache):
            continue
        bounds = _part_bounds(part_of[cell], cell, cache)
        out[cell] = (-1, -1) if bounds is None else bounds
        _take_in(seen, part_of[cell], cache)
        lo, hi = out[cell]
        if first and (lo < 0 or not protected(lo, hi, min_cell, int(lt.row_totals[cell[0]]))):
            break
    return out


def unprotected(
    lt: LinkedTable,
    min_cell: int,
    listed: np.ndarray | None = None,
    cache: dict[Any, Any] | None = None,
) -> list[tuple[int, int, int, int]]:
    """Unlisted cells whose feasible interval fails `protected`: (block, class, lo, hi)."""
    listed = lt.listed if listed is None else listed
    cache = {} if cache is None else cache
    iv = (
        intervals(lt, listed, cache=cache)
        if lt.pooled
        else _audited_intervals(lt, listed, min_cell, cache)
    )
    return [
        (b, cl, lo, hi)
        for (b, cl), (lo, hi) in iv.items()
        if lo < 0 or not protected(lo, hi, min_cell, int(lt.row_totals[b]))
    ]


def _first_unprotected(
    lt: LinkedTable, min_cell: int, listed: np.ndarray, cache: dict[Any, Any]
) -> list[tuple[int, int, int, int]]:
    """The first of `unprotected` only (or nothing): what the greedy loop acts on."""
    if lt.pooled:
        return unprotected(lt, min_cell, listed, cache)[:1]
    iv = _audited_intervals(lt, listed, min_cell, cache, first=True)
    return [
        (b, cl, lo, hi)
        for (b, cl), (lo, hi) in iv.items()
        if lo < 0 or not protected(lo, hi, min_cell, int(lt.row_totals[b]))
    ][:1]


def audit_release_tables(release: dict[str, Any], min_cell: int) -> list[dict[str, Any]]:
    """The interval audit of one source release alone: one finding per unlisted cell (or
    source-level bucket) that the published numbers bound more tightly than the protection
    rule allows. Levels are given by index (released levels in order, then the bucket), never
    by the value of a suppressed category. Empty: clean."""
    findings = []
    for col, m in release["blocks"]["all"]["marginals"].items():
        if m["kind"] == "categorical" and 0 < int(m["table"].get("suppressed", 0)) < min_cell:
            s = int(m["table"]["suppressed"])
            findings.append(
                {
                    "source": release["source"],
                    "column": col,
                    "block": "all",
                    "level_index": len(m["table"]["levels"]),
                    "lo": s,
                    "hi": s,
                    "rule": f"suppressed categories total 1..{min_cell - 1} rows",
                }
            )
    for i, j in strata_pairs(release) if release["strata"]["cells"] else []:
        findings.append(
            {
                "source": release["source"],
                "column": release["dims"][j]["column"],
                "block": "all",
                "level_index": None,
                "lo": None,
                "hi": None,
                "rule": f"rank correlation with strata column {release['dims'][i]['column']!r} released: a linear equation over unlisted stratum cells",
            }
        )
    findings += derived_findings(release, min_cell)
    for lt in linked_tables(release):
        for b, cl, lo, hi in unprotected(lt, min_cell):
            rule = (
                "published totals inconsistent"
                if lo < 0
                else f"interval narrower than min_cell_size={min_cell}"
            )
            findings.append(
                {
                    "source": lt.source,
                    "column": lt.column,
                    "block": lt.blocks[b],
                    "level_index": cl,
                    "lo": lo,
                    "hi": hi,
                    "rule": rule,
                }
            )
    return findings


# ------------------------------------------------------------------ derived columns' tables


def bucket_parts(ma: dict[str, Any], mb: dict[str, Any], spec: dict[str, Any]) -> list[int] | None:
    """Rows of the parent's suppressed bucket in each class of a derived column (its released
    levels, then its own bucket), as the two published source-level tables and the released
    map give them: a derived count minus the mapped parent counts. None: not two tables."""
    if ma["kind"] != "categorical" or mb["kind"] != "categorical":
        return None
    ta, tb = ma["table"], mb["table"]
    known = derived_counts(list(ta["levels"]), list(ta["counts"]), list(tb["levels"]), spec)
    parts = [int(c) - k for c, k in zip(tb["counts"], known, strict=True)]
    unmapped = int(sum(ta["counts"])) - sum(known)  # parent levels mapped outside b's levels
    return [*parts, int(tb["suppressed"]) - unmapped]


def split_bucket(parts: list[int] | None, min_cell: int) -> list[int]:
    """Classes of a derived column whose share of the parent's bucket is known to lie in
    1..min_cell-1 (or is negative: tables inconsistent with the map)."""
    return [i for i, x in enumerate(parts or []) if x < 0 or 0 < x < min_cell]


def derived_findings(release: dict[str, Any], min_cell: int) -> list[dict[str, Any]]:
    """Interval-audit findings of derived columns whose source-level table, with its parent's
    table and the released map, gives rows of the parent's suppressed categories by subtraction."""
    all_m = release["blocks"]["all"]["marginals"]
    out = []
    for col, spec in (release.get("derived") or {}).items():
        if col not in all_m or spec["from"] not in all_m:
            continue
        parts = bucket_parts(all_m[spec["from"]], all_m[col], spec)
        for i in split_bucket(parts, min_cell):
            out.append(
                {
                    "source": release["source"],
                    "column": col,
                    "block": "all",
                    "level_index": i,
                    "lo": None,
                    "hi": None,
                    "rule": f"derived from {spec['from']!r}: this level minus its mapped parent levels "
                    f"gives 1..{min_cell - 1} rows of the parent's suppressed categories",
                }
            )
    return out


def withhold_bucket_split(
    marginals: dict[str, dict[str, Any]], derived: dict[str, dict[str, Any]], min_cell: int
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Derived columns whose table would split the parent's suppressed bucket into a share of
    1..min_cell-1 rows (`split_bucket`): their table is replaced by the one the map gives from
    the parent's released levels (each level the sum of its parent levels; every row of the
    parent's bucket in the derived bucket), which tells nothing the parent's table does not.
    Returns the marginals and the columns changed."""
    out = dict(marginals)
    changed = []
    for col, spec in derived.items():
        ma, mb = marginals.get(spec["from"]), marginals.get(col)
        if ma is None or mb is None or not split_bucket(bucket_parts(ma, mb, spec), min_cell):
            continue
        ta, tb = ma["table"], mb["table"]
        known = derived_counts(list(ta["levels"]), list(ta["counts"]), list(tb["levels"]), spec)
        keep = [i for i, k in enumerate(known) if k > 0]
        total = int(sum(tb["counts"])) + int(tb["suppressed"])
        table = {
            **tb,
            "levels": [tb["levels"][i] for i in keep],
            "counts": [int(known[i]) for i in keep],
            "suppressed": total - int(sum(known)),
            "suppressed_levels": int(tb.get("suppressed_levels", 0)) + len(known) - len(keep),
        }
        out[col] = {**mb, "table": table}
        changed.append(col)
    return out, changed


# ------------------------------------------------------------------ secondary suppression (secure side)


def _rectangles(
    listed: np.ndarray, truth: np.ndarray, b: int, cl: int
) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """The rectangles through cell (b, cl) with a listed corner, as (listed corners, their
    listed mass, those corners), fewest corners and then least mass first."""
    B, L = listed.shape
    cands = []
    for b2 in range(B):
        for l2 in range(L):
            if b2 == b or l2 == cl:
                continue
            new = [c for c in ((b, l2), (b2, cl), (b2, l2)) if listed[c]]
            if new:
                cands.append((len(new), sum(int(truth[c]) for c in new), new))
    cands.sort(key=lambda c: (c[0], c[1], c[2]))
    return cands


def _best_rectangle(
    lt: LinkedTable,
    listed: np.ndarray,
    cands: list[tuple[int, int, list[tuple[int, int]]]],
    cell: tuple[int, int],
    min_cell: int,
    tries: int,
    cache: dict[Any, Any] | None = None,
) -> list[tuple[int, int]]:
    """The corners to unlist: those of the first of `tries` rectangles that protects `cell`,
    else of the one that widens its interval most. A rectangle already proven protected by a
    feasible table seen before (`_seen_protected`) needs no LP of its own."""
    b, cl = cell
    best, best_w = cands[0][2], -1
    for _, _, new in cands[:tries]:
        trial = listed.copy()
        trial[tuple(np.asarray(new).T)] = False
        if cache is not None and _seen_protected(lt, trial, (b, cl), min_cell, cache):
            return new  # the interval LP would find it protected too
        lo, hi = intervals(lt, trial, only=[(b, cl)], cache=cache)[(b, cl)]
        if lo >= 0 and protected(lo, hi, min_cell, int(lt.row_totals[b])):
            return new
        if hi - lo > best_w:
            best, best_w = new, hi - lo
    return best


def secondary_suppression(
    lt: LinkedTable, truth: np.ndarray, min_cell: int, tries: int = 40
) -> tuple[np.ndarray, int, bool]:
    """Greedy secondary suppression validated by the audit (the hypercube method in two
    dimensions): while some unlisted cell (b, l) is unprotected, unlist the listed corners of
    a rectangle (b, l), (b, l'), (b', l), (b', l'): of the rectangles with fewest new cells and
    then least listed mass, the first (of at most `tries`) that protects (b, l), else the one
    that widens its interval most. Returns the listed mask, the number of cells unlisted, and
    whether no rectangle was left (the whole column then goes unlisted)."""
    listed = lt.listed.copy()
    added = 0
    cache: dict[Any, Any] = {}  # the parts' answers, shared by every pattern tried
    while True:
        bad = _first_unprotected(lt, min_cell, listed, cache)
        if not bad:
            return listed, added, False
        b, cl, _, _ = bad[0]
        cands = _rectangles(listed, truth, b, cl)
        if not cands:
            listed[:] = False
            return listed, added, True
        best = _best_rectangle(lt, listed, cands, (b, cl), min_cell, tries, cache)
        listed[tuple(np.asarray(best).T)] = False
        added += len(best)


def widen_bucket(marginal: dict[str, Any], min_cell: int) -> tuple[dict[str, Any], int]:
    """A source-level nominal table whose suppressed bucket holds 1..min_cell-1 rows (its
    categories then almost known): the smallest released levels move into the bucket until
    it holds at least min_cell rows. Returns the marginal and how many levels moved."""
    if marginal["kind"] != "categorical":
        return marginal, 0
    t = dict(marginal["table"])
    levels, counts = list(t["levels"]), list(t["counts"])
    moved = 0
    while levels and 0 < t["suppressed"] < min_cell:
        i = min(range(len(counts)), key=lambda j: (counts[j], -j))
        t["suppressed"] += counts.pop(i)
        levels.pop(i)
        t["suppressed_levels"] = int(t.get("suppressed_levels", 0)) + 1
        moved += 1
    if not moved:
        return marginal, 0
    if not levels:
        return {
            "kind": "suppressed",
            "missing": marginal["missing"],
            "n": int(t["suppressed"]),
        }, moved
    return {**marginal, "table": {**t, "levels": levels, "counts": counts}}, moved


def protect_release(
    release: dict[str, Any], counts: dict[str, dict[str, list[int]]], min_cell: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Secondary suppression over the linked tables of a release whose stratum blocks list
    classes (`block_table`); `counts[block id][column]` are the blocks' true class counts
    (secure side only). Returns the release with the stratum tables' further unlisted cells
    moved into their `suppressed` counts, and the SDC log entries (counts of cells only)."""
    release, entries = _drop_derived_tables(release)
    blocks = dict(release["blocks"])
    derived = release.get("derived") or {}
    for lt in linked_tables(release):
        if lt.column in derived:  # no stratum table listed; its source table: derived_findings
            continue
        truth = _truth(lt, release, counts)
        tabled = np.asarray(
            [
                bid == RESIDUAL
                or release["blocks"][bid]["marginals"][lt.column]["kind"] == "categorical"
                for bid in lt.blocks
            ]
        )
        primary = int(np.count_nonzero((truth > 0) & (truth < min_cell) & tabled[:, None]))
        listed, added, whole = secondary_suppression(lt, truth, min_cell)
        if not primary and not added and not whole:
            continue
        for b, bid in enumerate(lt.blocks):
            if bid == RESIDUAL or not np.any(lt.listed[b] & ~listed[b]):
                continue
            bm = blocks[bid]["marginals"][lt.column]
            blocks[bid] = {
                **blocks[bid],
                "marginals": {
                    **blocks[bid]["marginals"],
                    lt.column: _unlist(bm, listed[b], release, lt.column),
                },
            }
        where = {"source": release["source"], "block": "linked", "column": lt.column}
        reason = (
            f"{primary} cell(s) of the blocks × categories table below min_cell_size={min_cell} not listed (primary; "
            "blocks released as a percentile grid instead of a table not counted); "
            f"{added} further cell(s) not listed (secondary suppression) so that no unlisted cell can be bounded, "
            "from the published block, residual and source-level totals, more narrowly than the protection rule"
        )
        entries.append(
            {
                "stage": "marginals",
                "action": "secondary_suppression",
                **where,
                "primary": primary,
                "secondary": added,
                "reason": reason,
            }
        )
        if whole:
            entries.append(
                {
                    "stage": "marginals",
                    "action": "suppressed",
                    **where,
                    "reason": "no secondary suppression pattern passed the interval audit: the column's table is not listed in any stratum block",
                }
            )
            left = len(unprotected(lt, min_cell, listed))
            if (
                left
            ):  # only the blocks' rows and missing counts remain: the review reports these cells
                entries.append(
                    {
                        "stage": "marginals",
                        "action": "audit_failed",
                        **where,
                        "cells": left,
                        "reason": f"{left} cell(s) still bounded more narrowly than the protection rule by the blocks' published row and missing counts",
                    }
                )
    release = {**release, "blocks": blocks}
    return blank_unlisted_dims(release, entries)


def blank_unlisted_dims(
    release: dict[str, Any], entries: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Inside each stratum, the rank correlations of a dim whose cell the stratum's table does
    not list are not released: two indicators of one column correlate as
    -sqrt(p_a p_b / ((1 - p_a)(1 - p_b))), so their correlations would give the unlisted
    shares back. Blanked: an ordered column's dim when its table leaves rows unlisted, a
    nominal level's indicator when the level is not listed, every dim of a column with no
    table there; the decisions are appended to `entries` (counts of dims only)."""
    dims = release.get("dims") or []
    strata = set(release["strata"]["columns"])
    blocks = dict(release["blocks"])
    for cell in release["strata"]["cells"]:
        block = blocks[cell["id"]]
        S = block.get("spearman") or []
        if not S:
            continue
        blank = [j for j, d in enumerate(dims) if _unlisted_dim(d, block, strata)]
        newly = {j for j in blank if any(v is not None for i, v in enumerate(S[j]) if i != j)}
        if not newly:
            continue
        S = [
            [None if i in newly or j in newly else v for j, v in enumerate(row)]
            for i, row in enumerate(S)
        ]  # as gated_spearman blanks
        blocks[cell["id"]] = {**block, "spearman": S}
        entries.append(
            {
                "stage": "correlations",
                "action": "suppressed",
                "source": release["source"],
                "block": cell["id"],
                "dims": len(newly),
                "reason": f"correlations of {len(newly)} dim(s) whose categories the stratum's table does not list not released (they would give the unlisted shares back)",
            }
        )
    return _blank_strata_pairs({**release, "blocks": blocks}, entries)


def _unlisted_dim(d: dict[str, Any], block: dict[str, Any], strata: set[str]) -> bool:
    """Whether dim `d` reads categories the stratum's table (`block`) does not list: an
    ordered column's dim when rows are unlisted, a nominal level not listed, any ordered or
    indicator dim of a column with no table there."""
    bm = block["marginals"].get(d["column"])
    if (
        d["column"] in strata
        or d["kind"] not in ("ordered", "indicator")
        or bm is None
        or bm["kind"] in ("ordinal_grid", "continuous")
    ):
        return False
    if bm["kind"] != "categorical":
        return True
    if d["kind"] == "ordered":
        return bool(bm["table"]["suppressed"] > 0)
    return d["level"] not in bm["table"]["levels"]


def _blank_strata_pairs(
    release: dict[str, Any], entries: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The source-level correlations of `strata_pairs` blanked, with their log entry."""
    pairs = strata_pairs(release)
    if pairs:
        S = [list(row) for row in release["blocks"]["all"]["spearman"]]
        for i, j in pairs:
            S[i][j] = S[j][i] = None
        release = {
            **release,
            "blocks": {**release["blocks"], "all": {**release["blocks"]["all"], "spearman": S}},
        }
        entries.append(
            {
                "stage": "correlations",
                "action": "suppressed",
                "source": release["source"],
                "block": "all",
                "pairs": len(pairs),
                "reason": f"{len(pairs)} source-level correlation(s) of a strata column with a categorical column whose stratum tables leave "
                "cells unlisted not released (each would add a linear equation over the unlisted cells; the strata's own tables carry the relation)",
            }
        )
    return release, entries


def strata_pairs(release: dict[str, Any]) -> list[tuple[int, int]]:
    """Released source-level correlations (dim index pairs) between a strata column's dim and
    a dim of a categorical column that leaves rows unlisted in some stratum. With the released
    marginals, a rank correlation of two categorical dims is a linear function of their joint
    counts: a sum of that column's stratum cells would follow."""
    dims = release.get("dims") or []
    strata = set(release["strata"]["columns"])
    S = release["blocks"]["all"].get("spearman") or []
    if not strata or not S:
        return []
    open_cols = set()
    for cell in release["strata"]["cells"]:
        for c, bm in release["blocks"][cell["id"]]["marginals"].items():
            if c not in strata and (
                bm["kind"] not in ("categorical", "continuous")
                or (bm["kind"] == "categorical" and bm["table"]["suppressed"] > 0)
            ):
                open_cols.add(c)
    si = [i for i, d in enumerate(dims) if d["column"] in strata and d["kind"] != "missing"]
    cj = [
        j
        for j, d in enumerate(dims)
        if d["column"] in open_cols and d["kind"] in ("ordered", "indicator")
    ]
    return [(i, j) for i in si for j in cj if S[i][j] is not None]


def _drop_derived_tables(release: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A derived column (released as a function of another, which synthesis computes it from)
    lists no table inside the strata: its stratum tables would add the other column's
    suppressed cells, summed by the released map, to what an attacker knows."""
    entries: list[dict[str, Any]] = []
    derived = release.get("derived") or {}
    blocks = dict(release["blocks"])
    for col in derived:
        n = 0
        for cell in release["strata"]["cells"]:
            bm = blocks[cell["id"]]["marginals"].get(col)
            if bm is None or bm["kind"] != "categorical":
                continue
            t = bm["table"]
            blocks[cell["id"]] = {
                **blocks[cell["id"]],
                "marginals": {
                    **blocks[cell["id"]]["marginals"],
                    col: {
                        "kind": "suppressed",
                        "missing": bm["missing"],
                        "n": int(sum(t["counts"]) + t["suppressed"]),
                    },
                },
            }
            n += 1
        if n:
            entries.append(
                {
                    "stage": "marginals",
                    "action": "suppressed",
                    "source": release["source"],
                    "block": "strata",
                    "column": col,
                    "blocks": n,
                    "reason": f"derived from {derived[col]['from']!r}: its tables inside the strata not released (synthesis computes it from {derived[col]['from']!r})",
                }
            )
    return {**release, "blocks": blocks}, entries


def _truth(
    lt: LinkedTable, release: dict[str, Any], counts: dict[str, dict[str, list[int]]]
) -> np.ndarray:
    """The true blocks × classes counts (the residual block's by difference from the source)."""
    L = len(lt.col_totals)
    rows = [
        np.zeros(L, dtype="int64")
        if bid == RESIDUAL
        else np.asarray(counts[bid][lt.column][:L], dtype="int64")
        for bid in lt.blocks
    ]
    T = np.asarray(rows, dtype="int64").reshape(len(lt.blocks), L)
    if RESIDUAL in lt.blocks:
        T[lt.blocks.index(RESIDUAL)] = lt.col_totals - T.sum(axis=0)
    if np.any(T < 0) or not np.array_equal(T.sum(axis=0), lt.col_totals):
        raise RuntimeError(
            f"{release['source']}/{lt.column}: the strata's class counts do not add up to the source-level table"
        )
    return T


def _unlist(
    bm: dict[str, Any], keep: np.ndarray, release: dict[str, Any], column: str
) -> dict[str, Any]:
    """A stratum table with only the classes `keep` listed (the rest join `suppressed`)."""
    if bm["kind"] != "categorical":
        return bm
    pos = {
        v: i for i, v in enumerate(release["blocks"]["all"]["marginals"][column]["table"]["levels"])
    }
    t = bm["table"]
    pairs = [(v, c) for v, c in zip(t["levels"], t["counts"], strict=True) if keep[pos[v]]]
    gone = sum(t["counts"]) - sum(c for _, c in pairs)
    return {
        **bm,
        "table": {
            **t,
            "levels": [v for v, _ in pairs],
            "counts": [c for _, c in pairs],
            "suppressed": int(t["suppressed"] + gone),
        },
    }


__all__ = [
    "LinkedTable",
    "audit_release_tables",
    "block_table",
    "class_codes",
    "class_counts",
    "bucket_parts",
    "derived_findings",
    "split_bucket",
    "withhold_bucket_split",
    "intervals",
    "linked_tables",
    "n_classes",
    "protect_release",
    "protected",
    "secondary_suppression",
    "unprotected",
    "widen_bucket",
]
