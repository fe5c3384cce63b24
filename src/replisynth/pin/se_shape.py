"""Residual shaping for inference fidelity, as pure array functions: each unit's sandwich
contribution to a checkpoint's SEs and the exponential tilting that matches the released SEs.
Method: docs/method.md, "Inference fidelity".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WEIGHT_BOUNDS = (
    1.0 / 25.0,
    25.0,
)  # per-unit multipliers of the residual variance (e scaled by 0.2..5)


@dataclass(frozen=True)
class Tilt:
    """Result of `tilt`: `weights` (m,) per-unit variance multipliers in [lo, hi]; `reached`
    (k,) sum_u w_u a_uj / T_j (1 where a target is met); `feasible` when every |reached - 1|
    <= tol; `lam` (k,) the dual solution; `iterations` Newton steps; `at_bounds` units whose
    weight sits at lo or hi."""

    weights: np.ndarray
    reached: np.ndarray
    feasible: bool
    lam: np.ndarray
    iterations: int
    at_bounds: int
    fraction: float = (
        1.0  # `tilt_toward`: share of the way (in logs) from the current values to the targets
    )


def leverage(X: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Diagonal of the (weighted) hat matrix, h_i = w_i x_i' (X'WX)^-1 x_i (n,)."""
    w = np.ones(len(X)) if weights is None else np.asarray(weights, dtype="float64")
    G = np.linalg.inv((X * w[:, None]).T @ X)
    return w * np.einsum("ij,jk,ik->i", X, G, X)


def sandwich_contributions(
    A: np.ndarray,
    e: np.ndarray,
    clusters: np.ndarray | None = None,
    leverage_power: int = 0,
    h: np.ndarray | None = None,
) -> np.ndarray:
    """Unit contributions a (m, k) to the sandwich variances without the small-sample
    constant: a_ij = A_ji^2 e_i^2 / (1 - h_i)^p per observation (m = n), or
    a_gj = (sum_{i in g} A_ji e_i)^2 per cluster code g = 0..G-1 (m = G).
    A (k, n) the estimator's operator, e (n,) its residual, h (n,) leverages for p > 0."""
    S = A.T * e[:, None]  # (n, k) scores A_ji e_i
    if clusters is not None:
        codes = np.asarray(clusters, dtype="int64")
        G = int(codes.max()) + 1
        sums = np.column_stack(
            [np.bincount(codes, weights=S[:, j], minlength=G) for j in range(S.shape[1])]
        ).reshape(G, S.shape[1])
        return sums**2
    a = S**2
    if leverage_power:
        assert h is not None
        a = a / ((1.0 - h) ** leverage_power)[:, None]
    return a


