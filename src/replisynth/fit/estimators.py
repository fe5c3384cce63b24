"""Reference fits of checkpoints: the numbers users trust (statsmodels', Stata's); OLS/WLS
computed here. Method: docs/method.md, "Reference fits: ols".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from replisynth.config.manifest import Checkpoint
from replisynth.core.errors import CheckpointError
from replisynth.fit.result import FitResult
from replisynth.stats.design import Design, collinear_terms


def fit_checkpoint(
    design: Design, cp: Checkpoint, where: str = "", start: dict[str, float] | None = None
) -> FitResult:
    """Fit `cp` on its design; a singular design raises, naming the collinear terms.
    `start` (term -> value) warm-starts an iterative (maximum-likelihood) fit."""
    label = where or f"checkpoint {cp.tag!r}"
    n, k = design.X.shape
    if k == 0:
        raise CheckpointError(f"{label}: the formula has no regressors")
    if n <= k:
        raise CheckpointError(
            f"{label}: {n} observations for {k} coefficients; the model is not identified"
        )
    bad = collinear_terms(design.X, design.terms)
    if bad:
        raise CheckpointError(
            f"{label}: singular design; these terms are collinear with the others: {', '.join(bad)} "
            "(drop them from the formula, or check for a constant or duplicated column)"
        )
    if cp.cluster and design.clusters is not None and len(np.unique(design.clusters)) < 2:
        raise CheckpointError(
            f"{label}: vcov cluster:{cp.cluster} needs at least 2 clusters in the estimation sample and "
            "it has 1; use HC1, or another cluster column"
        )
    if cp.model in ("fe", "re", "iv"):
        from replisynth.fit.linear_models import fit_linear_family

        return fit_linear_family(design, cp, label)
    if cp.model != "ols":
        from replisynth.fit.glm import fit_glm

        return fit_glm(design, cp, label, start)
    try:
        beta, se, df_resid, scale = ols_fit(
            design.y, design.X, design.weights, cp.vcov, design.clusters if cp.cluster else None
        )
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise CheckpointError(
            f"{label}: the least-squares fit failed ({exc}); check the formula, weights and vcov"
        ) from None
    return FitResult(
        terms=list(design.terms), beta=beta, se=se, n=int(n), resid_df=df_resid, scale=scale
    )


@dataclass(frozen=True)
class OlsFactor:
    """The y-free part of `ols_fit` for one design: Xw = sqrt(w) X, R^-1 and B = (Xw'Xw)^-1,
    so fits of several outcomes on one design share the n·k² Gram product (and give the same
    bits as `ols_fit`, which runs through this)."""

    Xw: np.ndarray
    Ri: np.ndarray
    B: np.ndarray
    sw: np.ndarray | None

    @staticmethod
    def of(X: np.ndarray, weights: np.ndarray | None) -> OlsFactor:
        sw = None if weights is None else np.sqrt(weights)
        Xw = X if sw is None else X * sw[:, None]
        # R from the Cholesky factor of the column-equilibrated Gram matrix (one n·k² product;
        # a Householder QR of a tall design costs several times more), then the semi-normal equations
        # R'R b = Xw'yw with one refinement step on the residual (corrected semi-normal equations,
        # Björck 1987): on the benchmark designs (cond(X) up to 3e4) within 1e-11 SE of statsmodels.
        c = np.sqrt(np.einsum("ij,ij->j", Xw, Xw))
        c[c == 0] = 1.0
        R = np.linalg.cholesky((Xw.T @ Xw) / np.outer(c, c)).T * c[None, :]
        Ri = np.linalg.inv(R)
        return OlsFactor(Xw, Ri, Ri @ Ri.T, sw)

    def solve(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(beta, whitened residual e, scale e'e / (n - k)) of the outcome y."""
        Xw, B = self.Xw, self.B
        yw = y if self.sw is None else y * self.sw
        beta = B @ (Xw.T @ yw)
        e = yw - Xw @ beta
        beta = beta + B @ (Xw.T @ e)
        e = yw - Xw @ beta
        return beta, e, float(e @ e / (Xw.shape[0] - Xw.shape[1]))


def ols_fit(
    y: np.ndarray,
    X: np.ndarray,
    weights: np.ndarray | None,
    vcov: str,
    clusters: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(beta, SE, residual df, scale) of OLS/WLS on a full-rank X (n × k), as statsmodels
    OLS/WLS computes them, without its pseudo-inverse (an SVD and an n × k pinv per fit).
    On the whitened data Xw = sqrt(w) X, with R'R = Xw'Xw (Cholesky): beta solves
    R'R b = Xw'yw (one refinement step), B = (Xw'Xw)^-1 = R^-1 R^-T,
    e = yw - Xw beta, scale = e'e / (n - k). nonrobust: scale B; HC0-HC3: B Xw' diag(u) Xw B
    with u = e², e² n/(n-k) (HC1), e²/(1-h), e²/(1-h)² (h = row sums of (Xw R^-1)², the leverages);
    cluster (`clusters` given): B S'S B · G/(G-1) · (n-1)/(n-k), S the per-cluster sums of
    Xw e (statsmodels' `cov_cluster` with its default correction, as Stata)."""
    n, k = X.shape
    f = OlsFactor.of(X, weights)
    Xw, Ri, B = f.Xw, f.Ri, f.B
    beta, e, scale = f.solve(y)
    df_resid = n - k
    if clusters is not None:
        _, codes = np.unique(clusters, return_inverse=True)
        codes = codes.ravel()
        G = int(codes.max()) + 1
        if G < 2:
            raise ValueError(
                "clustered standard errors need at least 2 clusters in the sample; this sample has 1 (use HC1, or another cluster column)"
            )
        S = np.column_stack(
            [np.bincount(codes, weights=Xw[:, j] * e, minlength=G) for j in range(k)]
        )
        cov = B @ (S.T @ S) @ B * (G / (G - 1.0)) * ((n - 1.0) / df_resid)
    elif vcov == "nonrobust":
        cov = scale * B
    else:
        u = e * e
        if vcov in ("HC2", "HC3"):
            XR = Xw @ Ri  # = Q
            h = np.einsum("ij,ij->i", XR, XR)
            u = u / (1.0 - h) if vcov == "HC2" else u / (1.0 - h) ** 2
        elif vcov not in ("HC0", "HC1"):
            raise ValueError(f"unknown vcov {vcov!r}")
        cov = B @ ((Xw * u[:, None]).T @ Xw) @ B
        if vcov == "HC1":
            cov = cov * (n / df_resid)
    return beta, np.sqrt(np.diag(cov)), float(df_resid), scale
