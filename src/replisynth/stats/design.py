"""Estimation samples and design matrices of checkpoints, shared by capture, pinning and
verification so all three see the same sample (the subset, then listwise deletion) and terms.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from replisynth.config.formula_grammar import model_matrix, parse_subset, subset_mask
from replisynth.config.manifest import IV_BRACKET, Checkpoint, formula_variables
from replisynth.core.errors import CheckpointError
from replisynth.core.options import GLM_BINARY, GLM_COUNT, GLM_MODELS, GLM_ORDERED


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
    # model fe: integer codes (n, m) of the m absorbed columns (or of the entity)
    absorb: np.ndarray | None = None
    # model re: integer codes (n,) of the panel entity
    entity: np.ndarray | None = None
    # model iv: X is [exogenous | endogenous]; Z (n, l) is [exogenous | excluded
    # instruments]; n_exog counts the exogenous columns; instruments names Z's extra columns
    Z: np.ndarray | None = None
    n_exog: int | None = None
    instruments: list[str] | None = None


def subset_columns(subset: str | None, columns: list[str] | pd.Index) -> set[str]:
    """Data columns a `subset` condition reads (its names, checked against the grammar)."""
    if not subset:
        return set()
    return set(parse_subset(subset, "subset", CheckpointError).columns) & set(map(str, columns))


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
        mask = subset_mask(df, cp.subset, label, CheckpointError)
        data = df.loc[mask]
        if len(data) == 0:
            raise CheckpointError(
                f"{label}: subset {cp.subset!r} selects no rows; check the condition"
            )
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise CheckpointError(
            f"{label}: the checkpoint reads {', '.join(map(repr, missing))}, not a column of the data; check the formula"
        )
    data = _widen_integers(data[cols].dropna())
    if len(data) == 0:
        empty = [c for c in cols if df[c].isna().all()]
        hint = f"; entirely missing: {', '.join(empty)}" if empty else ""
        raise CheckpointError(
            f"{label}: no row has all of {cols} non-missing (after subset){hint}; check the variables"
        )
    if cp.weights:
        data = _positive_weights(data, cp.weights, label)
    return data


def _positive_weights(data: pd.DataFrame, col: str, label: str) -> pd.DataFrame:
    """Rows with a positive analytic weight. As Stata's aweights: zero weights drop the row;
    text, negative or all-zero weights are an error (never a silently smaller sample)."""
    w = data[col]
    if not pd.api.types.is_numeric_dtype(w) or pd.api.types.is_bool_dtype(w):
        raise CheckpointError(
            f"{label}: weights column {col!r} is not numeric; give a numeric weight column (or convert it)"
        )
    neg = int((w < 0).sum())
    if neg:
        raise CheckpointError(
            f"{label}: weights column {col!r} has {neg} negative value(s); analytic weights must be >= 0"
        )
    keep = (w > 0).to_numpy()
    if not keep.any():
        raise CheckpointError(
            f"{label}: weights column {col!r} is zero on every row of the sample; check the weights"
        )
    return data if keep.all() else data.loc[keep]


def split_iv_formula(formula: str) -> tuple[str, str, str]:
    """(`y ~ exogenous part`, endogenous rhs, instruments rhs) of a linearmodels IV formula
    `y ~ 1 + w + [x1 + x2 ~ z1 + z2]`; the exogenous part keeps everything outside the bracket."""
    m = IV_BRACKET.search(formula)
    if m is None:
        raise CheckpointError(f"formula {formula!r} has no [endogenous ~ instruments] part")
    lhs, rhs = formula.split("~", 1)
    m = IV_BRACKET.search(rhs)
    assert m is not None
    before, after = rhs[: m.start()].rstrip(), rhs[m.end() :].lstrip()
    if before.endswith("+"):
        before = before[:-1].rstrip()
    elif after.startswith("+"):
        after = after[1:].lstrip()
    exog = f"{before} {after}".strip() or "1"
    return f"{lhs.strip()} ~ {exog}", m.group(1).strip(), m.group(2).strip()


def _iv_matrices(
    data: pd.DataFrame, cp: Checkpoint, label: str
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, int, list[str]]:
    """y, X = [exogenous | endogenous], its term names, Z = [exogenous | instruments], the
    number of exogenous columns and the instruments' names, all encoded by formulaic (the
    endogenous and instrument columns are those the bracket adds to the exogenous design, so
    factors are coded as formulaic codes them alongside the controls)."""
    exog_f, endog, instr = split_iv_formula(cp.formula)
    if not endog or not instr:
        raise CheckpointError(
            f"{label}: the IV part of {cp.formula!r} needs endogenous variables and instruments: [x ~ z]"
        )
    try:
        mm_w = model_matrix(exog_f, data, "raise", f"{label}: formula", CheckpointError)
        mm_x = model_matrix(
            f"{exog_f} + {endog}", data, "raise", f"{label}: formula", CheckpointError
        )
        mm_z = model_matrix(
            f"{exog_f} + {instr}", data, "raise", f"{label}: formula", CheckpointError
        )
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{label}: cannot build the design of {cp.formula!r} ({type(exc).__name__}: {exc})"
        ) from None
    w_names = [str(c) for c in mm_w.rhs.columns]
    x_names = [str(c) for c in mm_x.rhs.columns]
    z_names = [str(c) for c in mm_z.rhs.columns]
    if not set(w_names) <= set(x_names) or not set(w_names) <= set(z_names):
        raise CheckpointError(
            f"{label}: the exogenous columns of {cp.formula!r} change when the bracket is added; keep the intercept in the formula"
        )
    endog_names = [c for c in x_names if c not in w_names]
    instr_names = [c for c in z_names if c not in w_names]
    if not endog_names:
        raise CheckpointError(
            f"{label}: the endogenous part [{endog} ~ ...] adds no column to the design"
        )
    if len(instr_names) < len(endog_names):
        raise CheckpointError(
            f"{label}: {len(endog_names)} endogenous column(s) ({', '.join(endog_names)}) but only "
            f"{len(instr_names)} excluded instrument(s) ({', '.join(instr_names) or 'none'}); the model is "
            "under-identified: add instruments"
        )
    W = np.asarray(mm_w.rhs, dtype="float64")
    X = np.column_stack([W, np.asarray(mm_x.rhs[endog_names], dtype="float64")])
    Z = np.column_stack([W, np.asarray(mm_z.rhs[instr_names], dtype="float64")])
    y = np.asarray(mm_w.lhs, dtype="float64").reshape(-1)
    return y, X, w_names + endog_names, Z, len(w_names), instr_names


def _codes(data: pd.DataFrame, cols: tuple[str, ...] | list[str]) -> np.ndarray:
    """Integer codes (n, m) of the given columns (fixed effects or panel entity)."""
    return np.column_stack([pd.factorize(data[c])[0] for c in cols]).astype("int64")


def _widen_integers(data: pd.DataFrame) -> pd.DataFrame:
    """Narrow integer columns (Stata byte/int/long read as int8/16/32) as int64, so formula
    arithmetic such as I(exper**2) cannot wrap around (12**2 in int8 is -112), while C(x)
    level names stay integers."""
    narrow = [
        c
        for c in data.columns
        if pd.api.types.is_integer_dtype(data[c].dtype) and data[c].dtype.itemsize < 8
    ]
    if not narrow:
        return data
    return data.astype(
        {
            c: "Int64" if pd.api.types.is_extension_array_dtype(data[c].dtype) else "int64"
            for c in narrow
        }
    )


def build_design(
    df: pd.DataFrame, cp: Checkpoint, where: str = "", released: set[str] | None = None
) -> Design:
    """The checkpoint's sample and design matrix, built by formulaic (fe: plus the absorbed
    columns' codes; re: the entity's codes; iv: exogenous, endogenous and instrument blocks).
    On synthetic data pass `released` (the released term names): see `drop_unreleased_constants`."""
    d = _build_design(df, cp, where)
    return d if released is None else drop_unreleased_constants(d, released)


def released_terms(c: dict) -> set[str]:
    """Names of the terms a checkpoint record releases (not suppressed): what `build_design`'s
    `released` wants on synthetic data."""
    return {t["term"] for t in c.get("terms", []) if not t.get("suppressed")}


def drop_unreleased_constants(d: Design, released: set[str]) -> Design:
    """Drop design columns that are constant on the synthetic sample and whose coefficient
    was not released. The case: SDC pooled the rare level of an indicator (a lag of a
    treatment, a small region) into its neighbour, so the synthetic column is constant and the
    design singular, while its suppressed coefficient is no target. The released coefficients
    are still pinned and verified with it left out; the intercept is never dropped."""
    k = d.X.shape[1]
    if len(d.y) == 0 or k == 0:
        return d
    const = np.ptp(d.X, axis=0) == 0
    drop = [
        j
        for j in range(k)
        if const[j]
        and d.terms[j] not in released
        and d.terms[j] != "Intercept"
        and (d.n_exog is None or j < d.n_exog)
    ]
    if not drop:
        return d
    keep = [j for j in range(k) if j not in drop]
    out = replace(
        d, X=d.X[:, keep], terms=[d.terms[j] for j in keep] + list(d.terms[k:])
    )  # GLMs: alpha, cut points follow
    if d.Z is not None and d.n_exog is not None:  # iv: the exogenous columns lead Z as they lead X
        zkeep = [j for j in range(d.Z.shape[1]) if j not in drop]
        out = replace(out, Z=d.Z[:, zkeep], n_exog=d.n_exog - len(drop))
    return out


def _finite_terms(X: np.ndarray, terms: list[str], label: str) -> None:
    """Stop naming the terms a transform made infinite (the log of 0, a division by 0): no fit
    can use them, and the QR of the design would fail on them."""
    bad = list(dict.fromkeys(terms[j] for j in np.flatnonzero(~np.isfinite(X).all(axis=0))))
    if bad:
        raise CheckpointError(
            f"{label}: term(s) {', '.join(bad)} take infinite values on the estimation sample "
            "(the log of 0, a division by 0); restrict the sample with a subset, or transform "
            "the column in the data"
        )


def _build_design(df: pd.DataFrame, cp: Checkpoint, where: str = "") -> Design:
    label = where or f"checkpoint {cp.tag!r}"
    data = estimation_sample(df, cp, where)
    if cp.model == "iv":
        if not pd.api.types.is_numeric_dtype(data[cp.outcome]):
            raise CheckpointError(
                f"{label}: the outcome {cp.outcome!r} is not numeric; an IV checkpoint needs a numeric outcome"
            )
        y, X, terms, Z, n_exog, instr = _iv_matrices(data, cp, label)
        _finite_terms(
            np.column_stack([y, X, Z[:, n_exog:]]), ["the outcome", *terms, *instr], label
        )
        w = data[cp.weights].to_numpy(dtype="float64") if cp.weights else None
        cl = pd.factorize(data[cp.cluster])[0] if cp.cluster else None
        return Design(
            y=y,
            X=X,
            terms=terms,
            weights=w,
            clusters=cl,
            index=data.index,
            Z=Z,
            n_exog=n_exog,
            instruments=instr,
        )
    try:
        mm = model_matrix(cp.formula, data, "raise", f"{label}: formula", CheckpointError)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{label}: cannot build the design of {cp.formula!r} ({type(exc).__name__}: {exc})"
        ) from None
    X = np.asarray(mm.rhs, dtype="float64")
    terms = [str(c) for c in mm.rhs.columns]
    _finite_terms(X, terms, label)
    if cp.model in GLM_MODELS:
        y, X, terms = glm_outcome(data[cp.outcome], X, terms, cp, label)
    else:
        if mm.lhs.shape[1] != 1 or not pd.api.types.is_numeric_dtype(data[cp.outcome]):
            raise CheckpointError(
                f"{label}: the outcome {cp.outcome!r} is not numeric; a linear checkpoint needs a numeric "
                "outcome (recode it to numbers, or to a 0/1 column for a linear probability model)"
            )
        y = np.asarray(mm.lhs, dtype="float64").reshape(-1)
    w = data[cp.weights].to_numpy(dtype="float64") if cp.weights else None
    cl = pd.factorize(data[cp.cluster])[0] if cp.cluster else None
    absorb = _codes(data, cp.absorbed) if cp.model == "fe" else None
    entity = _codes(data, [cp.entity])[:, 0] if cp.model == "re" and cp.entity else None
    return Design(
        y=y,
        X=X,
        terms=terms,
        weights=w,
        clusters=cl,
        index=data.index,
        absorb=absorb,
        entity=entity,
    )


def ordered_levels(col: pd.Series, cp: Checkpoint) -> list:
    """The categories of an ordered model's outcome, lowest first: `levels` when given, else
    the sorted distinct values of a numeric column."""
    if cp.levels is not None:
        return list(cp.levels)
    vals = pd.unique(col.dropna())
    return sorted(vals.tolist())


def outcome_codes(col: pd.Series, levels: list) -> np.ndarray:
    """Position of each value in `levels` (numbers compared as numbers, else as text); -1 if absent."""
    if pd.api.types.is_numeric_dtype(col) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in levels
    ):
        vals = col.to_numpy(dtype="float64")
        lv = np.asarray(levels, dtype="float64")
        hit = vals[:, None] == lv[None, :]
    else:
        vals = col.astype(str).to_numpy()
        lv = np.asarray([str(v) for v in levels])
        hit = vals[:, None] == lv[None, :]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def glm_outcome(
    col: pd.Series, X: np.ndarray, terms: list[str], cp: Checkpoint, label: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(y, X, terms) of a maximum-likelihood checkpoint: a 0/1 outcome for logit/probit,
    non-negative integer counts for poisson/nbreg, category codes 0..J-1 (via `levels` or the
    numeric order) for ordered models, whose design drops the intercept (the cut points take
    its place). Bad values raise, naming the column."""
    name = cp.outcome
    if cp.model in GLM_ORDERED:
        if cp.levels is None and not pd.api.types.is_numeric_dtype(col):
            raise CheckpointError(
                f"{label}: the outcome {name!r} of an {cp.model} checkpoint is not numeric; list its categories in order under `levels:`"
            )
        levels = ordered_levels(col, cp)
        codes = outcome_codes(col, levels)
        if np.any(codes < 0):
            raise CheckpointError(
                f"{label}: {int(np.sum(codes < 0))} row(s) of the outcome {name!r} hold values not in `levels` {levels}; list every category"
            )
        keep = [j for j, t in enumerate(terms) if t != "Intercept"]
        return codes.astype("float64"), X[:, keep], [terms[j] for j in keep]
    v = col.astype("float64") if pd.api.types.is_bool_dtype(col) else col
    if not pd.api.types.is_numeric_dtype(v):
        raise CheckpointError(
            f"{label}: the outcome {name!r} of a {cp.model} checkpoint is not numeric; recode it to numbers"
        )
    y = v.to_numpy(dtype="float64")
    if cp.model in GLM_BINARY and not np.all((y == 0) | (y == 1)):
        raise CheckpointError(
            f"{label}: the outcome {name!r} of a {cp.model} checkpoint must be 0/1; {int(np.sum((y != 0) & (y != 1)))} row(s) hold other values (recode it)"
        )
    if cp.model in GLM_COUNT and not np.all((y >= 0) & (y == np.round(y))):
        raise CheckpointError(
            f"{label}: the outcome {name!r} of a {cp.model} checkpoint must be a non-negative integer count; {int(np.sum((y < 0) | (y != np.round(y))))} row(s) are not"
        )
    return y, X, terms


def collinear_terms(X: np.ndarray, terms: list[str], tol: float = 1e-9) -> list[str]:
    """Names of the columns that are linear combinations of earlier ones (pivoted QR).

    Fast path: the pivoted R of the scaled X has |r_ii| >= sigma_min, |r_ii| <= sigma_max, so
    when the scaled Gram matrix has lambda_min / lambda_max > 1e-10 (cond(X) < 1e5, far
    inside what its k × k eigenvalues resolve) no diagonal can fall below `tol` (<= 1e-5) and
    the answer is [] without the n × k QR (costly on large data)."""
    from scipy.linalg import qr

    if X.shape[1] == 0:
        return []
    scale = np.sqrt(np.einsum("ij,ij->j", X, X))
    scale[scale == 0] = 1.0
    if tol <= 1e-5 and np.all(np.isfinite(X)):
        G = (X.T @ X) / np.outer(scale, scale)
        lam = np.linalg.eigvalsh(G)
        if lam[0] > 1e-10 * lam[-1]:
            return []
    R, piv = qr(X / scale, mode="r", pivoting=True)
    diag = np.abs(np.diag(R))
    rank = int(np.sum(diag > tol * max(diag.max(), 1e-300)))
    return [terms[i] for i in sorted(piv[rank:])]
