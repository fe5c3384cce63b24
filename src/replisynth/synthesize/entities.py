"""Entity structure of panels and clusters: what is released about it (inside) and the
hierarchical Gaussian copula and time dynamics that rebuild it (outside).
Method: docs/method.md, "Panels and clusters: entity structure".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from replisynth.stats.copula import ordered_values
from replisynth.stats.correlations import _Ranker, nearest_correlation
from replisynth.stats.dims import synthetic_dim_matrix
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
    vals, left = np.unique(codes_multiset, return_counts=True)
    left = left.astype("int64")
    sets: dict[int, list[np.ndarray]] = {}
    for e in sorted(range(G), key=lambda e: (-size[e], e)):
        s = int(size[e])
        if s == 0:
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
    out = np.full(len(ent), -1, dtype="int64")
    rows_of = pd.Series(np.flatnonzero(ok)).groupby(ent[ok]).agg(list)
    zmean = np.zeros(G)
    np.add.at(zmean, ent[ok], z[ok])
    zmean /= np.maximum(size, 1)
    for s, lst in sets.items():
        ents = [e for e in range(G) if size[e] == s]
        ents = sorted(ents, key=lambda e: (zmean[e], e))
        lst = sorted(lst, key=lambda a: (float(a.mean()), tuple(a)))
        for e, codes in zip(ents, lst, strict=True):
            r = np.asarray(rows_of[e])
            out[r[np.argsort(z[r], kind="stable")]] = codes
    return out


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
    L = len(target)
    for _ in range(max_moves):
        diff = np.bincount(per, weights=weight, minlength=L)[:L].astype("int64") - target
        if not diff.any():
            break
        done = False
        for k in np.argsort(-diff, kind="stable"):
            if diff[k] <= 0:
                break
            for lv in np.argsort(diff, kind="stable"):
                if diff[lv] >= 0:
                    break
                cap = int(min(diff[k], -diff[lv]))
                ek = np.flatnonzero((per == k) & (weight > 0))
                el = np.flatnonzero((per == lv) & (weight > 0))
                up = lv > k  # entities of k nearest level l: the highest scores when l is above
                ek = ek[np.argsort(-score[ek] if up else score[ek], kind="stable")]
                el = el[np.argsort(score[el] if up else -score[el], kind="stable")]
                best = None
                wk = weight[ek].astype("int64")
                ok = wk <= cap
                if ok.any():  # a move k -> l: the largest that fits, nearest the boundary first
                    i = int(np.argmax(np.where(ok, wk, -1)))
                    best = (int(wk[i]), ek[i], None)
                if len(el):  # a swap k <-> l: a level-l entity smaller by the largest δ that fits
                    szs, first_f = np.unique(weight[el].astype("int64"), return_index=True)
                    order = np.argsort(first_f, kind="stable")
                    szs, fs = szs[order], el[first_f[order]]
                    D = wk[:, None] - szs[None, :]
                    D = np.where((D > 0) & (D <= cap), D, -1)
                    if D.size and D.max() > (best[0] if best else 0):
                        i, j = np.unravel_index(int(np.argmax(D)), D.shape)
                        best = (int(D[i, j]), ek[i], fs[j])
                if best is None:
                    continue
                _, e, f = best
                per[e] = lv
                if f is not None:
                    per[f] = k
                done = True
                break
            if done:
                break
        if not done:
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
            per = repair_counts(per, weight, np.bincount(sorted_values.astype("int64")), Ue[:, 0])
    out = values.copy()
    out[ok] = per[ent[ok]]
    return out


def exact_values(grid: list[float], nn: int, integer: bool) -> np.ndarray:
    """Sorted row-level values of a continuous column (the exact quantile sample)."""
    return np.sort(exact_quantile_sample(np.asarray(grid), nn, integer))


def time_cap(bp: Any, time: str | None) -> int | None:
    """Distinct periods available to an entity: released time levels with rows, or distinct
    values of the time column's exact quantile sample."""
    if time is None or time not in bp.columns:
        return None
    cp = bp.columns[time]
    if cp.kind == "categorical":
        return int(sum(1 for c in cp.counts or [] if c > 0))
    if cp.kind == "continuous":
        return int(len(np.unique(exact_values(cp.grid, bp.rows - cp.missing, True))))
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
    for col, cp in bp.columns.items():
        is_time = col == time
        if cp.kind == "empty" or not (is_time or es["invariant"].get(col)):
            continue
        jd = [
            (j, i)
            for j, i in enumerate(act)
            if dims[i]["column"] == col and dims[i]["kind"] != "missing"
        ]
        ok = ~missing[col]
        nn = int(ok.sum())
        if cp.kind == "continuous":
            vals = exact_values(cp.grid, nn, bool(specs[col].integer))
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
        levels = cp.levels or []
        counts = list(cp.counts or [])
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

    dims = release["dims"]
    fixed = entity_fixed(release)
    root = {b: d["from"] for b, d in release.get("derived", {}).items()}
    units: dict[str, list[int]] = {}
    for j, d in enumerate(dims):
        c = d["column"]
        r = root.get(c, c)
        if (
            d["kind"] == "missing"
            or r not in fixed
            or c not in cols
            or pd.isna(pd.Series(cols[r])).any()
        ):
            continue
        units.setdefault(r, []).append(j)
    if len(ent) == 0 or not units:
        return cols
    G = int(ent.max()) + 1
    first = np.full(G, -1)
    first[ent[::-1]] = np.arange(len(ent))[::-1]
    X = synthetic_dim_matrix(pd.DataFrame(cols), release)
    U = np.column_stack([scores(X[:, j]) for j in range(X.shape[1])])
    S = np.zeros((G, U.shape[1]))
    np.add.at(S, ent, U)
    T = block_target(release, "all")
    size = np.bincount(ent, minlength=G)
    classes = [np.flatnonzero(size == v) for v in np.unique(size)]
    perm_e = {r: np.arange(G) for r in units}
    for _ in range(max_sweeps):
        C = U.T @ U
        gained = 0.0
        for r, J in units.items():
            out = np.setdiff1d(np.arange(len(dims)), J)
            M = np.isfinite(T[np.ix_(J, out)])
            if not M.any():
                continue
            Tj = np.where(M, T[np.ix_(J, out)], 0.0)
            E0 = np.where(M, C[np.ix_(J, out)] - Tj, 0.0)
            A = U[first][:, J]  # entity scores of the unit's dims (current values)
            Sb = S[:, out]
            e_list, f_list = [], []
            for cl in classes:
                o = cl[rng.permutation(len(cl))]
                h = len(o) // 2
                e_list.append(o[:h])
                f_list.append(o[h : 2 * h])
            e, f = np.concatenate(e_list), np.concatenate(f_list)
            if not len(e):
                continue
            dC = (
                (A[f] - A[e])[:, :, None] * (Sb[e] - Sb[f])[:, None, :] * M[None]
            )  # pairs × |J| × |out|
            base, cand = improving_swaps(E0, dC)
            if not len(cand):
                continue
            best_m, best_f = best_prefix(
                lambda m, cand=cand, E0=E0, dC=dC, base=base: (
                    float(np.sum((E0 + dC[cand[:m]].sum(0)) ** 2)) - base
                ),
                len(cand),
            )
            if best_m == 0:
                continue
            take = cand[:best_m]
            ee, ff = e[take], f[take]
            pe = perm_e[r]
            pe[ee], pe[ff] = pe[ff].copy(), pe[ee].copy()
            # Apply to the row scores: rows of e take f's (constant) scores and vice versa.
            newA = A.copy()
            newA[ee], newA[ff] = A[ff], A[ee]
            Uj = newA[ent]
            for k, j in enumerate(J):
                U[:, j] = Uj[:, k]
            S[:, J] = newA * size[:, None]
            C = U.T @ U
            gained -= best_f
        if gained <= min_gain * max(
            float(np.sum(np.where(np.isfinite(T), C - np.nan_to_num(T), 0.0) ** 2)), 1e-12
        ):
            break
    out_cols = dict(cols)
    for r, pe in perm_e.items():
        for c in [r, *[b for b, a in root.items() if a == r]]:
            out_cols[c] = cols[c][first[pe[ent]]]
    return out_cols


