"""Propensity-score utility of synthetic data (pMSE, Snyder/Woo; synthpop's `utility.gen`):
how well a classifier tells synthetic rows from original ones, as a ratio to what it achieves
when nothing tells them apart. Aggregates only. Method: docs/method.md, "Utility: pMSE ratios".
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

MAX_ROWS = 50_000  # rows per side at most; larger sides are subsampled with the caller's rng
PERMUTATIONS = 10  # label permutations giving the CART null expectation
MIN_LEAF = 5  # rpart's minbucket in synthpop's utility.gen
MAX_LEAVES = 32  # the tree's complexity limit (grown best-first); see docs/method.md
MAX_LEVELS = 20  # logistic: levels of a categorical column beyond the most frequent are pooled
METHODS = ("logit", "cart")


@dataclass
class Design:
    """Both encodings of the stacked rows (original first): the logistic model's main effects
    (one-hot categoricals) and the tree's features (ordinal codes)."""

    logit: list[np.ndarray] = field(default_factory=list)
    cart: list[np.ndarray] = field(default_factory=list)

    def matrix(self, which: str, rows: int) -> np.ndarray:
        parts = self.logit if which == "logit" else self.cart
        return np.column_stack(parts) if parts else np.zeros((rows, 0))


def _is_numeric(s: pd.Series) -> bool:
    dt = s.dtype
    if isinstance(dt, pd.CategoricalDtype):
        return False
    return bool(
        pd.api.types.is_bool_dtype(dt)
        or pd.api.types.is_numeric_dtype(dt)
        or pd.api.types.is_datetime64_any_dtype(dt)
    )


def as_float(s: pd.Series) -> np.ndarray:
    """A numeric, boolean or date column as float64 (dates in days), missing as NaN."""
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        out = np.full(len(s), np.nan)
        ok = s.notna().to_numpy()
        ns = s[ok].astype("datetime64[ns]").to_numpy().astype("int64").astype("float64")
        out[ok] = ns / 86_400e9
        return out
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _add_numeric(design: Design, v: np.ndarray) -> None:
    """A numeric column: its values, plus a missingness indicator when any is missing
    (filled with the observed mean for the logistic model, below the minimum for the tree)."""
    miss = np.isnan(v)
    if miss.all():
        return
    if miss.any():
        design.logit.append(miss.astype("float64"))
        design.cart.append(miss.astype("float64"))
        obs = v[~miss]
        design.logit.append(np.where(miss, obs.mean(), v))
        design.cart.append(np.where(miss, obs.min() - 1.0, v))
    else:
        design.logit.append(v)
        design.cart.append(v)


def _add_categorical(design: Design, s: pd.Series) -> None:
    """A categorical column (missing is a level): ordinal codes for the tree; for the logistic
    model one indicator per level but the most frequent, the MAX_LEVELS most frequent kept."""
    text = s.astype(object).where(s.notna(), None).to_numpy()
    codes, _ = pd.factorize(text, use_na_sentinel=False)
    counts = np.bincount(codes)
    design.cart.append(codes.astype("float64"))
    order = np.argsort(-counts, kind="stable")
    kept = order[1 : MAX_LEVELS + 1]
    design.logit += [(codes == k).astype("float64") for k in kept]
    if len(order) > MAX_LEVELS + 1:
        design.logit.append(np.isin(codes, order[MAX_LEVELS + 1 :]).astype("float64"))


def encode(stacked: pd.DataFrame, categorical: Collection[str]) -> Design:
    """The stacked frame's columns as model features (see Design); constant columns drop out
    in the fits."""
    design = Design()
    for c in stacked.columns:
        s = stacked[c]
        if c in categorical or not _is_numeric(s):
            _add_categorical(design, s)
        else:
            _add_numeric(design, as_float(s))
    return design


