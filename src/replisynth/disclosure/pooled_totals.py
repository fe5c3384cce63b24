"""Exact totals of a numeric column whose table pools values below k, as an attacker solves
them from checkpoint releases: a linear system over the totals of each column on each cell of
the released row sets (n, released design means, the zero residual sum of an OLS or IV fit,
the outcome total of a count fit on indicators), asked whether it determines such a column's
total on a row set whose table is known. Method: docs/disclosure.md, "Pooled totals across
checkpoints"."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from replisynth.core.options import GLM_COUNT

INTERCEPT = "Intercept"
LINEAR_MODELS = ("ols", "iv")  # with an intercept their residuals sum to zero on the sample
Equation = dict[str, float]  # column or term name -> coefficient: Σ coef · total is known
REASON = (
    "pooled totals: with the checkpoints released before it and the source tables, its "
    "coefficients, standard errors or means give the exact total of a numeric column whose "
    "table pools or buckets values below min_cell_size, on a row set whose table is released "
    "(the pooled rows' values would follow); give the checkpoint a continuous regressor or a "
    "subset, or top-code the column in derive:"
)


def record_equations(
    rec: Mapping[str, Any], patterned: bool, protected: frozenset[str] = frozenset()
) -> list[Equation]:
    """Totals on a released checkpoint's sample that its release makes known, as equations:
    n (the intercept column's total), each released unweighted design mean, an OLS or IV
    fit's outcome total (coefficients times design totals: residuals sum to zero with an
    intercept), and a count model's outcome total when its outcome mean is released or its
    design takes a few patterns (`patterned`: fitted means times pattern counts, or the
    nonrobust SEs, give it). Weighted fits give weighted totals only: none."""
    if rec.get("status") != "released" or rec.get("weights"):
        return []
    out: list[Equation] = [{INTERCEPT: 1.0}]
    mom = rec.get("moments") or {}
    if mom and not mom.get("weighted"):
        out += [{t: 1.0} for t in mom["terms"]]
    y = str(rec["outcome"])
    terms = rec.get("terms", [])
    named = [t["term"] for t in terms if _design_term(t.get("term"))]
    if _model_based(rec) and rec["model"] == "ols":  # scale x diag((X'X)^-1)
        out += [{t: 1.0} for t in named]
    elif _model_based(rec) and len(named) == 1 and named[0] in protected:
        out.append({named[0]: 1.0})  # a GLM's X'WX: W a function of the one regressor
    beta = {t["term"]: float(t["beta"]) for t in terms if not t.get("suppressed")}
    whole = len(beta) == len(terms) and INTERCEPT in beta and not rec.get("absorb")
    if rec["model"] in LINEAR_MODELS and whole:
        eq = {y: 1.0}
        for t, b in beta.items():
            eq[t] = eq.get(t, 0.0) - b
        out.append(eq)
    if rec["model"] in GLM_COUNT and (patterned or rec.get("outcome_mean") is not None):
        out.append({y: 1.0})
    return out


_MODEL_BASED = ("ols", "logit", "probit", "poisson", "nbreg", "ologit", "oprobit")


def _model_based(rec: Mapping[str, Any]) -> bool:
    """An unweighted fit with model-based SEs on its design alone (no absorbed or instrumented
    columns): an OLS fit's SEs are the diagonal of scale x (X'X)^-1, which gives the design's
    totals (exactly with one regressor beside the intercept; with more, together with the
    tables and other releases), so they count as released whether or not the design means
    are; a GLM's are (X'WX)^-1 with W a function of the fitted value: with one regressor that
    reads a pooled column (`protected`), the table's levels and counts leave the pooled row's
    value the one unknown; with more, the rows' joint values enter W and stay unknown."""
    return (
        rec.get("vcov") == "nonrobust"
        and rec.get("model") in _MODEL_BASED
        and not rec.get("absorb")
        and not rec.get("instruments")
    )


def _design_term(term: Any) -> bool:
    return isinstance(term, str) and term not in (INTERCEPT, "alpha") and not term.startswith("cut")


def patterned_terms(terms: Iterable[str], few_valued: set[str]) -> bool:
    """Whether every non-intercept term is a factor level indicator (or an interaction of
    them) or a column of few values: the design then takes a few patterns whose counts the
    tables give (or whose count fit's SEs give each pattern's fitted total)."""
    return all(t == INTERCEPT or "[T." in t or t in few_valued for t in terms)


def readers(column: str, derive: Iterable[tuple[str, str]]) -> set[str]:
    """The column and every derived column whose expression reads it, through other derived
    columns too (`visits + x`: its total less x's gives the column's)."""
    out, rules = {column}, list(derive)
    grown = True
    while grown:
        new = {
            name for name, expr in rules if name not in out and any(_mentions(expr, c) for c in out)
        }
        out |= new
        grown = bool(new)
    return out


