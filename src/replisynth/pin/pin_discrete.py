"""Layer 4 for outcomes with a discrete support (0/1, counts, ordered categories): pin the
maximum-likelihood checkpoints of one outcome, with any linear ones on it, by changing as few
synthesized values as the score equations need (flips, +-1 steps, one category step), inside
the released range and orderings. Method: docs/method.md, "Maximum-likelihood checkpoints".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.manifest import checkpoint_from_release
from replisynth.core.errors import CheckpointError
from replisynth.core.options import GLM_BINARY, GLM_MODELS, GLM_ORDERED
from replisynth.fit.estimators import fit_checkpoint
from replisynth.fit.glm import nb2_score_obs
from replisynth.stats.correlations import pct_ranks
from replisynth.stats.design import build_design, outcome_codes, released_terms

PIN_TOL = 0.5  # |b - b*| / SE_target at which a discrete-outcome checkpoint counts as pinned
MAX_BATCHES = 400
SOFT_BATCHES = 40  # batches of a round with soft terms (each batch is a pass over the rows);
# past it the rounds on the checkpoints alone go on from where it stopped
# Q at which the correction stops: every linear combination of the coefficients is then within
# 0.1 synthetic SE to first order; fewer rows move than a full descent would move.
Q_STOP = 0.01
MAX_POOL = 1 << 18  # most rows one batch's descent considers (memory: rows x coefficients)
MAX_PREFIX = 1 << 14  # most moves ranked per descent step
MIN_PREFIX = 256  # fewest moves ranked per descent step after the first
MAX_INNER = 200  # descent steps per batch
MAX_KEEP = 8  # columns outside the designs whose rank relation to the outcome the moves keep
KEEP_WEIGHT = 0.1  # their weight in Q beside the checkpoints' (which must win)
HURDLE_WEIGHT = 1.0  # weight of a count's zero/positive split and its relations in Q
SHARES_WEIGHT = 1.0  # weight of a count's shares (MAX_BINS bins) in Q
MAX_BINS = 12
SOFT_FALLBACK = 0.05  # share of the soft terms' weight in the round after one that misses
MAX_KEEP_SCAN = 64  # columns scanned for them, in frame order
_EPS = 1e-12


def is_discrete_group(group: list[dict[str, Any]]) -> bool:
    """Whether an outcome group holds a maximum-likelihood checkpoint (then it is pinned here)."""
    return any(c["model"] in GLM_MODELS for c in group)


# ---------------------------------------------------------------------------------------------
# per-row scores at fixed parameters, as functions of the outcome code


def _norm_pdf(z: np.ndarray) -> np.ndarray:
    """The standard normal density, as scipy.stats.norm.pdf computes it (without importing
    scipy.stats, which costs seconds of CPU in a pin job)."""
    return np.exp(-(z**2) / 2.0) / _NORM_PDF_C


_NORM_PDF_C = np.sqrt(2 * np.pi)


def _ordered_cdf(model: str) -> tuple[Callable, Callable]:
    from scipy import special

    if model == "ologit":
        return special.expit, lambda z: special.expit(z) * special.expit(-z)
    return special.ndtr, _norm_pdf


def score_function(
    model: str,
    X: np.ndarray,
    w: np.ndarray,
    theta: np.ndarray,
    values: np.ndarray | None,
    scale: float = 1.0,
) -> Callable[..., np.ndarray]:
    """s(codes, rows=None) -> (len(codes), p): the weighted scores at the fixed parameters
    `theta` (the released coefficients, then alpha or the cut points) of the rows `rows` (all
    when None) for outcome codes `codes`. `values` maps codes to numeric outcome values (linear
    checkpoints on an ordered outcome)."""
    from scipy import special

    k = X.shape[1]
    eta_all = X @ theta[:k]
    if model == "logit":
        p_all = special.expit(eta_all)
        factor = lambda y, r: y - p_all[r]  # noqa: E731
    elif model == "probit":
        F_all = np.clip(special.ndtr(eta_all), _EPS, 1 - _EPS)
        lam_all = _norm_pdf(eta_all) / (F_all * (1 - F_all))
        factor = lambda y, r: lam_all[r] * (y - F_all[r])  # noqa: E731
    elif model == "poisson":
        mu_all = np.exp(eta_all)
        factor = lambda y, r: y - mu_all[r]  # noqa: E731
    elif model == "nbreg":
        return lambda y, rows=None: _sel(w, rows)[:, None] * nb2_score_obs(y, _sel(X, rows), theta)
    elif model in GLM_ORDERED:
        return _ordered_score(model, X, w, theta, eta_all)
    else:  # linear checkpoint (ols): normal equations X'W(y - X b*), in units of the residual variance

        def factor(y: np.ndarray, r: Any) -> np.ndarray:
            return ((values[y.astype("int64")] if values is not None else y) - eta_all[r]) / scale

    def fn(y: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        r = slice(None) if rows is None else rows
        return (w[r] * factor(y, r))[:, None] * X[r]

    return fn


def _sel(a: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return a if rows is None else a[rows]


def _ordered_score(
    model: str, X: np.ndarray, w: np.ndarray, theta: np.ndarray, eta_all: np.ndarray
) -> Callable[..., np.ndarray]:
    """Ordered-model scores: d l/d b = -x (f_u - f_l)/P, d l/d cut_y = f_u/P,
    d l/d cut_{y-1} = -f_l/P, with P = F(cut_y - x'b) - F(cut_{y-1} - x'b)."""
    F, f = _ordered_cdf(model)
    k = X.shape[1]
    cuts = theta[k:]
    J = len(cuts) + 1
    upper_all = np.concatenate([cuts, [np.inf]])
    lower_all = np.concatenate([[-np.inf], cuts])

    def ordered(y: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        Xr, eta, wr = _sel(X, rows), _sel(eta_all, rows), _sel(w, rows)
        yi = y.astype("int64")
        zu, zl = upper_all[yi] - eta, lower_all[yi] - eta
        Fu, Fl = F(zu), F(zl)
        fu = np.where(np.isfinite(zu), f(np.where(np.isfinite(zu), zu, 0.0)), 0.0)
        fl = np.where(np.isfinite(zl), f(np.where(np.isfinite(zl), zl, 0.0)), 0.0)
        P = np.maximum(Fu - Fl, 1e-300)
        out = np.zeros((len(y), k + J - 1))
        out[:, :k] = (-(fu - fl) / P)[:, None] * Xr
        idx = np.arange(len(y))
        up = yi < J - 1
        out[idx[up], k + yi[up]] += fu[up] / P[up]
        lo = yi > 0
        out[idx[lo], k + yi[lo] - 1] -= fl[lo] / P[lo]
        return out * wr[:, None]

    return ordered


# ---------------------------------------------------------------------------------------------


@dataclass
class _System:
    """One checkpoint's score system on the group's rows: positions into the group's rows,
    the row-score function and the metric M (Q_c = S' M S)."""

    tag: str
    pos: np.ndarray
    score: Callable[[np.ndarray], np.ndarray]
    M: np.ndarray
    unit: np.ndarray | None = None  # scores linear in y: each row's (constant) change per unit of y
    # scores that change by a multiple of `unit` that depends on the code (an indicator of the
    # lowest value): per row the multipliers of an up and of a down move at codes y
    gate: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None

    def multipliers(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row of the sample (codes `y`) the multiple of `unit` an up and a down move add."""
        if self.gate is None:
            return np.ones(len(y)), -np.ones(len(y))
        return self.gate(y)


def _Q(S: list[np.ndarray], systems: list[_System]) -> float:
    return float(sum(s @ sy.M @ s for s, sy in zip(S, systems, strict=True)))


class _Search:
    """State of the discrete search: the codes, each system's summed score, Q, and for scores
    not linear in y each row's cached one-step score changes (refreshed for moved rows)."""

    def __init__(
        self, y: np.ndarray, systems: list[_System], lo: np.ndarray, hi: np.ndarray
    ) -> None:
        self.y, self.systems, self.lo, self.hi = y, systems, lo, hi
        self.S = [sy.score(y[sy.pos]).sum(axis=0) for sy in systems]
        self.Q = _Q(self.S, systems)
        self.quad = [
            None if sy.unit is None else np.einsum("ij,ij->i", sy.unit @ sy.M, sy.unit)
            for sy in systems
        ]
        self.cache = [None if sy.unit is not None else self._moves(sy, None) for sy in systems]
        self.inv = []  # per system: each group row's position in its sample (-1: not in it)
        for sy in systems:
            inv = np.full(len(y), -1, dtype="int64")
            inv[sy.pos] = np.arange(len(sy.pos))
            self.inv.append(inv)

    def _moves(self, sy: _System, rows: np.ndarray | None) -> list[np.ndarray]:
        """Each row's score change under +1 and -1 (0 where blocked) and its quadratic term."""
        p = sy.pos if rows is None else sy.pos[rows]
        yc = self.y[p]
        base = sy.score(yc, rows)
        up = sy.score(np.where(yc + 1 > self.hi[p], yc, yc + 1), rows) - base
        down = sy.score(np.where(yc - 1 < self.lo[p], yc, yc - 1), rows) - base
        return [
            up,
            down,
            np.einsum("ij,ij->i", up @ sy.M, up),
            np.einsum("ij,ij->i", down @ sy.M, down),
        ]

    def change(self) -> np.ndarray:
        """(2, n): the exact change of Q when one row moves up (row 0) or down (row 1);
        inf where the move leaves the row's bounds."""
        n = len(self.y)
        dq = np.zeros((2, n))
        for s, sy, qd, cc in zip(self.S, self.systems, self.quad, self.cache, strict=True):
            g = 2.0 * (sy.M @ s)
            if cc is None:  # a multiple a of a fixed u: the change of Q is a u'g + a^2 u'Mu
                ug = sy.unit @ g
                a_up, a_down = sy.multipliers(self.y[sy.pos])
                dq[0, sy.pos] += a_up * ug + a_up**2 * qd
                dq[1, sy.pos] += a_down * ug + a_down**2 * qd
            else:
                dq[0, sy.pos] += cc[0] @ g + cc[2]
                dq[1, sy.pos] += cc[1] @ g + cc[3]
        dq[0, self.y + 1 > self.hi] = np.inf
        dq[1, self.y - 1 < self.lo] = np.inf
        return dq

    def descend(self, pool: np.ndarray, up: np.ndarray, q_stop: float) -> int:
        """Descent on the moves of the rows `pool` (direction `up`), each row moving at most
        once: repeatedly rank the still-unmoved rows by their exact change of Q at the current
        scores and take the prefix of that ranking that reaches q_stop, else the one with the
        lowest Q (Q of every prefix is exact: the rows' score changes add up). Applies the
        moves; returns how many."""
        D, quad = self._pool_effects(pool, up[pool])
        free = np.ones(len(pool), dtype=bool)
        S, Q = list(self.S), self.Q
        width = MAX_PREFIX  # moves ranked this step: 4 x the last prefix taken (soft terms
        # make prefixes short; ranking and summing 2^14 rows for each wastes the time)
        for _ in range(MAX_INNER):
            if Q <= max(q_stop, 1e-12):
                break
            dq = sum(d @ (2.0 * (sy.M @ s)) for d, s, sy in zip(D, S, self.systems, strict=True))
            dq = dq + quad
            cand = np.flatnonzero(free & (dq < -1e-12 * max(Q, 1e-12)))
            if len(cand) == 0:
                break
            K = min(len(cand), width)
            top = cand[np.argpartition(dq[cand], K - 1)[:K]] if K < len(cand) else cand
            order = top[np.argsort(dq[top], kind="stable")]
            V = [s + np.cumsum(d[order], axis=0) for d, s in zip(D, S, strict=True)]
            Qb = sum(
                np.einsum("ij,ij->i", v @ sy.M, v) for v, sy in zip(V, self.systems, strict=True)
            )
            hit = np.flatnonzero(Qb <= q_stop)
            j = int(hit[0]) if len(hit) else int(np.argmin(Qb))
            if not Qb[j] < Q:
                break
            free[order[: j + 1]] = False
            width = min(MAX_PREFIX, max(MIN_PREFIX, 4 * (j + 1)))
            S, Q = [v[j] for v in V], float(Qb[j])
        take = np.zeros(len(self.y), dtype=bool)
        take[pool[~free]] = True
        if take.any():
            self.apply(take, up, S, Q)
        return int(np.count_nonzero(take))

    def _pool_effects(
        self, pool: np.ndarray, up: np.ndarray
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Per system the score change of each pool row's move (0 outside its sample), and
        the summed quadratic terms d'Md of the moves."""
        D, quad = [], np.zeros(len(pool))
        for sy, cc, qd, inv in zip(self.systems, self.cache, self.quad, self.inv, strict=True):
            p = inv[pool]
            inside = p >= 0
            r, u = p[inside], up[inside]
            d = np.zeros((len(pool), sy.M.shape[0]))
            if cc is None:
                a_up, a_down = sy.multipliers(self.y[sy.pos[r]])
                a = np.where(u, a_up, a_down)
                d[inside] = a[:, None] * sy.unit[r]
                quad[inside] += a**2 * qd[r]
            else:
                d[inside] = np.where(u[:, None], cc[0][r], cc[1][r])
                quad[inside] += np.where(u, cc[2][r], cc[3][r])
            D.append(d)
        return D, quad

    def apply(self, take: np.ndarray, up: np.ndarray, S: list[np.ndarray], Q: float) -> None:
        self.y[take] += np.where(up[take], 1, -1)
        self.S, self.Q = S, Q
        for i, sy in enumerate(self.systems):
            cc = self.cache[i]
            rows = np.flatnonzero(take[sy.pos])
            if cc is not None and len(rows):
                for a, v in zip(cc, self._moves(sy, rows), strict=True):
                    a[rows] = v


def _bounds(v: float | np.ndarray, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(v, dtype="float64"), (n,))


SUBSAMPLE = 1 << 17  # rows the batches rank when there are more than twice as many
POLISH_BATCHES = 8  # batches on every row after the subsample's, when it ran out of moves


def correct_scores(
    y: np.ndarray,
    systems: list[_System],
    lo: float | np.ndarray,
    hi: float | np.ndarray,
    max_batches: int = MAX_BATCHES,
    q_stop: float = 0.0,
) -> tuple[np.ndarray, float, float, int]:
    """One-step moves of the codes `y` within [lo, hi] (scalars or per row) that lower
    Q = sum_c S_c' M_c S_c, until Q <= q_stop or no single move lowers it. Each batch finds
    every row's best move and its exact effect on Q, then descends on the improving ones
    (`_Search.descend`). Above 2 SUBSAMPLE rows the batches move rows of a fixed subsample
    (evenly spaced in row order; Q stays that of every row), then, when the subsample ran
    out of improving moves above q_stop, at most POLISH_BATCHES batches on every row.
    Returns (y, Q before, Q after, rows whose code changed)."""
    y0 = y.astype("int64")
    n = len(y0)
    lo_n, hi_n = _bounds(lo, n), _bounds(hi, n)
    if n <= 2 * SUBSAMPLE:
        st = _Search(y0.copy(), systems, lo_n, hi_n)
        Q0 = st.Q
        _batches(st, max_batches, q_stop)
        return st.y, Q0, st.Q, int(np.count_nonzero(st.y != y0))
    sub = np.unique(np.linspace(0, n - 1, SUBSAMPLE).astype("int64"))
    part = _Search(y0[sub], [_restricted(sy, sub, n) for sy in systems], lo_n[sub], hi_n[sub])
    part.S = [sy.score(y0[sy.pos]).sum(axis=0) for sy in systems]  # every row's sums
    part.Q = Q0 = _Q(part.S, systems)
    used = _batches(part, max_batches, q_stop)
    y1 = y0.copy()
    y1[sub] = part.y
    Q1 = part.Q
    if Q1 > max(q_stop, 1e-12) and used < max_batches:
        st = _Search(y1, systems, lo_n, hi_n)
        _batches(st, min(POLISH_BATCHES, max_batches), q_stop)
        y1, Q1 = st.y, st.Q
    return y1, Q0, Q1, int(np.count_nonzero(y1 != y0))


def _batches(st: _Search, max_batches: int, q_stop: float) -> int:
    """The batches of `correct_scores` on the search state `st` (changed in place); returns
    how many ran (max_batches when the cap stopped them)."""
    idx = np.arange(len(st.y))
    for b in range(max_batches):
        if st.Q <= max(q_stop, 1e-12):
            return b
        dq = st.change()
        direction = np.argmin(dq, axis=0)
        best = dq[direction, idx]
        cand = np.flatnonzero(best < -1e-12 * max(st.Q, 1e-12))
        if len(cand) == 0:
            return b
        if len(cand) > MAX_POOL:
            cand = cand[np.argpartition(best[cand], MAX_POOL - 1)[:MAX_POOL]]
        if st.descend(np.sort(cand), direction == 0, q_stop) == 0:
            return b
    return max_batches


def _restricted(sy: _System, sub: np.ndarray, n: int) -> _System:
    """The system `sy` on the rows `sub` of the n group rows (positions into `sub`)."""
    local = np.full(n, -1, dtype="int64")
    local[sub] = np.arange(len(sub))
    at = np.flatnonzero(local[sy.pos] >= 0)  # positions into sy's sample
    score = sy.score

    def part(codes: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        return score(codes, at if rows is None else at[rows])

    unit = None if sy.unit is None else sy.unit[at]
    return replace(sy, pos=local[sy.pos[at]], score=part, unit=unit)


# ---------------------------------------------------------------------------------------------


def _theta(c: dict[str, Any], terms: list[str], model: str) -> np.ndarray:
    """Released parameters in design order (suppressed or unreleased coefficients at 0),
    then alpha or the cut points."""
    rel = {t["term"]: float(t["beta"]) for t in c.get("terms", []) if not t.get("suppressed")}
    beta = [rel.get(t, 0.0) for t in terms]
    if model == "nbreg":
        if "alpha" not in rel:
            raise CheckpointError(f"{c['tag']}: the release has no alpha")
        beta.append(rel["alpha"])
    if model in GLM_ORDERED:
        J = len(c.get("outcome_levels") or c.get("levels") or [])
        names = [f"cut{j}" for j in range(1, J)]
        missing = [m for m in names if m not in rel]
        if missing or J < 2:
            raise CheckpointError(
                f"{c['tag']}: the release lacks cut points {', '.join(missing) or '(no levels)'}"
            )
        beta.extend(rel[m] for m in names)
    return np.asarray(beta, dtype="float64")


def _support(group: list[dict[str, Any]]) -> tuple[str, list | None]:
    """('binary' | 'ordered' | 'count', ordered levels): the strictest support any
    maximum-likelihood checkpoint of the group imposes."""
    models = [c["model"] for c in group]
    if any(m in GLM_BINARY for m in models):
        return "binary", None
    for c in group:
        if c["model"] in GLM_ORDERED:
            return "ordered", list(c.get("outcome_levels") or c.get("levels") or [])
    return "count", None


def _draw(
    model: str,
    X: np.ndarray,
    theta: np.ndarray,
    rng: np.random.Generator,
    dispersion: float | None = None,
) -> np.ndarray:
    """Outcome codes drawn from the model at theta (one draw per row). A Poisson checkpoint
    with released Pearson dispersion φ > 1 draws from the NB2 mixture with the same mean and
    α = (φ − 1) / mean(μ) (E Σ (y − μ)²/μ = n + α Σ μ), so robust SEs see the overdispersion
    the original counts had; the coefficients are the Poisson ones either way."""
    from scipy import special, stats  # lazy: scipy.stats is slow to import in every pin job

    k = X.shape[1]
    eta = X @ theta[:k]
    u = rng.random(len(eta))
    if model == "logit":
        return (u < special.expit(eta)).astype("int64")
    if model == "probit":
        return (u < special.ndtr(eta)).astype("int64")
    if model == "poisson":
        mu = np.exp(eta)
        if dispersion is not None and np.isfinite(dispersion) and dispersion > 1.0 and len(mu):
            a = (dispersion - 1.0) / float(np.mean(mu))
            lam = rng.gamma(shape=1.0 / a, scale=a * mu)
            return stats.poisson.ppf(u, lam).astype("int64")
        return stats.poisson.ppf(u, mu).astype("int64")
    if model == "nbreg":
        a = theta[k]
        lam = rng.gamma(shape=1.0 / a, scale=a * np.exp(eta))
        return stats.poisson.ppf(u, lam).astype("int64")
    F, _ = _ordered_cdf(model)
    cum = F(theta[k:][None, :] - eta[:, None])
    return (u[:, None] > cum).sum(axis=1).astype("int64")


def _start_codes(col: pd.Series, kind: str, levels: list | None) -> tuple[np.ndarray, np.ndarray]:
    """(codes, invalid): the synthesized outcome as codes of the support, and the rows whose
    value has none (missing, or not a released category); those get a code from the model."""
    if kind == "ordered":
        c = outcome_codes(col, levels or [])
        return np.where(c < 0, 0, c), c < 0
    v = pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64")
    bad = ~np.isfinite(v)
    v = np.where(bad, 0.0, v)
    if kind == "binary":
        return (v > 0.5).astype("int64"), bad
    return np.maximum(np.round(v), 0).astype("int64"), bad


def _values_of(codes: np.ndarray, kind: str, levels: list | None, like: pd.Series) -> np.ndarray:
    """Codes back to outcome values in the column's own type."""
    if pd.api.types.is_bool_dtype(like):
        return codes.astype(bool)
    if kind == "ordered":
        vals = np.asarray(levels, dtype=object)[codes]
        if pd.api.types.is_numeric_dtype(like):
            return vals.astype(like.dtype if not pd.api.types.is_integer_dtype(like) else "int64")
        return vals
    return codes


def _with_placeholder(df: pd.DataFrame, outcome: str, kind: str, levels: list | None) -> pd.Series:
    """Set every non-missing outcome value to a valid one (the sample and design then do not
    depend on the synthesized outcome); returns the original column."""
    orig = df[outcome]
    ph = levels[0] if kind == "ordered" and levels else 0
    new = orig.astype(object).where(orig.isna(), ph)
    if pd.api.types.is_numeric_dtype(orig) or kind != "ordered":
        new = pd.to_numeric(new, errors="coerce")
    df[outcome] = new
    return orig


def _gap(c: dict[str, Any], fit: Any) -> tuple[float, float]:
    """Largest |b - b*| / SE_target and / SE_synthetic over the released terms."""
    pos = {t: j for j, t in enumerate(fit.terms)}
    g_t = g_s = 0.0
    for t in c.get("terms", []):
        if t.get("suppressed"):
            continue
        if t["term"] not in pos:
            return float("inf"), float("inf")
        j = pos[t["term"]]
        db = abs(float(fit.beta[j]) - float(t["beta"]))
        g_t = max(g_t, db / t["se"] if t["se"] > 0 else float("inf"))
        g_s = max(g_s, db / fit.se[j] if fit.se[j] > 0 else float("inf"))
    return g_t, g_s


def _marginal_drift(
    codes: np.ndarray, w: np.ndarray, kind: str, c: dict[str, Any]
) -> dict[str, Any]:
    """Drift of the pinned outcome's (weighted) mean or category shares from the released
    ones, in sampling standard errors of the sample."""
    n = len(codes)
    wn = w / w.sum()
    if kind == "ordered" and c.get("outcome_shares"):
        rel = np.asarray(c["outcome_shares"], dtype="float64")
        got = np.bincount(codes, weights=wn, minlength=len(rel))[: len(rel)]
        se = np.sqrt(np.maximum(rel * (1 - rel), 1e-12) / n)
        return {
            "shares_target": rel.tolist(),
            "shares_synthetic": got.tolist(),
            "max_drift_se": float(np.max(np.abs(got - rel) / se)),
        }
    if c.get("outcome_mean") is not None:
        m = float(c["outcome_mean"])
        got = float(np.sum(wn * codes))
        var = m * (1 - m) if kind == "binary" else float(np.var(codes)) or 1.0
        return {
            "mean_target": m,
            "mean_synthetic": got,
            "drift_se": float(abs(got - m) / np.sqrt(max(var, 1e-12) / n)),
        }
    return {}


def _released_range(
    release: dict[str, Any] | None, outcome: str, kind: str, levels: list | None
) -> tuple[float, float]:
    """(lowest, highest) code of the outcome's support: 0/1, the ordered categories, or for
    counts the released source-level marginal's smallest and largest value (levels of its
    frequency table, or its percentile grid's ends); counts without a released marginal are
    bounded below by 0 only."""
    if kind == "binary":
        return 0.0, 1.0
    if kind == "ordered":
        return 0.0, float(len(levels or []) - 1)
    m = ((release or {}).get("blocks", {}).get("all", {}).get("marginals", {})).get(outcome, {})
    vals = m.get("table", {}).get("levels") if m.get("kind") == "categorical" else m.get("grid")
    nums = [float(v) for v in vals or [] if isinstance(v, (int, float)) and not isinstance(v, bool)]
    nums = [v for v in nums if np.isfinite(v)]
    if not nums:
        return 0.0, float("inf")
    return float(max(0.0, np.ceil(min(nums)))), float(max(0.0, np.floor(max(nums))))


def _code_limits(
    z: np.ndarray, kind: str, levels: list | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """(largest code whose value <= z, smallest code whose value >= z) per row, or None when
    the outcome's categories are not increasing numbers (an ordering cannot bind them)."""
    if kind != "ordered":
        return np.floor(z), np.ceil(z)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in levels or []):
        return None
    lv = np.asarray(levels, dtype="float64")
    if len(lv) < 2 or not np.all(np.diff(lv) > 0):
        return None
    return (
        np.searchsorted(lv, z, side="right").astype("float64") - 1,
        np.searchsorted(lv, z, side="left").astype("float64"),
    )


def ordering_bounds(
    df: pd.DataFrame,
    rows: np.ndarray,
    outcome: str,
    orderings: list[dict[str, Any]],
    kind: str,
    levels: list | None,
    span: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-row (lo, hi) codes of `outcome` on the positions `rows`: the support `span`,
    narrowed by every released ordering that involves the outcome, at the partner column's
    current values (y <= z caps y at z; z <= y floors it; `implies` a => b is a <= b on 0/1).
    Rows where the partners leave no value keep the plain support. Returns the names of the
    orderings used."""
    lo = np.full(len(rows), span[0])
    hi = np.full(len(rows), span[1])
    used: list[str] = []
    for o in orderings:
        pair = (o.get("lo"), o.get("hi")) if o.get("kind") == "le" else (o.get("if"), o.get("then"))
        if outcome not in pair or pair[0] == pair[1] or None in pair:
            continue
        partner = pair[1] if pair[0] == outcome else pair[0]
        if partner not in df.columns:
            continue
        z = pd.to_numeric(df[partner].iloc[rows], errors="coerce").to_numpy(dtype="float64")
        limits = _code_limits(z, kind, levels)
        if limits is None:
            continue
        ok = np.isfinite(z)
        if pair[0] == outcome:
            hi = np.where(ok, np.minimum(hi, limits[0]), hi)
        else:
            lo = np.where(ok, np.maximum(lo, limits[1]), lo)
        used.append(f"{pair[0]} <= {pair[1]}")
    clash = lo > hi
    lo[clash], hi[clash] = span
    return lo, hi, used


@dataclass
class _Model:
    """One checkpoint of the group on the group's rows."""

    c: dict[str, Any]
    X: np.ndarray
    theta: np.ndarray
    pos: np.ndarray
    w: np.ndarray


def _designs(
    df: pd.DataFrame, group: list[dict[str, Any]], outcome: str, kind: str, levels: list | None
) -> tuple[list[tuple[dict[str, Any], Any]], list[str]]:
    """Each checkpoint's design, built with the outcome replaced by a valid placeholder (the
    samples then do not depend on the synthesized values); notes for those that fail."""
    notes: list[str] = []
    orig = _with_placeholder(df, outcome, kind, levels)
    designs = []
    try:
        for c in group:
            cp = checkpoint_from_release(c)
            try:
                d = build_design(
                    df,
                    cp,
                    f"checkpoint {cp.tag!r} on synthetic data",
                    released=released_terms(c),
                )
            except CheckpointError as exc:
                notes.append(str(exc))
                continue
            designs.append((c, d))
    finally:
        df[outcome] = orig
    return designs, notes


def _models(
    df: pd.DataFrame, designs: list[tuple[dict[str, Any], Any]], pos_of: np.ndarray
) -> tuple[list[_Model], list[str]]:
    out, notes = [], []
    for c, d in designs:
        try:
            theta = _theta(c, d.terms, c["model"])
        except CheckpointError as exc:
            notes.append(str(exc))
            continue
        pos = pos_of[df.index.get_indexer(d.index)]
        w = d.weights if d.weights is not None else np.ones(len(pos))
        out.append(_Model(c, d.X, theta, pos, w))
    return out, notes


def _fill_invalid(
    y: np.ndarray, invalid: np.ndarray, ml: list[_Model], rng: np.random.Generator
) -> np.ndarray:
    """Codes for the sample rows without a valid synthesized value: drawn from the first
    maximum-likelihood checkpoint whose sample holds them (0 if none does)."""
    y = y.copy()
    todo = invalid.copy()
    for m in ml:
        sel = np.flatnonzero(todo[m.pos])
        if len(sel):
            X = m.X[sel]
            y[m.pos[sel]] = _draw(m.c["model"], X, m.theta, rng, m.c.get("dispersion"))
            todo[m.pos[sel]] = False
    return y


def _system(m: _Model, y: np.ndarray, values: np.ndarray | None) -> _System:
    """The score system of one checkpoint, its metric taken at the codes `y`."""
    c = m.c
    if c["model"] in GLM_MODELS:
        fn = score_function(c["model"], m.X, m.w, m.theta, None)
        s = fn(y[m.pos])
        M = np.linalg.pinv(s.T @ s)
    else:
        scale = float(c.get("scale") or 1.0)
        fn = score_function("ols", m.X, m.w, m.theta, values, scale)
        M = np.linalg.pinv((m.X.T * m.w) @ m.X / scale)
    unit = None
    if c["model"] in ("logit", "probit", "poisson") or (
        c["model"] not in GLM_MODELS and values is None
    ):
        unit = fn(np.ones(len(m.pos))) - fn(np.zeros(len(m.pos)))
    return _System(c["tag"], m.pos, fn, M, unit)


def _kept_relations(
    df: pd.DataFrame,
    rows: np.ndarray,
    start: np.ndarray,
    outcome: str,
    group: list[dict[str, Any]],
) -> _System | None:
    """A soft system that holds the outcome's rank covariance with the columns outside every
    design of the group (at most MAX_KEEP, those most correlated with it) at its synthesized
    value: per row the standardized ranks r_i of those columns, S = sum (y_i - y0_i) r_i, in
    units of its sampling SE (M = KEEP_WEIGHT (R'R)^-1 / var y0). It steers the moves to rows
    whose change leaves those relations least changed."""
    used = {outcome} | {col for c in group for col in c.get("columns", [])}
    cand = [
        c
        for c in df.columns
        if c not in used
        and (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))
    ]
    var = float(np.var(start))
    Z = _most_related(df, rows, start, cand) if cand and var > 0 else None
    if Z is None:
        return None
    R = np.stack([pct_ranks(z) for z in Z.T]).T  # column-major, as pandas' frame gives it
    R[np.isnan(R)] = 0.5
    R = (R - R.mean(axis=0)) / np.maximum(R.std(axis=0), _EPS)
    M = KEEP_WEIGHT * np.linalg.pinv(R.T @ R) / var
    y0 = start.astype("int64")

    def score(y: np.ndarray, sel: np.ndarray | None = None) -> np.ndarray:
        r = slice(None) if sel is None else sel
        return (y - y0[r]).astype("float64")[:, None] * R[r]

    return _System("kept relations", np.arange(len(rows)), score, M, R)


def _hurdle(model: _Model, keep: _System | None, start: np.ndarray, zero: float) -> _System | None:
    """A soft system that holds the count's zero/positive split and its relation to the
    regressors of `model` and to the kept columns (`keep`) at the synthesized codes `start`:
    S = sum (z_i - z0_i) r_i with z = [y = zero] and r_i = (1, the standardized regressors,
    the kept columns' standardized ranks), in units of its sampling SE (M = HURDLE_WEIGHT
    (p(1-p) R'R)^-1, p the start's share at zero). Only a move between `zero` and the next
    value changes it, so the score correction prefers steps among the positive values."""
    z0 = start == zero
    p0 = float(np.mean(z0[model.pos])) if len(model.pos) else 0.0
    if not 0.0 < p0 < 1.0:
        return None
    n = len(start)
    sd = model.X.std(axis=0)
    varying = sd > _EPS
    Xs = np.zeros((n, int(varying.sum())))  # rows outside the model's sample at its mean
    Xs[model.pos] = (model.X[:, varying] - model.X[:, varying].mean(axis=0)) / sd[varying]
    kept = [keep.unit] if keep is not None and keep.unit is not None else []
    R = np.column_stack([np.ones(n), Xs, *kept])
    M = HURDLE_WEIGHT * np.linalg.pinv(p0 * (1.0 - p0) * (R.T @ R))
    z0f = z0.astype("float64")

    def score(y: np.ndarray, sel: np.ndarray | None = None) -> np.ndarray:
        r = slice(None) if sel is None else sel
        return ((y == zero).astype("float64") - z0f[r])[:, None] * R[r]

    def gate(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return -(y == zero).astype("float64"), (y == zero + 1).astype("float64")

    return _System("zero/positive split", np.arange(n), score, M, R, gate)


def _shares(start: np.ndarray, pos: np.ndarray) -> _System | None:
    """A soft system that holds the count's shares at the synthesized codes `start` (the
    released marginal): S_k = #{y in bin k} - #{y0 in bin k} over at most MAX_BINS bins of
    about equal share (the lowest value its own bin), in units of their sampling SEs
    (M = SHARES_WEIGHT diag(1 / (n p_k (1 - p_k)))). Steps among the positive values then
    spread over the levels instead of piling rows onto one."""
    vals, counts = np.unique(start[pos], return_counts=True)
    if len(vals) < 3:
        return None
    cum = np.cumsum(counts[1:]) / counts[1:].sum()
    edges = np.unique(np.searchsorted(cum, np.linspace(0, 1, MAX_BINS)[1:-1], side="right"))
    cuts = np.concatenate([[vals[0] + 0.5], vals[1:][edges[edges < len(vals) - 1]] + 0.5])
    cuts = np.unique(cuts)

    def bins(y: np.ndarray) -> np.ndarray:
        return np.searchsorted(cuts, y, side="right")

    L = len(cuts) + 1
    onehot0 = np.eye(L)[bins(start)]
    p = np.bincount(bins(start[pos]), minlength=L) / max(len(pos), 1)
    var = np.maximum(len(pos) * p * (1.0 - p), 1.0)

    def score(y: np.ndarray, sel: np.ndarray | None = None) -> np.ndarray:
        r = slice(None) if sel is None else sel
        return np.eye(L)[bins(y)] - onehot0[r]

    return _System(
        "released shares", np.arange(len(start)), score, SHARES_WEIGHT * np.diag(1 / var)
    )


def _most_related(
    df: pd.DataFrame, rows: np.ndarray, start: np.ndarray, cand: list[str]
) -> np.ndarray | None:
    """The values on `rows` of the (at most MAX_KEEP) columns of `cand` (the first
    MAX_KEEP_SCAN) whose correlation with the codes `start` is largest and above 0.05."""
    yc = start - start.mean()
    ysd = float(np.sqrt(np.mean(yc**2)))
    scored = []
    for c in cand[:MAX_KEEP_SCAN]:
        z = df[c].iloc[rows].to_numpy(dtype="float64", na_value=np.nan)
        if not np.isfinite(z).any():
            continue
        zc = np.nan_to_num(z - np.nanmean(z))
        r = abs(float(yc @ zc)) / max(float(np.sqrt(np.mean(zc**2))) * ysd * len(rows), _EPS)
        if r > 0.05:
            scored.append((-r, len(scored), z))
    if not scored:
        return None
    return np.column_stack([z for _, _, z in sorted(scored, key=lambda t: t[:2])[:MAX_KEEP]])


def _write(df: pd.DataFrame, outcome: str, rows: np.ndarray, vals: np.ndarray) -> None:
    col = df[outcome]
    out = col.copy()
    try:
        out.iloc[rows] = vals
    except (TypeError, ValueError):
        out = col.astype(object)
        out.iloc[rows] = vals
    df[outcome] = out


def _refit(
    df: pd.DataFrame, designs: list[tuple[dict[str, Any], Any]], kind: str, notes: list[str]
) -> tuple[str, dict[str, Any]]:
    """Refit every checkpoint of the group; (status, per-checkpoint record)."""
    status, records = "pinned", {}
    for c, _ in designs:
        cp = checkpoint_from_release(c)
        try:
            fit = fit_checkpoint(
                build_design(df, cp, released=released_terms(c)),
                cp,
                f"checkpoint {cp.tag!r} on synthetic data",
            )
        except CheckpointError as exc:
            notes.append(str(exc))
            status = "approximate"
            continue
        g_t, g_s = _gap(c, fit)
        rec: dict[str, Any] = {"model": c["model"], "max_dbeta_se_target": g_t, "max_dbeta_se": g_s}
        if c["model"] not in GLM_MODELS:
            rec["status"] = "approximate"
            notes.append(
                f"{c['tag']}: linear checkpoint on a {kind} outcome, pinned jointly through its normal equations (max {g_t:.3g} target SE)"
            )
        else:
            rec["status"] = "pinned" if g_t <= PIN_TOL else "approximate"
        if rec["status"] != "pinned":
            status = "approximate"
        records[c["tag"]] = rec
    return status, records


def _ml_within(records: dict[str, Any], tol: float) -> bool:
    """Every maximum-likelihood checkpoint refits within `tol` target SE."""
    return all(
        r["max_dbeta_se_target"] <= tol for r in records.values() if r["model"] in GLM_MODELS
    )


def pin_discrete_group(
    df: pd.DataFrame,
    group: list[dict[str, Any]],
    outcome: str,
    rng: np.random.Generator,
    release: dict[str, Any] | None = None,
) -> tuple[str, list[str], dict[str, Any]]:
    """Pin one outcome group holding maximum-likelihood checkpoints by changing as few of the
    synthesized outcome values as the score equations need (df is changed in place: only
    `outcome`, only on the estimation samples). `release` (the source's) gives the count's
    released range and the orderings to keep. Returns (status, notes, detail)."""
    kind, levels = _support(group)
    notes: list[str] = []
    if any(outcome in c.get("subset_columns", []) for c in group):
        notes.append(
            f"the subset of a checkpoint reads {outcome!r}: the sample moves with the outcome"
        )
    designs, dnotes = _designs(df, group, outcome, kind, levels)
    notes += dnotes
    if not designs:
        return "failed", notes, {}
    in_sample = np.zeros(len(df), dtype=bool)
    for _, d in designs:
        in_sample[df.index.get_indexer(d.index)] = True
    rows = np.flatnonzero(in_sample)
    pos_of = np.full(len(df), -1, dtype="int64")
    pos_of[rows] = np.arange(len(rows))
    models, mnotes = _models(df, designs, pos_of)
    notes += mnotes
    ml = [m for m in models if m.c["model"] in GLM_MODELS]
    if not ml:
        return "failed", notes, {}
    start, invalid = _start_codes(df[outcome].iloc[rows], kind, levels)
    lo, hi, used = ordering_bounds(
        df,
        rows,
        outcome,
        list((release or {}).get("orderings") or []),
        kind,
        levels,
        _released_range(release, outcome, kind, levels),
    )
    y0 = _fill_invalid(start, invalid, ml, rng)
    y = np.clip(y0, lo, hi).astype("int64")
    repaired = int(np.count_nonzero(y != y0))
    values = (
        np.asarray(levels, dtype="float64")
        if kind == "ordered" and all(isinstance(v, (int, float)) for v in levels or [])
        else None
    )
    keep = _kept_relations(df, rows, start, outcome, group)
    soft = [keep] if keep else []
    if kind == "count":
        zero = _released_range(release, outcome, kind, levels)[0]
        hurdle = _hurdle(ml[0], keep, y, zero)
        shares = _shares(y, ml[0].pos)
        soft += [s for s in (hurdle, shares) if s is not None]
    q0 = q1 = float("nan")
    # Rounds until the refit is close enough: with the soft terms (accepted within half the
    # tolerance), with them at SOFT_FALLBACK of their weight, then on the checkpoints alone,
    # then on them to the end.
    weak = [replace(sy, M=SOFT_FALLBACK * sy.M) for sy in soft]
    soft_batches = min(SOFT_BATCHES, MAX_BATCHES)
    rounds = (
        (Q_STOP, soft, PIN_TOL / 2, soft_batches),
        (Q_STOP, weak, PIN_TOL / 2, soft_batches),
        (Q_STOP, [], PIN_TOL, MAX_BATCHES),
        (0.0, [], PIN_TOL, MAX_BATCHES),
    )
    for q_stop, extra, tol, batches in rounds:
        systems = [_system(m, y, values) for m in models] + extra
        y, q_a, q1, _ = correct_scores(y, systems, lo, hi, batches, q_stop)
        q0 = q_a if np.isnan(q0) else q0
        _write(df, outcome, rows, _values_of(y, kind, levels, df[outcome]))
        round_notes: list[str] = []
        status, records = _refit(df, designs, kind, round_notes)
        if _ml_within(records, tol):
            break
    notes += round_notes
    changed = int(np.count_nonzero((y != start) | invalid))
    detail: dict[str, Any] = {
        "score_distance_draw": q0,
        "score_distance_pinned": q1,
        "rows_moved": int(np.count_nonzero(y != np.clip(y0, lo, hi))),
        "rows_changed": changed,
        "rows_drawn": int(invalid.sum()),
        "rows_repaired": repaired,
        "orderings": used,
        "checkpoints": records,
    }
    primary = ml[0]
    detail["outcome_drift"] = _marginal_drift(y[primary.pos], primary.w, kind, primary.c)
    notes += _summary_notes(detail, len(rows))
    return status, notes, detail


def _summary_notes(detail: dict[str, Any], n: int) -> list[str]:
    worst = max(
        (r["max_dbeta_se_target"] for r in detail["checkpoints"].values()), default=float("nan")
    )
    out = [
        f"started from the synthesized values: {detail['rows_changed']} of {n} sample rows changed "
        f"to satisfy the score equations ({detail['rows_drawn']} without a valid value drawn from "
        f"the model, {detail['rows_repaired']} moved into the released range and orderings); "
        f"max {worst:.3g} target SE"
    ]
    if detail["orderings"]:
        out.append("orderings kept: " + ", ".join(detail["orderings"]))
    dr = detail["outcome_drift"]
    if "drift_se" in dr:
        out.append(
            f"outcome mean {dr['mean_synthetic']:.4g} vs released {dr['mean_target']:.4g} ({dr['drift_se']:.2f} sampling SE)"
        )
    elif "max_drift_se" in dr:
        out.append(
            f"category shares within {dr['max_drift_se']:.2f} sampling SE of the released ones"
        )
    return out
