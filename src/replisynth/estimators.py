"""Reference fits of checkpoints: statsmodels gives the numbers users trust.

OLS with analytic weights is statsmodels WLS (coefficients and every vcov match Stata's
`regress [aw=w]`, whose weights are rescaled to sum to N: WLS is invariant to that scale).
`vcov`: nonrobust, HC0-HC3, or cluster:<col> (Stata's small-sample correction, as statsmodels
applies by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .design import Design, collinear_terms
from .errors import CheckpointError
from .manifest import Checkpoint


@dataclass(frozen=True)
class FitResult:
    """Coefficients `beta` (k,), standard errors `se` (k,) under the checkpoint's vcov, the
    sample size, residual df and residual variance (`scale`), with formulaic term names.
    `extra` holds family-specific released quantities (variance components, nbreg alpha, ...)."""

    terms: list[str]
    beta: np.ndarray
    se: np.ndarray
    n: int
    resid_df: float
    scale: float
    extra: dict = field(default_factory=dict)


def fit_checkpoint(design: Design, cp: Checkpoint, where: str = "") -> FitResult:
    """Fit `cp` on its design; a singular design raises, naming the collinear terms."""
    import statsmodels.api as sm

    label = where or f"checkpoint {cp.tag!r}"
    n, k = design.X.shape
    if k == 0:
        raise CheckpointError(f"{label}: the formula has no regressors")
    if n <= k:
        raise CheckpointError(f"{label}: {n} observations for {k} coefficients; the model is not identified")
    bad = collinear_terms(design.X, design.terms)
    if bad:
        raise CheckpointError(
            f"{label}: singular design; these terms are collinear with the others: {', '.join(bad)} "
            "(drop them from the formula, or check for a constant or duplicated column)"
        )
    if cp.model in ("fe", "re", "iv"):
        from .linear_models import fit_linear_family

        return fit_linear_family(design, cp, label)
    if cp.model != "ols":
        from .glm import fit_glm

        return fit_glm(design, cp, label)
    if design.weights is not None:
        model = sm.WLS(design.y, design.X, weights=design.weights)
    else:
        model = sm.OLS(design.y, design.X)
    try:
        if cp.cluster:
            res = model.fit(cov_type="cluster", cov_kwds={"groups": design.clusters})
        else:
            res = model.fit(cov_type=cp.vcov)
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise CheckpointError(f"{label}: statsmodels could not fit the model ({exc}); check the formula, weights and vcov") from None
    return FitResult(
        terms=list(design.terms),
        beta=np.asarray(res.params, dtype="float64"),
        se=np.asarray(res.bse, dtype="float64"),
        n=int(n),
        resid_df=float(res.df_resid),
        scale=float(res.scale),
    )
