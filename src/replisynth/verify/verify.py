"""Verify the fidelity tiers from the bundle and the synthetic data alone (no original data).
Tier definitions: docs/tiers.md; docs/method.md, "Verification".
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pandas as pd

from replisynth.config.formula_grammar import derive_breaks, parse_derive
from replisynth.config.manifest import checkpoint_from_release
from replisynth.core.errors import BundleError, CheckpointError
from replisynth.core.options import CORR_TOL, GLM_BINARY, GLM_ORDERED
from replisynth.core.parallel import thread_map
from replisynth.disclosure.bundle import Bundle
from replisynth.disclosure.bundle_types import SourceRelease, untyped
from replisynth.fit.estimators import fit_checkpoint
from replisynth.io.schema import ColumnSpec, logical_type, pandera_schema, validation_summary
from replisynth.stats.atoms import mixture_components
from replisynth.stats.cells import flagged_rows
from replisynth.stats.copula_dims import dim_label, norm_key, numeric_values, synthetic_dim_matrix
from replisynth.stats.correlations import spearman_matrix
from replisynth.stats.design import build_design, drop_unreleased_constants, released_terms
from replisynth.stats.marginals import GRID, grid_cdf_sorted, quantile_grid
from replisynth.stats.weights import (
    SHARE_TOLERANCE,
    checkpoints_reading,
    weighted_share_gaps,
)
from replisynth.synthesize.plan import ALL, RESIDUAL, BlockPlan, expected_counts, source_plan
from replisynth.verify.formats import shape_problems
from replisynth.verify.utility import utility_section

KS_ALPHA = 0.05
SE_BOUND = 3.0


# ---------------------------------------------------------------------------------------------
# Kolmogorov-Smirnov against a released (possibly rounded, possibly mixed) distribution


def _grid_atoms(grid: np.ndarray, uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the ascending distinct values `uniq` that equal a grid point, and the
    left limit F(x-) = GRID[first index of that grid value] there: a flat grid stretch is an
    atom, so F jumps there; everywhere else a continuous column's F(x-) is F(x)."""
    g = np.asarray(grid, dtype="float64")
    gv, first = np.unique(g, return_index=True)
    pos = np.searchsorted(uniq, gv, side="left")
    hit = pos < len(uniq)
    hit[hit] = uniq[pos[hit]] == gv[hit]
    return pos[hit], GRID[first[hit]]


def ks_test(
    values: np.ndarray, components: list[tuple[float, np.ndarray]], integer: bool
) -> tuple[float, float]:
    """One-sample KS statistic and p-value of `values` against the mixture sum_w w·F_grid
    (weights normalised). Exact sup over both sides of every jump; p from the Kolmogorov
    distribution of n (conservative where the reference has atoms)."""
    return _ks_sorted(np.sort(np.asarray(values, dtype="float64")), components, integer)


def _ks_sorted(
    x: np.ndarray, components: list[tuple[float, np.ndarray]], integer: bool
) -> tuple[float, float]:
    """`ks_test` of values already sorted ascending (float64)."""
    n = len(x)
    if n == 0:
        return 0.0, 1.0
    ws = np.asarray([w for w, _ in components], dtype="float64")
    ws = ws / ws.sum()
    # empirical CDF right and left of each distinct value; the reference CDF is evaluated
    # at the distinct values only (x is sorted: a new value starts where it changes), by
    # `grid_cdf_sorted`, which gives grid_cdf's values bit for bit
    first = np.concatenate([[0], np.flatnonzero(x[1:] != x[:-1]) + 1])
    uniq = x[first]
    last = np.append(first[1:], n)
    if integer:
        # P(round(Q(U)) <= x) = F(floor(x) + 0.5); its left limit F(ceil(x) - 1 + 0.5)
        at, left_at = np.floor(uniq) + 0.5, np.floor(np.ceil(uniq) - 1.0) + 0.5
        Fu = Flu = None
        for w, (_, g) in zip(ws, components, strict=True):
            c, cl = w * grid_cdf_sorted(g, at), w * grid_cdf_sorted(g, left_at)
            Fu, Flu = (c, cl) if Fu is None else (Fu + c, Flu + cl)
    else:
        # F(x-) differs from F(x) only at the values that are grid points: summed there alone
        atoms = [_grid_atoms(g, uniq) for _, g in components]
        P = np.unique(np.concatenate([p for p, _ in atoms]))
        Fu = FlP = None
        for w, (_, g), (p, left) in zip(ws, components, atoms, strict=True):
            c = grid_cdf_sorted(g, uniq)
            cP = c[P]
            cP[np.searchsorted(P, p)] = left
            Fu, FlP = (w * c, w * cP) if Fu is None else (Fu + w * c, FlP + w * cP)
        Flu = Fu.copy()
        Flu[P] = FlP
    d_plus = np.max(last / n - Fu)
    d_minus = np.max(Flu - first / n)
    D = float(max(d_plus, d_minus, 0.0))
    return D, ks_pvalue(D, n)


