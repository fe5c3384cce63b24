"""Layer 4: pin checkpoint coefficients on the synthetic data by moving only the outcome.

Linear estimators: beta_hat = A y with A = (X'WX)^-1 X'W, so for one checkpoint
y <- y + X (beta* - beta_hat) on the estimation sample returns beta* exactly. Several
checkpoints on one outcome are solved jointly: stack the constraints A_c delta = Delta_c of
their released terms and take the minimum-norm delta (exact when the constraints are
consistent, least squares otherwise). Outcome groups are pinned in dependency order: a group
whose outcome is a regressor of another group goes first, so later pins do not undo it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .design import Design, build_design
from .errors import CheckpointError
from .manifest import Checkpoint


def checkpoint_from_release(c: dict[str, Any]) -> Checkpoint:
    """The Checkpoint a released record describes."""
    return Checkpoint(
        tag=c["tag"], source=c["source"], model=c["model"], formula=c["formula"], vcov=c["vcov"],
        weights=c.get("weights"), absorb=tuple(c.get("absorb") or ()), entity=c.get("entity"),
        time=c.get("time"), subset=c.get("subset"), levels=tuple(c["levels"]) if c.get("levels") else None,
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


def _targets(c: dict[str, Any]) -> dict[str, float]:
    return {t["term"]: float(t["beta"]) for t in c.get("terms", []) if not t.get("suppressed")}


def _solve_matrix(d: Design) -> np.ndarray:
    """A = (X'WX)^-1 X'W (k × n): beta_hat = A y."""
    X = d.X
    W = d.weights if d.weights is not None else np.ones(len(d.y))
    XtW = X.T * W
    return np.linalg.solve(XtW @ X, XtW)


def pin_order(cps: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(source, outcome) groups in dependency order; manifest order breaks ties. A cycle
    (y1 explains y2 and y2 explains y1) falls back to manifest order for the rest."""
    groups: list[tuple[str, str]] = []
    for c in cps:
        g = (c["source"], c["outcome"])
        if g not in groups:
            groups.append(g)
    uses = {g: set() for g in groups}
    for c in cps:
        g = (c["source"], c["outcome"])
        uses[g] |= {(c["source"], col) for col in c["columns"] if col != c["outcome"]}
    # g must precede h when g's outcome is used by h
    order: list[tuple[str, str]] = []
    pending = list(groups)
    while pending:
        ready = [h for h in pending if not any(g in uses[h] for g in pending if g != h)]
        nxt = ready[0] if ready else pending[0]
        order.append(nxt)
        pending.remove(nxt)
    return order


def pin_checkpoints(frames: dict[str, pd.DataFrame], checkpoints: list[dict[str, Any]]) -> tuple[dict[str, pd.DataFrame], list[PinOutcome]]:
    """Pin every released checkpoint; returns new frames and one record per outcome group."""
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
        if not pd.api.types.is_float_dtype(df[outcome].dtype):
            df[outcome] = pd.to_numeric(df[outcome], errors="coerce").astype("float64")
        rows_A, rows_D = [], []
        notes = []
        for c in group:
            cp = checkpoint_from_release(c)
            try:
                d = build_design(df, cp, f"checkpoint {cp.tag!r} on synthetic data")
            except CheckpointError as exc:
                notes.append(str(exc))
                continue
            tgt = _targets(c)
            common = [j for j, t in enumerate(d.terms) if t in tgt]
            missing_terms = sorted(set(tgt) - set(d.terms))
            if missing_terms:
                notes.append(f"{cp.tag}: terms absent from the synthetic design: {', '.join(missing_terms)}")
            if not common:
                continue
            try:
                A = _solve_matrix(d)
            except np.linalg.LinAlgError:
                notes.append(f"{cp.tag}: singular synthetic design")
                continue
            beta = A @ d.y
            delta = np.array([tgt[d.terms[j]] - beta[j] for j in common])
            if len(group) == 1:
                full = np.zeros(d.X.shape[1])
                full[common] = delta
                df.loc[d.index, outcome] = df.loc[d.index, outcome].to_numpy(dtype="float64") + d.X @ full
                results.append(PinOutcome(source, outcome, tags, False, "pinned", "; ".join(notes)))
                break
            rows_A.append((A[common], d.index))
            rows_D.append(delta)
        else:
            if len(group) > 1 and rows_A:
                pos = {ix: i for i, ix in enumerate(df.index)}
                n = len(df)
                blocks = []
                for Ac, index in rows_A:
                    M = np.zeros((Ac.shape[0], n))
                    M[:, [pos[i] for i in index]] = Ac
                    blocks.append(M)
                Amat = np.vstack(blocks)
                D = np.concatenate(rows_D)
                # minimum-norm delta: A' (A A')^+ D
                lam = np.linalg.lstsq(Amat @ Amat.T, D, rcond=None)[0]
                delta_y = Amat.T @ lam
                touched = np.abs(delta_y) > 0
                y = df[outcome].to_numpy(dtype="float64").copy()
                y[touched] = y[touched] + delta_y[touched]
                df[outcome] = y
                resid = Amat @ delta_y - D
                consistent = bool(np.max(np.abs(resid)) <= 1e-8 * max(1.0, np.max(np.abs(D))))
                note = "; ".join(notes + ([] if consistent else ["constraints inconsistent on the synthetic regressors: least-squares compromise"]))
                results.append(PinOutcome(source, outcome, tags, True, "pinned" if consistent else "approximate", note))
            elif not rows_A and len(group) >= 1:
                results.append(PinOutcome(source, outcome, tags, len(group) > 1, "failed", "; ".join(notes)))
        frames[source] = df
    return frames, results