def _g(
    z: np.ndarray, llo: np.ndarray, lhi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """g, g' = clip(exp z, lo, hi), g'' of the raking conjugate with linear tails."""
    zc = np.clip(z, llo, lhi)
    ez = np.exp(zc)
    val = ez + ez * (z - zc)
    inside = (z > llo) & (z < lhi)
    return val, ez, np.where(inside, ez, 0.0)


def tilt(
    a: np.ndarray,
    target: np.ndarray,
    bounds: tuple[float | np.ndarray, float | np.ndarray] = WEIGHT_BOUNDS,
    tol: float = 1e-10,
    max_iter: int = 200,
) -> Tilt:
    """Exponentially tilted unit weights w (m,) with sum_u w_u a_uj = target_j for each of
    the k columns of a (m, k), a >= 0, target > 0, lo_u <= w_u <= hi_u (`bounds`: scalars or
    (m,) arrays, with lo_u <= 1 <= hi_u) (module docstring). A column with no positive
    contribution cannot move and is reported unreached."""
    a = np.asarray(a, dtype="float64")
    T = np.asarray(target, dtype="float64")
    m, k = a.shape
    lo = np.broadcast_to(np.asarray(bounds[0], dtype="float64"), (m,))
    hi = np.broadcast_to(np.asarray(bounds[1], dtype="float64"), (m,))
    llo, lhi = np.log(lo), np.log(hi)
    norm = a.mean(axis=0)
    live = norm > 0
    U = np.zeros_like(a)
    U[:, live] = a[:, live] / norm[live]
    t = np.where(live, T / np.where(live, norm, 1.0), 0.0)
    ridge = 1e-12 * m  # keeps the Newton system regular when units sit at the bounds

    def dual(lam: np.ndarray) -> float:
        return float(np.sum(_g(U @ lam, llo, lhi)[0]) - lam @ t + 0.5 * ridge * lam @ lam)

    lam = np.zeros(k)
    it = 0
    while it < max_iter:
        it += 1
        z = U @ lam
        _, w, d2 = _g(z, llo, lhi)
        grad = U.T @ w - t + ridge * lam
        rel = np.abs(U.T @ w - t) / np.where(t > 0, t, 1.0)
        if np.all(rel[live] <= tol):
            break
        if _separated(z, lam, t, lo, hi, max(tol, 1e-8) * 100):
            break
        H = (U * d2[:, None]).T @ U + ridge * np.eye(k)
        try:
            step = -np.linalg.solve(H, grad)
        except np.linalg.LinAlgError:
            step = -np.linalg.lstsq(H, grad, rcond=None)[0]
        if not np.all(np.isfinite(step)) or grad @ step >= 0:
            step = -grad / max(float(np.max(np.abs(grad))), 1.0)  # gradient fallback
        f0, s = dual(lam), 1.0
        while s > 1e-12 and dual(lam + s * step) > f0 + 1e-4 * s * (grad @ step):
            s *= 0.5
        if s <= 1e-12:
            break
        lam = lam + s * step
    _, w, _ = _g(U @ lam, llo, lhi)
    reached = np.where(live, (a.T @ w) / np.where(T > 0, T, 1.0), 0.0)
    feasible = bool(np.all(np.abs(reached - 1.0) <= max(tol, 1e-8) * 10))
    at_bounds = int(
        np.sum(((w <= lo * (1 + 1e-12)) & (lo < 1)) | ((w >= hi * (1 - 1e-12)) & (hi > 1)))
    )
    return Tilt(
        weights=w, reached=reached, feasible=feasible, lam=lam, iterations=it, at_bounds=at_bounds
    )


def _separated(
    z: np.ndarray, lam: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray, margin: float
) -> bool:
    """A certificate that no weights in [lo, hi] meet the targets t, even within `margin`
    (relative per column): along the dual iterate lam, every w in the box gives
    lam'U'w = w'z in [sum min(lo z, hi z), sum max(lo z, hi z)], and lam't lies outside that
    range by more than the tolerance can bridge (sum |lam_j t_j| margin). The dual of an
    infeasible tilt diverges along such a direction; without this test it ran all its
    Newton iterations, each with a long line search, to reach the same verdict."""
    if not np.any(lam):
        return False
    target = float(lam @ t)
    slack = margin * float(np.abs(lam) @ np.abs(t))
    most = float(np.sum(np.maximum(lo * z, hi * z)))
    least = float(np.sum(np.minimum(lo * z, hi * z)))
    return most < target - slack or least > target + slack


REACH_MARGIN = 1e-6  # relative: 10 x `tilt`'s own feasibility tolerance (1e-7)


def _out_of_reach(target: np.ndarray, least: np.ndarray, most: np.ndarray, live: bool) -> bool:
    """True when `tilt` cannot be feasible, whatever it iterates: a column with no positive
    contribution (it is reported unreached), or a target beyond what the bounds allow that
    column (its sum lies in [sum lo a, sum hi a] for a >= 0) by more than REACH_MARGIN. An
    infeasible tilt runs all its Newton iterations; skipping it changes no result."""
    if not live:
        return True
    return bool(
        np.any(target > most * (1.0 + REACH_MARGIN))
        or np.any(target < least * (1.0 - REACH_MARGIN))
    )


def tilt_toward(
    a: np.ndarray,
    target: np.ndarray,
    bounds: tuple[float | np.ndarray, float | np.ndarray] = WEIGHT_BOUNDS,
    steps: int = 12,
) -> Tilt:
    """`tilt` to the targets when feasible; otherwise to the feasible point furthest along
    the log path T(f) = F^(1 - f) T^f from the current sums F = sum_u a_uj (bisection on f
    in [0, 1], `steps` halvings), so every column moves the same share f of the way and
    none ends further from its target than it started. `fraction` is f. A point of the path
    that no weights inside the bounds can reach (`_out_of_reach`) is infeasible without a
    solve (the same result: such a tilt ran all its iterations to say so)."""
    a = np.asarray(a, dtype="float64")
    T = np.asarray(target, dtype="float64")
    m = a.shape[0]
    lo = np.broadcast_to(np.asarray(bounds[0], dtype="float64"), (m,))
    hi = np.broadcast_to(np.asarray(bounds[1], dtype="float64"), (m,))
    reach = (lo @ a, hi @ a, bool(np.all(a.mean(axis=0) > 0)))
    bounded = bool(np.all(a >= 0))  # the column sums' range below holds for a >= 0 only

    def solve(target: np.ndarray) -> Tilt | None:
        """`tilt`, or None where it is surely infeasible (`_out_of_reach`)."""
        if bounded and _out_of_reach(target, *reach):
            return None
        return tilt(a, target, bounds)

    full = solve(T)
    if full is not None and full.feasible:
        return full
    F = a.sum(axis=0)
    live = (F > 0) & (T > 0)
    logF = np.log(np.where(live, F, 1.0))
    logT = np.log(np.where(live, T, 1.0))

    def at(f: float) -> np.ndarray:
        return np.where(live, np.exp(logF + f * (logT - logF)), T)

    good: Tilt | None = None
    f_lo, f_hi = 0.0, 1.0
    for _ in range(steps):
        f = 0.5 * (f_lo + f_hi)
        res = solve(at(f))
        if res is not None and res.feasible:
            f_lo, good = f, res
        else:
            f_hi = f
    if good is None:
        return Tilt(
            weights=np.ones(m),
            reached=np.where(live, F / np.where(T > 0, T, 1.0), 0.0),
            feasible=False,
            lam=np.zeros(a.shape[1]),
            iterations=0,
            at_bounds=0,
            fraction=0.0,
        )
    reached = np.where(live, (a.T @ good.weights) / np.where(T > 0, T, 1.0), 0.0)
    return Tilt(
        weights=good.weights,
        reached=reached,
        feasible=False,
        lam=good.lam,
        iterations=good.iterations,
        at_bounds=good.at_bounds,
        fraction=f_lo,
    )
