"""Estimation samples and design matrices of checkpoints, shared by capture (original data),
pinning and verification (synthetic data), so all three see the same sample and terms.

The sample is the `subset` rows with no missing value in any variable the checkpoint uses
(formula, weights, cluster column): Stata's `if` plus listwise deletion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import CheckpointError
from .manifest import Checkpoint, formula_variables


@dataclass(frozen=True)
class Design:
    """y (n,), X (n, k) with formulaic's column names, analytic weights (n,) or None,
    cluster codes (n,) or None, and `index`: the rows of the data frame in the sample."""

    y: np.ndarray
    X: np.ndarray
    terms: list[str]
    weights: np.ndarray | None
    clusters: np.ndarray | None
    index: pd.Index


def subset_columns(subset: str | None, columns: list[str] | pd.Index) -> set[str]:
    """Data columns a `subset` query mentions (its identifiers that are column names)."""
    if not subset:
        return set()
    names = set(re.findall(r"`([^`]+)`|\b([A-Za-z_][A-Za-z0-9_]*)\b", subset))
    flat = {a or b for a, b in names}
    return flat & set(map(str, columns))


def used_columns(cp: Checkpoint) -> list[str]:
    """Every column the checkpoint's model reads (formula, weights, cluster, ...), sorted;
    listwise deletion applies to these."""
    cols = set(formula_variables(cp.formula))
    for extra in (cp.weights, cp.cluster, cp.entity, cp.time):
        if extra:
            cols.add(extra)
    cols |= set(cp.absorb)
    return sorted(cols)


def estimation_sample(df: pd.DataFrame, cp: Checkpoint, where: str = "") -> pd.DataFrame:
    """Rows of `df` in the checkpoint's estimation sample (subset, then listwise deletion)."""
    label = where or f"checkpoint {cp.tag!r}"
    cols = used_columns(cp)
    data = df
    if cp.subset:
        try:
            mask = df.eval(cp.subset)
        except Exception as exc:
            raise CheckpointError(f"{label}: subset {cp.subset!r} cannot be evaluated ({exc}); write a pandas query such as \"year == 1978 and age >= 18\"") from None
        if not isinstance(mask, pd.Series) or mask.dtype != bool:
            try:
                mask = pd.Series(mask, index=df.index).astype(bool)
            except Exception:
                raise CheckpointError(f"{label}: subset {cp.subset!r} does not give a true/false value per row") from None
        data = df.loc[mask.to_numpy()]
        if len(data) == 0:
            raise CheckpointError(f"{label}: subset {cp.subset!r} selects no rows; check the condition")
    data = _widen_integers(data[cols].dropna())
    if len(data) == 0:
        empty = [c for c in cols if df[c].isna().all()]
        hint = f"; entirely missing: {', '.join(empty)}" if empty else ""
        raise CheckpointError(f"{label}: no row has all of {cols} non-missing (after subset){hint}; check the variables")
    if cp.weights:
        w = pd.to_numeric(data[cp.weights], errors="coerce")
        if (w <= 0).any() or w.isna().any():
            data = data.loc[w > 0]
    return data


def _widen_integers(data: pd.DataFrame) -> pd.DataFrame:
    """Narrow integer columns (Stata byte/int/long read as int8/16/32) as int64, so formula
    arithmetic such as I(exper**2) cannot wrap around (12**2 in int8 is -112), while C(x)
    level names stay integers."""
    narrow = [c for c in data.columns if pd.api.types.is_integer_dtype(data[c].dtype) and data[c].dtype.itemsize < 8]
    if not narrow:
        return data
    return data.astype({c: "Int64" if pd.api.types.is_extension_array_dtype(data[c].dtype) else "int64" for c in narrow})


def build_design(df: pd.DataFrame, cp: Checkpoint, where: str = "") -> Design:
    """The checkpoint's sample and design matrix, built by formulaic."""
    import formulaic

    label = where or f"checkpoint {cp.tag!r}"
    data = estimation_sample(df, cp, where)
    try:
        mm = formulaic.model_matrix(cp.formula, data, na_action="raise")
    except Exception as exc:
        raise CheckpointError(f"{label}: cannot build the design of {cp.formula!r} ({type(exc).__name__}: {exc})") from None
    if mm.lhs.shape[1] != 1 or not pd.api.types.is_numeric_dtype(data[cp.outcome]):
        raise CheckpointError(
            f"{label}: the outcome {cp.outcome!r} is not numeric; a linear checkpoint needs a numeric "
            "outcome (recode it to numbers, or to a 0/1 column for a linear probability model)"
        )
    y = np.asarray(mm.lhs, dtype="float64").reshape(-1)
    X = np.asarray(mm.rhs, dtype="float64")
    terms = [str(c) for c in mm.rhs.columns]
    w = data[cp.weights].to_numpy(dtype="float64") if cp.weights else None
    cl = pd.factorize(data[cp.cluster])[0] if cp.cluster else None
    return Design(y=y, X=X, terms=terms, weights=w, clusters=cl, index=data.index)


def collinear_terms(X: np.ndarray, terms: list[str], tol: float = 1e-9) -> list[str]:
    """Names of the columns that are linear combinations of earlier ones (pivoted QR)."""
    from scipy.linalg import qr

    if X.shape[1] == 0:
        return []
    scale = np.sqrt((X**2).sum(axis=0))
    scale[scale == 0] = 1.0
    _, R, piv = qr(X / scale, mode="economic", pivoting=True)
    diag = np.abs(np.diag(R))
    rank = int(np.sum(diag > tol * max(diag.max(), 1e-300)))
    return [terms[i] for i in sorted(piv[rank:])]