def ks_pvalue(D: float, n: int) -> float:
    """P(D_n >= D) from the exact Kolmogorov distribution (`scipy.stats.kstwo`), except in
    the far tail of a large sample (n > 100,000 and n·D² >= 2.2), where scipy's exact path
    (2·smirnov(n, D), O(n): seconds per call at a million rows) is replaced by the limiting
    distribution, `kstwobign.sf(D·sqrt(n))`. There both are below 0.025, so no verdict
    (p <= KS_ALPHA = 0.05) changes; only how small a tiny p-value is reported."""
    from scipy import stats  # here, not at import: scipy.stats alone takes ~1.5 s to import

    if n > 100_000 and n * D * D >= 2.2:
        return float(stats.kstwobign.sf(D * np.sqrt(n)))
    return float(stats.kstwo.sf(D, n))


def synthetic_percentiles(values: np.ndarray) -> np.ndarray:
    """Percentiles 0..100 of `values` (numpy `averaged_inverted_cdf`, the grid's method)."""
    return np.percentile(values, np.arange(101), method="averaged_inverted_cdf")


def percentile_gap(values: np.ndarray, grid: np.ndarray, q: np.ndarray | None = None) -> float:
    """Largest gap between synthetic and released percentiles, in released IQRs.
    `q`: synthetic_percentiles(values) when already known."""
    g = np.asarray(grid, dtype="float64")
    if len(values) == 0:
        return 0.0
    q = synthetic_percentiles(values) if q is None else q
    iqr = g[75] - g[25]
    if iqr <= 0:
        iqr = max(g[-1] - g[0], 1e-12)
    # compare inside the trimmed range (released extremes are top/bottom coded)
    return float(np.max(np.abs(np.clip(q, g[0], g[-1]) - g)) / iqr)


# ---------------------------------------------------------------------------------------------


def _specs(release: dict[str, Any]) -> list[ColumnSpec]:
    return [ColumnSpec.from_dict(c) for c in release["columns"]]


def _categories(release: dict[str, Any], plan: list[BlockPlan]) -> dict[str, list[Any]]:
    cats: dict[str, set] = {}
    for b in plan:
        for col, cp in b.columns.items():
            if cp.kind == "categorical":
                cats.setdefault(col, set()).update(cp.levels or [])
    return {k: sorted(v, key=str) for k, v in cats.items()}


def _matches(s: pd.Series, allowed: list[Any]) -> pd.Series:
    """Membership test that treats 1 and 1.0 and True alike (`dims.norm_key`), computed once
    per distinct value; missing values count as members."""
    keys = {norm_key(a) for a in allowed} | {
        str(float(a)) for a in allowed if isinstance(a, (int, float)) and not isinstance(a, bool)
    }
    codes, uniques = pd.factorize(
        s, use_na_sentinel=True
    )  # norm_key puts numpy scalars on the same footing
    hit = np.append(np.asarray([norm_key(u) in keys for u in uniques], dtype=bool), True)
    return pd.Series(hit[codes], index=s.index)


def _discrete_outcomes(bundle: Bundle, source: str) -> set[str]:
    """Outcomes whose every released checkpoint is a binary or ordered model: Layer 4 keeps
    them inside their categories, so tier 0 checks those."""
    cps = [c for c in bundle.checkpoints if c["source"] == source and c.get("status") == "released"]
    outs = {c["outcome"] for c in cps}
    return {
        o
        for o in outs
        if all(c["model"] in GLM_BINARY + GLM_ORDERED for c in cps if c["outcome"] == o)
    }


