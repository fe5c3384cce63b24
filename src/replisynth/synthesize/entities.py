"""Entity structure of panels and clusters: what is released about it (inside) and the
hierarchical Gaussian copula and time dynamics that rebuild it (outside).
Method: docs/method.md, "Panels and clusters: entity structure".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from replisynth.stats.atoms import mixed_sample
from replisynth.stats.copula import ordered_values
from replisynth.stats.copula_dims import synthetic_dim_matrix
from replisynth.stats.correlations import _Ranker, nearest_correlation
from replisynth.stats.marginals import (
    apportion,
    exact_quantile_sample,
    largest_group_size,
    released_group_sizes,
)
from replisynth.synthesize.refine import best_prefix, block_target, draw_pairs, scores

# Decimals of the released shares and between correlations (profiles without significant-figure rounding).
DECIMALS = 3


def normal_scores(x: np.ndarray) -> np.ndarray:
    """Van der Waerden scores Φ⁻¹((rank − ½)/m) of the non-missing values (average ranks for
    ties), centred; missing rows score 0."""
    out = np.zeros(len(x))
    ok = ~np.isnan(x)
    m = int(ok.sum())
    if m < 2:
        return out
    s = special.ndtri((_Ranker(x[ok]).ranks() - 0.5) / m)  # ranks bit-identical to scipy rankdata
    out[ok] = s - s.mean()
    return out


def between_within(X: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, W): between- and within-entity sums of squares and cross-products (d × d) of the
    normal scores of X's columns (rows × dims, NaN = missing), entities given by `codes` 0..G−1."""
    S = (
        np.column_stack([normal_scores(X[:, j]) for j in range(X.shape[1])])
        if X.shape[1]
        else np.zeros((len(X), 0))
    )
    G = int(codes.max()) + 1 if len(codes) else 0
    sums = np.zeros((G, S.shape[1]))
    np.add.at(sums, codes, S)
    size = np.bincount(codes, minlength=G).astype("float64")
    means = sums / np.maximum(size, 1.0)[:, None]
    Bm = means[codes]
    Wm = S - Bm
    return Bm.T @ Bm, Wm.T @ Wm


def invariant_columns(df: pd.DataFrame, codes: np.ndarray, columns: list[str]) -> dict[str, bool]:
    """Per column: True when its non-missing values are constant within every entity (entity
    codes per row, −1 = no entity) and it has at least one non-missing value."""
    out = {}
    keep = codes >= 0
    df = df[keep]
    g = df.groupby(codes[keep], sort=False)
    for c in columns:
        nun = g[c].nunique(dropna=True)
        out[c] = bool(len(nun) and df[c].notna().any() and int(nun.max()) <= 1)
    return out


def entity_structure(
    data: pd.DataFrame,
    entity_ids: pd.Series,
    X: np.ndarray,
    dims: list[dict[str, Any]],
    entity: str,
    round_significant: int | None = None,
) -> dict[str, Any]:
    """The release of one source's entity structure: column `entity`, number of entities,
    invariance flags of `data`'s columns, per-dim between shares η and the between correlation
    matrix (rounded); X is the dim matrix of the same rows. The caller gates on the number of
    entities."""
    codes, uniq = pd.factorize(entity_ids, use_na_sentinel=True)
    ok = codes >= 0
    inv = invariant_columns(data, codes, list(data.columns))
    B, W = between_within(X[ok], codes[ok])
    T = np.diag(B) + np.diag(W)
    with np.errstate(invalid="ignore", divide="ignore"):
        eta = np.where(T > 0, np.diag(B) / T, 0.0)
        sd = np.sqrt(np.diag(B))
        Rb = B / np.outer(sd, sd)
    Rb = np.where(np.outer(sd, sd) > 0, Rb, 0.0)
    np.fill_diagonal(Rb, 1.0)
    for j, d in enumerate(dims):
        if inv.get(d["column"]) and d["kind"] != "missing":
            eta[j] = 1.0
    return {
        "column": entity,
        "entities": int(len(uniq)),
        "invariant": inv,
        "between_share": [round_released(v, round_significant) for v in eta],
        "between_corr": [
            [round_released(v, round_significant) for v in row] for row in np.clip(Rb, -1.0, 1.0)
        ],
    }


def round_released(v: float, sig: int | None) -> float:
    if sig:
        return float(f"{float(v):.{sig}g}")
    return round(float(v), DECIMALS)


# Share of entities (with at least two periods) in which a column must follow its period
# trend exactly for the trend to be released.
TREND_SHARE = 0.95


def period_trend(x: np.ndarray, t: np.ndarray, codes: np.ndarray) -> tuple[float, float, int]:
    """(slope, share, m) of the exact period trend of `x` inside entities: with within-entity
    deviations x̃ = x − x̄_e and t̃ = t − t̄_e over rows where both are present, slope =
    Σ x̃ t̃ / Σ t̃² (pooled within regression), share = fraction of the m entities with at
    least two such rows in which x̃ = slope · t̃ holds on every row (relative tolerance 1e-9)."""
    ok = (codes >= 0) & np.isfinite(x) & np.isfinite(t)
    if ok.sum() < 2:
        return 0.0, 0.0, 0
    c, x, t = codes[ok], x[ok], t[ok]
    G = int(c.max()) + 1
    size = np.bincount(c, minlength=G).astype("float64")
    xm = np.bincount(c, weights=x, minlength=G) / np.maximum(size, 1.0)
    tm = np.bincount(c, weights=t, minlength=G) / np.maximum(size, 1.0)
    xd, td = x - xm[c], t - tm[c]
    stt = float(td @ td)
    if stt <= 0:
        return 0.0, 0.0, 0
    slope = float(xd @ td) / stt
    tol = 1e-9 * max(1.0, float(np.max(np.abs(x))), abs(slope) * float(np.max(np.abs(t))))
    bad = np.zeros(G, dtype=bool)
    np.logical_or.at(bad, c, np.abs(xd - slope * td) > tol)
    multi = size >= 2
    m = int(multi.sum())
    return slope, (float((~bad & multi).sum()) / m if m else 0.0), m


def within_lag1(X: np.ndarray, codes: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, int]:
    """Per dim, the lag-1 autocorrelation of the within-entity deviations w of the normal
    scores (as `between_within`), rows ordered by period inside each entity:
    r = Σ w_t w_{t−1} / √(Σ w_t² · Σ w_{t−1}²) over pairs of consecutive observed periods of
    one entity (a gap counts as one step); NaN where a dim has no within variation. Also the
    number of entities with at least two dated rows."""
    ok = (codes >= 0) & np.isfinite(t)
    Xo, c, to = X[ok], codes[ok], t[ok]
    S = (
        np.column_stack([normal_scores(Xo[:, j]) for j in range(Xo.shape[1])])
        if Xo.shape[1]
        else np.zeros((len(Xo), 0))
    )
    G = int(c.max()) + 1 if len(c) else 0
    size = np.bincount(c, minlength=G).astype("float64")
    sums = np.zeros((G, S.shape[1]))
    np.add.at(sums, c, S)
    Wm = S - (sums / np.maximum(size, 1.0)[:, None])[c]
    order = np.lexsort((to, c))
    Wm, c = Wm[order], c[order]
    pair = c[1:] == c[:-1]
    a, b = Wm[1:][pair], Wm[:-1][pair]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return r, int((size >= 2).sum())


# ----------------------------------------------------------------------------- outside


def entity_sizes(group: dict[str, Any], n: int, cap: int | None = None) -> np.ndarray:
    """Rows per synthetic entity (G of them, summing to n) from the released size distribution
    (as `synthesize._group_ids`), each at most `cap` (a panel: the number of distinct periods)."""
    G = int(group["groups"])
    sizes = released_group_sizes(group, G)
    counts = apportion(sizes, n).astype("int64")
    top = largest_group_size(group)
    if top is not None:  # rescaling must not create sizes above the largest released one
        cap = top if cap is None else min(cap, top)
    if cap is not None and cap * G >= n:
        over = int(np.maximum(counts - cap, 0).sum())
        counts = np.minimum(counts, cap)
        for e in np.argsort(
            -counts, kind="stable"
        ):  # hand the excess to the largest entities with room
            if over == 0:
                break
            add = min(cap - counts[e], over)
            counts[e] += add
            over -= add
    return counts


def psd_sqrt(M: np.ndarray) -> np.ndarray:
    """L with L L' = M with negative eigenvalues set to 0 (symmetric square root)."""
    if M.size == 0:
        return M
    w, V = np.linalg.eigh((M + M.T) / 2)
    return V * np.sqrt(np.maximum(w, 0.0))


