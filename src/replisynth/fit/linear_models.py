"""Linear model families `fe`, `re`, `iv`: reference fits by linearmodels and, for pinning,
the operator A with beta_hat = A y and the residual that can be rescaled without moving it.
Method: docs/method.md, "Linear model families".
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from replisynth.config.manifest import Checkpoint
from replisynth.core.errors import CheckpointError
from replisynth.fit.result import FitResult
from replisynth.stats.design import Design, collinear_terms

DEMEAN_TOL = (
    1e-13  # alternating projections stop when no column moves by more than this (relative L2)
)
DEMEAN_MAX_ITER = 10_000


def _weights(d: Design) -> np.ndarray:
    return d.weights if d.weights is not None else np.ones(len(d.y))


def _cov(cp: Checkpoint, d: Design) -> tuple[str, dict[str, Any]]:
    """linearmodels cov_type and fit keywords for the checkpoint's vcov."""
    if cp.cluster:
        return "clustered", {"debiased": True, "clusters": np.asarray(d.clusters)}
    if cp.vcov == "nonrobust":
        return "unadjusted", {"debiased": True}
    if cp.vcov in ("HC0", "HC1"):
        return "robust", {"debiased": cp.vcov == "HC1"}
    raise CheckpointError(
        f"checkpoint {cp.tag!r}: vcov {cp.vcov} is not available for model {cp.model}; use HC1 or cluster:<column>"
    )


# ---------------------------------------------------------------------------------------------
# fixed effects