def tier0(
    df: pd.DataFrame,
    release: SourceRelease,
    plan: list[BlockPlan],
    outcomes: set[str],
    labels: dict[str, Any] | None,
    checked_outcomes: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Schema floor. `checked_outcomes`: outcomes whose categories are still checked."""
    specs = _specs(release)
    problems: list[str] = []
    names = [s.name for s in specs]
    if list(df.columns) != names:
        problems.append(f"columns differ from the released schema (expected {len(names)} in order)")
        return {"passed": False, "problems": problems}
    for s in specs:
        col = df[s.name]
        lt = logical_type(col)
        ok_types = {s.logical_type}
        if s.name in outcomes:  # Layer 4 moves outcomes: an integer or 0/1 outcome becomes float
            ok_types |= {"float"}
        if s.logical_type == "integer" and col.isna().all():
            ok_types |= {"float"}
        if s.logical_type == "float":
            ok_types |= {"integer"}
        if s.logical_type == "string" and col.isna().all():
            ok_types |= {"float"}
        if lt not in ok_types:
            problems.append(f"{s.name}: logical type {lt}, released {s.logical_type}")
        if (
            s.integer
            and s.role in ("continuous", "categorical")
            and s.name not in outcomes
            and s.logical_type != "date"
        ):
            v = pd.to_numeric(col, errors="coerce").dropna().to_numpy(dtype="float64")
            if len(v) and not np.all(v == np.round(v)):
                problems.append(f"{s.name}: not integer-valued")
        if s.role in ("continuous", "categorical"):
            want = sum(b.columns[s.name].missing for b in plan)
            got = int(col.isna().sum())
            if got != want:
                problems.append(f"{s.name}: {got} missing values, expected {want}")
    # Checkpoint outcomes are moved by Layer 4 (a pinned 0/1 outcome of a linear probability
    # model is no longer 0/1): their categories are not checked.
    cats = {
        c: v
        for c, v in _categories(release, plan).items()
        if c not in outcomes or c in checked_outcomes
    }
    for col, allowed in cats.items():
        bad = int((~_matches(df[col], allowed)).sum())
        if bad:
            problems.append(f"{col}: {bad} values outside the released categories")
    if labels is not None:
        want_vl = release.get("value_labels", {})
        for col, labs in want_vl.items():
            got = {str(k): v for k, v in labels.get("value_labels", {}).get(col, {}).items()}
            got = {
                str(int(float(k))) if _isnum(k) and float(k).is_integer() else k: v
                for k, v in got.items()
            }
            if got != labs:
                problems.append(f"{col}: value labels did not survive")
        for s in specs:
            if (
                s.variable_label
                and labels.get("variable_labels", {}).get(s.name) != s.variable_label[:80]
            ):
                problems.append(f"{s.name}: variable label did not survive")
        problems += shape_problems(df, cast(dict, release), specs, labels)
    schema = pandera_schema(specs, cats, exempt=tuple(outcomes))
    failures = validation_summary(schema, df)
    for f in failures:
        problems.append(f"pandera: {f['column']}: {f['check']} ({f['failures']} rows)")
    out: dict[str, Any] = {"passed": not problems, "problems": problems}
    if release.get("free_text"):  # never released: said in the report and the certificate
        out["free_text"] = list(release["free_text"])
    return out


def empty_cell_problems(
    df: pd.DataFrame, release: SourceRelease, moved: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """Synthetic rows in released empty cells (docs/method.md, "Empty cells"), for every
    flagged pair whose columns Layer 4 does not move: a utility finding beside the tier, since
    the synthesis repair empties the cells where swaps that keep every margin can."""
    out = []
    for f in release.get("empty_cells") or []:
        a, b = f["columns"]
        if a in moved or b in moved or a not in df.columns or b not in df.columns:
            continue
        bad = int(flagged_rows(df, untyped(release), untyped(f)).sum())
        if bad:
            out.append(f"{a} x {b}: {bad} rows in the {len(f['cells'])} released empty cell(s)")
    return out


def _derived_identities(
    t0: dict[str, Any], df: pd.DataFrame, derive: tuple[tuple[str, str], ...]
) -> None:
    """Tier 0 also requires every declared derived column to equal its expression in 100% of
    rows (`t0["derived"]`: rows breaking each identity)."""
    breaks = {}
    for col, text in derive:
        key = f"derive.{col}"
        if col not in df.columns:
            continue  # the schema check already reports a missing column
        breaks[col] = derive_breaks(df, col, parse_derive(text, key, BundleError), key, BundleError)
        if breaks[col]:
            t0["problems"].append(f"{col}: {breaks[col]} rows break the identity {col} = {text}")
            t0["passed"] = False
    if derive:
        t0["derived"] = breaks


def _derived_columns(bundle: Bundle, source: str, outcomes: set[str]) -> set[str]:
    """Columns recomputed after pinning (derived ones, and the input a pinned derived outcome
    is solved into): exempt from tiers 0-3 like outcomes (tier 0 checks their identities
    instead of their types and categories), reported by the utility section."""
    out = set()
    for col, text in bundle.manifest.source(source).derive:
        out.add(col)
        inputs = parse_derive(text, f"derive.{col}", BundleError).columns
        if col in outcomes and len(inputs) == 1:
            out |= set(inputs)
    return out


def _isnum(k: Any) -> bool:
    try:
        float(k)
        return True
    except (TypeError, ValueError):
        return False


def _block_components(plan: list[BlockPlan], col: str) -> list[tuple[float, np.ndarray]]:
    """The released distribution of `col` as weighted grids, one per block; a block whose
    marginal released atoms gives a point mass per atom and its rest's grid."""
    comps: list[tuple[float, np.ndarray]] = []
    for b in plan:
        cp = b.columns[col]
        if cp.kind == "continuous":
            w = float(b.rows - cp.missing)
            if cp.atoms and w > 0:
                comps.extend(mixture_components(cp.atoms, w))
            else:
                comps.append((w, np.asarray(cp.grid)))
    return [c for c in comps if c[0] > 0]


def _continuous_marginal(
    v: np.ndarray, comps: list[tuple[float, np.ndarray]], grid: np.ndarray, integer: bool
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Tier-1 record of one continuous column's non-missing values `v` (KS against the
    released mixture, percentile gap) and its synthetic percentiles (None when empty)."""
    v = np.sort(v[~np.isnan(v)])  # one sort for the KS test and the percentiles
    D, p = _ks_sorted(v, comps, integer)
    q = synthetic_percentiles(v) if len(v) else None
    return {"ks_d": D, "ks_p": p, "max_percentile_gap_iqr": percentile_gap(v, grid, q)}, q


def tier1(
    df: pd.DataFrame,
    release: SourceRelease,
    plan: list[BlockPlan],
    outcomes: set[str],
    *,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """Marginals: KS per continuous column, exact counts per categorical column. The
    continuous columns are tested on `n_threads` threads (default `parallel.threads()`)."""
    specs = {s.name: s for s in _specs(release)}
    strata = set(release["strata"]["columns"])
    all_m = release["blocks"][ALL]["marginals"]
    worst_p, worst_var, worst_gap = 1.0, None, 0.0
    problems: list[str] = []
    per_var: dict[str, Any] = {}
    drift: dict[str, Any] = {}
    pct: dict[str, np.ndarray] = {}
    cont = [
        (col, _block_components(plan, col)) for col, m in all_m.items() if m["kind"] == "continuous"
    ]
    cont = [(col, comps) for col, comps in cont if comps]
    if cont:
        from scipy import stats  # noqa: F401  (once, before the threads need it)

    def one(
        item: tuple[str, list[tuple[float, np.ndarray]]],
    ) -> tuple[dict[str, Any], np.ndarray | None]:
        col, comps = item
        return _continuous_marginal(
            numeric_values(df[col], specs[col]),
            comps,
            np.asarray(all_m[col]["grid"]),
            specs[col].integer,
        )

    done = dict(zip([c for c, _ in cont], thread_map(one, cont, n_threads), strict=True))
    for col, m in all_m.items():
        if m["kind"] == "continuous":
            if col not in done:
                continue
            rec, q = done[col]
            p, gap = rec["ks_p"], rec["max_percentile_gap_iqr"]
            if q is not None:
                pct[col] = q
            if col in outcomes:
                drift[col] = rec
                continue
            per_var[col] = rec
            if worst_var is None or p < worst_p:
                worst_p, worst_var = p, col
            worst_gap = max(worst_gap, gap)
            if p <= KS_ALPHA:
                problems.append(f"{col}: KS p = {p:.3g}")
        elif m["kind"] == "categorical":
            if col in strata:
                continue  # checked exactly through stratum sizes (tier 3)

            want = expected_counts(plan, col)
            got: dict[str, int] = {}
            for v, c in df[col].value_counts(dropna=True, sort=False).items():
                if c:  # a categorical dtype lists its unused categories too
                    k = norm_key(v)
                    got[k] = got.get(k, 0) + int(c)
            want_n = {norm_key(k): v for k, v in want.items() if v}
            if col in outcomes:
                drift[col] = {"exact_counts": got == want_n}
                continue
            ok = got == want_n
            per_var[col] = {"exact_counts": ok}
            if not ok:
                problems.append(f"{col}: category counts differ from the released shares")
    return {
        "passed": not problems,
        "worst_ks_p": worst_p,
        "worst_variable": worst_var,
        "max_percentile_gap_iqr": worst_gap,
        "problems": problems,
        "variables": per_var,
        "outcome_drift": drift,
        "synthetic_percentiles": pct,
    }


def _weight_read(bundle: Bundle, source: str) -> bool:
    """Does a checkpoint of `source` read its survey weight (kept as calibrated before
    pinning, so pinned outcomes may drift from the weighted shares)?"""
    weights = bundle.releases[source].get("weights")
    return bool(weights) and bool(
        checkpoints_reading(list(bundle.checkpoints), source, weights["column"])
    )


def weighted_tier1(
    t1: dict[str, Any], df: pd.DataFrame, release: SourceRelease, moved: set[str]
) -> None:
    """Tier 1 with a survey weight: each released weighted table's largest share gap in the
    synthetic data, within `SHARE_TOLERANCE` (columns in `moved`: drift, not a failure); the
    weighted decile shares of continuous columns, reported beside."""
    weights = release.get("weights")
    if not weights or weights["column"] not in df.columns:
        return
    gaps = weighted_share_gaps(df, untyped(weights))
    tables = {c: g for c, g in gaps.items() if c in weights["tables"]}
    grids = {c: g for c, g in gaps.items() if c not in weights["tables"]}
    total = float(pd.to_numeric(df[weights["column"]], errors="coerce").sum())
    bad = [c for c, g in tables.items() if g > SHARE_TOLERANCE and c not in moved]
    t1["weighted"] = {
        "column": weights["column"],
        "released_total": weights["total"],
        "synthetic_total": total,
        "max_share_gap": {c: round(g, 6) for c, g in tables.items()},
        "max_decile_gap": {c: round(g, 6) for c, g in grids.items()},
        "tolerance": SHARE_TOLERANCE,
        "drift": sorted(c for c in gaps if c in moved),
        "passed": not bad,
    }
    for c in bad:
        t1["problems"].append(
            f"{c}: weighted shares (by {weights['column']}) differ from the released ones "
            f"by up to {tables[c]:.3f}"
        )
    t1["passed"] = t1["passed"] and not bad


def _max_pair(
    S: np.ndarray, T: np.ndarray, dims: list[dict[str, Any]], keep: list[int], pairs: np.ndarray
) -> tuple[float, list[str] | None, int]:
    """Largest |S - T| over the pairs of `keep` selected by the boolean matrix `pairs`."""
    if len(keep) < 2:
        return 0.0, None, 0
    iu = np.triu_indices(len(keep), 1)
    diff = np.abs(S[iu] - T[np.ix_(keep, keep)][iu])
    ok = np.isfinite(diff) & pairs[iu]
    if not ok.any():
        return 0.0, None, 0
    j = int(np.argmax(np.where(ok, diff, -1.0)))
    return (
        float(diff[j]),
        [dim_label(dims[keep[iu[0][j]]]), dim_label(dims[keep[iu[1][j]]])],
        int(ok.sum()),
    )


def synthetic_spearman(
    X: np.ndarray, dims: list[dict[str, Any]], exclude: set[str], rows: np.ndarray | None = None
) -> tuple[list[int], np.ndarray | None]:
    """The released dims whose column is not in `exclude` (their indices) and the synthetic
    Spearman matrix over them (None for fewer than two)."""
    keep = [i for i, d in enumerate(dims) if d["column"] not in exclude]
    return keep, (spearman_matrix(X, rows, keep) if len(keep) >= 2 else None)


def tier2_matrix(
    X: np.ndarray,
    target: list[list[float | None]],
    dims: list[dict[str, Any]],
    exclude: set[str],
    rows: np.ndarray | None = None,
    spearman: tuple[list[int], np.ndarray | None] | None = None,
) -> dict[str, Any]:
    """Released versus synthetic Spearman correlations over the released dims (outcomes
    excluded). Pairs of value dims decide the tier; pairs involving a missingness dim are
    reported (`missingness_max_abs_delta`) but do not, since missing positions are drawn
    from the copula only and never refined. `spearman`: synthetic_spearman(X, dims,
    exclude, rows) when already known."""
    T = np.asarray([[np.nan if v is None else v for v in row] for row in target], dtype="float64")
    keep, S = synthetic_spearman(X, dims, exclude, rows) if spearman is None else spearman
    if S is None:
        return {"passed": True, "max_abs_delta": 0.0, "pair": None, "pairs_checked": 0}
    miss = np.asarray([dims[i]["kind"] == "missing" for i in keep])
    value_pairs = ~miss[:, None] & ~miss[None, :]
    mx, pair, n = _max_pair(S, T, dims, keep, value_pairs)
    mm, mpair, mn = _max_pair(S, T, dims, keep, ~value_pairs)
    return {
        "passed": bool(mx <= CORR_TOL),
        "max_abs_delta": mx,
        "pair": pair,
        "pairs_checked": n,
        "missingness_max_abs_delta": mm,
        "missingness_pair": mpair,
        "missingness_pairs": mn,
    }


def tier3(
    df: pd.DataFrame,
    release: SourceRelease,
    plan: list[BlockPlan],
    outcomes: set[str],
    X: np.ndarray,
) -> dict[str, Any]:
    """Strata: sizes exact; tiers 1 and 2 inside every released stratum (one stratum per
    thread)."""
    strata = release["strata"]["columns"]
    if not strata:
        return {
            "passed": None,
            "note": "no strata configured: tier 3 holds when tier 2 does",
            "strata": [],
        }
    if not release["strata"]["cells"]:  # every cell below min_cell_size: one source-level block
        return {
            "passed": None,
            "note": "no stratum released (every cell below min_cell_size): tier 3 holds when tier 2 does",
            "strata": [],
        }
    problems: list[str] = []
    out = []
    # Each strata column coded once (norm_key computed per distinct value, not per row).
    keycols = []
    for c in strata:
        codes, uniques = pd.factorize(df[c], use_na_sentinel=True)
        keycols.append((codes, np.asarray([norm_key(u) for u in uniques], dtype=object)))

    def one(b: BlockPlan) -> tuple[dict[str, Any], list[str]]:
        if b.id == RESIDUAL:
            mask = np.logical_or.reduce([codes < 0 for codes, _ in keycols])
        else:
            mask = np.logical_and.reduce(
                [
                    np.append(ukeys == norm_key(v), False)[codes]
                    for (codes, ukeys), v in zip(keycols, b.key, strict=True)
                ]
            )
        n = int(mask.sum())
        rec: dict[str, Any] = {"stratum": b.id, "key": b.key, "rows": n, "rows_expected": b.rows}
        probs = []
        if n != b.rows:
            probs.append(f"{b.id}: {n} rows, expected {b.rows}")
        if b.id != RESIDUAL:
            sub = df.loc[mask]
            t1 = tier1(sub, _block_release(release, b), [b], outcomes, n_threads=1)
            t2 = tier2_matrix(
                X,
                release["blocks"][b.stats]["spearman"],
                release["dims"],
                outcomes | set(strata),
                mask,
            )
            rec.update(
                {
                    "marginals": {
                        k: t1[k] for k in ("passed", "worst_ks_p", "worst_variable", "problems")
                    },
                    "correlations": t2,
                }
            )
            if not t1["passed"]:
                probs.extend(f"{b.id}: {p}" for p in t1["problems"])
            if not t2["passed"]:
                probs.append(f"{b.id}: correlation {t2['pair']} off by {t2['max_abs_delta']:.3f}")
        return rec, probs

    # strata are independent: checked on parallel.threads() threads, collected in plan order
    for rec, probs in thread_map(one, plan):
        out.append(rec)
        problems.extend(probs)
    return {"passed": not problems, "problems": problems, "strata": out}


def _block_release(release: dict[str, Any], b: BlockPlan) -> dict[str, Any]:
    """A release view whose 'all' block is the stratum's own statistics (with source-level
    fallbacks where the stratum released nothing), for reusing tier 1 inside a stratum."""
    m = dict(release["blocks"][ALL]["marginals"])
    for col, v in release["blocks"][b.stats]["marginals"].items():
        if v["kind"] != "suppressed":
            m[col] = v
    return {
        **release,
        "blocks": {ALL: {**release["blocks"][b.stats], "marginals": m}},
        "strata": {"columns": [], "cells": [], "residual_rows": 0},
    }


def _fit_extra(term: str) -> bool:
    """Terms a fit adds after the design's columns: nbreg's alpha, ordered models' cut points."""
    return term == "alpha" or re.fullmatch(r"cut\d+", term) is not None