def _whiten(A: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A with weighted mean-square matrix Σ w a a' / Σ w equal to the identity (when full rank)."""
    C = (A * w[:, None]).T @ A / w.sum()
    try:
        Lc = np.linalg.cholesky(C)
    except np.linalg.LinAlgError:
        return A
    return np.linalg.solve(Lc, A.T).T


def hierarchical_normals(
    R: np.ndarray,
    eta: np.ndarray,
    Rb: np.ndarray,
    ent: np.ndarray,
    rng: np.random.Generator,
    ties: dict[int, tuple[int, float]] | None = None,
) -> np.ndarray:
    """Latent normals (n × d) for rows of entities `ent` (0..G−1): between part with covariance
    D Rb D (D = diag √η) constant within entity, within part with covariance R − D Rb D
    (projected to PSD, diagonal 1 − η) summing to zero within each entity; both exact in sample
    when there are enough entities and rows.

    `ties` {dim: (time dim, sign)}: period-trend dims, whose within part is sign × the time
    dim's, scaled to their within variance 1 − η (x − x̄_e = b (t − t̄_e) in every entity).
    They are left out of the within correlation matrix and copied afterwards: estimated
    separately, the trend dim and the period have within correlations with a third dim that
    differ a little (0.75 and 0.73 for married on wage_panel) while their own is 1, which
    makes exper − year a near-degenerate direction that carries most of the third dim's
    within variance, and serial_within, regressing on both, is left almost nothing to
    redraw."""
    n, d = len(ent), R.shape[0]
    G = int(ent.max()) + 1 if n else 0
    size = np.bincount(ent, minlength=G).astype("float64")
    eta = np.clip(eta, 0.0, 1.0)
    D = np.sqrt(eta)
    B = D[:, None] * nearest_correlation(Rb) * D[None, :]
    W = R - B
    var = eta < 1.0 - 1e-9  # dims with a within part
    ties = {
        k: v for k, v in (ties or {}).items() if var[k] and var[v[0]] and v[0] not in (ties or {})
    }
    var[list(ties)] = False  # from here: dims with a within part of their own
    # The within part as a correlation matrix repaired to the nearest one, so the between
    # shares stay exact (an eigenvalue clip would move the diagonal): e.g. experience and
    # year, whose within-entity correlation is 1 in a panel, can come out slightly above 1.
    dw = np.sqrt(1.0 - eta[var])
    Wc = np.clip(W[np.ix_(var, var)] / np.outer(dw, dw), -1.0, 1.0)
    np.fill_diagonal(Wc, 1.0)
    Wv = nearest_correlation(Wc)
    W = np.zeros_like(R)
    W[np.ix_(var, var)] = Wv * np.outer(dw, dw)
    U = rng.standard_normal((G, d))
    E = rng.standard_normal((n, int(var.sum())))
    if G > d + 1:
        U = U - (size @ U) / size.sum()
        U = _whiten(U, size)
    U = U @ psd_sqrt(B).T
    if E.shape[1]:
        sums = np.zeros((G, E.shape[1]))
        np.add.at(sums, ent, E)
        E = E - (sums / np.maximum(size, 1.0)[:, None])[ent]
        if n - G > E.shape[1] + 1:
            E = _whiten(E, np.ones(n))
        E = E @ psd_sqrt(W[np.ix_(var, var)]).T
    Z = U[ent]
    if E.shape[1]:
        Z[:, var] += E
    for k, (t, sign) in ties.items():  # the trend dims' within part: the period's, rescaled
        Z[:, k] += sign * np.sqrt((1.0 - eta[k]) / (1.0 - eta[t])) * E[:, int(np.sum(var[:t]))]
    return Z


def entity_values(score: np.ndarray, weight: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """One value per entity for a time-invariant column: entities in ascending order of their
    latent score take consecutive runs of `weight` values of the sorted row-level values, and
    each entity gets the middle value of its run (exact counts whenever the runs fall inside
    the value blocks, e.g. a balanced panel with counts that are multiples of the periods)."""
    out = np.empty(len(score), dtype=sorted_values.dtype)
    order = np.argsort(score, kind="stable")
    start = np.concatenate([[0], np.cumsum(weight[order])[:-1]])
    mid = np.minimum(start + weight[order] // 2, max(len(sorted_values) - 1, 0))
    if len(sorted_values):
        out[order] = sorted_values[mid]
    return out


def nominal_entity_values(
    U: np.ndarray, weight: np.ndarray, counts: list[int], baseline: int, dim_levels: list[int]
) -> np.ndarray:
    """Level per entity for a time-invariant nominal column (as `copula.nominal_values`, on
    entities of `weight` rows): levels other than the baseline, smallest first, take the free
    entities with the largest utility while the level's row count allows; the baseline the rest."""
    m = len(weight)
    out = np.full(m, baseline, dtype="int64")
    free = np.ones(m, dtype=bool)
    col_of = {lev: j for j, lev in enumerate(dim_levels)}
    for k in sorted((k for k in range(len(counts)) if k != baseline), key=lambda k: (counts[k], k)):
        idx = np.flatnonzero(free & (weight > 0))
        if k in col_of:
            idx = idx[np.argsort(-U[idx, col_of[k]], kind="stable")]
        taken = 0
        for e in idx:
            if taken >= counts[k]:
                break
            if taken + weight[e] <= counts[k] + weight[e] // 2:
                out[e] = k
                free[e] = False
                taken += int(weight[e])
    return out


def assign_periods(
    ent: np.ndarray, ok: np.ndarray, codes_multiset: np.ndarray, z: np.ndarray
) -> np.ndarray:
    """Period codes per row (−1 where `ok` is False) with every entity's periods distinct and
    the multiset of codes kept: entities, largest first, take one of each of the codes with
    most rows left; among entities of one size the sets go by mean code to the entities by
    mean latent `z`; inside an entity, codes follow the rows' rank of `z` (so period keeps its
    within-entity association with the other columns)."""
    G = int(ent.max()) + 1 if len(ent) else 0
    size = np.bincount(ent[ok], minlength=G)
    sets = _period_sets(size, codes_multiset)
    out = np.full(len(ent), -1, dtype="int64")
    rows = np.flatnonzero(ok)
    # the rows grouped by entity, each entity's by ascending z (ties in row order)
    grouped = rows[np.lexsort((z[rows], ent[rows]))]
    start = np.concatenate([[0], np.cumsum(size)])
    zmean = np.zeros(G)
    np.add.at(zmean, ent[ok], z[ok])
    zmean /= np.maximum(size, 1)
    flat = np.empty(len(rows), dtype="int64")
    for s, lst in sets.items():
        ents = np.flatnonzero(size == s)
        ents = ents[np.lexsort((ents, zmean[ents]))]
        M = np.stack(lst)  # by mean code, then lexicographically (integer codes: exact means)
        M = M[np.lexsort((*M.T[::-1], M.mean(axis=1)))]
        flat[start[ents][:, None] + np.arange(s)] = M
    out[grouped] = flat
    return out


def _period_sets(size: np.ndarray, codes_multiset: np.ndarray) -> dict[int, list[np.ndarray]]:
    """Per entity size, the sorted code sets `assign_periods` hands out: entities, largest
    first, take one of each of the codes with most rows left. A run of entities whose size is
    the number of codes left takes every code each, as many at once as no code runs out."""
    G = len(size)
    vals, left = np.unique(codes_multiset, return_counts=True)
    left = left.astype("int64")
    sets: dict[int, list[np.ndarray]] = {}
    order = np.lexsort((np.arange(G), -size))
    i = 0
    while i < G:
        e = int(order[i])
        s = int(size[e])
        if s == 0:
            i += 1
            continue
        if s == len(vals) and s > 0:  # every code, the same set: a run at once
            same = int(np.searchsorted(-size[order[i:]], -s, side="right"))
            m = min(same, int(left.min()))
            left -= m
            sets.setdefault(s, []).extend([vals.copy() for _ in range(m)])
            keep = left > 0
            vals, left = vals[keep], left[keep]
            i += m
            continue
        pick = np.lexsort((vals, -left))[: min(s, len(vals))]
        left[pick] -= 1
        got = vals[pick]
        if s > len(vals):  # more rows than distinct periods: the rest repeat (cannot be distinct)
            extra = np.repeat(vals[np.argmax(left)], s - len(vals))
            left[np.argmax(left)] -= len(extra)
            got = np.concatenate([got, extra])
        keep = left > 0
        vals, left = vals[keep], left[keep]
        sets.setdefault(s, []).append(np.sort(got))
        i += 1
    return sets


def _best_exchange(
    per: np.ndarray, weight: np.ndarray, score: np.ndarray, k: int, lv: int, cap: int
) -> tuple[int, int, int | None] | None:
    """The largest step (≤ `cap` rows) from level k towards level lv: (rows moved, the
    level-k entity, the level-lv entity it swaps with or None for a move); None when none fits.
    Candidates nearest the k/lv boundary of `score` go first."""
    ek = np.flatnonzero((per == k) & (weight > 0))
    el = np.flatnonzero((per == lv) & (weight > 0))
    up = lv > k  # entities of k nearest level l: the highest scores when l is above
    ek = ek[np.argsort(-score[ek] if up else score[ek], kind="stable")]
    el = el[np.argsort(score[el] if up else -score[el], kind="stable")]
    best: tuple[int, int, int | None] | None = None
    wk = weight[ek].astype("int64")
    ok = wk <= cap
    if ok.any():  # a move k -> l: the largest that fits, nearest the boundary first
        i = int(np.argmax(np.where(ok, wk, -1)))
        best = (int(wk[i]), int(ek[i]), None)
    if len(el):  # a swap k <-> l: a level-l entity smaller by the largest δ that fits
        sizes, first_f = np.unique(weight[el].astype("int64"), return_index=True)
        order = np.argsort(first_f, kind="stable")
        sizes, firsts = sizes[order], el[first_f[order]]
        D = wk[:, None] - sizes[None, :]
        D = np.where((D > 0) & (D <= cap), D, -1)
        if D.size and D.max() > (best[0] if best else 0):
            row, col = np.unravel_index(int(np.argmax(D)), D.shape)
            best = (int(D[row, col]), int(ek[row]), int(firsts[col]))
    return best


def _exchange_once(
    per: np.ndarray, weight: np.ndarray, score: np.ndarray, diff: np.ndarray
) -> bool:
    """Apply (in place on `per`) the first exchange found from a level with a surplus
    (largest first) to one with a deficit (largest first); False when none fits."""
    for k in np.argsort(-diff, kind="stable"):
        if diff[k] <= 0:
            break
        for lv in np.argsort(diff, kind="stable"):
            if diff[lv] >= 0:
                break
            best = _best_exchange(per, weight, score, k, lv, int(min(diff[k], -diff[lv])))
            if best is None:
                continue
            _, e, f = best
            per[e] = lv
            if f is not None:
                per[f] = k
            return True
    return False


def repair_counts(
    per: np.ndarray,
    weight: np.ndarray,
    target: np.ndarray,
    score: np.ndarray,
    max_moves: int = 100_000,
) -> np.ndarray:
    """Entity levels `per` adjusted so that the row counts Σ weight per level equal `target`
    where entity sizes allow: while a level k has a surplus and a level l a deficit, move an
    entity of size ≤ both from k to l, or swap a level-k entity with a level-l entity smaller
    by δ ≤ both (largest step first); candidates nearest the k/l boundary of `score` go first,
    so the ordering by latent is disturbed least. Unbalanced panels need this: runs of entity
    sizes rarely end exactly on the released counts."""
    per = per.copy()
    n_levels = len(target)
    for _ in range(max_moves):
        diff = (
            np.bincount(per, weights=weight, minlength=n_levels)[:n_levels].astype("int64") - target
        )
        if not diff.any() or not _exchange_once(per, weight, score, diff):
            break
    return per


def fill_invariant(
    values: np.ndarray,
    kind: str,
    ent: np.ndarray,
    ok: np.ndarray,
    Zc: np.ndarray,
    sorted_values: np.ndarray | None = None,
    counts: list[int] | None = None,
    baseline: int = 0,
    dim_levels: list[int] | None = None,
) -> np.ndarray:
    """Codes/values of a time-invariant column over the rows `ok` (non-missing), allocated per
    entity (`entity_values` / `nominal_entity_values`) from the entity's latent `Zc` (rows ×
    dims of the column, constant within entity); returns a full-length array (values at `ok`)."""
    G = int(ent.max()) + 1 if len(ent) else 0
    weight = np.bincount(ent[ok], minlength=G)
    first = np.full(G, -1)
    first[ent[::-1]] = np.arange(len(ent))[::-1]
    Ue = Zc[np.maximum(first, 0)]
    if kind == "nominal":
        per = nominal_entity_values(Ue, weight, counts or [], baseline, dim_levels or [])
        per = repair_counts(per, weight, np.asarray(counts, dtype="int64"), Ue.sum(axis=1))
    else:
        per = entity_values(
            Ue[:, 0], weight, sorted_values if sorted_values is not None else np.zeros(0)
        )
        if kind == "ordered_codes":
            assert sorted_values is not None  # ordered codes always carry their sorted values
            per = repair_counts(per, weight, np.bincount(sorted_values.astype("int64")), Ue[:, 0])
    out = values.copy()
    out[ok] = per[ent[ok]]
    return out


def exact_values(
    grid: list[float], nn: int, integer: bool, atoms: dict[str, Any] | None = None
) -> np.ndarray:
    """Sorted row-level values of a continuous column (the exact quantile sample; with
    released `atoms`, their exact shares and the rest's grid)."""
    if atoms:
        return mixed_sample(atoms, nn, integer)
    return np.sort(exact_quantile_sample(np.asarray(grid), nn, integer))


def time_cap(bp: Any, time: str | None) -> int | None:
    """Distinct periods available to an entity: released time levels with rows, or distinct
    values of the time column's exact quantile sample."""
    if time is None or time not in bp.columns:
        return None
    plan = bp.columns[time]
    if plan.kind == "categorical":
        return int(sum(1 for c in plan.counts or [] if c > 0))
    if plan.kind == "continuous":
        return int(
            len(np.unique(exact_values(plan.grid, bp.rows - plan.missing, True, plan.atoms)))
        )
    return None


def skeleton(bp: Any, release: dict[str, Any]) -> np.ndarray:
    """Entity index (0..G−1) of each row of the (single) block: rows grouped by entity, sizes
    from the released size distribution, capped at the number of periods for a panel."""
    es = release["entity_structure"]
    panel = release.get("panel")
    sizes = entity_sizes(
        release["groups"][es["column"]], bp.rows, time_cap(bp, panel["time"] if panel else None)
    )
    return np.repeat(np.arange(len(sizes)), sizes)


MAX_CONVERTED = 6  # levels up to which a dim's between share is converted to the latent scale
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(48)
_GH_W = _GH_W / _GH_W.sum()


def level_scores(
    probs: tuple[float, ...] | list[float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Of a discrete column with level shares `probs`: the normalised shares, their cumulative
    shares (0 first), each level's centred normal score Φ⁻¹(mid cumulative share), and the
    scores' variance."""
    p = np.asarray(probs, dtype="float64")
    p = p / p.sum()
    cum = np.concatenate([[0.0], np.cumsum(p)])
    sc = special.ndtri(np.clip((cum[:-1] + cum[1:]) / 2, 1e-12, 1 - 1e-12))
    sc = sc - p @ sc
    return p, cum, sc, float(p @ sc**2)


def improving_swaps(E0: np.ndarray, dC: np.ndarray) -> tuple[float, np.ndarray]:
    """(squared error now, the proposals that lower it, best first) for errors E0 and each
    proposal's change dC (proposals × E0's shape)."""
    base = float(np.sum(E0**2))
    gain = np.sum((E0[None] + dC) ** 2, axis=tuple(range(1, dC.ndim))) - base
    cand = np.flatnonzero(gain < -1e-15)
    return base, cand[np.argsort(gain[cand], kind="stable")]


def improving_candidates(E0: np.ndarray, dC: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`improving_swaps` unsorted: each proposal's change of the squared error and the
    proposals that lower it (ascending), for `best_first`."""
    gain = np.sum((E0[None] + dC) ** 2, axis=tuple(range(1, dC.ndim))) - float(np.sum(E0**2))
    return gain, np.flatnonzero(gain < -1e-15)


def best_first(gain: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray:
    """At least the first k of `cand` (ascending) in the order of a stable sort by gain, all
    of them when k >= len(cand): a partition picks every candidate up to the k-th gain (ties
    included) and only those are sorted, so the prefix equals the full stable sort's."""
    g = gain[cand]
    if k >= len(cand):
        return cand[np.argsort(g, kind="stable")]
    top = cand[g <= np.partition(g, k - 1)[k - 1]]
    return top[np.argsort(gain[top], kind="stable")]


def observed_share(rho: float, probs: tuple[float, ...], t_eff: float) -> float:
    """Expected between share of the normal scores of a discrete column (level shares `probs`,
    scored Φ⁻¹ of each level's mid cumulative share) cut from a latent normal with between
    share rho, in entities of t_eff rows: [Var_u m(u) + E_u v(u)/t_eff] / Var s, with m, v the
    mean and variance of the score given the entity effect u (Gauss–Hermite over u). The
    within part is demeaned inside each entity, so only v's part not linear in it, v − γ²
    with γ = E[s ε | u], adds noise to entity means."""
    p, cum, sc, var = level_scores(probs)
    if var <= 0:
        return 0.0
    if rho >= 1 - 1e-9:
        return 1.0
    cuts = special.ndtri(np.clip(cum, 0.0, 1.0))  # −inf .. +inf
    a = (cuts[None, :] - np.sqrt(rho) * _GH_X[:, None]) / np.sqrt(1 - rho)
    P = np.diff(special.ndtr(a), axis=1)  # nodes × levels
    m = P @ sc
    v = P @ sc**2 - m**2
    phi = np.exp(-0.5 * a**2) / np.sqrt(2 * np.pi)  # 0 at ±inf
    g = (phi[:, :-1] - phi[:, 1:]) @ sc  # E[s ε | u]
    return float((_GH_W @ m**2 + (_GH_W @ np.maximum(v - g**2, 0.0)) / max(t_eff, 1.0)) / var)


def complete_untargeted(R: np.ndarray, free: np.ndarray, sweeps: int = 10) -> np.ndarray:
    """R with its `free` (untargeted) off-diagonal entries replaced by the maximum-determinant
    completion: each set so that its partial correlation given all other dims is 0,
    R_ij = R_iK R_KK⁻¹ R_Kj (K = the other dims; coordinate sweeps, Dempster 1972). Untargeted
    pairs are ones like a column's values with its own missingness (undefined) and would
    otherwise be 0; with two missingness dims nearly equal (a firm skips both modules) that 0
    next to corr(a, missing(b)) ≈ 0 makes missing(b) − missing(a), the rows where only b is
    missing, strongly correlated with a (0.12 instead of 0.02 on the test panel)."""
    R = R.copy()
    pairs = [(i, j) for i, j in zip(*np.nonzero(np.triu(free, 1)), strict=True)]
    d = len(R)
    if not pairs or d < 3:
        return R
    for _ in range(sweeps):
        moved = 0.0
        for i, j in pairs:
            K = np.setdiff1d(np.arange(d), [i, j])
            try:
                v = float(R[i, K] @ np.linalg.solve(R[np.ix_(K, K)], R[K, j]))
            except np.linalg.LinAlgError:
                continue
            v = float(np.clip(v, -0.999, 0.999))
            moved = max(moved, abs(v - R[i, j]))
            R[i, j] = R[j, i] = v
        if moved < 1e-6:
            break
    return nearest_correlation(R)


def between_attenuation(rho: float, probs: tuple[float, ...] | None, t_eff: float) -> float:
    """a = c / √B: the factor by which a discrete column's observed between correlation with
    another dim falls short of the latent one, with c = E[m(u) u] the linear (first Hermite)
    part of the entity mean score m given the entity effect u (latent between share rho) and
    B = Var s · observed_share its observed between variance, both Gauss–Hermite over u
    (as `observed_share`); observed corr ≈ a_j a_k × latent corr. 1 for continuous dims and
    dims of more than MAX_CONVERTED levels."""
    if probs is None or len(probs) < 2 or len(probs) > MAX_CONVERTED or rho <= 0:
        return 1.0
    p, cum, sc, var = level_scores(probs)
    rho = min(rho, 1 - 1e-9)
    cuts = special.ndtri(np.clip(cum, 0.0, 1.0))
    a = (cuts[None, :] - np.sqrt(rho) * _GH_X[:, None]) / np.sqrt(1 - rho)
    m = np.diff(special.ndtr(a), axis=1) @ sc
    c = float(_GH_W @ (m * _GH_X))
    B = var * observed_share(rho, probs, t_eff)
    return float(np.clip(abs(c) / np.sqrt(B), 0.05, 1.0)) if B > 0 else 1.0


def latent_share(eta: float, probs: tuple[float, ...] | None, t_eff: float) -> float:
    """The latent between share whose discretisation has observed share `eta` (bisection on
    `observed_share`); continuous dims (probs None) are their own normal scores, and so, near
    enough, are dims of more than MAX_CONVERTED levels (converting those overshoots: a
    many-level experience column would lose its within-entity correlation with the period)."""
    if probs is None or len(probs) < 2 or len(probs) > MAX_CONVERTED or eta >= 1 - 1e-9:
        return float(eta)
    lo, hi = 0.0, 1.0
    if observed_share(lo, probs, t_eff) >= eta:
        return 0.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if observed_share(mid, probs, t_eff) < eta:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def entity_normals(
    R: np.ndarray,
    act: list[int],
    es: dict[str, Any],
    ent: np.ndarray,
    rng: np.random.Generator,
    margins: list[Any] | None = None,
    time_j: int | None = None,
    rng_ar: np.random.Generator | None = None,
    columns: list[str] | None = None,
    free: np.ndarray | None = None,
) -> np.ndarray:
    """`hierarchical_normals` on the active dims `act` with the released between correlations
    and the released between shares, turned into latent shares for discrete dims
    (`latent_share`; `margins`: the dims' `correlations.Margin`). With released `within_lag1`
    (and `rng_ar`), the within parts of those dims are made AR(1) in period order
    (`serial_within`; `time_j`: the active index of the time dim whose latent orders periods).
    With released `period_trend` and `columns` (the active dims' columns), the within parts of
    the trend columns' dims are the time dim's (`hierarchical_normals`' ties). `free`: pairs
    without a released row-level target (a column's values with its own missingness), whose
    released between correlation is an artifact of scoring missing rows 0: completed, as in
    R, by `complete_untargeted`."""
    eta = np.asarray(es["between_share"], dtype="float64")[act]
    if margins is not None and len(ent):
        t_eff = len(ent) / (int(ent.max()) + 1)
        eta = np.asarray(
            [latent_share(float(e), m.probs, t_eff) for e, m in zip(eta, margins, strict=True)]
        )
    Rb = np.asarray(es["between_corr"], dtype="float64")[np.ix_(act, act)]
    if margins is not None and len(ent):
        # The released between correlations are of observed scores; discrete dims' latent
        # entity effects correlate more (missing(tothrs) with missing(hrsemp): 0.82 released,
        # 0.53 when used as latent).
        att = np.asarray(
            [
                between_attenuation(float(e), m.probs, t_eff)
                for e, m in zip(eta, margins, strict=True)
            ]
        )
        Rb = np.clip(Rb / np.outer(att, att), -0.999, 0.999)
        np.fill_diagonal(Rb, 1.0)
    if (
        free is not None and free.any()
    ):  # pairs without a row-level target: no between target either
        Rb = complete_untargeted(nearest_correlation(Rb), free)
    trends = es.get("period_trend") or {}
    ties = {
        j: (time_j, 1.0 if float(trends[c]["slope"]) >= 0 else -1.0)
        for j, c in enumerate(columns or [])
        if c in trends and time_j is not None and j != time_j and float(trends[c]["slope"]) != 0.0
    }
    Z = hierarchical_normals(R, eta, Rb, ent, rng, ties)
    lag = es.get("within_lag1")
    if lag and rng_ar is not None and len(ent):
        target = np.asarray(
            [np.nan if lag[i] is None else float(lag[i]) for i in act], dtype="float64"
        )
        if np.isfinite(target).any():
            Z = serial_within(
                Z,
                ent,
                period_order(ent, Z[:, time_j] if time_j is not None else None),
                target,
                margins,
                rng_ar,
            )
    return Z


def entity_columns(
    cols: dict[str, np.ndarray],
    bp: Any,
    release: dict[str, Any],
    specs: dict[str, Any],
    act: list[int],
    Z: np.ndarray,
    ent: np.ndarray,
    missing: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Re-fill the time-invariant columns per entity (`fill_invariant`) and the panel's time
    column by `assign_periods`; other columns keep their copula values."""
    dims = release["dims"]
    es = release["entity_structure"]
    panel = release.get("panel")
    time = panel["time"] if panel else None
    out = dict(cols)
    for col, plan in bp.columns.items():
        is_time = col == time
        if plan.kind == "empty" or not (is_time or es["invariant"].get(col)):
            continue
        jd = [
            (j, i)
            for j, i in enumerate(act)
            if dims[i]["column"] == col and dims[i]["kind"] != "missing"
        ]
        ok = ~missing[col]
        nn = int(ok.sum())
        if plan.kind == "continuous":
            vals = exact_values(plan.grid, nn, bool(specs[col].integer), plan.atoms)
            if is_time:
                uniq, inv = np.unique(vals, return_inverse=True)
                z = Z[:, jd[0][0]] if jd else np.zeros(len(ent))
                codes = assign_periods(ent, ok, inv, z)
                v = np.full(len(ent), np.nan)
                v[ok] = uniq[codes[ok]]
            elif jd:
                v = fill_invariant(
                    np.full(len(ent), np.nan),
                    "ordered",
                    ent,
                    ok,
                    Z[:, [jd[0][0]]],
                    sorted_values=vals,
                )
            else:
                continue
            out[col] = v
            continue
        levels = plan.levels or []
        counts = list(plan.counts or [])
        if len(levels) < 2:
            continue
        lev_arr = np.empty(len(levels), dtype=object)
        lev_arr[:] = levels
        if is_time:
            z = (
                Z[:, jd[0][0]]
                if (jd and dims[jd[0][1]]["kind"] == "ordered")
                else np.zeros(len(ent))
            )
            codes = assign_periods(ent, ok, np.repeat(np.arange(len(levels)), counts), z)
        elif not jd:
            continue
        elif dims[jd[0][1]]["kind"] == "ordered":
            codes = fill_invariant(
                np.full(len(ent), -1),
                "ordered_codes",
                ent,
                ok,
                Z[:, [jd[0][0]]],
                sorted_values=np.repeat(np.arange(len(levels)), counts),
            )
        else:
            dim_levels = [levels.index(dims[i]["level"]) for _, i in jd]
            baseline = max(
                (k for k in range(len(levels)) if k not in dim_levels),
                key=lambda k: (counts[k], -k),
                default=int(np.argmax(counts)),
            )
            codes = fill_invariant(
                np.full(len(ent), -1),
                "nominal",
                ent,
                ok,
                Z[:, [j for j, _ in jd]],
                counts=counts,
                baseline=baseline,
                dim_levels=dim_levels,
            )
        vals = np.full(len(ent), np.nan, dtype=object)
        vals[ok] = lev_arr[codes[ok]]
        out[col] = vals
    return out


def entity_fixed(release: dict[str, Any]) -> set[str]:
    """Columns that swap refinements must not move in a hierarchical synthesis: the
    time-invariant ones (swaps inside an entity keep every other column's entity multiset,
    hence its between share, and a period column's distinctness)."""
    es = release.get("entity_structure") or {}
    return {c for c, v in es.get("invariant", {}).items() if v}


def _cross(rows: list[int], cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """`np.ix_` of dim positions `rows` (a unit's dims) and `cols`."""
    return np.ix_(np.asarray(rows, dtype=np.intp), cols)


def _invariant_units(cols: dict[str, np.ndarray], release: dict[str, Any]) -> dict[str, list[int]]:
    """Dims of each time-invariant root column (with its derived columns) that
    `refine_invariant` moves: complete columns only, missingness dims left out."""
    fixed = entity_fixed(release)
    root = {b: d["from"] for b, d in release.get("derived", {}).items()}
    units: dict[str, list[int]] = {}
    for j, d in enumerate(release["dims"]):
        column = d["column"]
        base = root.get(column, column)
        if (
            d["kind"] == "missing"
            or base not in fixed
            or column not in cols
            or pd.isna(pd.Series(cols[base])).any()
        ):
            continue
        units.setdefault(base, []).append(j)
    return units


def _moved_columns(
    cols: dict[str, np.ndarray], release: dict[str, Any], rows: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """`cols` with each unit's root column and the columns derived from it taken at the unit's
    new row order `rows[root]`."""
    root = {b: d["from"] for b, d in release.get("derived", {}).items()}
    out_cols = dict(cols)
    for base, taken in rows.items():
        for column in [base, *[b for b, a in root.items() if a == base]]:
            out_cols[column] = cols[column][taken]
    return out_cols


class _InvariantSwaps:
    """State of `refine_invariant`: the rows' scores U, their sums per entity S, the score
    cross-products C, and each unit's entity permutation."""

    def __init__(
        self,
        cols: dict[str, np.ndarray],
        release: dict[str, Any],
        ent: np.ndarray,
        units: dict[str, list[int]],
    ) -> None:
        self.ent, self.units = ent, units
        self.n_dims = len(release["dims"])
        n_entities = int(ent.max()) + 1
        self.first = np.full(n_entities, -1)
        self.first[ent[::-1]] = np.arange(len(ent))[::-1]
        X = synthetic_dim_matrix(pd.DataFrame(cols), release)
        self.U = np.column_stack([scores(X[:, j]) for j in range(X.shape[1])])
        self.S = np.zeros((n_entities, self.U.shape[1]))
        np.add.at(self.S, ent, self.U)
        self.T = block_target(release, "all")
        self.size = np.bincount(ent, minlength=n_entities)
        self.classes = [np.flatnonzero(self.size == v) for v in np.unique(self.size)]
        self.perm_e = {unit: np.arange(n_entities) for unit in units}
        self.C = self.U.T @ self.U

    def pairs(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Disjoint pairs (e[i], f[i]) of entities of equal size, drawn per size class."""
        e_list, f_list = [], []
        for members in self.classes:
            order = members[rng.permutation(len(members))]
            half = len(order) // 2
            e_list.append(order[:half])
            f_list.append(order[half : 2 * half])
        return np.concatenate(e_list), np.concatenate(f_list)

    def step(self, unit: str, J: list[int], rng: np.random.Generator) -> float:
        """One batch of entity swaps of the unit's values; the squared error gained (0 when
        nothing was accepted)."""
        U, S, T = self.U, self.S, self.T
        out = np.setdiff1d(np.arange(self.n_dims), J)
        M = np.isfinite(T[_cross(J, out)])
        if not M.any():
            return 0.0
        Tj = np.where(M, T[_cross(J, out)], 0.0)
        E0 = np.where(M, self.C[_cross(J, out)] - Tj, 0.0)
        A = U[self.first][:, J]  # entity scores of the unit's dims (current values)
        Sb = S[:, out]
        e, f = self.pairs(rng)
        if not len(e):
            return 0.0
        dC = (
            (A[f] - A[e])[:, :, None] * (Sb[e] - Sb[f])[:, None, :] * M[None]
        )  # pairs × |J| × |out|
        base, cand = improving_swaps(E0, dC)
        if not len(cand):
            return 0.0
        best_m, best_f = best_prefix(
            lambda m: float(np.sum((E0 + dC[cand[:m]].sum(0)) ** 2)) - base, len(cand)
        )
        if best_m == 0:
            return 0.0
        take = cand[:best_m]
        ee, ff = e[take], f[take]
        perm = self.perm_e[unit]
        perm[ee], perm[ff] = perm[ff].copy(), perm[ee].copy()
        # Apply to the row scores: rows of e take f's (constant) scores and vice versa.
        newA = A.copy()
        newA[ee], newA[ff] = A[ff], A[ee]
        Uj = newA[self.ent]
        for k, j in enumerate(J):
            U[:, j] = Uj[:, k]
        S[:, J] = newA * self.size[:, None]
        self.C = U.T @ U
        return best_f

    def error(self) -> float:
        """Squared error of every targeted correlation now."""
        T = self.T
        return float(np.sum(np.where(np.isfinite(T), self.C - np.nan_to_num(T), 0.0) ** 2))


def refine_invariant(
    cols: dict[str, np.ndarray],
    release: dict[str, Any],
    ent: np.ndarray,
    rng: np.random.Generator,
    max_sweeps: int = 40,
    min_gain: float = 0.01,
) -> dict[str, np.ndarray]:
    """Swap the values of time-invariant columns between whole entities of equal size so the
    row-level rank correlations of these columns with every other dim approach the released
    Spearman matrix (the copula alone misses, e.g., two mutually exclusive ethnicity dummies,
    and within-entity swaps cannot move an invariant column's correlations at all). Values stay
    constant within entity and row counts stay exact. With U the rows' mid-rank scores
    (`refine.scores`), A an entity's score of an invariant dim a and S_b(e) the sum of dim b's
    scores over entity e's rows, swapping entities e, f changes corr(a, b) by
    (A_f − A_e)(S_b(e) − S_b(f)); batches of disjoint pairs are accepted while the squared error
    falls. Columns with missing values are left as drawn (non-missing counts differ)."""
    units = _invariant_units(cols, release)
    if len(ent) == 0 or not units:
        return cols
    state = _InvariantSwaps(cols, release, ent, units)
    for _ in range(max_sweeps):
        state.C = state.U.T @ state.U
        gained = 0.0
        for unit, J in units.items():
            gained -= state.step(unit, J, rng)
        if gained <= min_gain * max(state.error(), 1e-12):
            break
    rows = {unit: state.first[perm[ent]] for unit, perm in state.perm_e.items()}
    return _moved_columns(cols, release, rows)


def _pairwise_error(
    Ua: np.ndarray,
    Pa: np.ndarray,
    Ub: np.ndarray,
    Pb: np.ndarray,
    T: np.ndarray,
    M: np.ndarray,
    Ub2: np.ndarray | None = None,
) -> float:
    """Σ over the pairs in mask M of (r_ab − T_ab)², r_ab the Pearson correlation of the score
    columns a (of Ua) and b (of Ub) over the rows where both are present (Pa, Pb; boolean or
    already float64). `Ub2`: Ub * Ub when the caller holds it."""
    return _error_of_sums(_pair_sums(Ua, Pa, Ub, Pb, Ub2), T, M)


def _pair_sums(
    Ua: np.ndarray, Pa: np.ndarray, Ub: np.ndarray, Pb: np.ndarray, Ub2: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """The six cross sums `_pairwise_error` reads: Pa'Pb, Ua'Pb, Pa'Ub, Ua'Ub, (Ua²)'Pb and
    Pa'(Ub²)."""
    Pa, Pb = np.asarray(Pa, dtype="float64"), np.asarray(Pb, dtype="float64")
    Ub2 = Ub * Ub if Ub2 is None else Ub2
    return (Pa.T @ Pb, Ua.T @ Pb, Pa.T @ Ub, Ua.T @ Ub, (Ua * Ua).T @ Pb, Pa.T @ Ub2)


def _error_of_sums(sums: tuple[np.ndarray, ...], T: np.ndarray, M: np.ndarray) -> float:
    """`_pairwise_error` from its cross sums (`_pair_sums`)."""
    PP, Sa, Sb, UU, U2P, PU2 = sums
    N = np.maximum(PP, 1.0)
    num = UU - Sa * Sb / N
    den = (U2P - Sa * Sa / N) * (PU2 - Sb * Sb / N)
    # a pair without spread on its common rows has no correlation: relative to the raw sums,
    # so the rounding left in kept sums (a difference of equal sums) does not read as spread
    spread = den > 1e-12 * np.maximum(U2P * PU2, 1e-300)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(spread, num / np.sqrt(np.maximum(den, 1e-300)), 0.0)
    return float(np.sum(np.where(M, r - T, 0.0) ** 2))


def _block_units(
    cols: dict[str, np.ndarray], release: dict[str, Any], time: str | None
) -> dict[str, list[int]]:
    """Dims of each time-varying root column (with its derived columns) that `refine_blocks`
    moves: not the time column nor a time-invariant one."""
    fixed = entity_fixed(release) | ({time} if time else set())
    root = {b: d["from"] for b, d in release.get("derived", {}).items()}
    units: dict[str, list[int]] = {}
    for j, d in enumerate(release["dims"]):
        column = d["column"]
        base = root.get(column, column)
        if base in fixed or column not in cols or base not in cols:
            continue
        units.setdefault(base, []).append(j)
    return units


def _same_period_blocks(ent: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
    """Per class of at least two entities with the same periods: their rows (entities ×
    periods, in period order)."""
    n = len(ent)
    n_entities = int(ent.max()) + 1
    order = np.lexsort((np.arange(n), np.nan_to_num(t, nan=np.inf), ent))
    size = np.bincount(ent, minlength=n_entities)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    key: dict[tuple[Any, ...], list[int]] = {}
    for e in range(n_entities):
        rows = order[start[e] : start[e] + size[e]]
        key.setdefault((int(size[e]), *t[rows].tolist()), []).append(e)
    classes = [
        np.asarray(v)
        for k, v in sorted(key.items(), key=lambda kv: tuple(map(str, kv[0])))
        if len(v) >= 2 and k[0] > 0
    ]
    return [np.stack([order[start[e] : start[e] + size[e]] for e in cl]) for cl in classes]


class _BlockSwaps:
    """State of `refine_blocks`: the rows' scores U and presence P, the released Spearman
    target, and each unit's row permutation."""

    def __init__(
        self,
        cols: dict[str, np.ndarray],
        release: dict[str, Any],
        ent: np.ndarray,
        units: dict[str, list[int]],
        blocks: list[np.ndarray],
        rng: np.random.Generator,
    ) -> None:
        self.ent, self.blocks, self.rng = ent, blocks, rng
        self.n_dims = len(release["dims"])
        X = synthetic_dim_matrix(pd.DataFrame(cols), release)
        self.U = np.column_stack([scores(X[:, j]) for j in range(X.shape[1])])
        self.P = ~np.isnan(X)
        self.Pf = self.P.astype("float64")  # the presence as the products read it
        self.target = block_target(release, "all")
        self.perm = {unit: np.arange(len(ent)) for unit in units}
        # Pf'Pf, U'Pf, U'U and (U²)'Pf over all rows, kept up to date by each swap
        self.sums = self._sums_of(self.U, self.Pf)

    @staticmethod
    def _sums_of(U: np.ndarray, Pf: np.ndarray) -> list[np.ndarray]:
        """The cross sums every dim pair's correlation over jointly present rows reads."""
        return [Pf.T @ Pf, U.T @ Pf, U.T @ U, (U * U).T @ Pf]

    def _pair_base(self, J: list[int], out: np.ndarray) -> tuple[np.ndarray, ...]:
        """`_pair_sums` of the unit's dims J against the other dims, from the kept sums."""
        PP, UP, UU, U2P = self.sums
        Jo, oJ = _cross(J, out), _cross(list(out), np.asarray(J))
        return (PP[Jo], UP[Jo], UP[oJ].T, UU[Jo], U2P[Jo], U2P[oJ].T)

    def pairs(self, kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Disjoint swap partners (pairs × T row arrays): whole blocks of entities with the same
        periods, or two rows of one entity."""
        n, rng = len(self.ent), self.rng
        if kind == "within":  # at most ~1.5M pair × dim × dim gain terms per batch, as refine_swaps
            a, b = draw_pairs(
                rng.permutation(n),
                min(n // 2, max(512, 1_500_000 // (self.n_dims**2 + 1))),
                self.ent,
            )
            return [(a[:, None], b[:, None])] if len(a) else []
        out = []
        for rows in self.blocks:
            order = rng.permutation(len(rows))
            half = len(order) // 2
            if half:
                out.append((rows[order[:half]], rows[order[half : 2 * half]]))
        return out

    def swapped_error(
        self,
        J: list[int],
        other: tuple[Any, Any, Any],
        base: tuple[np.ndarray, ...],
        Tj: np.ndarray,
        M: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
    ) -> float:
        """`_pairwise_error` of the unit's dims J against the other dims (`other`: their scores,
        presence and squared scores, each indexable by rows) with rows a and b swapped: the cross sums `base` of the
        unswapped rows plus the swapped rows' change, Σ (f(J_b) − f(J_a)) (g(o_a) − g(o_b))."""
        U, Pf, dims = self.U, self.Pf, np.asarray(J, dtype=np.intp)
        Ua, Ub = U[np.ix_(a, dims)], U[np.ix_(b, dims)]
        dU, dP, dU2 = Ub - Ua, Pf[np.ix_(b, dims)] - Pf[np.ix_(a, dims)], Ub * Ub - Ua * Ua
        Uo, Po, Uo2 = other
        gU, gP, gU2 = Uo[a] - Uo[b], Po[a] - Po[b], Uo2[a] - Uo2[b]
        PP, Sa, Sb, UU, U2P, PU2 = base
        sums = (
            PP + dP.T @ gP,
            Sa + dU.T @ gP,
            Sb + dP.T @ gU,
            UU + dU.T @ gU,
            U2P + dU2.T @ gP,
            PU2 + dP.T @ gU2,
        )
        return _error_of_sums(sums, Tj, M)

    def step(self, unit: str, J: list[int], kind: str) -> float:
        """One batch of block (or within-entity) swaps of the unit's values; the squared error
        gained (0 when nothing was accepted)."""
        U, target = self.U, self.target
        out = np.setdiff1d(np.arange(self.n_dims), J)
        M = np.isfinite(target[_cross(J, out)])
        if not M.any():
            return 0.0
        groups = self.pairs(kind)
        if not groups:
            return 0.0
        C = self.sums[2]
        E0 = np.where(M, C[_cross(J, out)] - np.where(M, target[_cross(J, out)], 0.0), 0.0)
        gain, cand = improving_candidates(E0, self._gains(groups, J, out, M))
        if not len(cand):
            return 0.0
        # The gains above treat missing rows as scoring 0; batches are judged by the
        # correlations over rows where both dims are present (what tier 2 measures).
        Tj = np.where(M, target[_cross(J, out)], 0.0)
        other = (  # the other dims do not move in this batch
            _RowGather(U, out),
            _RowGather(self.Pf, out),
            _RowGather(U, out, squared=True),
        )
        base = self._pair_base(J, out)
        exact0 = _error_of_sums(base, Tj, M)
        rows_of = _PairRows(groups, gain, cand)
        best_m, best_f = best_prefix(
            lambda m: self.swapped_error(J, other, base, Tj, M, *rows_of(m)) - exact0, len(cand)
        )
        if best_m == 0:
            return 0.0
        self._swap(unit, J, *rows_of(best_m))
        return best_f

    def _gains(
        self,
        groups: list[tuple[np.ndarray, np.ndarray]],
        J: list[int],
        out: np.ndarray,
        M: np.ndarray,
    ) -> np.ndarray:
        """Each pair's change of Σ U_a U_b over the unit's dims J × the other dims (masked by
        M), pairs in the order of `groups`."""
        dCs = []
        for rows_e, rows_f in groups:
            D = np.take(self.U, rows_f.ravel(), axis=0) - np.take(self.U, rows_e.ravel(), axis=0)
            dA = np.take(D, J, axis=1).reshape(*rows_e.shape, -1)
            dB = np.negative(np.take(D, out, axis=1)).reshape(*rows_e.shape, -1)  # exact
            dCs.append(np.einsum("ptj,pto->pjo", dA, dB) * M[None])
        return np.concatenate(dCs)

    def _swap(self, unit: str, J: list[int], a: np.ndarray, b: np.ndarray) -> None:
        """Exchange the unit's values (its dims J and its permutation) between rows a and b."""
        perm = self.perm[unit]
        perm[a], perm[b] = perm[b].copy(), perm[a].copy()
        rows = np.concatenate([a, b])
        before = self._sums_of(self.U[rows], self.Pf[rows])
        for values in (self.U, self.P, self.Pf):
            for j in J:
                values[a, j], values[b, j] = values[b, j].copy(), values[a, j].copy()
        after = self._sums_of(self.U[rows], self.Pf[rows])
        self.sums = [s + new - old for s, new, old in zip(self.sums, after, before, strict=True)]

    def error(self) -> float:
        """`_pairwise_error` of every targeted pair of dims now."""
        target = self.target
        mask = np.isfinite(target) & ~np.eye(len(target), dtype=bool)
        PP, UP, UU, U2P = self.sums
        return _error_of_sums((PP, UP, UP.T, UU, U2P, U2P.T), np.nan_to_num(target), mask)


class _RowGather:
    """Some columns of a rows × dims matrix (squared when asked), gathered only at the rows
    it is indexed by: the other dims of a batch without an n-row copy of them."""

    def __init__(self, values: np.ndarray, columns: np.ndarray, squared: bool = False) -> None:
        self.values, self.columns, self.squared = values, columns, squared

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        got = np.take(self.values, rows, axis=0)[:, self.columns]
        return got * got if self.squared else got


class _PairRows:
    """The rows of the first m candidate pairs of a batch, best first (`best_first`), each
    pair's rows concatenated in that order: one flat array of the batch's rows and each pair's
    offset, so a prefix is one gather instead of a list of per-pair arrays; candidates are
    ordered only as far as the prefixes asked for reach."""

    def __init__(
        self, groups: list[tuple[np.ndarray, np.ndarray]], gain: np.ndarray, cand: np.ndarray
    ) -> None:
        self.first = np.concatenate([e.ravel() for e, _ in groups])
        self.second = np.concatenate([f.ravel() for _, f in groups])
        self.length = np.concatenate(
            [np.full(len(e), e.shape[1], dtype=np.intp) for e, _ in groups]
        )
        self.start = np.cumsum(self.length) - self.length
        self.gain, self.cand = gain, cand
        self.order = best_first(gain, cand, 64)

    def __call__(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows of the first partners, rows of the second) of the first m candidates."""
        if m > len(self.order):
            self.order = best_first(self.gain, self.cand, 4 * m)
        pick = self.order[:m]
        length = self.length[pick]
        ends = np.cumsum(length)
        idx = np.arange(int(ends[-1])) + np.repeat(self.start[pick] - (ends - length), length)
        return self.first[idx], self.second[idx]


def refine_blocks(
    cols: dict[str, np.ndarray],
    release: dict[str, Any],
    ent: np.ndarray,
    rng: np.random.Generator,
    max_sweeps: int = 100,
    min_gain: float = 0.001,
) -> dict[str, np.ndarray]:
    """Swap a time-varying column's whole entity blocks (all its rows of the entity, missing
    values included, in period order) between entities with the same periods, so the
    row-level rank correlations of the column and of its missingness with every other dim
    approach the released Spearman matrix. Within-entity swaps (`refine.refine_swaps`) keep
    every entity's multiset of values and never move a missing value, so correlations that
    live between entities — a firm that reports neither training hours nor hours per employee
    in any year (missing(tothrs) with missing(hrsemp): 0.81 released, 0.46 from the copula) —
    were the copula's alone. A block swap keeps each entity's within-entity sequence (its
    periods, trend identity and serial correlation) and each column's missing count; only
    which entity carries which sequence changes. With U the rows' mid-rank scores, swapping
    blocks of entities e, f (rows aligned by period t) changes Σ U_a U_b by
    Σ_t (A_f,t − A_e,t)(B_e,t − B_f,t); batches of disjoint pairs are accepted while the
    squared error falls (as `refine_invariant`). Not moved: the time column and time-invariant
    columns (refined by `refine_invariant`); derived columns move with their source."""
    panel = release.get("panel")
    time = panel["time"] if panel else None
    units = _block_units(cols, release, time)
    n = len(ent)
    if n == 0 or not units:
        return cols
    t = _as_float(cols[time]) if time and time in cols else np.zeros(n)
    blocks = _same_period_blocks(ent, t)
    if not blocks:
        return cols
    state = _BlockSwaps(cols, release, ent, units, blocks, rng)
    within_ok = {unit for unit in units if unit not in entity_frozen(release)}
    for _ in range(max_sweeps):
        gained = 0.0
        for unit, J in units.items():
            for kind in ("blocks", "within") if unit in within_ok else ("blocks",):
                gained -= state.step(unit, J, kind)
        if gained <= min_gain * max(state.error(), 1e-12):
            break
    return _moved_columns(cols, release, state.perm)


# ----------------------------------------------------------------------------- time dynamics (outside)

MAX_TREND_VARS = (
    20_000  # (period-set class × offset) cells above which offsets are not solved for exact counts
)
# Branch-and-bound budget of the offset program, in nodes × variables: its node limit is this
# over the program's variables (between the two bounds), so a program whose exact counts are
# out of reach stops after a bounded, machine-independent amount of work.
TREND_MILP_WORK = 200_000
TREND_MILP_NODES = (200, 20_000)


# Excess of a released within lag-1 autocorrelation over its value without persistence,
# −1/(T̄ − 1), from which a column counts as persistent and is kept out of within-entity swaps.
PERSISTENT = 0.1


def persistent_columns(release: dict[str, Any]) -> set[str]:
    """Columns with a dim whose released within-entity lag-1 autocorrelation exceeds the value
    i.i.d. within parts give after demeaning in entities of T̄ rows, −1/(T̄ − 1), by at least
    PERSISTENT (T̄ the released mean entity size)."""
    es = release.get("entity_structure") or {}
    lag = es.get("within_lag1") or []
    g = (release.get("groups") or {}).get(es.get("column"), {})
    tbar = float(g.get("mean_size") or 0.0)
    base = -1.0 / (tbar - 1.0) if tbar > 1.0 else 0.0
    return {
        d["column"]
        for d, v in zip(release["dims"], lag, strict=False)
        if v is not None and v - base >= PERSISTENT
    }


def entity_frozen(release: dict[str, Any]) -> set[str]:
    """Columns that within-entity swaps (refinement, cross-moment alignment) must not move:
    the time-invariant ones; the period-trend columns and persistent columns
    (`persistent_columns`), whose within-entity order is drawn; and with either of these the
    panel's time column (a swap of periods would break a row's pairing of period and trend
    value, or the period order the serial correlation was drawn in)."""
    es = release.get("entity_structure") or {}
    dyn = set(es.get("period_trend") or {}) | persistent_columns(release)
    out = entity_fixed(release) | dyn
    panel = release.get("panel")
    if panel and dyn:
        out.add(panel["time"])
    return out


def _as_float(values: np.ndarray) -> np.ndarray:
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype="float64")


def nearest_level(v: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the nearest of the ascending `levels` for each value (ties to the lower level),
    as pooling codes an unreleased value to the nearest released one."""
    hi = np.clip(np.searchsorted(levels, v, side="left"), 1, max(len(levels) - 1, 1))
    lo = hi - 1
    if len(levels) < 2:
        return np.zeros(len(v), dtype="int64")
    return np.where(np.abs(v - levels[lo]) <= np.abs(levels[hi] - v), lo, hi).astype("int64")


def _offset_program(
    sets: list[tuple[float, ...]],
    slope: float,
    levels: np.ndarray,
    offs: np.ndarray,
    n_entities: int,
) -> tuple[np.ndarray, Any, np.ndarray]:
    """Costs, constraint matrix and integrality of `trend_offsets`' mixed-integer program over
    n (S·K), count gaps dp, dm (L each) and histogram gaps ap, am (S·K each); its right-hand
    side is [class sizes, level counts, natural histograms]."""
    from scipy.sparse import coo_matrix

    S, K, L = len(sets), len(offs), len(levels)
    nv = S * K  # variables: n (S*K), dp (L), dm (L), ap (S*K), am (S*K)
    tot = nv + 2 * L + 2 * nv
    rows: list[int] = []
    colsi: list[int] = []
    vals: list[float] = []
    # class sizes
    for s in range(S):
        for k in range(K):
            rows.append(s)
            colsi.append(s * K + k)
            vals.append(1.0)
    r0 = S
    for s, per in enumerate(sets):
        p = np.asarray(per, dtype="float64")
        for k in range(K):
            h = np.bincount(nearest_level(offs[k] + slope * p, levels), minlength=L)
            for v in np.flatnonzero(h).tolist():
                rows.append(r0 + v)
                colsi.append(s * K + k)
                vals.append(float(h[v]))
    for v in range(L):
        rows += [r0 + v, r0 + v]
        colsi += [nv + v, nv + L + v]
        vals += [-1.0, 1.0]
    r1 = r0 + L
    for i in range(nv):
        rows += [r1 + i, r1 + i, r1 + i]
        colsi += [i, nv + 2 * L + i, 2 * nv + 2 * L + i]
        vals += [1.0, -1.0, 1.0]
    A = coo_matrix((vals, (rows, colsi)), shape=(r1 + nv, tot)).tocsr()
    big = 4.0 * float(n_entities) + 1.0
    c = np.concatenate([np.zeros(nv), np.full(2 * L, big), np.ones(2 * nv)])
    integrality = np.concatenate([np.ones(nv), np.zeros(tot - nv)])
    return c, A, integrality


def trend_offsets(
    natural: np.ndarray,
    sets: list[tuple[float, ...]],
    cls: np.ndarray,
    slope: float,
    levels: np.ndarray,
    counts: np.ndarray,
) -> np.ndarray | None:
    """Entity offsets o_e (value at period 0) of a categorical period-trend column such that the
    row values nearest_level(o_e + slope · p), p over the entity's periods, have exactly the
    released level `counts`, as near as possible to the entities' natural offsets `natural`
    (entity mean of value − slope · period of the copula draw). A mixed-integer program over
    n[s, o], the number of entities of period-set class s (`sets`, entity classes `cls`) given
    offset o from the lattice {level − slope · p}: minimise K·Σ|count gaps| + Σ|n − n*| with
    n* the classes' histograms of natural offsets (K larger than any change the second term
    can make, so exact counts come first). Entities of a class then take its offsets in the
    order of their natural offsets. None when the program is too large or fails."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    periods = (
        np.unique(np.concatenate([np.asarray(s, dtype="float64") for s in sets]))
        if sets
        else np.zeros(0)
    )
    offs = np.unique(np.round((levels[:, None] - slope * periods[None, :]).ravel(), 9))
    S, K = len(sets), len(offs)
    if S * K > MAX_TREND_VARS or K == 0:
        return None
    class_sizes = np.bincount(cls, minlength=S)
    nat_o = np.clip(np.searchsorted(offs, natural), 0, K - 1)
    lower = np.clip(nat_o - 1, 0, K - 1)
    nat_o = np.where(np.abs(offs[lower] - natural) < np.abs(offs[nat_o] - natural), lower, nat_o)
    target = np.zeros((S, K))
    np.add.at(target, (cls, nat_o), 1.0)
    c, A, integrality = _offset_program(sets, slope, levels, offs, len(cls))
    b = np.concatenate([class_sizes.astype("float64"), counts.astype("float64"), target.ravel()])
    res = milp(
        c,
        constraints=LinearConstraint(A, b, b),
        integrality=integrality,
        bounds=Bounds(0, np.inf),
        options={"presolve": True, "node_limit": trend_node_limit(len(c))},
    )
    if res.x is None:
        return None
    n = np.round(res.x[: S * K]).astype("int64").reshape(S, K)
    if not np.array_equal(n.sum(1), class_sizes):
        return None
    out = np.empty(len(cls))
    for s in range(S):
        members = np.flatnonzero(cls == s)
        members = members[np.argsort(natural[members], kind="stable")]
        out[members] = np.repeat(offs, n[s])
    return out


def trend_node_limit(n_vars: int) -> int:
    """The offset program's node limit: TREND_MILP_WORK / variables, within TREND_MILP_NODES."""
    lo, hi = TREND_MILP_NODES
    return int(min(hi, max(lo, TREND_MILP_WORK // max(n_vars, 1))))


def _period_classes(
    e: np.ndarray, p: np.ndarray, idx: np.ndarray
) -> tuple[np.ndarray, list[tuple[float, ...]]]:
    """Class (index into the sorted distinct period sets) of each entity in `idx`, and the
    period sets; rows given by entity `e` and period `p`."""
    order = np.lexsort((p, e))
    per_ent: dict[int, list[float]] = {}
    for i in order:
        per_ent.setdefault(int(e[i]), []).append(float(p[i]))
    keys = [tuple(per_ent[int(g)]) for g in idx]
    uniq = sorted(set(keys))
    at = {k: i for i, k in enumerate(uniq)}
    return np.asarray([at[k] for k in keys], dtype="int64"), uniq


@dataclass
class _TrendRows:
    """The rows of one period-trend column with a value and a period: their entities `e` and
    periods `p`, the entities with such rows (`idx`; `pos`: an entity's index among them, −1
    for none), their natural offsets and the number of entities."""

    ok: np.ndarray
    e: np.ndarray
    p: np.ndarray
    idx: np.ndarray
    pos: np.ndarray
    natural: np.ndarray
    n_entities: int


def _trend_rows(
    x: np.ndarray, ok: np.ndarray, ent: np.ndarray, p_all: np.ndarray, slope: float
) -> _TrendRows:
    """`_TrendRows` of the rows `ok` of values `x` (natural offset: the entity mean of
    value − slope × period)."""
    n_entities = int(ent.max()) + 1 if len(ent) else 0
    e, p = ent[ok], p_all[ok]
    size = np.bincount(e, minlength=n_entities)
    has = size > 0
    natural = np.bincount(e, weights=x[ok] - slope * p, minlength=n_entities)[has] / size[has]
    idx = np.flatnonzero(has)  # entities with rows of this column
    pos = np.full(n_entities, -1)
    pos[idx] = np.arange(len(idx))
    return _TrendRows(ok, e, p, idx, pos, natural, n_entities)


def _categorical_trend(
    vals: np.ndarray, rows: _TrendRows, plan: Any, slope: float
) -> np.ndarray | None:
    """A categorical trend column's values with offsets solved for exact level counts (the
    natural offsets on the level lattice when the program fails); None when its levels are
    not increasing numbers."""
    levels_obj = list(plan.levels or [])
    lev = _as_float(np.asarray(levels_obj, dtype=object))
    if len(lev) < 2 or not np.isfinite(lev).all() or np.any(np.diff(lev) <= 0):
        return None
    e, p = rows.e, rows.p
    cls, uniq = _period_classes(e, p, rows.idx)
    off = trend_offsets(rows.natural, uniq, cls, slope, lev, np.asarray(plan.counts, dtype="int64"))
    if off is None:  # too large or no solution: natural offsets on the level lattice
        off = rows.natural
    codes = nearest_level(off[rows.pos[e]] + slope * p, lev)
    lev_arr = np.empty(len(levels_obj), dtype=object)
    lev_arr[:] = levels_obj
    vals[rows.ok] = lev_arr[codes]
    return vals


def _integer_trend(
    vals: np.ndarray, rows: _TrendRows, plan: Any, slope: float
) -> np.ndarray | None:
    """An integer column with an integer slope: its row values are the exact quantile sample, a
    multiset of the integers in the released range, so offsets are solved for it as for a
    categorical column (exact marginal; the natural offsets alone spread wage_panel's men
    evenly over starting experience where most start at 2 years: re exper SE ratio 1.42).
    Paths beyond the range are coded to its ends, as top/bottom coding the original at the
    released percentiles would. None when the program fails."""
    e, p = rows.e, rows.p
    sample = exact_values(plan.grid, int(rows.ok.sum()), True, plan.atoms)
    lev = np.arange(sample[0], sample[-1] + 1.0)  # every integer in range: paths need no gaps
    cnt = np.bincount((sample - sample[0]).astype("int64"), minlength=len(lev))
    cls, uniq = _period_classes(e, p, rows.idx)
    off = trend_offsets(rows.natural, uniq, cls, slope, lev, cnt) if len(lev) >= 2 else None
    if off is None:
        return None
    vals = vals.astype("float64")
    vals[rows.ok] = lev[nearest_level(off[rows.pos[e]] + slope * p, lev)]
    return vals


def _continuous_trend(
    vals: np.ndarray, rows: _TrendRows, plan: Any, slope: float, integer: bool
) -> np.ndarray:
    """Offsets kept where the entity's whole path stays inside the released range, so the
    identity holds in every entity whose span fits (the tails of the marginal are the cost);
    values are clipped only where it cannot fit."""
    e, p, idx = rows.e, rows.p, rows.idx
    grid = np.asarray(plan.grid, dtype="float64")
    lo_p = np.full(rows.n_entities, np.inf)
    hi_p = np.full(rows.n_entities, -np.inf)
    np.minimum.at(lo_p, e, slope * p)
    np.maximum.at(hi_p, e, slope * p)
    lo_o, hi_o = grid[0] - lo_p[idx], grid[-1] - hi_p[idx]
    if integer:
        lo_o, hi_o = np.ceil(lo_o - 1e-9), np.floor(hi_o + 1e-9)
    off = np.round(rows.natural) if integer else rows.natural
    off = np.where(lo_o <= hi_o, np.clip(off, lo_o, hi_o), off)
    v = np.clip(off[rows.pos[e]] + slope * p, grid[0], grid[-1])
    vals = vals.astype("float64")
    vals[rows.ok] = np.round(v) if integer else v
    return vals


def _trend_values(
    vals: np.ndarray, rows: _TrendRows, plan: Any, slope: float, integer: bool
) -> np.ndarray | None:
    """One trend column's rebuilt values (see `trend_columns`); None to leave it as drawn."""
    if plan.kind == "categorical":
        return _categorical_trend(vals, rows, plan, slope)
    if integer and float(slope).is_integer():
        solved = _integer_trend(vals, rows, plan, slope)
        if solved is not None:
            return solved
    return _continuous_trend(vals, rows, plan, slope, integer)


def trend_columns(
    cols: dict[str, np.ndarray],
    bp: Any,
    release: dict[str, Any],
    specs: dict[str, Any],
    ent: np.ndarray,
    missing: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Period-trend columns rebuilt as entity offset + slope × period (the synthetic period of
    the row): the offset keeps the entity's level from the hierarchical copula (its natural
    offset, the entity mean of value − slope × period of the draw, carries the between part
    and its correlations), the within-entity deviation is exactly slope × period deviation.
    Categorical columns: offsets solved so that level counts are exact (`trend_offsets`);
    values beyond the released levels are coded to the nearest one, as pooling coded the
    original. Continuous columns: the natural offsets (rounded for integer columns), moved
    just enough that the entity's path stays inside the released q0..q100 (clipped only where
    the path is longer than that range). Rows with a missing period keep their drawn value."""
    es = release["entity_structure"]
    trends = es.get("period_trend") or {}
    panel = release.get("panel")
    if not trends or not panel or panel["time"] not in cols:
        return cols
    out = dict(cols)
    p_all = _as_float(cols[panel["time"]])
    for col, tr in trends.items():
        plan = bp.columns.get(col)
        if col not in cols or plan is None or plan.kind not in ("continuous", "categorical"):
            continue
        slope = float(tr["slope"])
        x = _as_float(cols[col])
        ok = ~missing[col] & np.isfinite(p_all) & np.isfinite(x)
        if not ok.any():
            continue
        rows = _trend_rows(x, ok, ent, p_all, slope)
        integer = plan.kind != "categorical" and bool(specs[col].integer)
        vals = _trend_values(out[col].copy(), rows, plan, slope, integer)
        if vals is not None:
            out[col] = vals
    return _rank_followers(out, cols, release, trends, missing)


def _rank_followers(
    out: dict[str, np.ndarray],
    drawn: dict[str, np.ndarray],
    release: dict[str, Any],
    trends: dict[str, Any],
    missing: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Columns released as a monotone function of a trend column (|Spearman| ≥ 0.999 with it:
    expersq beside exper) take their own drawn values in the rank order of the rebuilt trend
    column (ties by their drawn order), so the rank identity, and with it every rank
    correlation the trend column has, carries over; drawn from their own latent they kept
    the identity with the latent, not with the rebuilt column (wage_panel_hausman:
    Spearman(exper, expersq) 0.92, tier 2 failed). Only columns without missing values
    that are neither trends nor time-invariant."""
    dims = release["dims"]
    S = release["blocks"]["all"]["spearman"]
    es = release["entity_structure"]
    idx = {d["column"]: j for j, d in enumerate(dims) if d["kind"] in ("continuous", "ordered")}
    done: set[str] = set(trends)
    for col in trends:
        if col not in idx or missing[col].any():
            continue
        base = _as_float(out[col])
        for c, j in idx.items():
            v = S[idx[col]][j]
            if (
                c in done
                or v is None
                or abs(v) < 0.999
                or es["invariant"].get(c)
                or c not in drawn
                or missing[c].any()
            ):
                continue
            x = _as_float(drawn[c])
            if not np.isfinite(x).all():
                continue
            sign = 1.0 if v > 0 else -1.0
            order = np.lexsort((sign * x, sign * base))  # rows by the rebuilt trend value
            new = np.empty_like(drawn[c])
            new[order] = drawn[c][np.argsort(x, kind="stable")]  # its values, ascending
            out[c] = new
            done.add(c)
    return out


def period_order(ent: np.ndarray, z_time: np.ndarray | None) -> np.ndarray:
    """Row indices grouped by entity, in period order inside each entity: the order in which
    `assign_periods` hands an entity's periods to its rows (ascending latent of the time dim,
    ties and a missing time dim by row order)."""
    return np.lexsort((np.zeros(len(ent)) if z_time is None else z_time, ent))


def lag1_stat(S: np.ndarray, ent: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Per column of S, the lag-1 autocorrelation of the within-entity deviations in `order`
    (the statistic `within_lag1` releases)."""
    G = int(ent.max()) + 1 if len(ent) else 0
    size = np.bincount(ent, minlength=G).astype("float64")
    sums = np.zeros((G, S.shape[1]))
    np.add.at(sums, ent, S)
    W = (S - (sums / np.maximum(size, 1.0)[:, None])[ent])[order]
    e = ent[order]
    pair = e[1:] == e[:-1]
    a, b = W[1:][pair], W[:-1][pair]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def _observed_scores(z: np.ndarray, probs: tuple[float, ...] | None) -> np.ndarray:
    """Normal scores of a latent column as the synthetic data will hold it: cut by rank into
    levels of shares `probs` (continuous: the latent itself)."""
    if probs is None or len(probs) < 2:
        return normal_scores(z)

    counts = apportion(np.asarray(probs, dtype="float64"), len(z)).astype("int64")
    return normal_scores(ordered_values(z, list(counts)).astype("float64"))


RHO_MAX = 0.995  # largest latent AR(1) coefficient the calibration may use


def _secant_rho(
    rho: np.ndarray,
    got: np.ndarray,
    want: np.ndarray,
    prev_rho: np.ndarray | None,
    prev_got: np.ndarray | None,
) -> np.ndarray:
    """`serial_within`'s next ρ: a step of (target − achieved) / the secant slope of achieved
    in ρ per dim (1 until two iterates differ), within ±0.3, ρ kept in [−0.9, RHO_MAX]."""
    slope = np.ones(len(rho))
    if prev_rho is not None and prev_got is not None:
        dr = rho - prev_rho
        sl = np.divide(got - prev_got, dr, out=np.ones(len(rho)), where=np.abs(dr) > 1e-6)
        slope = np.where(sl > 0.05, sl, 1.0)
    return np.clip(rho + np.clip((want - got) / slope, -0.3, 0.3), -0.9, RHO_MAX)


def serial_within(
    Z: np.ndarray,
    ent: np.ndarray,
    order: np.ndarray,
    target: np.ndarray,
    margins: list[Any] | None,
    rng: np.random.Generator,
    iterations: int = 8,
) -> np.ndarray:
    """Latent normals Z (rows × dims, hierarchical: entity part + within part) with the within
    part of the dims with a finite `target` redrawn as a stationary AR(1) in period `order`.

    With E the within part (Z minus entity means), A the AR dims and V the other dims with a
    within part, E_A = E_V Β + R (Β the in-sample regression, R ⟂ E_V with covariance S).
    R is redrawn as R_t = diag(ρ) R_{t−1} + η_t, R_1 ~ N(0, S), η ~ N(0, Q) with
    Q = S ∘ (11' − ρρ') (projected to PSD): its stationary covariance is S exactly, each
    column's lag-1 autocorrelation is its ρ, and with equal ρ it is the separable ρ^|s−t| S.
    Then demeaned within entity, made orthogonal to E_V and whitened to S in sample, so the
    within covariance (hence the released correlations and between shares) is unchanged;
    E_V (period, trend and other dims) is not touched, so the period order is unchanged.
    The released statistic is the lag-1 autocorrelation of within deviations of observed
    normal scores, which demeaning (Nickell 1981: ≈ −(1 + ρ)/(T − 1) in short panels) and
    discretisation pull below the latent ρ, so ρ is calibrated: a few fixed-point steps
    ρ ← ρ + (target − achieved), achieved measured on the dims cut into their levels by rank,
    with the same innovations each step (deterministic, monotone in ρ); secant steps, ρ in
    [−0.9, RHO_MAX], the iterate nearest the targets kept."""
    n, d = Z.shape
    G = int(ent.max()) + 1 if n else 0
    size = np.bincount(ent, minlength=G).astype("float64")
    sums = np.zeros((G, d))
    np.add.at(sums, ent, Z)
    Ub = (sums / np.maximum(size, 1.0)[:, None])[ent]
    E = Z - Ub
    var = np.einsum("ij,ij->j", E, E) > 1e-9 * n
    A = np.flatnonzero(np.isfinite(target) & var)
    if not len(A) or n - G < 2 * d + 2:
        return Z
    V = np.flatnonzero(var & ~np.isin(np.arange(d), A))
    EV = E[:, V]
    beta = np.linalg.lstsq(EV, E[:, A], rcond=None)[0] if len(V) else np.zeros((0, len(A)))
    R0 = E[:, A] - EV @ beta
    S = R0.T @ R0 / n
    LS = psd_sqrt(S)
    xi = rng.standard_normal((n, len(A)))
    e_ord = ent[order]
    start = np.concatenate([[True], e_ord[1:] != e_ord[:-1]])
    pos = np.arange(n) - np.maximum.accumulate(np.where(start, np.arange(n), 0))
    steps = [order[pos == k] for k in range(int(pos.max()) + 1)]
    prev = [order[np.flatnonzero(pos == k) - 1] for k in range(1, len(steps))]
    probs = [margins[j].probs if margins is not None else None for j in A]
    want = target[A]

    def draw(rho: np.ndarray) -> np.ndarray:
        Q = psd_sqrt(S * (1.0 - np.outer(rho, rho)))
        R = np.empty((n, len(A)))
        R[steps[0]] = xi[steps[0]] @ LS.T
        for k in range(1, len(steps)):
            R[steps[k]] = R[prev[k - 1]] * rho + xi[steps[k]] @ Q.T
        s2 = np.zeros((G, len(A)))
        np.add.at(s2, ent, R)
        R = R - (s2 / np.maximum(size, 1.0)[:, None])[ent]
        if len(V):
            R = R - EV @ np.linalg.lstsq(EV, R, rcond=None)[0]
        C = R.T @ R / n
        try:
            R = np.linalg.solve(np.linalg.cholesky(C), R.T).T @ np.linalg.cholesky(S).T
        except np.linalg.LinAlgError:
            pass
        return R

    def achieved(Zn: np.ndarray) -> np.ndarray:
        Sc = np.column_stack([_observed_scores(Zn[:, j], p) for j, p in zip(A, probs, strict=True)])
        return lag1_stat(Sc, ent, order)

    rho = np.clip(want, -0.9, RHO_MAX)
    best, best_err = None, np.inf
    prev_rho, prev_got = None, None
    for _ in range(iterations):
        Zn = Z.copy()
        Zn[:, A] = Ub[:, A] + EV @ beta + draw(rho)
        got = achieved(Zn)
        err = float(np.max(np.abs(got - want)))
        if err < best_err:
            best, best_err = Zn, err
        if err < 0.005:
            break
        rho, prev_rho, prev_got = _secant_rho(rho, got, want, prev_rho, prev_got), rho, got
    return best if best is not None else Z