def _pairwise_error(
    Ua: np.ndarray, Pa: np.ndarray, Ub: np.ndarray, Pb: np.ndarray, T: np.ndarray, M: np.ndarray
) -> float:
    """Σ over the pairs in mask M of (r_ab − T_ab)², r_ab the Pearson correlation of the score
    columns a (of Ua) and b (of Ub) over the rows where both are present (Pa, Pb)."""
    Pa, Pb = Pa.astype("float64"), Pb.astype("float64")
    N = np.maximum(Pa.T @ Pb, 1.0)
    Sa, Sb = Ua.T @ Pb, Pa.T @ Ub
    num = Ua.T @ Ub - Sa * Sb / N
    den = ((Ua * Ua).T @ Pb - Sa * Sa / N) * (Pa.T @ (Ub * Ub) - Sb * Sb / N)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 1e-300, num / np.sqrt(np.maximum(den, 1e-300)), 0.0)
    return float(np.sum(np.where(M, r - T, 0.0) ** 2))


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

    dims = release["dims"]
    panel = release.get("panel")
    time = panel["time"] if panel else None
    fixed = entity_fixed(release) | ({time} if time else set())
    root = {b: d["from"] for b, d in release.get("derived", {}).items()}
    units: dict[str, list[int]] = {}
    for j, d in enumerate(dims):
        c = d["column"]
        r = root.get(c, c)
        if r in fixed or c not in cols or r not in cols:
            continue
        units.setdefault(r, []).append(j)
    n = len(ent)
    if n == 0 or not units:
        return cols
    G = int(ent.max()) + 1
    t = _as_float(cols[time]) if time and time in cols else np.zeros(n)
    order = np.lexsort((np.arange(n), np.nan_to_num(t, nan=np.inf), ent))
    size = np.bincount(ent, minlength=G)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    key: dict[tuple[Any, ...], list[int]] = {}
    for e in range(G):
        rows = order[start[e] : start[e] + size[e]]
        key.setdefault((int(size[e]), *t[rows].tolist()), []).append(e)
    classes = [
        np.asarray(v)
        for k, v in sorted(key.items(), key=lambda kv: tuple(map(str, kv[0])))
        if len(v) >= 2 and k[0] > 0
    ]
    if not classes:
        return cols
    rows_of = [
        np.stack([order[start[e] : start[e] + size[e]] for e in cl]) for cl in classes
    ]  # class: entities × T
    X = synthetic_dim_matrix(pd.DataFrame(cols), release)
    U = np.column_stack([scores(X[:, j]) for j in range(X.shape[1])])
    P = ~np.isnan(X)
    Tg = block_target(release, "all")
    perm = {r: np.arange(n) for r in units}
    within_ok = {r for r in units if r not in entity_frozen(release)}

    def pairs(kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Disjoint swap partners (pairs × T row arrays): whole blocks of entities with the same
        periods, or two rows of one entity."""
        if kind == "within":  # at most ~1.5M pair × dim × dim gain terms per batch, as refine_swaps
            a, b = draw_pairs(
                rng.permutation(n), min(n // 2, max(512, 1_500_000 // (len(dims) ** 2 + 1))), ent
            )
            return [(a[:, None], b[:, None])] if len(a) else []
        out_ = []
        for R_ in rows_of:
            o = rng.permutation(len(R_))
            h = len(o) // 2
            if h:
                out_.append((R_[o[:h]], R_[o[h : 2 * h]]))
        return out_

    for _ in range(max_sweeps):
        gained = 0.0
        for r, J in units.items():
            for kind in ("blocks", "within") if r in within_ok else ("blocks",):
                out = np.setdiff1d(np.arange(len(dims)), J)
                M = np.isfinite(Tg[np.ix_(J, out)])
                if not M.any():
                    continue
                C = U.T @ U
                E0 = np.where(M, C[np.ix_(J, out)] - np.where(M, Tg[np.ix_(J, out)], 0.0), 0.0)
                re_, rf_, dCs = [], [], []
                for re, rf in pairs(kind):
                    dA = U[rf][:, :, J] - U[re][:, :, J]
                    dB = U[re][:, :, out] - U[rf][:, :, out]
                    dCs.append(np.einsum("ptj,pto->pjo", dA, dB) * M[None])
                    re_ += list(re)
                    rf_ += list(rf)
                if not dCs:
                    continue
                dC = np.concatenate(dCs)
                base, cand = improving_swaps(E0, dC)
                if not len(cand):
                    continue
                # The gains above treat missing rows as scoring 0; batches are judged by the
                # correlations over rows where both dims are present (what tier 2 measures).
                Tj = np.where(M, Tg[np.ix_(J, out)], 0.0)
                exact0 = _pairwise_error(U[:, J], P[:, J], U[:, out], P[:, out], Tj, M)

                def change(
                    m: int,
                    cand: np.ndarray = cand,
                    J: list[int] = J,
                    out: np.ndarray = out,
                    Tj: np.ndarray = Tj,
                    M: np.ndarray = M,
                    exact0: float = exact0,
                    re_: list = re_,
                    rf_: list = rf_,
                ) -> float:
                    a = np.concatenate([re_[i] for i in cand[:m]])
                    b = np.concatenate([rf_[i] for i in cand[:m]])
                    UJ, PJ = U[:, J].copy(), P[:, J].copy()
                    UJ[a], UJ[b] = U[b][:, J], U[a][:, J]
                    PJ[a], PJ[b] = P[b][:, J], P[a][:, J]
                    return _pairwise_error(UJ, PJ, U[:, out], P[:, out], Tj, M) - exact0

                best_m, best_f = best_prefix(change, len(cand))
                if best_m == 0:
                    continue
                a = np.concatenate([re_[i] for i in cand[:best_m]])
                b = np.concatenate([rf_[i] for i in cand[:best_m]])
                pr = perm[r]
                pr[a], pr[b] = pr[b].copy(), pr[a].copy()
                for j in J:
                    U[a, j], U[b, j] = U[b, j].copy(), U[a, j].copy()
                    P[a, j], P[b, j] = P[b, j].copy(), P[a, j].copy()
                gained -= best_f
        fin = np.isfinite(Tg)
        if gained <= min_gain * max(
            _pairwise_error(U, P, U, P, np.nan_to_num(Tg), fin & ~np.eye(len(Tg), dtype=bool)),
            1e-12,
        ):
            break
    out_cols = dict(cols)
    for r, pr in perm.items():
        for c in [r, *[b for b, a in root.items() if a == r]]:
            out_cols[c] = cols[c][pr]
    return out_cols


# ----------------------------------------------------------------------------- time dynamics (outside)

MAX_TREND_VARS = (
    20_000  # (period-set class × offset) cells above which offsets are not solved for exact counts
)


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
    from scipy.sparse import coo_matrix

    periods = (
        np.unique(np.concatenate([np.asarray(s, dtype="float64") for s in sets]))
        if sets
        else np.zeros(0)
    )
    offs = np.unique(np.round((levels[:, None] - slope * periods[None, :]).ravel(), 9))
    S, K, L = len(sets), len(offs), len(levels)
    if S * K > MAX_TREND_VARS or K == 0:
        return None
    G_s = np.bincount(cls, minlength=S)
    nat_o = np.clip(np.searchsorted(offs, natural), 0, K - 1)
    lower = np.clip(nat_o - 1, 0, K - 1)
    nat_o = np.where(np.abs(offs[lower] - natural) < np.abs(offs[nat_o] - natural), lower, nat_o)
    target = np.zeros((S, K))
    np.add.at(target, (cls, nat_o), 1.0)
    nv = S * K  # variables: n (S*K), dp (L), dm (L), ap (S*K), am (S*K)
    tot = nv + 2 * L + 2 * nv
    rows, colsi, vals = [], [], []
    # class sizes
    for s in range(S):
        for k in range(K):
            rows.append(s), colsi.append(s * K + k), vals.append(1.0)
    r0 = S
    for s, per in enumerate(sets):
        p = np.asarray(per, dtype="float64")
        for k in range(K):
            h = np.bincount(nearest_level(offs[k] + slope * p, levels), minlength=L)
            for v in np.flatnonzero(h):
                rows.append(r0 + v), colsi.append(s * K + k), vals.append(float(h[v]))
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
    b = np.concatenate([G_s.astype("float64"), counts.astype("float64"), target.ravel()])
    big = 4.0 * float(len(cls)) + 1.0
    c = np.concatenate([np.zeros(nv), np.full(2 * L, big), np.ones(2 * nv)])
    integrality = np.concatenate([np.ones(nv), np.zeros(tot - nv)])
    res = milp(
        c,
        constraints=LinearConstraint(A, b, b),
        integrality=integrality,
        bounds=Bounds(0, np.inf),
        options={"presolve": True, "node_limit": 20_000},
    )
    if res.x is None:
        return None
    n = np.round(res.x[:nv]).astype("int64").reshape(S, K)
    if not np.array_equal(n.sum(1), G_s):
        return None
    out = np.empty(len(cls))
    for s in range(S):
        es_ = np.flatnonzero(cls == s)
        es_ = es_[np.argsort(natural[es_], kind="stable")]
        out[es_] = np.repeat(offs, n[s])
    return out


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
    G = int(ent.max()) + 1 if len(ent) else 0
    for col, tr in trends.items():
        cp = bp.columns.get(col)
        if col not in cols or cp is None or cp.kind not in ("continuous", "categorical"):
            continue
        slope = float(tr["slope"])
        ok = ~missing[col] & np.isfinite(p_all)
        x = _as_float(cols[col])
        ok &= np.isfinite(x)
        if not ok.any():
            continue
        e, p = ent[ok], p_all[ok]
        size = np.bincount(e, minlength=G)
        has = size > 0
        natural = np.bincount(e, weights=x[ok] - slope * p, minlength=G)[has] / size[has]
        idx = np.flatnonzero(has)  # entities with rows of this column
        pos = np.full(G, -1)
        pos[idx] = np.arange(len(idx))
        vals = out[col].copy()
        if cp.kind == "categorical":
            levels_obj = list(cp.levels or [])
            lev = _as_float(np.asarray(levels_obj, dtype=object))
            if len(lev) < 2 or not np.isfinite(lev).all() or np.any(np.diff(lev) <= 0):
                continue
            cls, uniq = _period_classes(e, p, idx)
            off = trend_offsets(
                natural, uniq, cls, slope, lev, np.asarray(cp.counts, dtype="int64")
            )
            if off is None:  # too large or no solution: natural offsets on the level lattice
                off = natural
            codes = nearest_level(off[pos[e]] + slope * p, lev)
            lev_arr = np.empty(len(levels_obj), dtype=object)
            lev_arr[:] = levels_obj
            vals[ok] = lev_arr[codes]
        else:
            grid = np.asarray(cp.grid, dtype="float64")
            integer = bool(specs[col].integer)
            if integer and float(slope).is_integer():
                # An integer column with an integer slope: its row values are the exact
                # quantile sample, a multiset of the integers in the released range, so
                # offsets are solved for it as for a categorical column (exact marginal; the
                # natural offsets alone spread wage_panel's men evenly over starting
                # experience where most start at 2 years: re exper SE ratio 1.42). Paths
                # beyond the range are coded to its ends, as top/bottom coding the original
                # at the released percentiles would.
                sample = exact_values(cp.grid, int(ok.sum()), True)
                lev = np.arange(
                    sample[0], sample[-1] + 1.0
                )  # every integer in range: paths need no gaps
                cnt = np.bincount((sample - sample[0]).astype("int64"), minlength=len(lev))
                cls, uniq = _period_classes(e, p, idx)
                off = trend_offsets(natural, uniq, cls, slope, lev, cnt) if len(lev) >= 2 else None
                if off is not None:
                    vals = vals.astype("float64")
                    vals[ok] = lev[nearest_level(off[pos[e]] + slope * p, lev)]
                    out[col] = vals
                    continue
            # Offsets kept where the entity's whole path stays inside the released range, so
            # the identity holds in every entity whose span fits (the tails of the marginal
            # are the cost); values are clipped only where it cannot fit.
            lo_p = np.full(G, np.inf)
            hi_p = np.full(G, -np.inf)
            np.minimum.at(lo_p, e, slope * p)
            np.maximum.at(hi_p, e, slope * p)
            lo_o, hi_o = grid[0] - lo_p[idx], grid[-1] - hi_p[idx]
            if integer:
                lo_o, hi_o = np.ceil(lo_o - 1e-9), np.floor(hi_o + 1e-9)
            off = np.round(natural) if integer else natural
            off = np.where(lo_o <= hi_o, np.clip(off, lo_o, hi_o), off)
            v = np.clip(off[pos[e]] + slope * p, grid[0], grid[-1])
            vals = vals.astype("float64")
            vals[ok] = np.round(v) if integer else v
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
        slope = np.ones(
            len(A)
        )  # secant slope of achieved in ρ, per dim (1 until two iterates differ)
        if prev_rho is not None:
            dr = rho - prev_rho
            sl = np.divide(got - prev_got, dr, out=np.ones(len(A)), where=np.abs(dr) > 1e-6)
            slope = np.where(sl > 0.05, sl, 1.0)
        prev_rho, prev_got = rho, got
        rho = np.clip(rho + np.clip((want - got) / slope, -0.3, 0.3), -0.9, RHO_MAX)
    return best if best is not None else Z