def reads(term: str, columns: Iterable[str]) -> bool:
    """Whether `term` names one of `columns` (its total, with other released totals, can
    give theirs: a function of the column, a sum with another column, a derived column)."""
    return any(_mentions(term, c) for c in columns)


def _mentions(term: str, col: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_.]){re.escape(col)}(?![A-Za-z0-9_])", term) is not None


class TotalsSystem:
    """The attacker's linear system: unknowns the total of each name on each cell (a set of
    rows that every released row set holds whole or not at all), rows the known totals."""

    def __init__(self) -> None:
        self.index: dict[tuple[int, str], int] = {}
        self.rows: list[dict[int, float]] = []

    def equations(self, cells: Sequence[int], eqs: Iterable[Equation]) -> list[dict[int, float]]:
        """Rows of the equations `eqs` on the row set made of `cells`."""
        out = []
        for eq in eqs:
            row: dict[int, float] = {}
            for name, coef in eq.items():
                if coef == 0.0:
                    continue
                for c in cells:
                    j = self.index.setdefault((c, name), len(self.index))
                    row[j] = row.get(j, 0.0) + coef
            if row:
                out.append(row)
        return out

    def add(self, rows: list[dict[int, float]]) -> None:
        self.rows += rows

    def determined(self, cells: Sequence[int], name: str, extra: list[dict[int, float]]) -> bool:
        """Whether the total of `name` on `cells` follows from the rows (and `extra`)."""
        target = [self.index.get((c, name)) for c in cells]
        rows = self.rows + extra
        if not cells or any(j is None for j in target) or not rows:
            return False
        A = np.zeros((len(rows), len(self.index)))
        for i, row in enumerate(rows):
            for j, v in row.items():
                A[i, j] = v
        A /= np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-300)
        g = np.zeros(len(self.index))
        g[[j for j in target if j is not None]] = 1.0
        z = np.linalg.lstsq(A.T, g, rcond=None)[0]
        return bool(np.linalg.norm(A.T @ z - g) < 1e-6 * np.linalg.norm(g))


# ------------------------------------------------------------------ the review (bundle alone)


def pooled_table_columns(release: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """(numeric columns whose source table pools or buckets values, numeric columns whose
    source table is exact), from the release's source-level marginals."""
    pooled, exact = set(), set()
    for col, m in release["blocks"]["all"]["marginals"].items():
        t = m.get("table")
        if not t or not all(isinstance(v, int | float) for v in t["levels"]):
            continue
        if t.get("pooled_levels") or t.get("suppressed"):
            pooled.add(col)
        else:
            exact.add(col)
    return pooled, exact


def _derive_of(manifest: Any, source: str) -> tuple[tuple[str, str], ...]:
    try:
        return tuple(manifest.source(source).derive) if manifest is not None else ()
    except KeyError:
        return ()


def check_pooled_totals(
    checkpoints: Sequence[Mapping[str, Any]],
    releases: Mapping[str, Mapping[str, Any]],
    manifest: Any = None,
) -> list[dict[str, Any]]:
    """The review's pass: the released checkpoints on all rows of a source (n equal to its
    rows, unweighted), in order, with the source tables' exact totals (factor indicators,
    numeric columns of an exact table); a checkpoint after which the total of a pooled
    numeric column (or of a term or derived column reading it: `manifest`'s derive) follows
    is a finding. Subsets are not seen:
    the secure side's gate compares their row sets."""
    found = []
    for src, rel in releases.items():
        pooled, exact = pooled_table_columns(rel)
        cps = [
            c
            for c in checkpoints
            if c["source"] == src and c.get("status") == "released" and int(c["n"]) == rel["rows"]
        ]
        if not pooled or not cps:
            continue
        derive = _derive_of(manifest, src)
        system = TotalsSystem()
        names = {t["term"] for c in cps for t in c["terms"] if t.get("term")}
        names |= {str(c["outcome"]) for c in cps}
        known = [{t: 1.0} for t in names if "[T." in t or t in exact]
        system.add(system.equations([0], known))
        targets = [t for t in names for p in pooled if reads(t, readers(p, derive))]
        # a total the tables give already (a level's count) is not one a checkpoint reveals
        targets = [t for t in targets if not system.determined([0], t, [])]
        for c in cps:
            terms = [t["term"] for t in c["terms"] if t.get("term")]
            eqs = record_equations(c, patterned_terms(terms, exact), frozenset(targets))
            rows = system.equations([0], eqs)
            if any(system.determined([0], t, rows) for t in targets):
                found.append(
                    {
                        "check": "pooled totals",
                        "source": src,
                        "checkpoint": c["tag"],
                        "finding": "with the tables and the checkpoints before it on all rows, "
                        "its release gives the exact total of a numeric column whose table "
                        "pools values below min_cell_size",
                    }
                )
                continue
            system.add(rows)
    return found
