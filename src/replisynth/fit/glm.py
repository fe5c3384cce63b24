"""Reference fits of the maximum-likelihood checkpoints (logit, probit, poisson, nbreg,
ologit, oprobit), to Stata's numbers: Newton fits (`fit/mle_newton.py`) for the first four,
statsmodels for the ordered models (and as the tested reference for the others).
Method: docs/method.md, "Maximum-likelihood checkpoints".
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from replisynth.config.manifest import Checkpoint
from replisynth.core.errors import CheckpointError
from replisynth.core.options import GLM_BINARY, GLM_COUNT, GLM_ORDERED
from replisynth.fit.result import FitResult
from replisynth.stats.design import Design

ROBUST_MLE = ("nonrobust", "HC0", "HC1")


def cut_names(n_levels: int) -> list[str]:
    """Term names of the cut points of an ordered model with `n_levels` categories."""
    return [f"cut{j}" for j in range(1, n_levels)]


def normalised_weights(w: np.ndarray | None, n: int) -> np.ndarray | None:
    """Weights rescaled to mean 1 (so nonrobust SEs do not depend on the weights' scale)."""
    if w is None:
        return None
    w = np.asarray(w, dtype="float64")
    return w * (n / w.sum())


class _RowWeighted:
    """Mixin (first among the bases) giving a statsmodels likelihood model the log-likelihood
    sum_i w_i l_i: `weights` after endog and exog."""

    def __init__(self, endog, exog, weights, **kw):
        super().__init__(endog, exog, **kw)
        self.row_weights = np.asarray(weights, dtype="float64")

    def loglikeobs(self, params):
        return self.row_weights * super().loglikeobs(params)


def _weighted_discrete(base: type) -> type:
    """`base` (statsmodels Logit, Probit or Poisson, whose scores and Hessian factors are
    analytic) with log-likelihood sum_i w_i l_i."""

    class Weighted(_RowWeighted, base):  # type: ignore[misc, valid-type]
        def loglike(self, params):
            return float(np.sum(self.loglikeobs(params)))

        def score_obs(self, params):
            return self.row_weights[:, None] * super().score_obs(params)

        def score(self, params):
            return self.score_obs(params).sum(axis=0)

        def hessian(self, params):
            f = self.row_weights * self.hessian_factor(params)
            return (self.exog * f[:, None]).T @ self.exog

    Weighted.__name__ = f"Weighted{base.__name__}"
    return Weighted


def nb2_score_obs(y: np.ndarray, X: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Per-row NB2 score (n, k+1) at (b, alpha): x (y - mu)/(1 + alpha mu) and
    d l / d alpha = -r^2 [psi(y + r) - psi(r) + ln(r/(r + mu)) + 1 - (r + y)/(r + mu)], r = 1/alpha."""
    from scipy import special

    a = float(params[-1])
    mu = np.exp(X @ params[:-1])
    r = 1.0 / a
    sb = ((y - mu) / (1 + a * mu))[:, None] * X
    dr = special.digamma(y + r) - special.digamma(r) + np.log(r / (r + mu)) + 1 - (r + y) / (r + mu)
    return np.column_stack([sb, -r * r * dr])


def _weighted_nb2(endog: np.ndarray, exog: np.ndarray, weights: np.ndarray):
    """statsmodels' NB2 model with log-likelihood sum_i w_i l_i (fit by Newton, so alpha is
    on its natural scale). Its __init__ binds loglikeobs/score/hessian on the instance, so the
    weighted versions are bound there too: analytic score, Hessian by central differences."""
    from statsmodels.discrete.discrete_model import NegativeBinomial
    from statsmodels.tools.numdiff import approx_fprime

    m = NegativeBinomial(endog, exog, loglike_method="nb2")
    w = np.asarray(weights, dtype="float64")
    y, X = m.endog, m.exog
    raw = m.loglikeobs

    def natural(p):
        if (
            m._transparams
        ):  # statsmodels optimises log(alpha) with gradient-free/quasi-Newton methods only
            raise CheckpointError("weighted nbreg is fitted by Newton only")
        return np.asarray(p, dtype="float64")

    m.loglikeobs = lambda p: w * raw(p)
    m.loglike = lambda p: float(np.sum(m.loglikeobs(p)))
    m.score_obs = lambda p: w[:, None] * nb2_score_obs(y, X, natural(p))
    m.score = lambda p: m.score_obs(p).sum(axis=0)

    def hessian(p):
        h = approx_fprime(natural(p), m.score, centered=True)
        return (h + h.T) / 2

    m.hessian = hessian
    return m


def _weighted_ordered(base: type) -> type:
    """statsmodels' OrderedModel with log-likelihood sum_i w_i l_i (its score and Hessian
    are numerical derivatives of the log-likelihood, so they follow)."""

    class WeightedOrdered(_RowWeighted, base):  # type: ignore[misc, valid-type]
        pass

    return WeightedOrdered


def _cov_args(design: Design, cp: Checkpoint) -> dict:
    if cp.cluster:
        return {"cov_type": "cluster", "cov_kwds": {"groups": design.clusters}}
    if cp.vcov == "nonrobust":
        return {"cov_type": "nonrobust"}
    return {"cov_type": "HC0"}


def _check_vcov(cp: Checkpoint, label: str) -> None:
    if not cp.cluster and cp.vcov not in ROBUST_MLE:
        raise CheckpointError(
            f"{label}: vcov {cp.vcov!r} is not available for model {cp.model} (HC2/HC3 need the hat matrix of a "
            "linear model); use nonrobust, HC0, HC1 (Stata's vce(robust)) or cluster:<column>"
        )


def _fit(model, label: str, **kw):
    from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", PerfectSeparationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            res = model.fit(disp=0, **kw)
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise CheckpointError(
                f"{label}: statsmodels could not fit the model ({type(exc).__name__}: {exc}); check the formula, weights and vcov"
            ) from None
        except Exception as exc:  # PerfectSeparationError and friends
            raise CheckpointError(
                f"{label}: the model cannot be estimated ({type(exc).__name__}: {exc}); check for a regressor that predicts the outcome perfectly"
            ) from None
    conv = getattr(res, "mle_retvals", {}) or {}
    if conv.get("converged") is False:
        raise CheckpointError(
            f"{label}: the maximum-likelihood fit did not converge; check for separation (a regressor that predicts the outcome perfectly) or rescale the regressors"
        )
    return res


def pearson_dispersion(y: np.ndarray, eta: np.ndarray, w: np.ndarray | None, k: int) -> float:
    """Pearson chi-square over residual df of a Poisson fit, Σ w (y − μ)² / μ / (n − k): 1 under
    the model, larger with overdispersion (which robust SEs of a Poisson checkpoint reflect)."""
    mu = np.exp(eta)
    ww = np.ones(len(y)) if w is None else w
    df = len(y) - k
    return float(np.sum(ww * (y - mu) ** 2 / mu) / df) if df > 0 else 1.0


def fit_glm(
    design: Design, cp: Checkpoint, label: str, start: dict[str, float] | None = None
) -> FitResult:
    """Fit a logit/probit/poisson/nbreg/ologit/oprobit checkpoint; see the module docstring for
    weights and vcov. Returns the regressors' coefficients followed by `alpha` (nbreg) or the
    cut points (ordered models). `start` (term -> value, e.g. the released coefficients a
    refit should reproduce) warm-starts the Newton fits of logit/probit/poisson/nbreg."""
    _check_vcov(cp, label)
    if cp.model in GLM_ORDERED:
        return _fit_ordered(design, cp, label, start)
    n, k = design.X.shape
    w = normalised_weights(design.weights, n)
    beta, se = _newton_fit(design, cp, label, w, start)
    terms = list(design.terms)
    extra: dict = {"family": cp.model}
    if cp.model == "nbreg":
        terms.append("alpha")
        extra["alpha"] = float(beta[-1])
        if not beta[-1] > 0:
            raise CheckpointError(
                f"{label}: the estimated nbreg dispersion alpha is not positive ({beta[-1]:.3g}); the counts show no overdispersion, use model poisson"
            )
    if cp.model in GLM_BINARY or cp.model in GLM_COUNT:
        extra["outcome_mean"] = float(np.average(design.y, weights=w))
    if cp.model == "poisson":
        extra["dispersion"] = pearson_dispersion(design.y, design.X @ beta, w, len(beta))
    return FitResult(
        terms=terms,
        beta=beta,
        se=se,
        n=int(n),
        resid_df=float(n - len(beta)),
        scale=1.0,
        extra=extra,
    )


def _start_vector(design: Design, cp: Checkpoint, start: dict[str, float] | None):
    """The warm start in the design's parameter order (0 for a term it lacks, alpha 0.5);
    None without one."""
    if not start:
        return None
    names = list(design.terms) + (["alpha"] if cp.model == "nbreg" else [])
    default = {"alpha": 0.5}
    return np.array([float(start.get(t, default.get(t, 0.0))) for t in names])


def _newton_or_error(label: str, singular_hint: str, run: Callable[[], Any]) -> Any:
    """`run()` with the Newton solver's failures as one line naming the checkpoint."""
    from replisynth.fit.mle_newton import NotConverged

    try:
        return run()
    except NotConverged:
        raise CheckpointError(
            f"{label}: the maximum-likelihood fit did not converge; check for separation (a regressor that predicts the outcome perfectly) or rescale the regressors"
        ) from None
    except np.linalg.LinAlgError:
        raise CheckpointError(
            f"{label}: the information matrix of the fit is singular; check for {singular_hint}"
        ) from None


