"""Layer 4: pin checkpoint coefficients on the synthetic data by moving only the outcome.

Linear estimators: beta_hat = A y with A = (X'WX)^-1 X'W (fe, re, iv: `linear_models.
linear_factors`), kept factored as G^-1 B' (`Operator`: no k × n matrix at any size), so for one checkpoint y <- y + X (beta* - beta_hat) on the estimation sample
returns beta* exactly: A X = I for every linear unbiased estimator (OLS, within, GLS at fixed
variance components, 2SLS). Several
checkpoints on one outcome are solved jointly: stack the constraints A_c delta = Delta_c of
their released terms and take the minimum-norm delta (exact when the constraints are
consistent, least squares otherwise). Outcome groups are pinned in dependency order: a group
whose outcome is a regressor of another group goes first, so later pins do not undo it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .design import Design, build_design
from .errors import CheckpointError
from .manifest import Checkpoint
from .pin_discrete import is_discrete_group, pin_discrete_group
from .seeds import rng


def checkpoint_from_release(c: dict[str, Any]) -> Checkpoint:
    """The Checkpoint a released record describes."""
    return Checkpoint(
        tag=c["tag"], source=c["source"], model=c["model"], formula=c["formula"], vcov=c["vcov"],
        weights=c.get("weights"), absorb=tuple(c.get("absorb") or ()), entity=c.get("entity"),
        time=c.get("time"), subset=c.get("subset"),
        # ordered models: the released category order, so the synthetic refit codes alike
        levels=tuple(c.get("levels") or c.get("outcome_levels") or ()) or None,
    )


@dataclass(frozen=True)
class PinOutcome:
    """How one outcome group was pinned."""

    source: str
    outcome: str
    tags: tuple[str, ...]
    joint: bool
    status: str
    note: str = ""
    detail: dict = field(default_factory=dict)  # discrete outcomes: per-checkpoint gaps, outcome drift


def _targets(c: dict[str, Any]) -> dict[str, float]:
    return {t["term"]: float(t["beta"]) for t in c.get("terms", []) if not t.get("suppressed")}


@dataclass(frozen=True)
class Operator:
    """A linear estimator beta_hat = A y kept factored as A = G^-1 B' (G: k × k, B: n × k),
    so neither A (k × n) nor A A' over the data is ever formed. OLS/WLS: G = X'WX, B = WX."""

    G: np.ndarray
    B: np.ndarray

    def apply(self, y: np.ndarray) -> np.ndarray:
        """A y (k,) = G^-1 (B' y)."""
        return np.linalg.solve(self.G, self.B.T @ y)

    def adjoint(self, lam: np.ndarray) -> np.ndarray:
        """A' lam (n,) = B (G'^-1 lam)."""
        return self.B @ np.linalg.solve(self.G.T, lam)


def ols_operator(d: Design) -> Operator:
    """OLS/WLS: A = (X'WX)^-1 X'W, factored as G = X'WX, B = WX."""
    B = d.X if d.weights is None else d.X * d.weights[:, None]
    return Operator(B.T @ d.X, B)


def _operator(d: Design, cp: Checkpoint) -> Operator:
    """The family's factored A with beta_hat = A y: OLS/WLS here, fe/re/iv in linear_models
    (re at the current variance components, so the pin passes iterate to a fixed point)."""
    if cp.model in ("fe", "re", "iv"):
        from .linear_models import linear_factors

        return Operator(*linear_factors(d, cp, f"checkpoint {cp.tag!r} on synthetic data"))
    return ols_operator(d)


def cross_block(a: Operator, rows_a: np.ndarray, b: Operator, rows_b: np.ndarray) -> np.ndarray:
    """A_a A_b' (k_a × k_b) over the data rows both samples hold: G_a^-1 (B_a' B_b) G_b'^-1
    with B restricted to the shared rows. `rows_*`: each sample's row positions in the data
    (distinct). The joint pin's constraint Gram matrix, built from k × k products only."""
    _, ia, ib = np.intersect1d(rows_a, rows_b, assume_unique=True, return_indices=True)
    if len(ia) == len(rows_a) and len(ib) == len(rows_b) and np.array_equal(rows_a, rows_b):
        S = a.B.T @ b.B
    else:
        S = a.B[ia].T @ b.B[ib]
    return np.linalg.solve(b.G, np.linalg.solve(a.G, S).T).T


def pin_order(cps: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(source, outcome) groups in dependency order; manifest order breaks ties. A group
    whose outcome another group reads (as a regressor, weight, cluster or in its subset) goes
    first. A cycle (y1 explains y2 and y2 explains y1) falls back to manifest order."""
    groups: list[tuple[str, str]] = []
    for c in cps:
        g = (c["source"], c["outcome"])
        if g not in groups:
            groups.append(g)
    uses: dict[tuple[str, str], set[tuple[str, str]]] = {g: set() for g in groups}
    for c in cps:
        g = (c["source"], c["outcome"])
        read = set(c["columns"]) | set(c.get("subset_columns", []))
        uses[g] |= {(c["source"], col) for col in read if col != c["outcome"]}
    order: list[tuple[str, str]] = []
    pending = list(groups)
    while pending:
        ready = [h for h in pending if not any(g in uses[h] for g in pending if g != h)]
        nxt = ready[0] if ready else pending[0]
        order.append(nxt)
        pending.remove(nxt)
    return order


MAX_PASSES = 8
EXACT_TOL = 1e-9  # |beta - beta*| / SE_target counted as exact


def _constraints(df: pd.DataFrame, c: dict[str, Any], notes: list[str]) -> tuple[Operator, Design, list[int], np.ndarray] | None:
    """(factored A, design, positions of the released terms, beta* - beta_hat there) for one
    checkpoint on the current data, or None (with a note) when it cannot be built."""
    cp = checkpoint_from_release(c)
    try:
        d = build_design(df, cp, f"checkpoint {cp.tag!r} on synthetic data")
    except CheckpointError as exc:
        notes.append(str(exc))
        return None
    tgt = _targets(c)
    common = [j for j, t in enumerate(d.terms) if t in tgt]
    absent = sorted(set(tgt) - set(d.terms))
    if absent:
        notes.append(f"{cp.tag}: terms absent from the synthetic design: {', '.join(absent)}")
    if not common:
        return None
    try:
        A = _operator(d, cp)
        beta = A.apply(d.y)  # the factored operator first solves with G here
    except np.linalg.LinAlgError:
        notes.append(f"{cp.tag}: singular synthetic design")
        return None
    except CheckpointError as exc:
        notes.append(str(exc))
        return None
    delta = np.array([tgt[d.terms[j]] - beta[j] for j in common])
    return A, d, common, delta


def _gap(c: dict[str, Any], delta: np.ndarray, d: Design, common: list[int]) -> float:
    se = {t["term"]: t["se"] for t in c["terms"] if not t.get("suppressed")}
    scale = np.asarray([se[d.terms[j]] for j in common], dtype="float64")
    return float(np.max(np.abs(delta) / np.where(scale > 0, scale, 1.0))) if len(delta) else 0.0


def _pin_pass(df: pd.DataFrame, group: list[dict[str, Any]], outcome: str, notes: list[str]) -> tuple[float, bool]:
    """One Newton step on y for a group; returns the largest gap (in target SEs) before the
    step and whether the stacked constraints were consistent."""
    built = [(c, _constraints(df, c, notes)) for c in group]
    built = [(c, b) for c, b in built if b is not None]
    if not built:
        return float("inf"), False
    gap = max(_gap(c, b[3], b[1], b[2]) for c, b in built)
    if gap <= EXACT_TOL:
        return gap, True
    if len(group) == 1:
        _, (A, d, common, delta) = built[0]
        full = np.zeros(d.X.shape[1])
        full[common] = delta
        df.loc[d.index, outcome] = df.loc[d.index, outcome].to_numpy(dtype="float64") + d.X @ full
        return gap, True
    # Stacked constraints S delta_y = D with S the rows `common` of each A_c (placed at the
    # sample's rows of the data); the minimum-norm step is S'(SS')^+ D. SS' is assembled from
    # k × k blocks A_a A_b' and S' lam from each A_c' lam_c, so no k × n array is formed.
    rows = [df.index.get_indexer(d.index) for _, (_, d, _, _) in built]
    parts = [(A, common, r) for (_, (A, _, common, _)), r in zip(built, rows, strict=True)]
    SS = np.block([[cross_block(A, ra, B, rb)[np.ix_(ca, cb)] for B, cb, rb in parts] for A, ca, ra in parts])
    D = np.concatenate([b[3] for _, b in built])
    lam = np.linalg.lstsq(SS, D, rcond=None)[0]  # minimum-norm: S'(SS')^+ D
    delta_y = np.zeros(len(df))
    at = 0
    for A, common, r in parts:
        full = np.zeros(A.G.shape[0])
        full[common] = lam[at : at + len(common)]
        at += len(common)
        delta_y[r] += A.adjoint(full)
    y = df[outcome].to_numpy(dtype="float64").copy()
    moved = delta_y != 0
    y[moved] += delta_y[moved]
    df[outcome] = y
    resid = np.concatenate([A.apply(delta_y[r])[common] for A, common, r in parts]) - D
    return gap, bool(np.max(np.abs(resid)) <= 1e-8 * max(1.0, float(np.max(np.abs(D)))))


def pin_checkpoints(frames: dict[str, pd.DataFrame], checkpoints: list[dict[str, Any]], seed: int = 0) -> tuple[dict[str, pd.DataFrame], list[PinOutcome]]:
    """Pin every released checkpoint; returns new frames and one record per outcome group.

    Each group takes Newton steps until its refit is exact (the sample can move when a
    subset or a missing pattern involves the outcome); a group that does not get there in
    MAX_PASSES steps, or whose stacked constraints are inconsistent, is `approximate`.
    A group with a maximum-likelihood checkpoint goes to `pin_discrete` (seeded draw and score
    correction, with the stream `seed`/pin/<source>/<outcome>)."""
    frames = {k: v.copy() for k, v in frames.items()}
    released = [c for c in checkpoints if c.get("status") == "released" and c["source"] in frames]
    results: list[PinOutcome] = []
    for source, outcome in pin_order(released):
        group = [c for c in released if c["source"] == source and c["outcome"] == outcome]
        tags = tuple(c["tag"] for c in group)
        df = frames[source]
        if df[outcome].isna().all():
            results.append(PinOutcome(source, outcome, tags, False, "failed", f"outcome {outcome!r} is entirely missing in the synthetic data"))
            continue
        if is_discrete_group(group):  # maximum-likelihood checkpoints: draw + score correction
            st, dnotes, detail = pin_discrete_group(df, group, outcome, rng(seed, "pin", source, outcome))
            results.append(PinOutcome(source, outcome, tags, len(group) > 1, st, "; ".join(dict.fromkeys(dnotes)), detail))
            continue
        if not pd.api.types.is_float_dtype(df[outcome].dtype):
            df[outcome] = pd.to_numeric(df[outcome], errors="coerce").astype("float64")
        notes: list[str] = []
        status = "approximate"
        for _ in range(MAX_PASSES):
            pass_notes: list[str] = []
            gap, consistent = _pin_pass(df, group, outcome, pass_notes)
            notes = pass_notes
            if gap == float("inf"):
                status = "failed"
                break
            if gap <= EXACT_TOL:
                status = "pinned"
                break
            if not consistent:
                notes.append("constraints inconsistent on the synthetic regressors: least-squares compromise")
        else:
            gap, _ = _pin_pass(df.copy(), group, outcome, [])
            status = "pinned" if gap <= EXACT_TOL else "approximate"
            if status == "approximate" and not any("inconsistent" in n for n in notes):
                notes.append(f"not exact after {MAX_PASSES} steps (the sample moves with the outcome): max gap {gap:.3g} target SE")
        if status == "pinned" and not any(outcome in c.get("subset_columns", []) for c in group) and _disjoint_samples(df, group):
            for c in group:
                factor = _match_residual_scale(df, c, outcome)
                if factor is not None:
                    who = f"{c['tag']}: " if len(group) > 1 else ""
                    notes.append(f"{who}residuals scaled by {factor:.4g} to the released residual variance")
        frames[source] = df
        results.append(PinOutcome(source, outcome, tags, len(group) > 1, status, "; ".join(dict.fromkeys(notes))))
    return frames, results


def _disjoint_samples(df: pd.DataFrame, group: list[dict[str, Any]]) -> bool:
    """Whether the estimation samples of a group's checkpoints share no row: then each
    residual can be rescaled on its own rows without moving the others' fits."""
    if len(group) == 1:
        return True
    seen: set[Any] = set()
    for c in group:
        try:
            idx = set(build_design(df, checkpoint_from_release(c)).index)
        except CheckpointError:
            return False
        if seen & idx:
            return False
        seen |= idx
    return True


def _match_residual_scale(df: pd.DataFrame, c: dict[str, Any], outcome: str) -> float | None:
    """Inference fidelity for a pinned linear checkpoint: y <- X b + f e on its sample, with
    e the (weighted) residual and f chosen so the residual variance equals the released one.
    The residual is orthogonal to X (in the W metric), so the coefficients stay exactly
    pinned while nonrobust, HC and cluster standard errors all move by the factor f.
    fe and iv use their own residual (within; structural, orthogonal to X_hat); re rescales
    its within and between residuals to the released variance components and pins again
    (`linear_models.re_matched_outcome`); returns the within factor."""
    target = c.get("scale")
    if not target or not np.isfinite(target) or target <= 0:
        return None
    cp = checkpoint_from_release(c)
    d = build_design(df, cp)
    if cp.model == "re":
        return _match_variance_components(df, c, cp, d, outcome)
    if cp.model in ("fe", "iv"):
        from .estimators import fit_checkpoint
        from .linear_models import residual

        try:
            fit = fit_checkpoint(d, cp)
        except CheckpointError:
            return None
        e = residual(d, cp, fit.beta)
        if e is None or not np.isfinite(fit.scale) or fit.scale <= 0:
            return None
        factor = float(np.sqrt(target / fit.scale))
        df.loc[d.index, outcome] = d.y + (factor - 1.0) * e
        return factor
    if cp.model != "ols":
        return None
    W = d.weights if d.weights is not None else np.ones(len(d.y))
    beta = ols_operator(d).apply(d.y)
    fitted = d.X @ beta
    e = d.y - fitted
    dof = len(d.y) - d.X.shape[1]
    s2 = float(np.sum(W * e * e) / dof) if dof > 0 else 0.0
    if not np.isfinite(s2) or s2 <= 0:
        return None
    factor = float(np.sqrt(target / s2))
    df.loc[d.index, outcome] = fitted + factor * e
    return factor


def _match_variance_components(df: pd.DataFrame, c: dict[str, Any], cp: Checkpoint, d: Design, outcome: str) -> float | None:
    """re: move y to the released sigma2_u and sigma2_e, then pin again (the pin step keeps
    both residuals, so it converges at once); undone when the pin is then not exact."""
    from .estimators import fit_checkpoint
    from .linear_models import re_matched_outcome

    extra = c.get("extra") or {}
    s2u, s2e = extra.get("sigma2_u"), extra.get("sigma2_e")
    if s2u is None or s2e is None or not (np.isfinite(s2u) and np.isfinite(s2e)) or s2e <= 0 or s2u < 0:
        return None
    try:
        fit = fit_checkpoint(d, cp)
        y_new = re_matched_outcome(d, cp, fit.beta, float(s2u), float(s2e))
    except (CheckpointError, np.linalg.LinAlgError):
        return None
    if y_new is None:
        return None
    before = df[outcome].copy()
    df.loc[d.index, outcome] = y_new
    for _ in range(MAX_PASSES):
        gap, _ = _pin_pass(df, [c], outcome, [])
        if gap <= EXACT_TOL:
            f_e = float(np.sqrt(s2e / max(fit.extra["sigma2_e"], 1e-300)))
            return f_e
    df[outcome] = before
    return None
