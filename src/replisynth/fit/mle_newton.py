"""Maximum-likelihood fits of logit, probit, poisson and nbreg (NB2) by Newton's method on the
accumulated X'WX (a Cholesky solve per step, halving steps that lower the likelihood),
with nonrobust, HC0 and cluster covariances from the same per-row pieces. The numbers of
statsmodels' discrete models (and of the row-weighted versions in `fit/glm.py`), without
their per-fit pseudo-inverse, numerical Hessians and result objects.
Method: docs/method.md, "Maximum-likelihood checkpoints: Newton fits".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ITER = 100
STEP_TOL = 1e-10  # largest |step| relative to 1 + |parameter| at convergence
MAX_HALVINGS = 40


class NotConverged(Exception):
    """Newton's method stopped without meeting the step tolerance."""


@dataclass(frozen=True)
class RowPieces:
    """Per-row log-likelihood `ll`, first derivative `g` and second derivative `h` of the
    log-likelihood in the linear index (NB2: and `ga`, `haa`, `hba` in alpha)."""

    ll: np.ndarray
    g: np.ndarray
    h: np.ndarray
    ga: np.ndarray | None = None
    haa: np.ndarray | None = None
    hba: np.ndarray | None = None


def _logit(y: np.ndarray, eta: np.ndarray) -> RowPieces:
    from scipy.special import expit

    p = expit(eta)
    return RowPieces(y * eta - np.logaddexp(0.0, eta), y - p, -p * (1.0 - p))


def _probit(y: np.ndarray, eta: np.ndarray) -> RowPieces:
    from scipy.special import log_ndtr

    q = 2.0 * y - 1.0
    z = q * eta
    logcdf = log_ndtr(z)
    lam = q * np.exp(-0.5 * z * z - 0.5 * np.log(2.0 * np.pi) - logcdf)
    return RowPieces(logcdf, lam, -lam * (lam + eta))


def _poisson(y: np.ndarray, eta: np.ndarray) -> RowPieces:
    from scipy.special import gammaln

    mu = np.exp(eta)
    return RowPieces(y * eta - mu - gammaln(y + 1.0), y - mu, -mu)


@dataclass(frozen=True)
class _Counts:
    """The distinct counts of an NB2 outcome, each row's index among them, and ln y!."""

    values: np.ndarray
    inverse: np.ndarray
    lgy1: np.ndarray

    @staticmethod
    def of(y: np.ndarray) -> _Counts:
        from scipy.special import gammaln

        vals, inv = np.unique(y, return_inverse=True)
        inv = inv.ravel()
        return _Counts(vals, inv, gammaln(vals + 1.0)[inv])


def _nb2(y: np.ndarray, eta: np.ndarray, alpha: float, counts: _Counts) -> RowPieces:
    """NB2 with mean mu = exp(eta) and variance mu + alpha mu^2; r = 1/alpha. In alpha:
    dl/da = -r^2 D, d2l/da2 = 2 r^3 D + r^4 D', D = psi(y+r) - psi(r) + ln(r/(r+mu)) + 1 -
    (r+y)/(r+mu). The special functions of y + r are evaluated once per distinct count."""
    from scipy.special import digamma, gammaln, polygamma

    a = alpha
    r = 1.0 / a
    vals, inv = counts.values, counts.inverse
    mu = np.exp(eta)
    am = 1.0 + a * mu
    lam = np.log1p(a * mu)
    lg = (gammaln(vals + r) - gammaln(r))[inv]
    ll = lg - counts.lgy1 - r * lam + y * (eta + np.log(a) - lam)
    d = (digamma(vals + r) - digamma(r))[inv] - np.log1p(mu / r) + 1.0 - (r + y) / (r + mu)
    dprime = (
        (polygamma(1, vals + r) - polygamma(1, r))[inv]
        + 1.0 / r
        - 1.0 / (r + mu)
        - (mu - y) / (r + mu) ** 2
    )
    return RowPieces(
        ll=ll,
        g=(y - mu) / am,
        h=-mu * (1.0 + a * y) / am**2,
        ga=-r * r * d,
        haa=2.0 * r**3 * d + r**4 * dprime,
        hba=-mu * (y - mu) / am**2,
    )