def _newton_fit(
    design: Design,
    cp: Checkpoint,
    label: str,
    w: np.ndarray | None,
    start: dict[str, float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(parameters, SEs) by `fit/mle_newton.py`; HC1 is HC0 x sqrt(n/(n-1)) (Stata's
    vce(robust) for ML models)."""
    from replisynth.fit.mle_newton import covariance, fit_mle

    n = design.X.shape[0]

    def run() -> tuple[Any, np.ndarray]:
        fit = fit_mle(cp.model, design.y, design.X, w, _start_vector(design, cp, start))
        return fit, covariance(fit, cp.vcov, design.clusters if cp.cluster else None)

    fit, cov = _newton_or_error(label, "a regressor that predicts the outcome perfectly", run)
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    if cp.vcov == "HC1":
        se = se * np.sqrt(n / (n - 1))
    return fit.params, se


def fit_glm_statsmodels(
    design: Design, cp: Checkpoint, label: str
) -> tuple[np.ndarray, np.ndarray]:
    """(parameters, SEs) of a logit/probit/poisson/nbreg checkpoint by statsmodels' discrete
    models (row-weighted as above): the reference `_newton_fit` is tested against."""
    from statsmodels.discrete.discrete_model import Logit, NegativeBinomial, Poisson, Probit

    base = {"logit": Logit, "probit": Probit, "poisson": Poisson, "nbreg": NegativeBinomial}[
        cp.model
    ]
    n = design.X.shape[0]
    w = normalised_weights(design.weights, n)
    kw = {"loglike_method": "nb2"} if cp.model == "nbreg" else {}
    if w is None:
        model = base(design.y, design.X, **kw)
    elif cp.model == "nbreg":
        model = _weighted_nb2(design.y, design.X, w)
    else:
        model = _weighted_discrete(base)(design.y, design.X, w)
    res = _fit(model, label, method="newton", maxiter=200, **_cov_args(design, cp))
    beta = np.asarray(res.params, dtype="float64")
    se = np.asarray(res.bse, dtype="float64")
    if cp.vcov == "HC1":
        se = se * np.sqrt(n / (n - 1))
    return beta, se


def _fit_ordered(
    design: Design, cp: Checkpoint, label: str, start: dict[str, float] | None = None
) -> FitResult:
    """Ordered logit/probit; parameters (b, cut_1..cut_{J-1}), fitted in that parameterisation
    (`mle_newton.fit_ordered`), so the SEs are the inverse information's (what the delta method
    gives from statsmodels' threshold increments)."""
    n = design.X.shape[0]
    codes = design.y.astype("int64")
    J = int(codes.max()) + 1 if len(codes) else 0
    present = np.bincount(codes, minlength=J)
    if J < 2 or np.any(present == 0):
        raise CheckpointError(
            f"{label}: the outcome {cp.outcome!r} has {int(np.sum(present > 0))} of its {J} categories in the sample; an ordered model needs at least two and every listed level present"
        )
    bad = [t for t in design.terms if t in cut_names(J)]
    if bad:
        raise CheckpointError(
            f"{label}: regressor name(s) {', '.join(bad)} clash with the cut point names; rename the column"
        )
    w = normalised_weights(design.weights, n)
    beta, se = _ordered_newton(design, cp, label, codes, w, J, start)
    shares = np.bincount(codes, weights=w, minlength=J) / (w.sum() if w is not None else n)
    return FitResult(
        terms=list(design.terms) + cut_names(J),
        beta=beta,
        se=se,
        n=int(n),
        resid_df=float(n - len(beta)),
        scale=1.0,
        extra={"family": cp.model, "outcome_shares": [float(s) for s in shares]},
    )


def _ordered_newton(
    design: Design,
    cp: Checkpoint,
    label: str,
    codes: np.ndarray,
    w: np.ndarray | None,
    J: int,
    start: dict[str, float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(b and cut points, SEs) of an ordered checkpoint; HC1 is HC0 x sqrt(n/(n-1))."""
    from replisynth.fit.mle_newton import covariance, fit_ordered

    n = len(codes)
    names = list(design.terms) + cut_names(J)
    p0 = None if not start else np.array([float(start.get(t, np.nan)) for t in names])
    distr = "logit" if cp.model == "ologit" else "probit"

    def run() -> tuple[Any, np.ndarray]:
        fit = fit_ordered(distr, codes, design.X, w, J, p0)
        return fit, covariance(fit, cp.vcov, design.clusters if cp.cluster else None)

    fit, V = _newton_or_error(
        label, "a regressor that predicts the outcome perfectly or an empty category", run
    )
    if cp.vcov == "HC1":
        V = V * (n / (n - 1))
    return fit.params, np.sqrt(np.maximum(np.diag(V), 0.0))
