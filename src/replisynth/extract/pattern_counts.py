"""Secure side: a checkpoint whose design is made of indicators (the dummies of a factor, 0/1
terms, their interactions) with model-based standard errors releases its X'X up to the
scale, a function of the counts of its distinct design rows: in a saturated design every
group's count (OLS n_g = scale / (se² of the contrast less se² of the intercept), a GLM's
information per group), with two 0/1 terms the 2×2 cell their margins leave open. A pattern
of 1..k−1 rows (a suppressed coefficient's group: n less the others) or a level of a column
whose table suppresses or pools categories (the bucket less the level) would follow. Method: docs/disclosure.md, "Group counts from
standard errors"."""

from __future__ import annotations

import numpy as np
import pandas as pd

from replisynth.config.manifest import Checkpoint, formula_variables
from replisynth.io.schema import MAX_ORDINAL_LEVELS, few_values
from replisynth.stats.atoms import split_atoms
from replisynth.stats.design import Design

REASON = (
    "group counts: the design is made of indicators and its standard errors are "
    "model-based (or robust with a 0/1 outcome, whose residual variance in each group its "
    "mean gives), so they give the counts of its groups (combinations of the indicators); a "
    "group has fewer than min_cell_size rows, or the indicators read a column whose table "
    "suppresses or pools categories below it; use a robust vcov (HC1) with an outcome of more "
    "than two values, clustered SEs, or add a continuous regressor"
)
ROBUST = ("HC0", "HC1", "HC2", "HC3")


def indicator_patterns(X: np.ndarray) -> np.ndarray | None:
    """Rows per distinct design row of a design of 0/1 columns and at most one constant
    column (factor dummies, 0/1 terms, their interactions), or None for any other design."""
    if X.ndim != 2 or X.shape[1] < 1 or len(X) == 0:
        return None
    const = np.all(X == X[:1], axis=0)
    free = X[:, ~const]
    if int(const.sum()) > 1 or free.shape[1] == 0 or not np.all((free == 0) | (free == 1)):
        return None
    _, counts = np.unique(free, axis=0, return_counts=True)
    return counts


def _hides_counts(s: pd.Series, min_cell: int) -> bool:
    """Whether the column's release hides counts an exact group count could complete: a
    column of few values (a table) with a category of 1..min_cell−1 rows (pooled or in the
    bucket), or a numeric column of many values with atoms and rows off them (the atoms'
    exact counts against a threshold's group count give the rows off them across it)."""
    numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    if not numeric or few_values(s, MAX_ORDINAL_LEVELS) <= MAX_ORDINAL_LEVELS:
        counts = s.value_counts(dropna=True).to_numpy()
        return bool(np.any((counts > 0) & (counts < min_cell)))
    v = s.to_numpy(dtype="float64", na_value=np.nan)
    split = split_atoms(v[~np.isnan(v)], min_cell)
    return bool(len(split.values) and len(split.rest))


def group_count_rejection(
    df: pd.DataFrame, design: Design, cp: Checkpoint, min_cell: int
) -> str | None:
    """Why a checkpoint is refused for giving group counts through its SEs, or None: an
    unweighted (or constant-weight), model-based (nonrobust) fit on a design of indicators
    whose distinct rows hold 1..min_cell−1 rows, or whose regressors read a column whose
    release hides counts (`_hides_counts`)."""
    weighted = design.weights is not None and np.ptp(design.weights) > 0  # constant: counts
    # HC SEs of a 0/1 outcome: in a group of the design its residual sum of squares is
    # n_g m_g (1 - m_g), m_g from the coefficients, so the sandwich gives n_g as well
    binary = cp.vcov in ROBUST and len(np.unique(design.y[~np.isnan(design.y)])) <= 2
    if (cp.vcov != "nonrobust" and not binary) or weighted or design.absorb is not None:
        return None
    if design.Z is not None or design.entity is not None:
        return None  # iv and re: the SEs mix in the first stage or the variance components
    counts = indicator_patterns(design.X)
    if counts is None:
        return None
    if np.any(counts < min_cell):
        return REASON
    read = formula_variables(cp.formula) - {cp.outcome}
    if any(_hides_counts(df[c], min_cell) for c in sorted(read) if c in df.columns):
        return REASON
    return None