def _nb2_loglike(y: np.ndarray, eta: np.ndarray, alpha: float, counts: _Counts) -> np.ndarray:
    from scipy.special import gammaln

    r = 1.0 / alpha
    lam = np.log1p(alpha * np.exp(eta))
    lg = (gammaln(counts.values + r) - gammaln(r))[counts.inverse]
    return lg - counts.lgy1 - r * lam + y * (eta + np.log(alpha) - lam)


INDEX_MODELS = {"logit": _logit, "probit": _probit, "poisson": _poisson}
MODELS = (*INDEX_MODELS, "nbreg")


@dataclass(frozen=True)
class NewtonFit:
    """Parameters (NB2: alpha last), the negative Hessian and the per-row scores at them."""

    params: np.ndarray
    neg_hessian: np.ndarray
    scores: np.ndarray  # n x p, row weights applied
    loglike: float
    iterations: int


class _Problem:
    """The weighted log-likelihood of one model on (y, X, w) and its derivatives."""

    def __init__(self, model: str, y: np.ndarray, X: np.ndarray, w: np.ndarray | None) -> None:
        self.model, self.y, self.X = model, np.asarray(y, dtype="float64"), X
        self.w = np.ones(len(self.y)) if w is None else np.asarray(w, dtype="float64")
        self.k = X.shape[1]
        self._counts: _Counts | None = None

    @property
    def counts(self) -> _Counts:
        """The outcome's distinct counts (NB2), found once per fit."""
        if self._counts is None:
            self._counts = _Counts.of(self.y)
        return self._counts

    def pieces(self, p: np.ndarray) -> RowPieces:
        eta = self.X @ p[: self.k]
        if self.model == "nbreg":
            return _nb2(self.y, eta, float(p[-1]), self.counts)
        return INDEX_MODELS[self.model](self.y, eta)

    def loglike(self, p: np.ndarray) -> float:
        if self.model == "nbreg" and not p[-1] > 0:
            return -np.inf
        with np.errstate(all="ignore"):
            if self.model == "nbreg":
                rows = _nb2_loglike(self.y, self.X @ p[: self.k], float(p[-1]), self.counts)
            else:
                rows = self.pieces(p).ll
            v = float(self.w @ rows)
        return v if np.isfinite(v) else -np.inf

    def score_hessian(self, rp: RowPieces) -> tuple[np.ndarray, np.ndarray]:
        """Score vector and negative Hessian from the row pieces (X'WX accumulated once)."""
        X, w = self.X, self.w
        s = X.T @ (w * rp.g)
        H = X.T @ (X * (-(w * rp.h))[:, None])
        if self.model != "nbreg":
            return s, H
        assert rp.ga is not None and rp.haa is not None and rp.hba is not None
        hb = -(X.T @ (w * rp.hba))
        full = np.empty((self.k + 1, self.k + 1))
        full[: self.k, : self.k] = H
        full[: self.k, self.k] = full[self.k, : self.k] = hb
        full[self.k, self.k] = -float(w @ rp.haa)
        return np.append(s, float(w @ rp.ga)), full

    def scores(self, rp: RowPieces) -> np.ndarray:
        S = self.X * (self.w * rp.g)[:, None]
        if self.model == "nbreg":
            assert rp.ga is not None
            S = np.column_stack([S, self.w * rp.ga])
        return S


def _direction(score: np.ndarray, neg_h: np.ndarray) -> np.ndarray:
    """Newton direction; a gradient step scaled by the Hessian's diagonal where -H is not
    positive definite (far from the optimum of NB2's alpha)."""
    try:
        c = np.linalg.cholesky(neg_h)
        return np.linalg.solve(c.T, np.linalg.solve(c, score))
    except np.linalg.LinAlgError:
        d = np.abs(np.diag(neg_h))
        d[d == 0] = 1.0
        return score / d


def _line_search(prob: _Problem, p: np.ndarray, step: np.ndarray, ll: float) -> np.ndarray:
    t = 1.0
    for _ in range(MAX_HALVINGS):
        cand = p + t * step
        if prob.loglike(cand) >= ll - 1e-12 * (1.0 + abs(ll)):
            return cand
        t /= 2.0
    return p + t * step


def _start(prob: _Problem, start: np.ndarray | None) -> np.ndarray:
    if prob.model == "ordered" and start is not None:
        return np.asarray(start, dtype="float64").copy()
    if start is not None and np.all(np.isfinite(start)):
        p = np.asarray(start, dtype="float64").copy()
        if prob.model != "nbreg" or p[-1] > 0:
            return p
    if prob.model != "nbreg":
        return np.zeros(prob.k)
    b = newton(_Problem("poisson", prob.y, prob.X, prob.w), None).params
    mu = np.exp(prob.X @ b)
    a = float(np.sum(prob.w * ((prob.y - mu) ** 2 - prob.y)) / np.sum(prob.w * mu * mu))
    return np.append(b, min(max(a, 0.05), 10.0))


