"""Layer 4: pin checkpoint coefficients on the synthetic data by moving only the outcome
(outcome groups in dependency order, several checkpoints on one outcome jointly).
Method: docs/method.md, "Layer 4: pinning".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.manifest import Checkpoint, checkpoint_from_release, formula_outcome
from replisynth.core.errors import CheckpointError
from replisynth.core.seeds import rng
from replisynth.disclosure.bundle_types import CheckpointRecord
from replisynth.fit.estimators import OlsFactor, fit_checkpoint
from replisynth.fit.linear_models import (
    fe_within_factors,
    linear_factors,
    re_matched_outcome,
    residual,
    reuse_within,
)
from replisynth.pin.pin_discrete import is_discrete_group, pin_discrete_group
from replisynth.pin.se_shape import WEIGHT_BOUNDS, leverage, sandwich_contributions, tilt_toward
from replisynth.pin.support import (
    INTEGER_TOL,
    ROW_CHUNK,
    SeProxy,
    Support,
    bounded_min_norm,
    out_of_support,
    repair_gap,
    round_to_lattice,
    support_of,
    swap_pool,
    swap_repair,
)
from replisynth.stats.design import Design, build_design, collinear_terms, released_terms


@dataclass(frozen=True)
class PinOutcome:
    """How one outcome group was pinned."""

    source: str
    outcome: str
    tags: tuple[str, ...]
    joint: bool
    status: str
    note: str = ""
    detail: dict = field(
        default_factory=dict
    )  # discrete outcomes: per-checkpoint gaps, outcome drift; se_shape: per tag ShapeReport


def _targets(c: dict[str, Any]) -> dict[str, float]:
    return {t["term"]: float(t["beta"]) for t in c.get("terms", []) if not t.get("suppressed")}


@dataclass(frozen=True)
class Operator:
    """A linear estimator beta_hat = A y kept factored as A = G^-1 B' (G: k × k, B: n × k),
    so neither A (k × n) nor A A' over the data is ever formed. OLS/WLS: G = X'WX, B = WX."""

    G: np.ndarray
    B: np.ndarray
    within: np.ndarray | None = None  # fe: M_D X (n × k), the direction the pin moves y along
    means: np.ndarray | None = None  # fe with a constant: X's weighted means m (X_t = M_D X + 1 m')
    const: int | None = None  # fe: the constant's position in the design, if any
    least_change: bool = False  # iv: step along B (the instruments' span), not along X

    def apply(self, y: np.ndarray) -> np.ndarray:
        """A y (k,) = G^-1 (B' y)."""
        return np.linalg.solve(self.G, self.B.T @ y)

    def adjoint(self, lam: np.ndarray) -> np.ndarray:
        """A' lam (n,) = B (G'^-1 lam)."""
        return self.B @ np.linalg.solve(self.G.T, lam)

    def dense(self) -> np.ndarray:
        """A itself (k × n), for the few uses that need its rows (residual shaping)."""
        return np.linalg.solve(self.G, self.B.T)

    def rows_t(self, at: list[int]) -> np.ndarray:
        """The rows `at` of A, transposed (n × |at|): B G'^-1 E_at, one n × k × |at| product
        instead of a solve with n right-hand sides (`dense`)."""
        E = np.zeros((self.G.shape[0], len(at)))
        E[at, np.arange(len(at))] = 1.0
        return self.B @ np.linalg.solve(self.G.T, E)

    def step(self, X: np.ndarray, full: np.ndarray, pinned: list[int]) -> np.ndarray:
        """The change of y that moves beta_hat by `full` (zero off the `pinned` positions):
        X full (A X = I). fe: M_D X full, which moves no group mean of the absorbed effects
        (A M_D X = I off the constant), plus the common shift m'full when the constant is
        pinned (fe's constant is ybar - xbar'beta). `least_change` (iv): the smallest change
        B (B'B)^-1 G full, inside the span of the instruments and exogenous regressors; X full
        would add the 2SLS gap to y along the endogenous regressor itself, moving every OLS
        relation of y to it by the whole gap (an iv SE is many OLS SEs)."""
        if self.least_change:
            return self.B @ np.linalg.solve(self.B.T @ self.B, self.G @ full)
        if self.within is None:
            return X @ full
        delta_y = self.within @ full
        if self.const is not None and self.const in pinned:
            assert self.means is not None
            delta_y = delta_y + float(self.means @ full)
        return delta_y


def ols_operator(d: Design) -> Operator:
    """OLS/WLS: A = (X'WX)^-1 X'W, factored as G = X'WX, B = WX."""
    B = d.X if d.weights is None else d.X * d.weights[:, None]
    return Operator(B.T @ d.X, B)


def _operator(d: Design, cp: Checkpoint) -> Operator:
    """The family's factored A with beta_hat = A y: OLS/WLS here, fe/re/iv in linear_models
    (re at the current variance components, so the pin passes iterate to a fixed point)."""
    label = f"checkpoint {cp.tag!r} on synthetic data"
    if cp.model == "fe":
        G, B, within, means, const = fe_within_factors(d, label)
        return Operator(G, B, within, means, const)
    if cp.model in ("re", "iv"):
        return Operator(*linear_factors(d, cp, label), least_change=cp.model == "iv")
    return ols_operator(d)


def cross_block(a: Operator, rows_a: np.ndarray, b: Operator, rows_b: np.ndarray) -> np.ndarray:
    """A_a A_b' (k_a × k_b) over the data rows both samples hold: G_a^-1 (B_a' B_b) G_b'^-1
    with B restricted to the shared rows. `rows_*`: each sample's row positions in the data
    (distinct). The joint pin's constraint Gram matrix, built from k × k products only."""
    if np.array_equal(
        rows_a, rows_b
    ):  # one sample (nested specifications): no intersection to sort out
        S = a.B.T @ b.B
    else:
        _, ia, ib = np.intersect1d(rows_a, rows_b, assume_unique=True, return_indices=True)
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
_REUSABLE = (
    "ols",
    "fe",
    "iv",
)  # linear families whose operator A depends on the regressors alone (re: on y too)


class _Designs:
    """The designs of one outcome group, each built once and reused while pinning moves only
    the outcome (formulaic on 10^6 rows costs 0.1-0.3 s a build; a group takes 2-9 passes plus
    the residual scaling and shaping). X, weights, sample and the factored operator depend on
    the regressors alone, so a design is reused for a linear checkpoint whose left-hand side
    is the bare outcome and whose sample the outcome cannot change (not in its subset; pinning
    never makes it missing): y is then the outcome column at the sample's rows, the values
    formulaic reads. Anything else is rebuilt every time, as before."""

    def __init__(self) -> None:
        self._built: dict[tuple[str, bool], tuple[Design, np.ndarray]] = {}
        self._ops: dict[tuple[str, bool], Operator] = {}
        self._cross: dict[tuple[int, int], np.ndarray] = {}
        self._stacked: dict[tuple[tuple[int, tuple[int, ...]], ...], Any] = {}

    @staticmethod
    def _reusable(c: dict[str, Any]) -> bool:
        return (
            c["model"] in (*_REUSABLE, "re")
            and formula_outcome(c["formula"]) == c["outcome"]
            and c["outcome"] not in c.get("subset_columns", [])
        )

    def design(
        self, df: pd.DataFrame, c: dict[str, Any], where: str = "", released: bool = True
    ) -> Design:
        """`build_design` of the checkpoint on `df` (released: with `released_terms`)."""
        key = (c["tag"], released)
        hit = self._built.get(key)
        if hit is not None and pd.api.types.is_float_dtype(df[c["outcome"]].dtype):
            d, pos = hit
            return replace(d, y=df[c["outcome"]].to_numpy(dtype="float64")[pos])
        d = build_design(
            df, checkpoint_from_release(c), where, released=released_terms(c) if released else None
        )
        if self._reusable(c):
            self._built[key] = (d, df.index.get_indexer(d.index))
        return d

    def cross(self, a: Operator, rows_a: np.ndarray, b: Operator, rows_b: np.ndarray) -> np.ndarray:
        """`cross_block(a, rows_a, b, rows_b)`, kept for operators this cache holds (their
        samples are fixed, so the k_a × k_b block is the same in every pass)."""
        kept = {id(A) for A in self._ops.values()}
        if id(a) not in kept or id(b) not in kept:
            return cross_block(a, rows_a, b, rows_b)
        key = (id(a), id(b))
        if key not in self._cross:
            self._cross[key] = cross_block(a, rows_a, b, rows_b)
        return self._cross[key]

    def stacked_rows(
        self, parts: list[tuple[Operator, list[int], np.ndarray, np.ndarray]], n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """`_stacked`'s V (n × K: each operator's rows `common` over their SEs, placed at the
        sample's rows) and the rows in any sample, for (operator, common, SEs, rows) parts;
        kept when every operator is one this cache holds (the support step's bounded passes
        and marginal rounds use the same V many times while only y moves)."""
        kept = {id(A) for A in self._ops.values()}
        key = tuple((id(A), tuple(common)) for A, common, _, _ in parts)
        hit = self._stacked.get(key)
        if hit is not None:
            return hit
        V = np.zeros((n, sum(len(common) for _, common, _, _ in parts)))
        sample = np.zeros(n, dtype=bool)
        at = 0
        for A, common, scale, rows in parts:
            V[rows, at : at + len(common)] = A.rows_t(common) / scale
            at += len(common)
            sample[rows] = True
        if all(id(A) in kept for A, _, _, _ in parts):
            self._stacked[key] = (V, sample)
        return V, sample

    def operator(
        self, d: Design, c: dict[str, Any], cp: Checkpoint, released: bool = True
    ) -> Operator:
        """`_operator` of a design from `design` (kept when the design is)."""
        key = (c["tag"], released)
        if key in self._ops:
            return self._ops[key]
        A = _operator(d, cp)
        if key in self._built and cp.model in _REUSABLE:
            self._ops[key] = A
        return A


def _fresh(designs: _Designs | None) -> _Designs:
    """The caller's design cache, or a private one that lives for this call only."""
    return designs if designs is not None else _Designs()


def _constraints(
    df: pd.DataFrame, c: dict[str, Any], notes: list[str], designs: _Designs | None = None
) -> tuple[Operator, Design, list[int], np.ndarray] | None:
    """(factored A, design, positions of the released terms, beta* - beta_hat there) for one
    checkpoint on the current data, or None (with a note) when it cannot be built."""
    cp = checkpoint_from_release(c)
    designs = _fresh(designs)
    try:
        d = designs.design(df, c, f"checkpoint {cp.tag!r} on synthetic data")
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
        A = designs.operator(d, c, cp)
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
    scale = _released_ses(c, d, common)
    return float(np.max(np.abs(delta) / scale)) if len(delta) else 0.0


def _released_ses(c: dict[str, Any], d: Design, common: list[int]) -> np.ndarray:
    """The released SEs of the terms at `common` (1 where an SE is not positive): the units in
    which a checkpoint's gap is measured and a joint compromise is spread."""
    se = {t["term"]: t["se"] for t in c["terms"] if not t.get("suppressed")}
    scale = np.asarray([se[d.terms[j]] for j in common], dtype="float64")
    return np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)


JOINT_RANK_TOL = 1e-11  # eigenvalues of the SE-unit constraint Gram below this share of the largest


def _joint_multipliers(SS: np.ndarray, D: np.ndarray, se: np.ndarray) -> np.ndarray:
    """lam with the step S' lam for stacked constraints S dy = D (SS' = `SS`), solved in SE
    units: Z = T SS' T with T = diag(1/se), lam = T Z^+ T D. Consistent constraints hold
    exactly; inconsistent ones get the least-squares compromise sum_j ((S dy - D)_j / se_j)^2,
    the released-covariance metric with the SEs on its diagonal (no covariance is released),
    which keeps exact every constraint outside the dependencies and spreads the miss in SEs."""
    T = 1.0 / se
    Z = SS * T[:, None] * T[None, :]
    w, U = np.linalg.eigh((Z + Z.T) / 2.0)
    keep = w > JOINT_RANK_TOL * max(float(w.max(initial=0.0)), 1e-300)
    inv = np.where(keep, 1.0 / np.where(keep, w, 1.0), 0.0)
    return T * (U @ (inv * (U.T @ (T * D))))


def _pin_pass(
    df: pd.DataFrame,
    group: list[dict[str, Any]],
    outcome: str,
    notes: list[str],
    designs: _Designs | None = None,
) -> tuple[float, bool]:
    """One Newton step on y for a group; returns the largest gap (in target SEs) before the
    step and whether the stacked constraints were consistent."""
    built = [(c, _constraints(df, c, notes, designs)) for c in group]
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
        step = A.step(d.X, full, common)
        df.loc[d.index, outcome] = df.loc[d.index, outcome].to_numpy(dtype="float64") + step
        return gap, True
    # Stacked constraints S delta_y = D with S the rows `common` of each A_c (placed at the
    # sample's rows of the data); the minimum-norm step is S'(SS')^+ D. SS' is assembled from
    # k × k blocks A_a A_b' and S' lam from each A_c' lam_c, so no k × n array is formed.
    rows = [df.index.get_indexer(d.index) for _, (_, d, _, _) in built]
    parts = [(A, common, r) for (_, (A, _, common, _)), r in zip(built, rows, strict=True)]
    cross = designs.cross if designs is not None else cross_block
    SS = np.block(
        [[cross(A, ra, B, rb)[np.ix_(ca, cb)] for B, cb, rb in parts] for A, ca, ra in parts]
    )
    D = np.concatenate([b[3] for _, b in built])
    se = np.concatenate([_released_ses(c, d, common) for c, (_, d, common, _) in built])
    lam = _joint_multipliers(SS, D, se)  # minimum-norm step, compromise in SE units
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


def pin_checkpoints(
    frames: dict[str, pd.DataFrame],
    checkpoints: list[CheckpointRecord],
    seed: int = 0,
    shape_ses: bool = True,
    weight_bounds: tuple[float, float] | None = None,
    progress: Callable[[str], None] | None = None,
    releases: Mapping[str, Any] | None = None,
) -> tuple[dict[str, pd.DataFrame], list[PinOutcome]]:
    """`_pin_checkpoints` (documented there), with the within transform of an fe design
    reused across its refits (`linear_models.reuse_within`)."""
    with reuse_within():
        return _pin_checkpoints(
            frames, checkpoints, seed, shape_ses, weight_bounds, progress, releases
        )


def _pin_checkpoints(
    frames: dict[str, pd.DataFrame],
    checkpoints: list[CheckpointRecord],
    seed: int = 0,
    shape_ses: bool = True,
    weight_bounds: tuple[float, float] | None = None,
    progress: Callable[[str], None] | None = None,
    releases: Mapping[str, Any] | None = None,
) -> tuple[dict[str, pd.DataFrame], list[PinOutcome]]:
    """Pin every released checkpoint; returns new frames and one record per outcome group.

    Each group takes Newton steps until its refit is exact (the sample can move when a
    subset or a missing pattern involves the outcome); a group that does not get there in
    MAX_PASSES steps, or whose stacked constraints are inconsistent, is `approximate`.
    A group with a maximum-likelihood checkpoint goes to `pin_discrete` (fewest moves of the
    synthesized values; the stream `seed`/pin/<source>/<outcome> draws only values that have
    none; `releases[source]` gives a count's released range and the orderings to keep).

    Where the residual can move on its own rows (a pinned group whose outcome is not in a
    subset and whose samples are disjoint), it is scaled to the released residual variance
    and, with `shape_ses` (HC/cluster vcov of ols, fe, iv), shaped to every released SE
    (`_shape_residuals`; `weight_bounds` defaults to `se_shape.WEIGHT_BOUNDS`). `progress` is
    told each group as it starts.

    With `releases` (source -> its release), a pinned linear outcome is then brought inside
    its released support and, when integer, back to integers (`_keep_support`)."""
    frames = {
        k: v.copy(deep=False) for k, v in frames.items()
    }  # copy-on-write: never written through
    released = [c for c in checkpoints if c.get("status") == "released" and c["source"] in frames]
    results: list[PinOutcome] = []
    for source, outcome in pin_order(released):
        group = [c for c in released if c["source"] == source and c["outcome"] == outcome]
        tags = tuple(c["tag"] for c in group)
        if progress is not None:
            progress(
                f"pin: {source} outcome {outcome} ({len(group)} checkpoint(s): {', '.join(tags)})"
            )
        df = frames[source]
        if df[outcome].isna().all():
            results.append(
                PinOutcome(
                    source,
                    outcome,
                    tags,
                    False,
                    "failed",
                    f"outcome {outcome!r} is entirely missing in the synthetic data",
                )
            )
            continue
        if is_discrete_group(group):  # maximum-likelihood checkpoints: fewest changes
            st, dnotes, detail = pin_discrete_group(
                df,
                group,
                outcome,
                rng(seed, "pin", source, outcome),
                (releases or {}).get(source),
            )
            results.append(
                PinOutcome(
                    source,
                    outcome,
                    tags,
                    len(group) > 1,
                    st,
                    "; ".join(dict.fromkeys(dnotes)),
                    detail,
                )
            )
            continue
        draw = pd.to_numeric(df[outcome], errors="coerce").to_numpy(dtype="float64").copy()
        if not pd.api.types.is_float_dtype(df[outcome].dtype):
            df[outcome] = pd.to_numeric(df[outcome], errors="coerce").astype("float64")
        notes: list[str] = []
        status = "approximate"
        designs = _Designs()
        for _ in range(MAX_PASSES):
            pass_notes: list[str] = []
            gap, consistent = _pin_pass(df, group, outcome, pass_notes, designs)
            notes = pass_notes
            if gap == float("inf"):
                status = "failed"
                break
            if gap <= EXACT_TOL:
                status = "pinned"
                break
            if not consistent:
                notes.append(
                    "constraints inconsistent on the synthetic regressors: least-squares compromise"
                )
        else:
            gap, _ = _pin_pass(df.copy(), group, outcome, [], designs)
            status = "pinned" if gap <= EXACT_TOL else "approximate"
            if status == "approximate" and not any("inconsistent" in n for n in notes):
                notes.append(
                    f"not exact after {MAX_PASSES} steps (the sample moves with the outcome): max gap {gap:.3g} target SE"
                )
        detail: dict[str, Any] = {}
        sup = support_of(releases[source], outcome) if releases and source in releases else None
        if (
            status == "pinned"
            and not any(outcome in c.get("subset_columns", []) for c in group)
            and _disjoint_samples(df, group, designs)
        ):
            for c in group:
                who = f"{c['tag']}: " if len(group) > 1 else ""
                factor = _match_residual_scale(df, c, outcome, designs)
                if factor is not None:
                    notes.append(
                        f"{who}residuals scaled by {factor:.4g} to the released residual variance"
                    )
                shaped = (
                    _shape_residuals(df, c, outcome, weight_bounds, designs, sup)
                    if shape_ses
                    else None
                )
                if shaped is not None:
                    notes.append(who + shaped.note())
                    detail.setdefault("se_shape", {})[c["tag"]] = shaped.as_dict()
        elif (
            status in ("pinned", "approximate")
            and len(group) > 1
            and not any(outcome in c.get("subset_columns", []) for c in group)
        ):
            joint = _match_joint_residual_scale(df, group, outcome, designs)
            if joint is not None:
                notes.append(joint)
        if sup is not None and status in ("pinned", "approximate"):
            gen = rng(seed, "pin", source, outcome, "support")
            notes += _keep_support(df, group, outcome, sup, draw, gen, designs, detail)
        _report_joint_gaps(df, group, status, notes, detail, designs)
        del designs  # its designs and operators are of this group's checkpoints only
        frames[source] = df
        results.append(
            PinOutcome(
                source,
                outcome,
                tags,
                len(group) > 1,
                status,
                "; ".join(dict.fromkeys(notes)),
                detail,
            )
        )
    return frames, results


def checkpoint_gaps(
    df: pd.DataFrame, group: list[dict[str, Any]], designs: _Designs | None = None
) -> dict[str, float]:
    """Per checkpoint of a group, max |beta - beta*| / SE over its released terms on `df` (SE:
    the released one); checkpoints whose design cannot be built are left out."""
    out: dict[str, float] = {}
    for c in group:
        built = _constraints(df, c, [], designs)
        if built is not None:
            out[c["tag"]] = _gap(c, built[3], built[1], built[2])
    return out


def _report_joint_gaps(
    df: pd.DataFrame,
    group: list[dict[str, Any]],
    status: str,
    notes: list[str],
    detail: dict[str, Any],
    designs: _Designs | None = None,
) -> None:
    """A joint group that is not exact (inconsistent constraints: the SE-unit compromise; or a
    sample that moves with the outcome): each checkpoint's largest miss in released SEs, as
    `detail["checkpoint_gaps"]` and a note."""
    if len(group) < 2 or status != "approximate":
        return
    gaps = checkpoint_gaps(df, group, designs)
    detail["checkpoint_gaps"] = gaps
    listed = ", ".join(f"{tag} {g:.3g}" for tag, g in gaps.items())
    notes.append(f"max |beta - target| / released SE per checkpoint: {listed}")


def _match_joint_residual_scale(
    df: pd.DataFrame, group: list[dict[str, Any]], outcome: str, designs: _Designs | None = None
) -> str | None:
    """Inference fidelity for checkpoints that share rows (OLS beside IV on one sample, nested
    specifications): y <- P y + f (I - P) y on the union of their samples, with P the projection
    on every checkpoint's constraint rows (the rows of each operator A, beta_hat = A y). Every
    A (I - P) = 0, so no coefficient moves, pinned or least-squares compromise alike; f is the
    one factor that brings the checkpoints' residual variances closest to the released ones
    (least squares in logs). Linear families other than re (its operator depends on the
    variance components the scaling would move); returns the note, or None."""
    if any(c["model"] not in ("ols", "fe", "iv") for c in group):
        return None
    built = []
    for c in group:
        target = c.get("scale")
        if not target or not np.isfinite(target) or target <= 0:
            return None
        cp = checkpoint_from_release(c)
        designs = _fresh(designs)
        try:
            d = designs.design(df, c)
            A = designs.operator(d, c, cp)
        except (CheckpointError, np.linalg.LinAlgError):
            return None
        built.append((c, cp, d, A, float(target)))
    union = np.zeros(
        len(df), dtype=bool
    )  # the sorted union of the samples' rows (np.unique of them, in O(n))
    for _, _, d, _, _ in built:
        union[df.index.get_indexer(d.index)] = True
    rows = np.flatnonzero(union)
    pos = np.full(len(df), -1, dtype="int64")
    pos[rows] = np.arange(len(rows))
    blocks = []  # the rows of A = G^-1 B' span the columns of B: project on those
    for _, _, d, A, _ in built:
        M = np.zeros((len(rows), A.B.shape[1]))
        M[pos[df.index.get_indexer(d.index)]] = A.B
        blocks.append(M)
    from scipy.linalg import qr

    Q, R, _ = qr(
        np.hstack(blocks), mode="economic", pivoting=True
    )  # pivoted: nested designs repeat columns
    diag = np.abs(np.diag(R))
    Q = Q[:, : int(np.sum(diag > 1e-12 * max(float(diag.max(initial=0.0)), 1e-300)))]
    y = df[outcome].to_numpy(dtype="float64")[rows]
    fitted = Q @ (Q.T @ y)
    r = y - fitted
    if not np.any(r):
        return None

    at = [pos[df.index.get_indexer(d.index)] for _, _, d, _, _ in built]

    def scales(f: float, ols: list[OlsFactor | None]) -> np.ndarray:
        """Each checkpoint's residual variance with y = fitted + f r on the shared rows (the
        samples do not move: only y does, and no subset reads it). An ols checkpoint's comes
        from its design's factor (the bits `fit_checkpoint` gives, without refactoring the
        design and its sandwich for every f)."""
        yf = fitted + f * r
        return np.asarray(
            [
                fit_checkpoint(replace(d, y=yf[ix]), cp).scale if o is None else o.solve(yf[ix])[2]
                for (_, cp, d, _, _), ix, o in zip(built, at, ols, strict=True)
            ]
        )

    def factor(cp: Checkpoint, d: Design) -> OlsFactor | None:
        n, k = (
            d.X.shape
        )  # what fit_checkpoint checks first; a design failing it goes through it (and raises)
        ok = cp.model == "ols" and 0 < k < n and not collinear_terms(d.X, d.terms)
        return OlsFactor.of(d.X, d.weights) if ok else None

    try:  # each residual variance is quadratic in f: a + p f + q f^2, fixed by f = 0, 1, 2
        ols = [factor(cp, d) for _, cp, d, _, _ in built]
        s0, s1, s2 = scales(0.0, ols), scales(1.0, ols), scales(2.0, ols)
    except (CheckpointError, np.linalg.LinAlgError):
        return None
    targets = np.asarray([t for *_, t in built])
    q = (s2 - 2 * s1 + s0) / 2.0
    grid = np.exp(np.linspace(np.log(0.2), np.log(5.0), 2001))
    S = s0 + (s1 - s0 - q) * grid[:, None] + q * grid[:, None] ** 2  # grid × checkpoints
    ok = np.all(S > 0, axis=1)
    if not ok.any():
        return None
    loss = np.where(
        ok, np.sum((np.log(np.where(S > 0, S, 1.0)) - np.log(targets)) ** 2, axis=1), np.inf
    )
    f = float(grid[int(np.argmin(loss))])
    col = df[outcome].to_numpy(dtype="float64").copy()
    col[rows] = fitted + f * r
    df[outcome] = col
    tags = ", ".join(c["tag"] for c, *_ in built)
    return f"residual orthogonal to every constraint of {tags} scaled by {f:.4g} (joint: one factor for their shared rows, coefficients unmoved)"


def _disjoint_samples(
    df: pd.DataFrame, group: list[dict[str, Any]], designs: _Designs | None = None
) -> bool:
    """Whether the estimation samples of a group's checkpoints share no row: then each
    residual can be rescaled on its own rows without moving the others' fits."""
    if len(group) == 1:
        return True
    seen: set[Any] = set()
    for c in group:
        try:
            idx = set(_fresh(designs).design(df, c).index)
        except CheckpointError:
            return False
        if seen & idx:
            return False
        seen |= idx
    return True


def _match_residual_scale(
    df: pd.DataFrame, c: dict[str, Any], outcome: str, designs: _Designs | None = None
) -> float | None:
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
    designs = _fresh(designs)
    d = designs.design(df, c)
    if cp.model == "re":
        return _match_variance_components(df, c, cp, d, outcome)
    if cp.model in ("fe", "iv"):
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
    beta = designs.operator(d, c, cp).apply(d.y)
    fitted = d.X @ beta
    e = d.y - fitted
    dof = len(d.y) - d.X.shape[1]
    s2 = float(np.sum(W * e * e) / dof) if dof > 0 else 0.0
    if not np.isfinite(s2) or s2 <= 0:
        return None
    factor = float(np.sqrt(target / s2))
    df.loc[d.index, outcome] = fitted + factor * e
    return factor


def _match_variance_components(
    df: pd.DataFrame, c: dict[str, Any], cp: Checkpoint, d: Design, outcome: str
) -> float | None:
    """re: move y to the released sigma2_u and sigma2_e, then pin again (the pin step keeps
    both residuals, so it converges at once); undone when the pin is then not exact."""

    extra = c.get("extra") or {}
    s2u, s2e = extra.get("sigma2_u"), extra.get("sigma2_e")
    if (
        s2u is None
        or s2e is None
        or not (np.isfinite(s2u) and np.isfinite(s2e))
        or s2e <= 0
        or s2u < 0
    ):
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


SHAPE_ROUNDS = 4  # tilt, re-pin, refit: the refit calibrates the small-sample constants
SHAPE_TOL = 1e-4  # max |log(SE_synthetic / SE_target)| at which shaping stops
# ... and below which it does not start: SE ratios already within 2% (large samples after the
# cross-moment alignment: 1M register rows 0.2-1.6%) are left as the scalar scaling made them,
# sparing the k x n operator rows and refits (1M rows: 3 CPU s and 270 MB of the pin peak)
SHAPE_SKIP = 0.02
LEVERAGE_POWER = {"HC2": 1, "HC3": 2}


@dataclass(frozen=True)
class ShapeReport:
    """What `_shape_residuals` did to one checkpoint: the largest |log(SE_synthetic /
    SE_target)| over its released terms before and after, the SE-ratio range after, the
    number of units tilted (observations or clusters), rounds run, whether the targets were
    reachable within the weight bounds (else `fraction`, the share of the way in logs the
    last round got), the range of the cumulative variance weights and how many sit at a
    bound, and the residual variance relative to the released one."""

    before: float
    after: float
    ratio_min: float
    ratio_max: float
    units: int
    unit_kind: str
    rounds: int
    feasible: bool
    fraction: float
    weight_min: float
    weight_max: float
    weight_ess: (
        float  # Kish's effective share (sum w)^2 / (m sum w^2): 1 when no unit was reweighted
    )
    at_bounds: int
    scale_ratio: float | None
    bounds: tuple[float, float] = WEIGHT_BOUNDS

    def note(self) -> str:
        lo, hi = self.bounds
        how = (
            f"tilting {self.units} {self.unit_kind}, {self.rounds} round{'s' if self.rounds != 1 else ''}; "
            f"variance weights {self.weight_min:.3g}-{self.weight_max:.3g}, effective share {self.weight_ess:.2f}, "
            f"{self.at_bounds} at the bounds"
        )
        msg = (
            f"residuals shaped to the released SEs ({how}): max |log SE ratio| before {self.before:.3g}, after "
            f"{self.after:.3g} (SE ratios {self.ratio_min:.3f}-{self.ratio_max:.3f})"
        )
        if not self.feasible:
            msg += (
                f"; the released SEs are not reachable with variance weights in [{lo:.3g}, {hi:.3g}] on this synthetic "
                f"design (last round got {self.fraction:.2f} of the way)"
            )
        if self.scale_ratio is not None and abs(self.scale_ratio - 1.0) > 1e-6:
            msg += f"; residual variance {self.scale_ratio:.4g} x the released one"
        return msg

    def as_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in ((k, getattr(self, k)) for k in self.__dataclass_fields__)
        }