def _subsample(frame: pd.DataFrame, max_rows: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(frame) <= max_rows:
        return frame
    keep = np.sort(rng.choice(len(frame), size=max_rows, replace=False))
    return frame.iloc[keep]


def _standardize(x: np.ndarray) -> np.ndarray:
    """Centre and scale each column; constant columns are dropped."""
    if x.shape[1] == 0:
        return x
    sd = x.std(axis=0)
    keep = sd > 0
    return (x[:, keep] - x[:, keep].mean(axis=0)) / sd[keep]


def pmse(p: np.ndarray, c: float) -> float:
    """Mean squared distance of the propensity scores from the synthetic share c."""
    return float(np.mean((p - c) ** 2))


def logit_pmse(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """pMSE of a main-effects logistic model and its null expectation for two independent
    samples of one distribution, (k−1)c(1−c)/N, k the number of parameters (the rank of the
    design with its intercept); also synthpop's ratio, whose null (k−1)(1−c)²c/N holds the
    original fixed (docs/method.md)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    n = len(y)
    c = float(y.mean())
    z = _standardize(x)
    params = int(np.linalg.matrix_rank(z)) if z.shape[1] else 0
    if params == 0:
        p = np.full(n, c)
    else:
        model = LogisticRegression(penalty=None, solver="lbfgs", max_iter=1000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            model.fit(z, y)
        p = model.predict_proba(z)[:, 1]
    value = pmse(p, c)
    expected = params * c * (1.0 - c) / n
    expected_synthpop = expected * (1.0 - c)
    return {
        "pmse": value,
        "expected": expected,
        "ratio": value / expected if expected > 0 else None,
        "expected_synthpop": expected_synthpop,
        "ratio_synthpop": value / expected_synthpop if expected_synthpop > 0 else None,
        "parameters": params + 1,
    }


def _tree_pmse(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    from sklearn.tree import DecisionTreeClassifier

    c = float(y.mean())
    tree = DecisionTreeClassifier(
        min_samples_leaf=MIN_LEAF, max_leaf_nodes=MAX_LEAVES, random_state=seed
    )
    tree.fit(x, y)
    return pmse(tree.predict_proba(x)[:, 1], c)


def cart_pmse(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, permutations: int = PERMUTATIONS
) -> dict[str, Any]:
    """pMSE of a classification tree (Gini, leaves of at least MIN_LEAF rows, at most
    MAX_LEAVES leaves) and its null expectation: the mean pMSE of the same tree refitted on label-permuted
    data, `permutations` times."""
    if x.shape[1] == 0:
        return {"pmse": 0.0, "expected": 0.0, "ratio": None, "null_sd": 0.0, "permutations": 0}
    value = _tree_pmse(x, y, int(rng.integers(2**31)))
    null = np.array(
        [_tree_pmse(x, rng.permutation(y), int(rng.integers(2**31))) for _ in range(permutations)]
    )
    expected = float(null.mean())
    sd = float(null.std(ddof=1)) if permutations > 1 else 0.0
    return {
        "pmse": value,
        "expected": expected,
        "ratio": value / expected if expected > 0 else None,
        "null_sd": sd,
        "standardized": (value - expected) / sd if sd > 0 else None,
        "permutations": permutations,
    }


def pmse_ratios(
    original: pd.DataFrame,
    synthetic: pd.DataFrame,
    rng: np.random.Generator,
    columns: Sequence[str] | None = None,
    categorical: Collection[str] = (),
    methods: Sequence[str] = METHODS,
    permutations: int = PERMUTATIONS,
    max_rows: int = MAX_ROWS,
) -> dict[str, Any]:
    """pMSE ratios of `synthetic` against `original` on `columns` (default: the columns both
    hold), per method in `methods` ("logit", "cart"). Columns named in `categorical`, and
    non-numeric ones, are categorical. Each side is subsampled to `max_rows` rows with `rng`
    (which also draws the permutations). Returns counts and the ratios with their parts."""
    cols = list(columns) if columns is not None else [c for c in original if c in synthetic]
    o = _subsample(original[cols], max_rows, rng)
    s = _subsample(synthetic[cols], max_rows, rng)
    stacked = pd.concat([o, s], ignore_index=True)
    y = np.r_[np.zeros(len(o)), np.ones(len(s))].astype("int64")
    design = encode(stacked, categorical)
    out: dict[str, Any] = {
        "columns": len(cols),
        "original_rows_used": len(o),
        "synthetic_rows_used": len(s),
        "subsampled": len(o) < len(original) or len(s) < len(synthetic),
        "max_rows": max_rows,
    }
    if len(o) == 0 or len(s) == 0:
        return out | {"skipped": "no rows on one side"}
    n = len(y)
    if "logit" in methods:
        out["logit"] = logit_pmse(design.matrix("logit", n), y)
    if "cart" in methods:
        out["cart"] = cart_pmse(design.matrix("cart", n), y, rng, permutations)
    return out