def newton(prob: _Problem, start: np.ndarray | None) -> NewtonFit:
    """Newton's method from `start` (zeros, or a Poisson fit for NB2, when None) to a step
    below STEP_TOL; the Hessian and scores are those at the returned parameters."""
    p = _start(prob, start)
    for it in range(1, MAX_ITER + 1):
        with np.errstate(all="ignore"):
            rp = prob.pieces(p)
            score, neg_h = prob.score_hessian(rp)
        ll = float(prob.w @ rp.ll)
        if not (np.isfinite(ll) and np.all(np.isfinite(neg_h)) and np.all(np.isfinite(score))):
            raise NotConverged("the likelihood is not finite")
        step = _direction(score, neg_h)
        if np.max(np.abs(step) / (1.0 + np.abs(p))) < STEP_TOL:
            return NewtonFit(p, neg_h, prob.scores(rp), ll, it)
        p = _line_search(prob, p, step, ll)
    raise NotConverged(f"no convergence in {MAX_ITER} Newton steps")


def fit_mle(
    model: str,
    y: np.ndarray,
    X: np.ndarray,
    w: np.ndarray | None,
    start: np.ndarray | None = None,
) -> NewtonFit:
    """Maximum-likelihood fit of `model` (logit, probit, poisson, nbreg) with row weights
    `w` (log-likelihood sum_i w_i l_i); `start` (NB2: alpha last) shortens the iterations."""
    return newton(_Problem(model, y, X, w), start)


def covariance(fit: NewtonFit, vcov: str, clusters: np.ndarray | None = None) -> np.ndarray:
    """nonrobust: (-H)^-1; HC0/HC1: (-H)^-1 S'S (-H)^-1 (HC1 is scaled by the caller);
    cluster: with per-cluster sums of the scores and statsmodels' (Stata's) correction
    G/(G-1) (n-1)/(n-p)."""
    c = np.linalg.cholesky(fit.neg_hessian)
    ci = np.linalg.inv(c)
    hinv = ci.T @ ci
    if clusters is None and vcov == "nonrobust":
        return hinv
    S = fit.scores
    n, p = S.shape
    if clusters is None:
        return hinv @ (S.T @ S) @ hinv
    _, codes = np.unique(clusters, return_inverse=True)
    codes = codes.ravel()
    G = int(codes.max()) + 1
    sums = np.column_stack([np.bincount(codes, weights=S[:, j], minlength=G) for j in range(p)])
    return hinv @ (sums.T @ sums) @ hinv * (G / (G - 1.0)) * ((n - 1.0) / (n - p))