def _se_targets(c: dict[str, Any], d: Design) -> tuple[list[int], np.ndarray]:
    """Positions in the design of the released terms with a usable SE, and those SEs."""
    pos = {t: j for j, t in enumerate(d.terms)}
    rows = [
        (pos[t["term"]], float(t["se"]))
        for t in c.get("terms", [])
        if not t.get("suppressed")
        and t["term"] in pos
        and t.get("se") is not None
        and np.isfinite(float(t["se"]))
        and float(t["se"]) > 0
    ]
    return [r[0] for r in rows], np.asarray([r[1] for r in rows], dtype="float64")


def _shape_residuals(
    df: pd.DataFrame,
    c: dict[str, Any],
    outcome: str,
    bounds: tuple[float, float] | None = None,
    designs: _Designs | None = None,
    support: Support | None = None,
) -> ShapeReport | None:
    """Inference fidelity beyond the residual variance, for a pinned ols/fe/iv checkpoint with
    a robust (HC0-HC3) or clustered vcov: every released SE is a sandwich linear in
    per-unit weights on the squared residual (`shape.sandwich_contributions`), so the
    residual is multiplied by sqrt(w) per observation (HC) or per cluster, w exponentially
    tilted to the released SEs and the released residual variance (`se_shape.tilt_toward`, w in
    `se_shape.WEIGHT_BOUNDS` cumulatively), then the pin step projects the shaped residual off
    the design again (beta stays exact) and the refit measures the SEs; the ratio of the
    refit's SE to the sandwich sum calibrates each term's small-sample constant for the next
    round. The best round is kept (never worse than before); if the residual-variance target
    was reached it is made exact by one scalar at the end (`_match_residual_scale`).
    nonrobust SEs are sigma [(X'X)^-1]_jj^1/2: only their common scale is the residual's, and
    re keeps its matched variance components; both return None. With `support`, no unit's
    weight may take a row of it beyond the released bounds (`_support_cap`)."""

    cp = checkpoint_from_release(c)
    if cp.model not in ("ols", "fe", "iv") or cp.vcov == "nonrobust":
        return None
    designs = _fresh(designs)
    try:
        d = designs.design(df, c, released=False)
        fit = fit_checkpoint(d, cp)
    except CheckpointError:
        return None
    pos, se_t = _se_targets(c, d)
    if not pos or not np.all(np.isfinite(fit.se[pos])) or np.any(fit.se[pos] <= 0):
        return None
    target_scale = c.get("scale")
    use_scale = bool(target_scale) and np.isfinite(target_scale) and target_scale > 0

    def err(f: Any) -> float:
        r = f.se[pos] / se_t
        return (
            float(np.max(np.abs(np.log(r))))
            if np.all(np.isfinite(r)) and np.all(r > 0)
            else float("inf")
        )

    lo, hi = bounds or WEIGHT_BOUNDS
    units = d.clusters if cp.cluster else None
    m = int(units.max()) + 1 if units is not None else len(d.y)
    W = d.weights if d.weights is not None else np.ones(len(d.y))
    p = LEVERAGE_POWER.get(cp.vcov, 0) if cp.model == "ols" else 0
    h = leverage(d.X, d.weights) if p else None
    before = best = err(fit)
    if before <= SHAPE_SKIP:
        return None
    start = df.loc[d.index, outcome].to_numpy(dtype="float64").copy()
    best_y, best_fit, best_cum, best_scale = start, fit, np.ones(m), False
    cum = np.ones(m)
    rounds, feasible, fraction = 0, True, 1.0
    best_reach: tuple[bool, float] | None = None  # feasibility of the round kept
    try:
        A = (
            designs.operator(d, c, cp, released=False).rows_t(pos).T
        )  # depends on the regressors only: fixed while y is shaped
    except (np.linalg.LinAlgError, CheckpointError):
        return None
    for _ in range(SHAPE_ROUNDS):
        if best <= SHAPE_TOL:
            break
        e = d.y - d.X @ fit.beta if cp.model == "ols" else residual(d, cp, fit.beta)
        if e is None:
            break
        a = sandwich_contributions(A, e, units, p, h)
        F = a.sum(axis=0)
        if np.any(F <= 0):
            break
        T = se_t**2 * F / fit.se[pos] ** 2  # released SE^2 over the refit's constant
        res, with_scale = None, False
        box = (
            lo / cum,
            hi / cum if support is None else _support_cap(d.y - e, e, support, units, m, hi / cum),
        )
        if use_scale and fit.scale > 0:
            e2 = W * e * e
            a0 = np.bincount(units, weights=e2, minlength=m) if units is not None else e2
            res = tilt_toward(
                np.column_stack([a, a0]),
                np.append(T, target_scale * a0.sum() / fit.scale),
                box,
            )
            with_scale = res.feasible
        if not with_scale:
            res = tilt_toward(a, T, box)
        assert res is not None
        rounds += 1
        feasible, fraction = res.feasible, res.fraction
        w = res.weights[units] if units is not None else res.weights
        df.loc[d.index, outcome] = d.y + (np.sqrt(w) - 1.0) * e
        if not _repin(df, c, outcome, designs):
            break
        cum = cum * res.weights
        try:
            d = designs.design(df, c, released=False)
            fit = fit_checkpoint(d, cp)
        except CheckpointError:
            break
        now = err(fit)
        if now < best:
            best, best_y, best_fit, best_cum, best_scale = (
                now,
                d.y.copy(),
                fit,
                cum.copy(),
                with_scale,
            )
            best_reach = (res.feasible, res.fraction)
        if not res.feasible and res.fraction <= 0.0:
            break
    df.loc[d.index, outcome] = best_y
    fit = best_fit
    if best_reach is not None:
        feasible, fraction = best_reach
    if best_scale and _match_residual_scale(df, c, outcome) is not None:
        d = designs.design(df, c, released=False)
        fit = fit_checkpoint(d, cp)
        if err(fit) > max(best, SHAPE_TOL) * 1.5 + 1e-6 or not _repin(df, c, outcome, designs):
            df.loc[d.index, outcome] = best_y
            fit = best_fit
    ratios = fit.se[pos] / se_t
    sr = float(fit.scale / target_scale) if use_scale else None
    return ShapeReport(
        before=before,
        after=err(fit),
        ratio_min=float(ratios.min()),
        ratio_max=float(ratios.max()),
        units=m,
        unit_kind="clusters" if units is not None else "observations",
        rounds=rounds,
        feasible=feasible,
        fraction=fraction,
        weight_min=float(best_cum.min()),
        weight_max=float(best_cum.max()),
        weight_ess=float(best_cum.sum() ** 2 / (m * np.sum(best_cum**2))),
        at_bounds=int(np.sum((best_cum <= lo * (1 + 1e-9)) | (best_cum >= hi * (1 - 1e-9)))),
        scale_ratio=sr,
        bounds=(float(lo), float(hi)),
    )