def suppressed_term_name(
    term: dict[str, Any], released: list[dict[str, Any]], design_terms: list[str]
) -> str | None:
    """The name of a term whose coefficient SDC withheld (the bundle gives its position only),
    read from the checkpoint's design on the synthetic data (`design_terms`), which holds
    released levels only; None unless that design lines up with the original's (every
    released design term at its released position)."""
    j = term.get("position")
    if not isinstance(j, int) or not 0 <= j < len(design_terms):
        return None
    for r in released:
        p = r.get("position")
        if r.get("suppressed"):
            continue
        if _fit_extra(str(r.get("term"))) and isinstance(p, int) and p >= len(design_terms):
            continue  # alpha and cut points follow the design's columns
        if not isinstance(p, int) or p >= len(design_terms) or design_terms[p] != r.get("term"):
            return None
    return design_terms[j]


def _released_beta(c: dict[str, Any]) -> dict[str, float]:
    """The released coefficients (term -> value): where a refit on data pinned to them starts."""
    return {
        t["term"]: float(t["beta"])
        for t in c.get("terms", [])
        if not t.get("suppressed") and isinstance(t.get("beta"), (int, float))
    }


def tier4(bundle: Bundle, frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Checkpoints: refit on the synthetic data under each checkpoint's own vcov."""
    out: dict[str, Any] = {}
    for c in bundle.checkpoints:
        tag = c["tag"]
        if c.get("status") != "released":
            # not verified: neither passed nor failed (the report shows it as rejected, with why)
            out[tag] = {
                "passed": None,
                "status": c.get("status"),
                "source": c["source"],
                "reason": c.get("reason"),
                "terms": [],
            }
            continue
        cp = checkpoint_from_release(c)
        try:
            full = build_design(frames[c["source"]], cp, f"checkpoint {tag!r} on synthetic data")
            d = drop_unreleased_constants(full, released_terms(c))
            fit = fit_checkpoint(
                d, cp, f"checkpoint {tag!r} on synthetic data", start=_released_beta(c)
            )
        except CheckpointError as exc:
            out[tag] = {
                "passed": False,
                "status": "failed",
                "source": c["source"],
                "reason": str(exc),
                "terms": [],
            }
            continue
        pos = {t: j for j, t in enumerate(fit.terms)}
        terms = []
        worst, worst_t = 0.0, 0.0
        passed = True
        absent: list[str] = []
        for t in c["terms"]:
            if t.get("suppressed"):
                terms.append(
                    {
                        "term": t.get("term") or suppressed_term_name(t, c["terms"], full.terms),
                        "position": t.get("position"),
                        "suppressed": True,
                        "reason": t.get("reason"),
                    }
                )
                continue
            name = t["term"]
            if name not in pos:
                terms.append(
                    {"term": name, "beta_target": t["beta"], "se_target": t["se"], "missing": True}
                )
                absent.append(name)
                passed = False
                continue
            j = pos[name]
            b, se = float(fit.beta[j]), float(fit.se[j])
            db = abs(b - t["beta"])
            dse = db / se if se > 0 else float("inf")
            dst = db / t["se"] if t["se"] > 0 else float("inf")
            worst, worst_t = max(worst, dse), max(worst_t, dst)
            passed &= dse < SE_BOUND and dst < SE_BOUND
            terms.append(
                {
                    "term": name,
                    "beta_target": t["beta"],
                    "beta_synthetic": b,
                    "se_target": t["se"],
                    "se_synthetic": se,
                    "dbeta_se": dse,
                    "dbeta_se_target": dst,
                    "se_ratio": se / t["se"] if t["se"] > 0 else None,
                }
            )
        out[tag] = {
            "passed": bool(passed),
            "status": "verified",
            "source": c["source"],
            "model": c["model"],
            "n_target": c["n"],
            "n_synthetic": fit.n,
            "max_dbeta_se": worst,
            "max_dbeta_se_target": worst_t,
            "terms": terms,
        }
        if absent:
            out[tag]["reason"] = (
                f"term(s) {', '.join(absent)} not in the synthetic refit (a level or column the "
                "synthetic data do not hold)"
            )
        if c.get("rounding_cost_dbeta_se") is not None:
            out[tag]["rounding_cost_dbeta_se"] = c["rounding_cost_dbeta_se"]
    return out


def tier4_of_source(cps: dict[str, Any], source: str) -> dict[str, Any]:
    """Tier 4 of one source: met only when at least one checkpoint on it was refitted and
    every refitted one passed. A tier is claimed only for what was verified: a source whose
    checkpoints were all rejected by disclosure control (or that has none) stops at tier 3."""
    own = {t: c for t, c in cps.items() if c["source"] == source}
    checked = [c for c in own.values() if c.get("status") != "rejected"]
    rejected = [t for t, c in own.items() if c.get("status") == "rejected"]
    verified = [t for t, c in own.items() if c.get("status") == "verified"]
    out: dict[str, Any] = {
        "passed": bool(verified) and all(c["passed"] for c in checked),
        "tags": list(own),
        "verified": verified,
        "rejected": rejected,
    }
    if not verified:
        out["note"] = (
            "no checkpoint was verified on this source ("
            + (
                f"{len(rejected)} rejected by disclosure control"
                if rejected
                else "the manifest declares none"
            )
            + "): tier 4 is not claimed"
        )
    return out


def dbeta_summary(checkpoints: dict[str, Any]) -> dict[str, Any]:
    """Distribution of dbeta/SE over every verified term: median, p95, max, shares below 1-3."""
    v = np.asarray(
        [
            t["dbeta_se"]
            for c in checkpoints.values()
            for t in c.get("terms", [])
            if "dbeta_se" in t
        ],
        dtype="float64",
    )
    vt = np.asarray(
        [
            t["dbeta_se_target"]
            for c in checkpoints.values()
            for t in c.get("terms", [])
            if "dbeta_se_target" in t
        ],
        dtype="float64",
    )
    r = np.asarray(
        [
            t["se_ratio"]
            for c in checkpoints.values()
            for t in c.get("terms", [])
            if t.get("se_ratio") is not None
        ],
        dtype="float64",
    )
    if not len(v):
        return {"terms": 0}
    return {
        "terms": int(len(v)),
        "median": float(np.median(v)),
        "p95": float(np.percentile(v, 95)),
        "max": float(v.max()),
        "share_below_1": float(np.mean(v < 1)),
        "share_below_2": float(np.mean(v < 2)),
        "share_below_3": float(np.mean(v < 3)),
        "max_target_se": float(vt.max()),
        "se_ratio_median": float(np.median(r)) if len(r) else None,
        "se_ratio_min": float(r.min()) if len(r) else None,
        "se_ratio_max": float(r.max()) if len(r) else None,
    }


def verify(
    bundle: Bundle,
    frames: dict[str, pd.DataFrame],
    labels: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """All tiers for every source and checkpoint; the machine-readable verdict (tiers.json).
    `progress` is told each tier as it starts."""
    say = progress or (lambda _msg: None)
    say(f"verify: tier 4, refitting {len(bundle.checkpoints)} checkpoint(s)")
    cps = tier4(bundle, frames)
    # The refits leave reference cycles holding their design matrices (~180 MB at 10^6 rows);
    # freed now, before the dim matrix and the Spearman ranks are allocated.
    gc.collect()
    sources: dict[str, Any] = {}
    for name, release in bundle.releases.items():
        df = frames[name]
        outcomes = bundle.released_outcomes(name)
        plan = source_plan(release, len(df))
        say(f"verify: {name} tier 0 (schema)")
        moved = outcomes | _derived_columns(bundle, name, outcomes)  # by Layer 4 or its identity
        t0 = tier0(
            df, release, plan, moved, (labels or {}).get(name), _discrete_outcomes(bundle, name)
        )
        say(f"verify: {name} tier 1 (marginals)")
        _derived_identities(t0, df, bundle.manifest.source(name).derive)
        t1 = tier1(df, release, plan, moved)
        weighted_tier1(t1, df, release, moved if _weight_read(bundle, name) else set())
        percentiles = t1.pop("synthetic_percentiles")
        say(f"verify: {name} tier 2 (correlations)")
        X = synthetic_dim_matrix(df, release, order="F")
        keep, S = spearman = synthetic_spearman(X, release["dims"], moved)
        t2 = tier2_matrix(
            X, release["blocks"][ALL]["spearman"], release["dims"], moved, spearman=spearman
        )
        say(f"verify: {name} tier 3 (strata)")
        t3 = tier3(df, release, plan, moved, X)
        if t3["passed"] is None:
            t3["passed"] = t2["passed"]
        t4 = tier4_of_source(cps, name)
        t4_ok = t4["passed"]
        flags = [t0["passed"], t1["passed"], t2["passed"], t3["passed"], t4_ok]
        met = -1
        for ok in flags:
            if not ok:
                break
            met += 1
        sources[name] = {
            "tier_met": met,
            "rows": int(len(df)),
            "original_rows": int(release["rows"]),
            "schema": t0,
            "marginals": t1,
            "correlations": t2,
            "strata": t3,
            "checkpoints": t4,
            # what the report draws, so it need not recompute it (not part of the verdict)
            "synthetic": {
                "percentiles": {c: q.tolist() for c, q in percentiles.items()},
                "spearman": {"dims": keep, "matrix": None if S is None else S.tolist()},
            },
        }
    tier_met = min(s["tier_met"] for s in sources.values()) if sources else -1
    utility = utility_section(
        frames,
        dict(bundle.releases),
        {name: bundle.released_outcomes(name) for name in sources},
        {name: s["marginals"]["outcome_drift"] for name, s in sources.items()},
        bundle.manifest.sdc.quantile_trim,
        derived={s.name: {c for c, _ in s.derive} for s in bundle.manifest.sources},
    )
    utility["findings"] += [
        f"{name}: {problem}"
        for name in sources
        for problem in empty_cell_problems(
            frames[name], bundle.releases[name], bundle.released_outcomes(name)
        )
    ]
    return {
        "name": bundle.manifest.name,
        "seed": bundle.manifest.seed,
        "tier_required": bundle.manifest.verify_tier,
        "tier_met": tier_met,
        "passed": bool(tier_met >= bundle.manifest.verify_tier),
        "bundle_sha256": bundle.sha256,
        "software": bundle.info.get("software"),
        "sources": sources,
        "checkpoints": cps,
        "checkpoint_summary": dbeta_summary(cps),
        # beside the tier, never changing it (docs/method.md, "The utility section")
        "utility": utility,
    }


__all__ = ["verify", "ks_test", "percentile_gap", "quantile_grid"]