def _cdf_pdf_slope(distr: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F(z), f(z) and f'(z) of the logistic or normal distribution (0 at z = ±inf)."""
    from scipy.special import expit, ndtr

    fin = np.isfinite(z)
    zf = np.where(fin, z, 0.0)
    if distr == "logit":
        F = expit(z)
        f = np.where(fin, F * (1.0 - F), 0.0)
        return F, f, np.where(fin, f * (1.0 - 2.0 * F), 0.0)
    F = ndtr(z)
    f = np.where(fin, np.exp(-0.5 * zf * zf) / np.sqrt(2.0 * np.pi), 0.0)
    return F, f, -zf * f


@dataclass(frozen=True)
class _OrderedPieces:
    """Per-row log-likelihood and its derivatives in u = cut_y+1 - eta and v = cut_y - eta."""

    ll: np.ndarray
    lu: np.ndarray
    lv: np.ndarray
    luu: np.ndarray
    lvv: np.ndarray
    luv: np.ndarray


class _Ordered:
    """Ordered logit/probit with Stata's parameters (b, cut_1..cut_{J-1}): P(y = j) =
    F(cut_{j+1} - x'b) - F(cut_j - x'b), cut_0 = -inf, cut_J = +inf; codes 0..J-1."""

    model = "ordered"

    def __init__(self, distr: str, codes: np.ndarray, X: np.ndarray, w: np.ndarray | None, J: int):
        self.distr, self.y, self.X, self.J = distr, np.asarray(codes, dtype="int64"), X, J
        self.w = np.ones(len(self.y)) if w is None else np.asarray(w, dtype="float64")
        self.k = X.shape[1]
        self.rows = [self.y == j for j in range(J)]

    def start(self) -> np.ndarray:
        from scipy.special import logit, ndtri

        shares = np.cumsum(np.bincount(self.y, weights=self.w, minlength=self.J))[:-1]
        q = np.clip(shares / self.w.sum(), 1e-6, 1 - 1e-6)
        return np.concatenate([np.zeros(self.k), logit(q) if self.distr == "logit" else ndtri(q)])

    def pieces(self, p: np.ndarray) -> _OrderedPieces:
        eta = self.X @ p[: self.k]
        cuts = np.concatenate([[-np.inf], p[self.k :], [np.inf]])
        Fu, fu, du = _cdf_pdf_slope(self.distr, cuts[self.y + 1] - eta)
        Fv, fv, dv = _cdf_pdf_slope(self.distr, cuts[self.y] - eta)
        P = Fu - Fv
        a, b = fu / P, fv / P
        return _OrderedPieces(np.log(P), a, -b, du / P - a * a, -dv / P - b * b, a * b)

    def loglike(self, p: np.ndarray) -> float:
        if np.any(np.diff(p[self.k :]) <= 0):
            return -np.inf
        with np.errstate(all="ignore"):
            v = float(self.w @ self.pieces(p).ll)
        return v if np.isfinite(v) else -np.inf

    def _cut_sums(self, at_u: np.ndarray, at_v: np.ndarray) -> list[np.ndarray]:
        """Per cut m (1..J-1): rows whose u is cut m (y = m-1) summed with `at_u`, rows whose
        v is cut m (y = m) with `at_v` (vectors over rows, or row-by-column matrices)."""
        return [
            at_u[self.rows[m - 1]].sum(axis=0) + at_v[self.rows[m]].sum(axis=0)
            for m in range(1, self.J)
        ]

    def score_hessian(self, rp: _OrderedPieces) -> tuple[np.ndarray, np.ndarray]:
        X, w, k, J = self.X, self.w, self.k, self.J
        score = np.concatenate(
            [-(X.T @ (w * (rp.lu + rp.lv))), self._cut_sums(w * rp.lu, w * rp.lv)]
        )
        H = np.zeros((k + J - 1, k + J - 1))
        H[:k, :k] = X.T @ (X * (w * (rp.luu + 2.0 * rp.luv + rp.lvv))[:, None])
        xu = X * (-(w * (rp.luu + rp.luv)))[:, None]
        xv = X * (-(w * (rp.luv + rp.lvv)))[:, None]
        for m, col in enumerate(self._cut_sums(xu, xv)):
            H[:k, k + m] = H[k + m, :k] = col
        H[k:, k:] = np.diag(self._cut_sums(w * rp.luu, w * rp.lvv))
        for m in range(1, J - 1):  # cut m+1 and cut m share the rows y = m
            H[k + m, k + m - 1] = H[k + m - 1, k + m] = float(
                w[self.rows[m]] @ rp.luv[self.rows[m]]
            )
        return score, -H

    def scores(self, rp: _OrderedPieces) -> np.ndarray:
        S = np.zeros((len(self.y), self.k + self.J - 1))
        S[:, : self.k] = self.X * (-(self.w * (rp.lu + rp.lv)))[:, None]
        for m in range(1, self.J):
            S[self.rows[m - 1], self.k + m - 1] += (self.w * rp.lu)[self.rows[m - 1]]
            S[self.rows[m], self.k + m - 1] += (self.w * rp.lv)[self.rows[m]]
        return S


def fit_ordered(
    distr: str,
    codes: np.ndarray,
    X: np.ndarray,
    w: np.ndarray | None,
    J: int,
    start: np.ndarray | None = None,
) -> NewtonFit:
    """Maximum-likelihood ordered logit (`distr` "logit") or probit ("probit") on outcome
    codes 0..J-1 with row weights `w`: parameters (b, cut_1..cut_{J-1})."""
    prob = _Ordered(distr, codes, X, w, J)
    ok = (
        start is not None
        and np.all(np.isfinite(start))
        and np.all(np.diff(start[X.shape[1] :]) > 0)
    )
    return newton(prob, start if ok else prob.start())  # type: ignore[arg-type]