def _group_means(M: np.ndarray, codes: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise weighted group means of the columns of M (n, k) for one code vector (n,)."""
    G = int(codes.max()) + 1
    D = sparse.csr_matrix(
        (np.ones(len(codes)), (np.arange(len(codes)), codes)), shape=(len(codes), G)
    )
    sums = D.T @ (w[:, None] * M)
    wsum = np.bincount(codes, weights=w, minlength=G)
    return (sums / wsum[:, None])[codes]


def demean(M: np.ndarray, codes: np.ndarray, w: np.ndarray) -> np.ndarray:
    """M (n, k) minus its W-orthogonal projection on the dummies of every column of `codes`
    (n, m): one pass for one effect, alternating projections (Gaure 2013) for two."""
    out = np.array(M, dtype="float64", copy=True)
    if out.ndim == 1:
        out = out[:, None]
    if codes.shape[1] == 1:
        return out - _group_means(out, codes[:, 0], w)
    sweeps = [_GroupSweep.of(codes[:, j], w) for j in range(codes.shape[1])]
    norm = np.sqrt((out**2).sum(axis=0))
    norm[norm == 0] = 1.0
    for _ in range(DEMEAN_MAX_ITER):
        moved = np.zeros(out.shape[1])
        for sweep in sweeps:
            moved += sweep.subtract_means(out)
        if np.max(np.sqrt(moved) / norm) < DEMEAN_TOL:
            break
    return out


class _GroupSweep:
    """One absorbed column's weighted group-mean operator, built once for the alternating
    projections: the (G, n) matrix of weights by group, the group weight totals and sizes."""

    def __init__(self, codes: np.ndarray, wsum: np.ndarray, Dw: sparse.csr_matrix) -> None:
        self.codes, self.wsum, self.Dw = codes, wsum, Dw
        self.sizes = np.bincount(codes, minlength=len(wsum)).astype("float64")

    @staticmethod
    def of(codes: np.ndarray, w: np.ndarray) -> _GroupSweep:
        G = int(codes.max()) + 1
        Dw = sparse.csr_matrix((w, (codes, np.arange(len(codes)))), shape=(G, len(codes)))
        return _GroupSweep(codes, np.bincount(codes, weights=w, minlength=G), Dw)

    def subtract_means(self, out: np.ndarray) -> np.ndarray:
        """out -= its weighted group means (in place); returns the squared L2 move per column."""
        means = (self.Dw @ out) / self.wsum[:, None]
        moved = np.einsum("ij,ij->j", means, means * self.sizes[:, None])
        np.subtract(out, np.take(means, self.codes, axis=0), out=out)
        return moved


def _has_const(X: np.ndarray) -> int | None:
    """Position of a constant non-zero column of X, or None."""
    for j in range(X.shape[1]):
        c = X[:, j]
        if c[0] != 0 and np.all(c == c[0]):
            return j
    return None


def _fe_transformed(
    d: Design, label: str, Xd: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(X_t, X_tilde, const position): X_tilde = M_D X (`Xd` if already computed); X_t adds
    back the weighted means when the formula has a constant (linearmodels' convention).
    Raises naming absorbed terms."""
    assert d.absorb is not None
    w = _weights(d)
    if Xd is None:
        Xd = demean(d.X, d.absorb, w)
    const = _has_const(d.X)
    norm = np.sqrt((d.X**2).sum(axis=0))
    dnorm = np.sqrt((Xd**2).sum(axis=0))
    gone = [
        d.terms[j]
        for j in range(d.X.shape[1])
        if j != const and dnorm[j] <= 1e-9 * max(norm[j], 1e-300)
    ]
    if gone:
        raise CheckpointError(
            f"{label}: these terms do not vary within the absorbed fixed effects and are absorbed by them: "
            f"{', '.join(gone)} (drop them from the formula)"
        )
    Xt = Xd.copy()
    if const is not None:
        Xt += (w @ d.X / w.sum())[None, :]
    bad = collinear_terms(Xt, d.terms)
    if bad:
        raise CheckpointError(
            f"{label}: once the fixed effects are absorbed these terms are collinear with the others: {', '.join(bad)}"
        )
    return Xt, Xd, const


def fit_fe_linearmodels(d: Design, cp: Checkpoint, label: str) -> Any:
    """The reference fe fit: linearmodels' AbsorbingLS (`fit_fe` reproduces its numbers; tests
    compare the two)."""
    from linearmodels.iv.absorbing import AbsorbingLS

    _fe_transformed(d, label)
    assert d.absorb is not None
    absorb = pd.DataFrame(
        {f"absorb{j}": pd.Categorical(d.absorb[:, j]) for j in range(d.absorb.shape[1])}
    )
    exog = pd.DataFrame(d.X, columns=d.terms)
    w = None if d.weights is None else pd.Series(d.weights)
    cov_type, kw = _cov(cp, d)
    mod = AbsorbingLS(pd.Series(d.y, name="y"), exog, absorb=absorb, weights=w)
    return mod.fit(cov_type=cov_type, **kw)


def absorbed_df(d: Design, has_const: bool, clustered: bool) -> int:
    """Degrees of freedom of the absorbed effects as linearmodels' debiased AbsorbingLS counts
    them: the levels present in each absorbed column, less one per column after the first and
    one more with a constant (singletons count; the rank of two-way dummies is not computed).
    Clustered with one absorbed column nested in the clusters: none (as PanelOLS and Stata)."""
    assert d.absorb is not None
    m = d.absorb.shape[1]
    levels = [int(pd.unique(d.absorb[:, j]).size) for j in range(m)]
    if clustered and m == 1 and d.clusters is not None and _nested(d.absorb[:, 0], d.clusters):
        return sum(levels) - (m - 1) - int(has_const) - (levels[0] - int(has_const))
    return sum(levels) - (m - 1) - int(has_const)


def _nested(effect: np.ndarray, clusters: np.ndarray) -> bool:
    """Every level of the effect lies in a single cluster."""
    _, e = np.unique(effect, return_inverse=True)
    _, c = np.unique(np.asarray(clusters), return_inverse=True)
    pairs = np.unique(e.ravel().astype("int64") * (int(c.max()) + 1) + c.ravel())
    return bool(pairs.size == int(e.max()) + 1)


class _Whitened:
    """Xw = sqrt(w) X, sw = sqrt(w) and B = (Xw'Xw)^-1 from the Cholesky factor of the
    column-equilibrated Gram matrix (as `estimators.OlsFactor`, which this layer cannot import)."""

    def __init__(self, Xw: np.ndarray, B: np.ndarray, sw: np.ndarray | None) -> None:
        self.Xw, self.B, self.sw = Xw, B, sw

    @staticmethod
    def of(X: np.ndarray, weights: np.ndarray | None) -> _Whitened:
        sw = None if weights is None else np.sqrt(weights)
        Xw = X if sw is None else X * sw[:, None]
        c = np.sqrt(np.einsum("ij,ij->j", Xw, Xw))
        c[c == 0] = 1.0
        Ri = np.linalg.inv(np.linalg.cholesky((Xw.T @ Xw) / np.outer(c, c)).T * c[None, :])
        return _Whitened(Xw, Ri @ Ri.T, sw)

    def solve(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(beta, whitened residual) of y, with one refinement step on the residual."""
        yw = y if self.sw is None else y * self.sw
        beta = self.B @ (self.Xw.T @ yw)
        beta = beta + self.B @ (self.Xw.T @ (yw - self.Xw @ beta))
        return beta, yw - self.Xw @ beta


def _sorted_codes(a: np.ndarray) -> np.ndarray:
    """`np.unique(a, return_inverse=True)[1]` (codes of the sorted levels) by hashing."""
    return pd.factorize(a.ravel(), sort=True)[0]


def _fe_cov(cp: Checkpoint, d: Design, f: _Whitened, e: np.ndarray, extra: int) -> np.ndarray:
    """Covariance of the absorbed regression on whitened data (X_t sqrt(w), residual e), with
    linearmodels' conventions: unadjusted and clustered debiased, HC0 not, HC1 debiased;
    debiased scales by n / (n - k - extra), clustered also by G/(G-1) (n-1)/n."""
    n, k = f.Xw.shape
    debias = n / (n - k - extra)
    if cp.cluster:
        assert d.clusters is not None
        g = _sorted_codes(np.asarray(d.clusters))
        G = int(g.max()) + 1
        Z = f.Xw * e[:, None]  # cluster sums by bincount: the same bits as np.add.at, in order
        S = np.column_stack([np.bincount(g, weights=Z[:, j], minlength=G) for j in range(k)])
        return f.B @ (S.T @ S) @ f.B * (debias * G / (G - 1) * (n - 1) / n)
    if cp.vcov == "nonrobust":
        return f.B * float(e @ e) / (n - k - extra)
    Xe = f.Xw * e[:, None]
    return f.B @ (Xe.T @ Xe) @ f.B * (debias if cp.vcov == "HC1" else 1.0)


def fit_fe(
    d: Design, cp: Checkpoint, label: str
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """(beta, SE, residual df, within residual) of an fe checkpoint as linearmodels'
    AbsorbingLS gives them, without it: the within transform of [y, X] (`demean`), the
    weighted means added back with a constant, OLS on the whitened data by a Cholesky
    factor (`_Whitened`) and the covariance with AbsorbingLS's degrees of freedom
    (`absorbed_df`, `_fe_cov`)."""
    assert d.absorb is not None
    _cov(cp, d)  # raises on a vcov the family does not take
    w = _weights(d)
    both = _within_xy(d, w)
    Xt, Xd, const = _fe_transformed(d, label, both[:, 1:])
    yt = both[:, 0] + (float(w @ d.y / w.sum()) if const is not None else 0.0)
    f = _Whitened.of(Xt, d.weights)
    beta, e = f.solve(yt)
    n, k = Xt.shape
    df_resid = float(n - k - absorbed_df(d, const is not None, clustered=False))
    extra = absorbed_df(d, const is not None, clustered=bool(cp.cluster))
    if n - k - extra <= 0 or df_resid <= 0:
        raise CheckpointError(f"{label}: no residual degrees of freedom left ({n} observations)")
    se = np.sqrt(np.diag(_fe_cov(cp, d, f, e, extra)))
    sw = f.sw if f.sw is not None else 1.0
    return beta, se, df_resid, e / sw


_REUSE = threading.local()  # `reuse_within`: per thread, whether on and the last design's X~


@contextmanager
def reuse_within() -> Iterator[None]:
    """While open (on this thread), `fit_fe` keeps the within transform of the last design's
    X and reuses it when the same design (X, absorbed codes and weights: the same arrays) is
    fitted again with another y, demeaning y alone: the pin refits one fe design many times
    while only the outcome moves. Dropped on exit (it holds n × k floats)."""
    _REUSE.on, _REUSE.last = True, None
    try:
        yield
    finally:
        _REUSE.on, _REUSE.last = False, None


def _within_xy(d: Design, w: np.ndarray) -> np.ndarray:
    """demean([y, X]) (n × (1 + k)); under `reuse_within`, X's part from the last fit of the
    same design."""
    assert d.absorb is not None
    if not getattr(_REUSE, "on", False):
        return demean(np.column_stack([d.y, d.X]), d.absorb, w)
    last = _REUSE.last
    if last is not None and last[0] is d.X and last[1] is d.absorb and last[2] is d.weights:
        return np.column_stack([demean(d.y, d.absorb, w), last[3]])
    both = demean(np.column_stack([d.y, d.X]), d.absorb, w)
    _REUSE.last = (d.X, d.absorb, d.weights, both[:, 1:])
    return both


def _fe_factors(d: Design, label: str) -> tuple[np.ndarray, np.ndarray]:
    """A = (X_t'WX_t)^-1 [X~'W + (X_t'w) w'/sum(w)] (the second part only with a constant):
    beta_hat of the absorbed regression, linear in y; returned as (X_t'WX_t, B) with B' the
    bracket (n × k)."""
    G, B, _, _, _ = fe_within_factors(d, label)
    return G, B


def fe_within_factors(
    d: Design, label: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int | None]:
    """(G, B) of `_fe_factors` plus what the pin moves the outcome along: X~ = M_D X (n × k),
    the weighted means m of X (with a constant, else None; X_t = X~ + 1 m') and the constant's
    position. A X~ = I off the constant, so y + X~ Delta pins the slopes without moving any
    (weighted) group mean."""
    w = _weights(d)
    Xt, Xd, const = _fe_transformed(d, label)
    B = Xd * w[:, None]
    means = None
    if const is not None:
        means = Xt.T @ w / w.sum()
        B = B + np.outer(w, Xt.T @ w) / w.sum()
    return (Xt * w[:, None]).T @ Xt, B, Xd, means, const


# ---------------------------------------------------------------------------------------------
# random effects


def _panel_frames(d: Design) -> tuple[np.ndarray, pd.MultiIndex]:
    """Row order sorting by entity (stable) and the (entity, period) index linearmodels needs;
    the period is the row's position within its entity (random effects do not use time)."""
    assert d.entity is not None
    order = np.argsort(d.entity, kind="stable")
    ent = d.entity[order]
    period = pd.Series(ent).groupby(ent).cumcount().to_numpy()
    return order, pd.MultiIndex.from_arrays([ent, period], names=["entity", "period"])


def _fit_re(d: Design, cp: Checkpoint, label: str) -> tuple[Any, np.ndarray]:
    """linearmodels RandomEffects fit and theta per row of the design (in design order)."""
    from linearmodels.panel import RandomEffects

    order, idx = _panel_frames(d)
    dep = pd.DataFrame({"y": d.y[order]}, index=idx)
    exog = pd.DataFrame(d.X[order], index=idx, columns=d.terms)
    w = None if d.weights is None else pd.DataFrame({"w": d.weights[order]}, index=idx)
    cov_type, kw = _cov(cp, d)
    if cov_type == "clustered":
        kw = {**kw, "clusters": np.asarray(d.clusters)[order], "group_debias": True}
    try:
        res = RandomEffects(dep, exog, weights=w).fit(cov_type=cov_type, **kw)
    except ValueError as exc:
        raise CheckpointError(
            f"{label}: linearmodels could not fit the random-effects model ({exc})"
        ) from None
    assert d.entity is not None
    theta = res.theta["theta"].reindex(d.entity).to_numpy(dtype="float64")
    return res, theta


def _re_factors(d: Design, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A at fixed theta: beta_hat = (X*'X*)^-1 X*' sqrt(w) (y - theta ybar_w), X* = sqrt(w)
    (X - theta Xbar_w), entity means weighted by w. Written as A y, A = (X*'X*)^-1 C' with
    C = (I - Theta P_w)' sqrt(w) X*, P_w the weighted entity-mean operator; returned as
    (X*'X*, C)."""
    assert d.entity is not None
    w = _weights(d)
    ent = d.entity.reshape(-1, 1)
    rw = np.sqrt(w)[:, None]
    Xs = rw * (d.X - theta[:, None] * _group_means(d.X, ent[:, 0], w))
    U = rw * Xs
    G = int(ent.max()) + 1
    tu = np.zeros((G, U.shape[1]))
    np.add.at(tu, ent[:, 0], theta[:, None] * U)
    wsum = np.bincount(ent[:, 0], weights=w, minlength=G)
    C = U - w[:, None] * (tu / wsum[:, None])[ent[:, 0]]
    return Xs.T @ Xs, C


# ---------------------------------------------------------------------------------------------
# instrumental variables


def _check_instruments(d: Design, label: str) -> None:
    """Raise when a column of Z = [exogenous | instruments] is a combination of earlier ones."""
    assert d.Z is not None and d.instruments is not None and d.n_exog is not None
    bad = collinear_terms(d.Z, d.terms[: d.n_exog] + d.instruments)
    if bad:
        raise CheckpointError(
            f"{label}: the instruments and exogenous regressors are collinear: {', '.join(bad)}"
        )


def _iv_xhat(d: Design, label: str) -> np.ndarray:
    """X_hat = Z (Z'WZ)^-1 Z'W X, the first-stage fitted regressors (exogenous ones unchanged)."""
    _check_instruments(d, label)
    assert d.Z is not None
    w = _weights(d)
    ZtW = (d.Z * w[:, None]).T
    return d.Z @ np.linalg.solve(ZtW @ d.Z, ZtW @ d.X)


def fit_iv(
    d: Design, cp: Checkpoint, label: str
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """(beta, SE, residual df n - k, structural residual y - X beta) of an iv checkpoint as
    linearmodels' IV2SLS gives them, without it (its
    pseudo-inverse of Z and pandas frames cost more than the fit): X_hat = Q Q'X from a
    QR of sqrt(w) Z, beta by OLS of sqrt(w) y on X_hat (`_Whitened`), and the covariance
    of the structural residual with IV2SLS's conventions (`_fe_cov` with no absorbed df)."""
    _cov(cp, d)  # raises on a vcov the family does not take
    n, k = d.X.shape
    if n - k <= 0:
        raise CheckpointError(f"{label}: no residual degrees of freedom left ({n} observations)")
    _check_instruments(d, label)
    assert d.Z is not None
    sw = None if d.weights is None else np.sqrt(d.weights)
    Xw = d.X if sw is None else d.X * sw[:, None]
    Zw = d.Z if sw is None else d.Z * sw[:, None]
    yw = d.y if sw is None else d.y * sw
    Q = np.linalg.qr(Zw)[0]
    Xh = Q @ (Q.T @ Xw)
    _check_first_stage(Xh.T @ Xw, np.einsum("ij,ij->j", Xw, Xw), label)
    f = _Whitened.of(Xh, None)
    beta, _ = f.solve(yw)
    e = yw - Xw @ beta
    if cp.cluster and len(np.unique(np.asarray(d.clusters))) < 2:
        raise ValueError("a clustered covariance needs at least two clusters")
    se = np.sqrt(np.diag(_fe_cov(cp, d, f, e, 0)))
    return beta, se, float(n - k), d.y - d.X @ beta


def _iv_factors(d: Design, label: str) -> tuple[np.ndarray, np.ndarray]:
    """A = (X_hat'WX)^-1 X_hat'W: 2SLS is linear in y; returned as (X_hat'WX, W X_hat)."""
    Xh = _iv_xhat(d, label)
    w = _weights(d)
    XhW = (Xh * w[:, None]).T
    M = XhW @ d.X
    _check_first_stage(M, np.einsum("i,ij,ij->j", w, d.X, d.X), label)
    return M, XhW.T


def _check_first_stage(M: np.ndarray, sq_norms: np.ndarray, label: str) -> None:
    """Raise when X_hat'WX is singular once its columns are scaled by the norms of sqrt(w) X's
    (`sq_norms`: their squares, sum_i w_i x_ij^2; a regressor in dollars squared beside an
    intercept is not a weak instrument; one that the instruments leave near zero is)."""
    c = np.sqrt(sq_norms)
    c[c == 0] = 1.0
    if not np.linalg.cond(M / np.outer(c, c)) <= 1e12:
        raise CheckpointError(
            f"{label}: the instruments do not identify the endogenous regressors (singular first stage)"
        )


# ---------------------------------------------------------------------------------------------
# public


def fit_linear_family(design: Design, cp: Checkpoint, label: str) -> Any:
    """Fit an fe checkpoint (`fit_fe`, linearmodels' AbsorbingLS numbers), an iv one
    (`fit_iv`, IV2SLS's numbers), an re one with linearmodels; returns estimators.FitResult with
    formulaic's term names and `scale` = sum(w e^2) / resid_df of the family's residual."""

    d = design
    if cp.model == "fe":
        return _own_result(d, label, "fixed-effects", lambda: fit_fe(d, cp, label))
    if cp.model == "iv":
        return _own_result(d, label, "instrumental-variables", lambda: fit_iv(d, cp, label))
    if cp.model != "re":
        raise CheckpointError(f"{label}: model {cp.model!r} is not a linear family")
    try:
        res, _ = _fit_re(d, cp, label)
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise CheckpointError(
            f"{label}: linearmodels could not fit the {cp.model} model ({exc}); check the formula, weights and vcov"
        ) from None
    df_resid = float(res.df_resid)
    extra = {
        "sigma2_u": float(res.variance_decomposition["Effects"]),
        "sigma2_e": float(res.variance_decomposition["Residual"]),
        "rho": float(res.variance_decomposition["Percent due to Effects"]),
    }
    if df_resid <= 0:
        raise CheckpointError(
            f"{label}: no residual degrees of freedom left ({len(d.y)} observations)"
        )
    params = res.params.reindex(d.terms)
    if params.isna().any():
        raise CheckpointError(
            f"{label}: linearmodels dropped terms: {', '.join(params.index[params.isna()])}"
        )
    weps = np.asarray(res.wresids, dtype="float64")
    scale = float(weps @ weps / df_resid)
    return FitResult(
        terms=list(d.terms),
        beta=params.to_numpy(dtype="float64"),
        se=res.std_errors.reindex(d.terms).to_numpy(dtype="float64"),
        n=int(len(d.y)),
        resid_df=df_resid,
        scale=scale,
        extra=extra,
    )


def _own_result(
    d: Design,
    label: str,
    family: str,
    fit: Callable[[], tuple[np.ndarray, np.ndarray, float, np.ndarray]],
) -> FitResult:
    """A FitResult of one of the fits written here (`fit_fe`, `fit_iv`: beta, SE, residual
    df, the family's residual), scale = sum(w e^2) / resid_df; a failure is one line."""
    try:
        beta, se, df_resid, resid = fit()
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise CheckpointError(
            f"{label}: the {family} fit failed ({exc}); check the formula, weights and vcov"
        ) from None
    return FitResult(
        terms=list(d.terms),
        beta=beta,
        se=se,
        n=int(len(d.y)),
        resid_df=df_resid,
        scale=float(np.sum(_weights(d) * resid * resid) / df_resid),
    )


def linear_factors(
    design: Design, cp: Checkpoint, label: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """(G, B) with A = G^-1 B' (G: k × k, B: n × k) and beta_hat = A y on the design's sample:
    the operator kept factored, so pinning applies it without a k × n matrix. For re, A is
    taken at the variance components of the current data (refitted here), so pinning
    iterates to a fixed point."""
    label = label or f"checkpoint {cp.tag!r}"
    if cp.model == "fe":
        return _fe_factors(design, label)
    if cp.model == "iv":
        return _iv_factors(design, label)
    if cp.model == "re":
        _, theta = _fit_re(design, cp, label)
        return _re_factors(design, theta)
    raise CheckpointError(f"{label}: model {cp.model!r} is not a linear family")


def linear_operator(design: Design, cp: Checkpoint, label: str = "") -> np.ndarray:
    """A (k × n) with beta_hat = A y on the design's sample (`linear_factors` made dense)."""
    G, B = linear_factors(design, cp, label)
    return np.linalg.solve(G, B.T)


def re_matched_outcome(
    design: Design, cp: Checkpoint, beta: np.ndarray, sigma2_u: float, sigma2_e: float
) -> np.ndarray | None:
    """Random effects, inference fidelity: y' = X b + f_e M_D e + f_b P e (e = y - X b, P the
    weighted entity means, M_D = I - P) so that the refit's variance components are the
    released ones. The within residual of y' is f_e times that of y and the between residual
    f_b times, so s2_e' = f_e^2 s2_e and s2_u' = f_b^2 S_b - s2_e'/T_bar (S_b the between
    residual variance, T_bar the harmonic mean of T_i, as linearmodels). beta_hat moves with
    theta; a pin step afterwards restores it without touching either residual. None when the
    components cannot be matched (no between or within residual left)."""
    assert design.entity is not None
    w = _weights(design)
    ent = design.entity
    e = design.y - design.X @ beta
    pe = _group_means(e[:, None], ent, w)[:, 0]
    we = e - pe
    res, _ = _fit_re(design, cp, f"checkpoint {cp.tag!r}")
    s2e = (
        float(res.sigma2_eps)
        if hasattr(res, "sigma2_eps")
        else float(res.variance_decomposition["Residual"])
    )
    G = int(ent.max()) + 1
    first = np.unique(ent, return_index=True)[1]
    xbar = _group_means(design.X, ent, w)[first]
    ybar = _group_means(design.y[:, None], ent, w)[first, 0]
    coef, _, rank, _ = np.linalg.lstsq(xbar, ybar, rcond=None)
    df_b = G - int(rank)
    T = np.bincount(ent, minlength=G).astype("float64")
    t_bar = G / float(np.sum(1.0 / T))
    if df_b <= 0 or s2e <= 0:
        return None
    S_b = float(np.sum((ybar - xbar @ coef) ** 2)) / df_b
    if S_b <= 0:
        return None
    f_e = np.sqrt(sigma2_e / s2e)
    f_b = np.sqrt((sigma2_u + sigma2_e / t_bar) / S_b)
    return design.X @ beta + f_e * we + f_b * pe


def residual(design: Design, cp: Checkpoint, beta: np.ndarray) -> np.ndarray | None:
    """The residual r whose rescaling y <- y + (f - 1) r leaves beta_hat unchanged (A r = 0)
    and multiplies the residual variance by f^2: fe the within residual M_D (y - X b); iv the
    structural residual y - X b (orthogonal to X_hat); None for re (its variance components
    would move)."""
    e = design.y - design.X @ beta
    if cp.model == "iv":
        return e
    if cp.model == "fe":
        assert design.absorb is not None
        return demean(e, design.absorb, _weights(design))[:, 0]
    return None
