"""Layer 4 for outcomes with a discrete support (0/1, counts, ordered categories): pin the
maximum-likelihood checkpoints of one outcome, with any linear ones on it, by a model draw
and a score correction. Method: docs/method.md, "Maximum-likelihood checkpoints".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.manifest import checkpoint_from_release
from replisynth.core.errors import CheckpointError
from replisynth.core.options import GLM_BINARY, GLM_MODELS, GLM_ORDERED
from replisynth.fit.estimators import fit_checkpoint
from replisynth.fit.glm import nb2_score_obs
from replisynth.stats.design import build_design, outcome_codes, released_terms

PIN_TOL = 0.5  # |b - b*| / SE_target at which a discrete-outcome checkpoint counts as pinned
MAX_BATCHES = 400
_EPS = 1e-12


def is_discrete_group(group: list[dict[str, Any]]) -> bool:
    """Whether an outcome group holds a maximum-likelihood checkpoint (then it is pinned here)."""
    return any(c["model"] in GLM_MODELS for c in group)


# ---------------------------------------------------------------------------------------------
# per-row scores at fixed parameters, as functions of the outcome code


def _ordered_cdf(model: str) -> tuple[Callable, Callable]:
    from scipy import special, stats  # lazy: scipy.stats is slow to import in every pin job

    if model == "ologit":
        return special.expit, lambda z: special.expit(z) * special.expit(-z)
    return special.ndtr, stats.norm.pdf


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
    from scipy import special, stats  # lazy: scipy.stats is slow to import in every pin job

    k = X.shape[1]
    eta_all = X @ theta[:k]
    if model == "logit":
        p_all = special.expit(eta_all)
        factor = lambda y, r: y - p_all[r]  # noqa: E731
    elif model == "probit":
        F_all = np.clip(special.ndtr(eta_all), _EPS, 1 - _EPS)
        lam_all = stats.norm.pdf(eta_all) / (F_all * (1 - F_all))
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


def _Q(S: list[np.ndarray], systems: list[_System]) -> float:
    return float(sum(s @ sy.M @ s for s, sy in zip(S, systems, strict=True)))


def correct_scores(
    y: np.ndarray, systems: list[_System], lo: int, hi: float, max_batches: int = MAX_BATCHES
) -> tuple[np.ndarray, float, float, int]:
    """Greedy batched one-step moves of the codes `y` within [lo, hi] that lower
    Q = sum_c S_c' M_c S_c; returns (y, Q before, Q after, rows moved)."""
    y = y.astype("int64").copy()
    n = len(y)
    S = [sy.score(y[sy.pos]).sum(axis=0) for sy in systems]
    Q0 = Q = _Q(S, systems)
    batch = max(1, int(np.sqrt(n)))
    moved = np.zeros(n, dtype=bool)
    quad = [
        None if sy.unit is None else np.einsum("ij,ij->i", sy.unit @ sy.M, sy.unit)
        for sy in systems
    ]
    # nonlinear systems: each row's score change under +1 / -1 and its quadratic term, cached
    # and refreshed only for the rows that moved (M is fixed)
    cache: list[list[np.ndarray] | None] = [None for _ in systems]

    def moves(sy: _System, rows: np.ndarray | None) -> list[np.ndarray]:
        yc = y[sy.pos] if rows is None else y[sy.pos[rows]]
        base = sy.score(yc, rows)
        up = sy.score(yc + 1 if not np.isfinite(hi) else np.minimum(yc + 1, int(hi)), rows) - base
        down = sy.score(np.maximum(yc - 1, lo), rows) - base
        return [
            up,
            down,
            np.einsum("ij,ij->i", up @ sy.M, up),
            np.einsum("ij,ij->i", down @ sy.M, down),
        ]

    for i, sy in enumerate(systems):
        if sy.unit is None:
            cache[i] = moves(sy, None)
    for _ in range(max_batches):
        if Q <= 1e-12:
            break
        dq = np.zeros((2, n))
        for s, sy, qd, cc in zip(S, systems, quad, cache, strict=True):
            g = 2.0 * (sy.M @ s)
            if cc is None:  # linear in y: the change of Q is +-u'g + u'Mu, u fixed
                ug = sy.unit @ g
                dq[0, sy.pos] += ug + qd
                dq[1, sy.pos] += qd - ug
            else:
                dq[0, sy.pos] += cc[0] @ g + cc[2]
                dq[1, sy.pos] += cc[1] @ g + cc[3]
        dq[0, y + 1 > hi] = np.inf
        dq[1, y - 1 < lo] = np.inf
        direction = np.argmin(dq, axis=0)
        best = dq[direction, np.arange(n)]
        cand = np.flatnonzero(best < -1e-12 * max(Q, 1e-12))
        if len(cand) == 0:
            break
        b = min(batch, len(cand))
        top = cand[np.argpartition(best[cand], b - 1)[:b]] if b < len(cand) else cand
        order = top[np.argsort(best[top], kind="stable")]
        while True:
            take = np.zeros(n, dtype=bool)
            take[order[:b]] = True
            newS = []
            for s, sy, cc in zip(S, systems, cache, strict=True):
                sel = take[sy.pos]
                up_move = direction[sy.pos][sel] == 0
                if cc is None:
                    newS.append(s + np.where(up_move, 1.0, -1.0) @ sy.unit[sel])
                else:
                    newS.append(s + np.where(up_move[:, None], cc[0][sel], cc[1][sel]).sum(axis=0))
            newQ = _Q(newS, systems)
            if newQ < Q or b == 1:
                break
            b = max(1, b // 2)
        if not newQ < Q:
            break
        y[take] += np.where(direction[take] == 0, 1, -1)
        moved |= take
        S, Q = newS, newQ
        for i, sy in enumerate(systems):
            if cache[i] is not None:
                rows = np.flatnonzero(take[sy.pos])
                if len(rows):
                    fresh = moves(sy, rows)
                    for a, v in zip(cache[i], fresh, strict=True):
                        a[rows] = v
        batch = min(2 * b, len(cand)) if b == min(batch, len(cand)) else max(1, b)
    return y, Q0, Q, int(moved.sum())


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


def _current_codes(col: pd.Series, kind: str, levels: list | None) -> np.ndarray:
    """The synthesized outcome as codes of the support (invalid values moved into it)."""
    if kind == "ordered":
        c = outcome_codes(col, levels or [])
        return np.where(c < 0, 0, c)
    v = pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64")
    v = np.nan_to_num(v)
    if kind == "binary":
        return (v > 0.5).astype("int64")
    return np.maximum(np.round(v), 0).astype("int64")


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


def pin_discrete_group(
    df: pd.DataFrame, group: list[dict[str, Any]], outcome: str, rng: np.random.Generator
) -> tuple[str, list[str], dict[str, Any]]:
    """Pin one outcome group holding maximum-likelihood checkpoints (df is changed in place:
    only `outcome`, only on the estimation samples). Returns (status, notes, detail)."""

    kind, levels = _support(group)
    notes: list[str] = []
    if any(outcome in c.get("subset_columns", []) for c in group):
        notes.append(
            f"the subset of a checkpoint reads {outcome!r}: the sample moves with the outcome"
        )
    orig = _with_placeholder(df, outcome, kind, levels)
    designs = []
    try:
        for c in group:
            cp = checkpoint_from_release(c)
            try:
                designs.append(
                    (
                        c,
                        build_design(
                            df,
                            cp,
                            f"checkpoint {cp.tag!r} on synthetic data",
                            released=released_terms(c),
                        ),
                    )
                )
            except CheckpointError as exc:
                notes.append(str(exc))
    finally:
        df[outcome] = orig
    if not designs:
        return "failed", notes, {}
    rows = np.unique(np.concatenate([df.index.get_indexer(d.index) for _, d in designs]))
    pos_of = np.full(len(df), -1, dtype="int64")
    pos_of[rows] = np.arange(len(rows))
    y = _current_codes(df[outcome].iloc[rows], kind, levels)
    values = (
        np.asarray(levels, dtype="float64")
        if kind == "ordered" and all(isinstance(v, (int, float)) for v in levels or [])
        else None
    )
    hi = float("inf") if kind == "count" else (1 if kind == "binary" else len(levels or []) - 1)
    systems: list[_System] = []
    drawn = False
    primary = None
    for c, d in designs:
        try:
            theta = _theta(c, d.terms, c["model"])
        except CheckpointError as exc:
            notes.append(str(exc))
            continue
        pos = pos_of[df.index.get_indexer(d.index)]
        w = d.weights if d.weights is not None else np.ones(len(pos))
        if c["model"] in GLM_MODELS and not drawn:
            y[pos] = np.clip(_draw(c["model"], d.X, theta, rng, c.get("dispersion")), 0, hi)
            drawn, primary = True, (c, pos, w)
        if c["model"] in GLM_MODELS:
            fn = score_function(c["model"], d.X, w, theta, None)
            s = fn(y[pos])
            M = np.linalg.pinv(s.T @ s)
        else:
            scale = float(c.get("scale") or 1.0)
            fn = score_function("ols", d.X, w, theta, values, scale)
            M = np.linalg.pinv((d.X.T * w) @ d.X / scale)
        unit = None
        if c["model"] in ("logit", "probit", "poisson") or (
            c["model"] not in GLM_MODELS and values is None
        ):
            unit = fn(np.ones(len(pos))) - fn(np.zeros(len(pos)))
        systems.append(_System(c["tag"], pos, fn, M, unit))
    if not drawn:
        return "failed", notes, {}
    y, q0, q1, n_moved = correct_scores(y, systems, 0, hi, max_batches=MAX_BATCHES)
    col = df[outcome]
    vals = _values_of(y, kind, levels, col)
    out = col.copy()
    try:
        out.iloc[rows] = vals
    except (TypeError, ValueError):
        out = col.astype(object)
        out.iloc[rows] = vals
    df[outcome] = out
    detail: dict[str, Any] = {
        "score_distance_draw": q0,
        "score_distance_pinned": q1,
        "rows_moved": n_moved,
        "checkpoints": {},
    }
    status = "pinned"
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
        detail["checkpoints"][c["tag"]] = rec
    pc, ppos, pw = primary
    detail["outcome_drift"] = _marginal_drift(y[ppos], pw, kind, pc)
    worst = max(
        (r["max_dbeta_se_target"] for r in detail["checkpoints"].values()), default=float("nan")
    )
    notes.append(
        f"drawn at the released parameters, {n_moved} of {len(rows)} sample rows moved to satisfy the score equations; max {worst:.3g} target SE"
    )
    dr = detail["outcome_drift"]
    if "drift_se" in dr:
        notes.append(
            f"outcome mean {dr['mean_synthetic']:.4g} vs released {dr['mean_target']:.4g} ({dr['drift_se']:.2f} sampling SE)"
        )
    elif "max_drift_se" in dr:
        notes.append(
            f"category shares within {dr['max_drift_se']:.2f} sampling SE of the released ones"
        )
    return status, notes, detail