def _repin(
    df: pd.DataFrame, c: dict[str, Any], outcome: str, designs: _Designs | None = None
) -> bool:
    """Pin steps on one checkpoint until exact (the shaped residual is not orthogonal to the
    design; the step projects it off, the pinned coefficients return)."""
    for _ in range(MAX_PASSES):
        gap, _ = _pin_pass(df, [c], outcome, [], designs)
        if gap <= EXACT_TOL:
            return True
    return False


def _stacked(
    df: pd.DataFrame, group: list[dict[str, Any]], designs: _Designs | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The group's constraints in target-SE units on the current data: V (n × K, the rows
    of each operator A at its released terms, placed at the sample's rows, over the term's
    SE), D (K,) the gaps beta* - beta_hat over the SE, and the rows in any sample."""
    parts, gaps = [], []
    designs = _fresh(designs)
    for c in group:
        b = _constraints(df, c, [], designs)
        if b is None:
            return None
        A, d, common, delta = b
        scale = _released_ses(c, d, common)
        parts.append((A, common, scale, df.index.get_indexer(d.index)))
        gaps.append(delta / scale)
    V, sample = designs.stacked_rows(parts, len(df))
    return V, np.concatenate(gaps), sample


def _bounded_passes(
    df: pd.DataFrame,
    group: list[dict[str, Any]],
    outcome: str,
    sup: Support,
    frozen: np.ndarray,
    designs: _Designs | None,
    offset: np.ndarray,
    scale: np.ndarray | None = None,
) -> bool:
    """Bounded minimum-norm steps (`support.bounded_min_norm`; with `scale`, in rank units)
    on the rows of the samples not `frozen` until the group's coefficients are back where
    the pin put them (gaps equal to `offset`: 0 for an exact pin, the compromise's for an
    approximate one); False when they cannot be."""
    for _ in range(MAX_PASSES):
        st = _stacked(df, group, designs)
        if st is None:
            return False
        V, D, sample = st
        D = D - offset
        if np.max(np.abs(D), initial=0.0) <= EXACT_TOL:
            return True
        z = df[outcome].to_numpy(dtype="float64")
        free = sample & ~frozen if scale is None else sample & ~frozen & (scale > 0)
        delta, ok = bounded_min_norm(V, D, z, free, sup.lo, sup.hi, scale)
        if not ok:
            return False
        df[outcome] = z + delta
    st = _stacked(df, group, designs)
    return st is not None and np.max(np.abs(st[1] - offset), initial=0.0) <= EXACT_TOL


def _round_outcome(
    df: pd.DataFrame,
    group: list[dict[str, Any]],
    outcome: str,
    sup: Support,
    frozen: np.ndarray,
    gen: np.random.Generator,
    designs: _Designs | None,
    offset: np.ndarray,
) -> tuple[str, float | None]:
    """An integer or coded outcome back on its lattice: unbiased random rounding, then
    one-step moves on the rows with the best leverage until every pinned coefficient is
    within ROUND_TOL target SEs (`support.repair_gap`); returns the note and the largest
    remaining gap (target SEs)."""
    assert sup.lattice is not None
    st = _stacked(df, group, designs)
    y = df[outcome].to_numpy(dtype="float64")
    obs = np.flatnonzero(~np.isnan(y) & ~np.isin(y, sup.lattice))  # rows on it stay
    yr = round_to_lattice(y, obs, sup.lattice, gen)
    if st is None:
        df[outcome] = yr
        return "rounded to the released values (constraints not rebuilt)", None
    V, D, sample = st
    r = D - offset - V.T @ np.nan_to_num(yr - y)
    moved = int(np.sum(yr[obs] != y[obs]))
    yr, r = repair_gap(yr, np.flatnonzero(sample & ~frozen), V, r, sup.lattice)
    df[outcome] = yr
    gap = float(np.max(np.abs(r), initial=0.0))
    within = "within" if gap <= INTEGER_TOL else "NOT within"
    return (
        f"rounded to its released values ({moved} rows, then a repair): max gap "
        f"{gap:.3g} target SE, {within} the stated tolerance {INTEGER_TOL} SE"
    ), gap


def _keep_support(
    df: pd.DataFrame,
    group: list[dict[str, Any]],
    outcome: str,
    sup: Support,
    draw: np.ndarray,
    gen: np.random.Generator,
    designs: _Designs | None = None,
    detail: dict[str, Any] | None = None,
) -> list[str]:
    """A pinned linear outcome brought back inside its released support with the checkpoints
    still exact: values clipped to [lo, hi], rows the draw put on a mass point put back on
    it, then bounded minimum-norm steps on the other rows (mass-point rows join when the
    others cannot carry the constraints; the unbounded pin is kept when nothing can), then
    integer rounding. Missing values stay where the draw has them. An approximate group keeps
    its compromise coefficients. `detail["support"]` gets the counts (aggregates only)."""
    st = _stacked(df, group, designs)
    if st is None:
        return []
    offset = st[1]
    pinned = df[outcome].to_numpy(dtype="float64").copy()
    obs = ~np.isnan(pinned)
    mass = obs & ~np.isnan(draw) & np.isin(draw, np.asarray(sup.mass, dtype="float64"))
    on_atom = obs & ~np.isnan(draw) & np.isin(draw, np.asarray(sup.atoms, dtype="float64"))
    before = int(np.sum(out_of_support(pinned, replace(sup, lattice=None))))
    frozen, inner = mass, sup.off_mass()
    for frozen, inner in _support_attempts(sup, mass, on_atom):
        df[outcome] = _support_start(pinned, draw, mass, st[2], frozen, inner, sup)
        if _bounded_passes(df, group, outcome, inner, frozen, designs, offset):
            break
    else:
        df[outcome] = pinned
        if detail is not None:
            detail["support"] = {"outside_before": before, "outside_after": before}
        return [
            f"the released support [{sup.lo:.6g}, {sup.hi:.6g}] could not carry the checkpoints: "
            f"{before} rows outside it kept"
        ]
    kept = "kept" if frozen is mass or frozen is on_atom else "released (the checkpoints need them)"
    if frozen is mass and inner is not sup:
        kept += ", the other rows off them"
    free = st[2] & ~np.isnan(pinned) & ~frozen & ~np.isnan(draw)
    args = (df, group, outcome, inner, mass, st[2], draw, designs, offset)
    trial = _exchange_to_draw(*args)
    exchanged, rounds = False, []
    if trial is not None and trial.kept(0.0):
        df[outcome], exchanged = trial.y, True
    else:
        rounds = _match_draw_marginal(
            df, group, outcome, inner, frozen, free, draw, designs, offset
        )
        y_free = df[outcome].to_numpy(dtype="float64")[free]
        if sup.lattice is None and _ks_distance(y_free, draw[free]) > FAR_FROM_DRAW:
            trial = trial if trial is not None else _exchange_to_draw(*args, any_outcome=True)
            if trial is not None and trial.kept(SPILL_SE_SLACK):
                df[outcome], exchanged, rounds = trial.y, True, []
    notes = [
        f"inside the released support [{sup.lo:.6g}, {sup.hi:.6g}] ({before} rows were outside "
        f"after the unbounded pin; {int(mass.sum())} rows on mass points {kept}; "
        f"steps back to the draw's marginal: {', '.join(f'{x:g}' for x in rounds) or 'none'})"
        + (
            f"; the draw's values exchanged between rows{', atoms kept' if sup.atoms else ''}"
            if exchanged
            else ""
        )
    ]
    gap = None
    if sup.lattice is not None:
        note, gap = _round_outcome(df, group, outcome, inner, frozen, gen, designs, offset)
        notes.append(note)
        _restore_storage(df, outcome, sup)
    if detail is not None:
        y = pd.to_numeric(df[outcome]).to_numpy(dtype="float64")
        detail["support"] = {
            "outside_before": before,
            "outside_after": int(np.sum(out_of_support(y, sup))),
            "mass_rows": int(mass.sum()),
            "mass_kept": frozen is mass or frozen is on_atom,
            "atom_rows_kept": int(frozen.sum()) if frozen is on_atom else 0,
            "mass_share_kept": frozen is mass and inner is not sup,
            "marginal_steps": rounds,
            "exchanged": exchanged,
            "integer": sup.lattice is not None,
            "integer_gap_se": gap,
            "integer_tol_se": INTEGER_TOL if sup.lattice is not None else None,
        }
    return notes


def _support_attempts(
    sup: Support, mass: np.ndarray, on_atom: np.ndarray
) -> list[tuple[np.ndarray, Support]]:
    """The (frozen rows, support of the free rows) the support step tries in turn: every row
    the draw put on a released atom frozen (when that is more than the mass points), then the
    mass-point rows; each first with the other rows kept off a mass point at either bound (so
    clipping adds no row to exact zeros or to a top code), then allowed onto it; then every
    row free. The first that carries the checkpoints is kept."""
    inner = sup.off_mass()
    supports = [inner, sup] if inner is not sup else [sup]
    frozen = ([on_atom] if on_atom.sum() > mass.sum() else []) + [mass]
    return [(f, s) for f in frozen for s in supports] + [(np.zeros(len(mass), dtype=bool), sup)]


def _support_start(
    pinned: np.ndarray,
    draw: np.ndarray,
    mass: np.ndarray,
    sample: np.ndarray,
    frozen: np.ndarray,
    inner: Support,
    sup: Support,
) -> np.ndarray:
    """Where the bounded passes start: the pinned values clipped to the support (the sample
    rows that may move to the free rows' support), the rows the draw put on a mass point back
    on it."""
    start = pinned.copy()
    obs = ~np.isnan(pinned)
    start[obs] = np.clip(start[obs], sup.lo, sup.hi)
    free = obs & sample & ~frozen
    start[free] = np.clip(start[free], inner.lo, inner.hi)
    start[mass] = draw[mass]
    start[frozen] = draw[frozen]
    return start


def _restore_storage(df: pd.DataFrame, outcome: str, sup: Support) -> None:
    """An outcome on its lattice stored as released: int64 or bool (Int64 or boolean with
    missing values), as synthesis stores it."""
    y = df[outcome]
    if sup.integer_dtype:
        df[outcome] = y.astype("int64") if not y.isna().any() else y.round().astype("Int64")
    elif sup.boolean_dtype:
        df[outcome] = y.astype(bool) if not y.isna().any() else y.astype("boolean")


def _exchange_to_draw(
    df: pd.DataFrame,
    group: list[dict[str, Any]],
    outcome: str,
    sup: Support,
    mass: np.ndarray,
    sample: np.ndarray,
    draw: np.ndarray,
    designs: _Designs | None,
    offset: np.ndarray,
    any_outcome: bool = False,
) -> _Exchange | None:
    """A continuous outcome with released atoms, or an integer or coded one, put back on the
    draw's values: the sample rows off the mass points (of an integer or coded outcome: off a
    mass point at or beyond either end of `sup`, exact zeros or a top code) take the draw's
    values at those rows in the order of their pinned values (atoms or levels with their
    counts, the grid between atoms), exchanges of values between rows bring the checkpoints
    back within ROUND_TOL target SEs (`support.swap_repair`), and a bounded minimum-norm step
    on the rows holding no atom makes them exact (an integer or coded outcome: the lattice
    repair of `_round_outcome`). The repair also tracks the group's SEs (`_se_proxy`): the released SEs come from the raw outcome and the
    released marginal is coded at its ends, so both cannot always hold. Kept (True) when every
    |log(SE / released SE)| stays within EXCHANGE_SE_BOUND, or within the largest before;
    otherwise the outcome is left for `_match_draw_marginal` (`_Exchange.kept`). Returns the
    exchanged values and what decides on them, df's column as it was; None where no exchange
    applies (an outcome without atoms unless `any_outcome`, the fallback after that step left
    the rows far from the draw's marginal)."""
    y0 = df[outcome].to_numpy(dtype="float64").copy()
    ends = np.asarray([v for v in sup.mass if v <= sup.lo or v >= sup.hi], dtype="float64")
    keep = mass if sup.lattice is None else np.isin(draw, ends)
    rows = np.flatnonzero(sample & ~keep & ~np.isnan(y0) & ~np.isnan(draw))
    st = _stacked(df, group, designs)
    start = _se_gaps(df, group, designs)
    if (
        (sup.lattice is None and not sup.atoms and not any_outcome)
        or len(rows) < 2
        or st is None
        or start is None
    ):
        return None
    V, D, _ = st
    y = y0.copy()
    pool = np.clip(draw[rows], sup.lo, sup.hi)  # a draw from the release is inside already
    y[rows[np.argsort(y0[rows], kind="stable")]] = np.sort(pool)
    df[outcome] = y
    proxy = _se_proxy(df, group, designs, V, swap_pool(rows))
    y, gap = swap_repair(y, rows, V, D - offset - V.T @ np.nan_to_num(y - y0), se=proxy)
    df[outcome] = y
    atoms = np.asarray(sup.atoms, dtype="float64")
    frozen = np.ones(len(y), dtype=bool)
    frozen[rows[~np.isin(y[rows], atoms)]] = False
    bound = max(float(np.max(start, initial=0.0)), EXCHANGE_SE_BOUND)
    if sup.lattice is not None:  # lattice steps close what the exchanges left, if they can
        y, gap = repair_gap(y, rows, V, gap, sup.lattice)
        df[outcome] = y
        exact = bool(np.max(np.abs(gap), initial=0.0) <= INTEGER_TOL)
    else:
        scale = _rank_scale(y, ~frozen & ~np.isnan(y))
        exact = _bounded_passes(df, group, outcome, sup, frozen, designs, offset, scale)
    gaps = _se_gaps(df, group, designs) if exact else None
    trial = _Exchange(df[outcome].to_numpy(dtype="float64").copy(), exact, bound, gaps)
    df[outcome] = y0
    return trial


@dataclass
class _Exchange:
    """The draw's values exchanged between rows (`_exchange_to_draw`): the new column `y`,
    whether the checkpoints are exact, the bound on |log(SE / released SE)| and the gaps."""

    y: np.ndarray
    exact: bool
    bound: float
    gaps: np.ndarray | None

    def kept(self, slack: float) -> bool:
        """Exact, with every SE gap within the bound plus `slack`."""
        return self.exact and _within(self.gaps, np.asarray(self.bound + slack))


def _rank_scale(y: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Per row of `free`, the change of value one rank is worth around its rank among the
    free rows (their spacing over RANK_WINDOW of them each way, at most RANK_CAP times the
    median spacing), 0 elsewhere."""
    rows = np.flatnonzero(free)
    out = np.zeros(len(y))
    m = len(rows)
    if m < 2:
        return out
    order = rows[np.argsort(y[rows], kind="stable")]
    v = y[order]
    h = max(1, int(m * RANK_WINDOW))
    k = np.arange(m)
    lo, hi = np.maximum(k - h, 0), np.minimum(k + h, m - 1)
    out[order] = (v[hi] - v[lo]) / (hi - lo)
    spaced = out[rows][out[rows] > 0]
    if len(spaced):  # a sparse extreme tail moves by ranks too, not by its whole gaps
        out[rows] = np.minimum(out[rows], RANK_CAP * float(np.median(spaced)))
    return out


RANK_WINDOW = 0.01  # share of the free rows each way over which `_rank_scale` reads spacing
RANK_CAP = 10.0  # largest `_rank_scale` as a multiple of the free rows' median spacing


def _se_proxy(
    df: pd.DataFrame,
    group: list[dict[str, Any]],
    designs: _Designs | None,
    V: np.ndarray,
    pool: np.ndarray,
) -> SeProxy | None:
    """The group's SEs as the swap repair tracks them (`support.SeProxy`) on the rows `pool`
    (`support.swap_pool`), in the column order of `_stacked`'s V: the fitted values of each
    term's checkpoint and the refit's log(SE / released SE); Q sums over every row. ols and
    iv only (their sandwich is A diag(e^2) A'); None otherwise or when a checkpoint cannot be
    refitted."""
    designs = _fresh(designs)
    fitted_cols, of_term, gaps = [], [], []
    for c in group:
        if c["model"] not in ("ols", "iv"):
            return None
        cp = checkpoint_from_release(c)
        try:
            d = designs.design(df, c)
            fitted = d.X @ designs.operator(d, c, cp).apply(d.y)
            full = designs.design(df, c, released=False)
            fit = fit_checkpoint(full, cp)
        except (CheckpointError, np.linalg.LinAlgError):
            return None
        col = np.zeros(len(df))
        col[df.index.get_indexer(d.index)] = fitted
        fitted_cols.append(col)
        se = {t["term"]: t.get("se") for t in c["terms"] if not t.get("suppressed")}
        tgt = _targets(c)
        for name in (t for t in d.terms if t in tgt):
            k = full.terms.index(name) if name in full.terms else -1
            target = float(se.get(name) or 0.0)
            ok = k >= 0 and target > 0 and bool(np.isfinite(fit.se[k]) and fit.se[k] > 0)
            gaps.append(float(np.log(fit.se[k] / target)) if ok else 0.0)
            of_term.append(len(fitted_cols) - 1)
    if len(gaps) != V.shape[1]:
        return None
    Fc = np.column_stack(fitted_cols)  # one column per checkpoint, not per term
    y = np.nan_to_num(df[group[0]["outcome"]].to_numpy(dtype="float64"))
    Q = _sandwich_diag(V, Fc, np.asarray(of_term), y)
    if not np.all(Q > 0):
        return None
    Vp = V[pool]
    return SeProxy(Vp * Vp, Fc[pool][:, of_term], Q, np.asarray(gaps))


def _sandwich_diag(V: np.ndarray, Fc: np.ndarray, of_term: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Q_k = sum_i V_ik^2 (y_i - F_ik)^2 with F_ik = Fc[i, of_term[k]], by blocks of rows
    (no rows × terms arrays)."""
    Q = np.zeros(V.shape[1])
    for s in range(0, len(y), ROW_CHUNK):
        e = y[s : s + ROW_CHUNK, None] - Fc[s : s + ROW_CHUNK][:, of_term]
        v = V[s : s + ROW_CHUNK]
        Q += np.einsum("ik,ik->k", v * v, e * e)
    return Q


EXCHANGE_SE_BOUND = 0.25  # |log SE ratio| the exchange may reach on a term (0.78-1.28)
# A continuous outcome whose free rows end further than this (KS distance) from the draw's
# values at those rows (clipping piled them on a bound, or the marginal steps failed) gets
# the draw's values exchanged instead, its SEs allowed SPILL_SE_SLACK further.
FAR_FROM_DRAW = 0.10
SPILL_SE_SLACK = 0.25


def _ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance of the values a and b (0 when either is empty)."""
    if not len(a) or not len(b):
        return 0.0
    a, b = np.sort(a), np.sort(b)
    x = np.concatenate([a, b])
    fa = np.searchsorted(a, x, side="right") / len(a)
    fb = np.searchsorted(b, x, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


MARGINAL_ROUNDS = 4  # rank-map to the draw's values, then re-pin inside the support


def _match_draw_marginal(
    df: pd.DataFrame,
    group: list[dict[str, Any]],
    outcome: str,
    sup: Support,
    frozen: np.ndarray,
    free: np.ndarray,
    draw: np.ndarray,
    designs: _Designs | None,
    offset: np.ndarray,
) -> list[float]:
    """Alternating projections between the draw's marginal and the checkpoints: the `free`
    rows move a share of the way to the draw's values at those rows, given in the order of
    their pinned values (the draw's distribution, drawn from the released grid), then
    bounded minimum-norm steps make the checkpoints exact again. A step is kept when every
    released SE stays within SE_SLACK (in logs) of its target, or no further off than
    before; the shares kept are returned."""
    rows = np.flatnonzero(free)
    if len(rows) < 2:
        return []
    pool = np.sort(draw[rows])
    kept: list[float] = []
    start = _se_gaps(df, group, designs)
    if start is None:
        return []
    allowed = np.maximum(start, SE_SLACK)
    for _ in range(MARGINAL_ROUNDS):
        before = df[outcome].to_numpy(dtype="float64").copy()
        mapped = before.copy()
        mapped[rows[np.argsort(before[rows], kind="stable")]] = pool
        for share in MARGINAL_SHARES:
            df[outcome] = before + share * np.nan_to_num(mapped - before)
            if _bounded_passes(df, group, outcome, sup, frozen, designs, offset) and _within(
                _se_gaps(df, group, designs), allowed
            ):
                kept.append(share)
                break
        else:
            df[outcome] = before
            break
    return kept


MARGINAL_SHARES = (1.0, 0.5, 0.25)  # shares of the way to the draw's marginal a round tries
SE_SLACK = 0.02  # |log(SE synthetic / SE released)| a marginal step may reach on a term


def _within(gaps: np.ndarray | None, allowed: np.ndarray) -> bool:
    return gaps is not None and bool(np.all(gaps <= allowed + 1e-12))


def _se_gaps(
    df: pd.DataFrame, group: list[dict[str, Any]], designs: _Designs | None
) -> np.ndarray | None:
    """|log(SE synthetic / SE released)| of every released term of the group (the refit
    verification runs), or None when a checkpoint cannot be refitted."""
    out = []
    for c in group:
        cp = checkpoint_from_release(c)
        try:
            d = _fresh(designs).design(df, c, released=False)
            fit = fit_checkpoint(d, cp)
        except (CheckpointError, np.linalg.LinAlgError):
            return None
        pos, se_t = _se_targets(c, d)
        r = fit.se[pos] / se_t
        if not np.all(np.isfinite(r)) or np.any(r <= 0):
            return None
        out.append(np.abs(np.log(r)))
    return np.concatenate(out) if out else np.zeros(0)


def _support_cap(
    fitted: np.ndarray,
    e: np.ndarray,
    sup: Support,
    units: np.ndarray | None,
    m: int,
    cap: np.ndarray | float,
) -> np.ndarray:
    """Upper bounds of the shaping weights (m,): `cap`, lowered so that sqrt(w) e keeps every
    row of the unit inside [lo, hi] of the released support (never below 1: a row already
    outside is not widened further, and the support step brings it back)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(
            e > 0, (sup.hi - fitted) / e, np.where(e < 0, (sup.lo - fitted) / e, np.inf)
        )
    w_row = np.maximum(np.nan_to_num(room, nan=np.inf), 0.0) ** 2
    if units is None:
        w_unit = w_row
    else:
        w_unit = np.full(m, np.inf)
        np.minimum.at(w_unit, units, w_row)
    return np.minimum(np.broadcast_to(cap, (m,)), np.maximum(w_unit, 1.0))
