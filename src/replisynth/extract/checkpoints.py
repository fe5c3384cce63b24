"""Checkpoint capture on the secure side, with its disclosure gate (sample, weights,
dominance, suppressed coefficients; differencing is in `ledger`).
Method: docs/method.md, "Checkpoint disclosure rules".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.manifest import Checkpoint, Manifest, Sdc, Source
from replisynth.core.errors import CheckpointError
from replisynth.core.options import GLM_BINARY, GLM_MODELS, GLM_ORDERED
from replisynth.disclosure.sdc import SdcLog
from replisynth.extract.joint_codings import joint_coding_rejection, source_codes
from replisynth.extract.ledger import apply_differencing
from replisynth.extract.pattern_counts import group_count_rejection
from replisynth.extract.relations import pooled_subset_rejection
from replisynth.extract.release_guards import (
    log_pooled_terms,
    scan_once,
    terms_of_pooled_columns,
    withhold_pooled_outcome_mean,
)
from replisynth.fit.estimators import fit_checkpoint
from replisynth.fit.result import FitResult
from replisynth.stats.design import (
    Design,
    build_design,
    ordered_levels,
    subset_columns,
    used_columns,
)


def indicator_minority(X: np.ndarray) -> np.ndarray:
    """For each column: size of the smaller of its 0 and 1 groups if it is a 0/1 indicator
    (and not constant), else -1."""
    out = np.full(X.shape[1], -1, dtype="int64")
    for j in range(X.shape[1]):
        col = X[:, j]
        head = col[:256]  # most non-indicators show it in their first rows: skip the full scan
        if np.all((head == 0) | (head == 1)) and np.all((col == 0) | (col == 1)):
            ones = int(col.sum())
            zeros = len(col) - ones
            if ones and zeros:
                out[j] = min(ones, zeros)
    return out


_FACTOR_TERM = re.compile(r"^(.*)\[T\.[^\]]*\](.*)$")


def small_reference_terms(X: np.ndarray, terms: list[str], min_cell: int) -> set[int]:
    """Positions of factor-level indicators (formulaic's `C(x)[T.level]`, possibly inside
    an interaction) whose reference group, the rows where every level indicator of that
    factor is 0, has fewer than `min_cell` rows. Their coefficients are contrasts with a
    small group; the reference level is also not released, so they cannot be rebuilt."""
    groups: dict[tuple[str, str], list[int]] = {}
    for j, t in enumerate(terms):
        m = _FACTOR_TERM.match(t)
        if m:
            groups.setdefault((m.group(1), m.group(2)), []).append(j)
    out: set[int] = set()
    for cols in groups.values():
        block = X[:, cols]
        if not np.all((block == 0) | (block == 1)):
            continue
        ref = int(np.sum(~block.astype(bool).any(axis=1)))
        if ref < min_cell:
            out.update(cols)
    return out


_FACTOR_CALL = re.compile(r"\bC\(\s*`?([A-Za-z_][A-Za-z0-9_.]*)")


def _has_rare(s: pd.Series, min_cell: int) -> bool:
    """Whether a column has a category of 1..min_cell-1 rows."""
    counts = s.value_counts(dropna=True).to_numpy()
    return bool(np.any((counts > 0) & (counts < min_cell)))


def _more_values_than_at_first(s: pd.Series, most: int) -> bool:
    """Whether the first rows of `s` alone hold more than `most` distinct values (then so
    does the whole column, which is passed over without hashing all of it)."""
    return bool(s.iloc[:_PREFIX_ROWS].nunique(dropna=True) > most)


def _more_values_than(s: pd.Series, most: int) -> bool:
    """`s.nunique(dropna=True) > most`, settled on the first rows when they already hold more."""
    return _more_values_than_at_first(s, most) or bool(s.nunique(dropna=True) > most)


_PREFIX_ROWS = 4096


def _rare_parents(df: pd.DataFrame, min_cell: int, max_levels: int = 200) -> list[str]:
    """Columns of few values (text, categories, booleans, integers) with a category below
    min_cell: the source table pools or buckets those categories."""
    found = scan_once(
        "rare_parents",
        (df, min_cell, max_levels),
        lambda: tuple(_rare_parent_columns(df, min_cell, max_levels)),
    )
    return list(found)


def _rare_parent_columns(df: pd.DataFrame, min_cell: int, max_levels: int) -> list[str]:
    out = []
    for c in df.columns:
        s = df[c]
        if pd.api.types.is_float_dtype(s) or _more_values_than_at_first(s, max_levels):
            continue
        # one count of the values gives both the number of values (a categorical's unused
        # categories count 0) and the rare ones
        counts = s.value_counts(dropna=True).to_numpy()
        if np.count_nonzero(counts) > max_levels:
            continue
        if np.any((counts > 0) & (counts < min_cell)):
            out.append(str(c))
    return out


def _codes_a_rare_parent(df: pd.DataFrame, col: str, parents: list[str]) -> bool:
    """Whether `col` is a function of a column with rare categories (a coarsening such as a
    region group of a region code): its exact level means, with the parent's released table,
    would give the rare count by subtraction."""
    for p in parents:
        if p != col and df.groupby(p, observed=True, dropna=False)[col].nunique().max() <= 1:
            return True
    return False


def factor_terms_with_rare_levels(
    df: pd.DataFrame, formula: str, terms: list[str], min_cell: int
) -> set[str]:
    """Terms whose design mean is a level share of a column with a category of 1..min_cell-1
    rows in the source, or of a coding of such a column (a factor's level indicators, a 0/1
    coding as a term of its own). The source table pools or buckets the rare categories, so
    an exact level mean on the sample, subtracted from the released counts, would give the
    rare count (docs/disclosure.md)."""
    factors = set(_FACTOR_CALL.findall(formula))
    named = {
        c
        for c in df.columns
        if isinstance(c, str)
        and re.search(rf"(?<![A-Za-z0-9_.`]){re.escape(c)}(?![A-Za-z0-9_.`])", formula)
    }
    factors |= {c for c in named if not pd.api.types.is_numeric_dtype(df[c])}
    parents = _rare_parents(df, min_cell)
    rare = {
        c
        for c in factors
        if c in df.columns
        and (
            _has_rare(df[c], min_cell)
            or (not _more_values_than(df[c], 200) and _codes_a_rare_parent(df, c, parents))
        )
    }
    two_valued = {  # a 0/1 coding as a term of its own: its mean is a level share
        t for t in terms if t in df.columns and df[t].nunique(dropna=True) == 2
    }
    out = {t for t in two_valued if _codes_a_rare_parent(df, t, parents)}
    for t in terms:
        for col in rare:
            if f"C({col}" in t or f"C(`{col}`" in t or re.search(rf"(^|:){re.escape(col)}\[", t):
                out.add(t)
    return out


def capture_checkpoint(
    df: pd.DataFrame, cp: Checkpoint, manifest: Manifest, index: int
) -> tuple[dict[str, Any], SdcLog]:
    """Fit one checkpoint on the original data and release it through the SDC gate."""
    rel, log, _ = capture_checkpoint_sample(df, cp, manifest, index)
    return rel, log


def _reject(
    base: dict[str, Any], log: SdcLog, cp: Checkpoint, reason: str, logged: str | None = None
) -> tuple[dict[str, Any], SdcLog, None]:
    """A rejected record (the request fields only) and its log entry (`logged`, when the log
    words it differently from the record's reason)."""
    log.add("checkpoints", "rejected", logged or reason, checkpoint=cp.tag)
    return {**base, "status": "rejected", "reason": reason}, log, None


def _request_fields(df: pd.DataFrame, cp: Checkpoint) -> dict[str, Any]:
    """The checkpoint's request fields, shared by released and rejected records."""
    return {
        "tag": cp.tag,
        "source": cp.source,
        "model": cp.model,
        "formula": cp.formula,
        "outcome": cp.outcome,
        "vcov": cp.vcov,
        "weights": cp.weights,
        "subset": cp.subset,
        "absorb": list(cp.absorb),
        "entity": cp.entity,
        "time": cp.time,
        "levels": list(cp.levels) if cp.levels is not None else None,
        "columns": used_columns(cp),
        "subset_columns": sorted(subset_columns(cp.subset, df.columns)),
    }


def _sample_rejection(
    design: Design, cp: Checkpoint, sdc: Sdc, log: SdcLog
) -> tuple[str, str | None] | None:
    """The sample gates before any fit (size, outcome classes, weights): a rejection reason and
    its log wording, or None when the sample passes (the weights pass is logged)."""
    n = len(design.y)
    if n < sdc.min_cell_size:
        return (
            f"sample below min_cell_size={sdc.min_cell_size}",
            f"estimation sample below min_cell_size={sdc.min_cell_size}",
        )
    if cp.model in GLM_MODELS:
        small = outcome_minority(design.y, cp.model)
        if small is not None and small < sdc.min_cell_size:
            return (
                f"outcome class below min_cell_size={sdc.min_cell_size}",
                f"an outcome class has fewer than min_cell_size={sdc.min_cell_size} rows in the sample",
            )
    heavy = weight_gate(design.weights, sdc.min_cell_size)
    if heavy:
        return f"weights: {heavy}", None
    if design.weights is not None:
        log.add(
            "checkpoints",
            "weights_gate",
            f"weights pass: effective sample size (Kish) at least min_cell_size={sdc.min_cell_size} "
            f"and no row above 1/{sdc.min_cell_size} of the total weight",
            checkpoint=cp.tag,
        )
    return None


def _fit_rejection(
    design: Design, fit: FitResult, cp: Checkpoint, sdc: Sdc, log: SdcLog, where: str
) -> str | None:
    """The gates on the fit (residual df, finite SEs, outcome dominance): a rejection reason,
    or None when the fit may be released (the dominance check is logged)."""
    if fit.resid_df < sdc.min_resid_df:
        return f"residual df below min_resid_df={sdc.min_resid_df}"
    if not np.all(np.isfinite(fit.se)):
        raise CheckpointError(
            f"{where}: some standard errors are not finite; check the vcov ({cp.vcov}) and the sample"
        )
    constant = bool(np.ptp(design.y) == 0)
    exact = cp.model not in GLM_MODELS and fit.scale <= 1e-24 * float(np.var(design.y))
    if constant or exact or not np.all(fit.se > 0):  # no residual variation to verify against
        what = (
            "takes one value on the estimation sample"
            if constant
            else "is fitted exactly by the regressors"
        )
        raise CheckpointError(
            f"{where}: the outcome {cp.outcome!r} {what}, so its standard errors are (nearly) zero; "
            "drop the checkpoint or choose an outcome with residual variation"
        )
    checked, dominated = outcome_dominance(design, fit, cp, sdc.dominance)
    if dominated:
        return (
            f"outcome dominance: two rows carry more than {sdc.dominance:g} of the {' and of the '.join(dominated)} "
            "(released exactly, it would give away the largest outcome); transform or top-code the outcome in the data"
        )
    log.add(
        "checkpoints",
        "outcome_dominance",
        f"outcome passes: no two rows carry more than {sdc.dominance:g} of the {', '.join(checked)}"
        if checked
        else "binary or ordered outcome: covered by the outcome-class gate, no dominance check",
        checkpoint=cp.tag,
    )
    return None


def _release_terms(
    design: Design, fit: FitResult, sdc: Sdc, minority: np.ndarray, small_ref: set[int]
) -> tuple[list[dict[str, Any]], float, int, int]:
    """The coefficient records, suppressed or rounded by the gates: records, the largest
    rounding move in SEs, and the counts suppressed for sparse columns and small references."""
    rounding_cost = 0.0
    terms: list[dict[str, Any]] = []
    n_sup = n_ref = 0
    k_x = design.X.shape[1]  # alpha and cut points follow the regressors; they are never indicators
    for j, term in enumerate(fit.terms):
        if j < k_x and 0 <= minority[j] < sdc.min_cell_size:
            n_sup += 1
            terms.append(
                {
                    "term": None,
                    "position": j,
                    "suppressed": True,
                    "reason": f"column with fewer than {sdc.min_cell_size} (effective) observations off its most common value",
                }
            )
            continue
        if j in small_ref:
            n_ref += 1
            terms.append(
                {
                    "term": None,
                    "position": j,
                    "suppressed": True,
                    "reason": f"factor level contrast against a reference level with fewer than {sdc.min_cell_size} observations",
                }
            )
            continue
        b, se = float(fit.beta[j]), float(fit.se[j])
        if sdc.round_significant:
            rb, rse = (
                round_significant(b, sdc.round_significant),
                round_significant(se, sdc.round_significant),
            )
            rounding_cost = max(rounding_cost, abs(b - rb) / se if se > 0 else 0.0)
            b, se = rb, rse
        terms.append({"term": term, "position": j, "beta": b, "se": se})
    return terms, rounding_cost, n_sup, n_ref


def _log_suppressed(log: SdcLog, cp: Checkpoint, sdc: Sdc, n_sup: int, n_ref: int) -> None:
    """Log the coefficients withheld for small reference levels and for sparse columns."""
    if n_ref:
        log.add(
            "checkpoints",
            "suppressed_terms",
            f"{n_ref} factor contrast(s) against a reference level below min_cell_size={sdc.min_cell_size} not released (the contrast describes the small reference group, which synthesis does not reproduce)",
            checkpoint=cp.tag,
            terms=n_ref,
        )
    if n_sup:
        log.add(
            "checkpoints",
            "suppressed_terms",
            f"{n_sup} coefficient(s) of columns (indicators, scaled indicators, splines, sparse columns) with fewer than "
            f"min_cell_size={sdc.min_cell_size} (effective) rows off their most common value not released",
            checkpoint=cp.tag,
            terms=n_sup,
        )


def _release_moments(
    df: pd.DataFrame,
    cp: Checkpoint,
    sdc: Sdc,
    design: Design,
    fit: FitResult,
    terms: list[dict[str, Any]],
    minority: np.ndarray,
    log: SdcLog,
    pooled: set[str] | None = None,
) -> dict[str, Any] | None:
    """The design moments on the estimation sample for the released terms and instruments,
    less factor indicators whose rare levels exact means would give away (both logged) and
    the `pooled` terms (`release_guards.terms_of_pooled_columns`)."""
    released = {t["term"] for t in terms if not t.get("suppressed")}
    linked = factor_terms_with_rare_levels(df, cp.formula, fit.terms, sdc.min_cell_size)
    linked |= log_pooled_terms(log, cp, (pooled or set()) & released)
    if linked & released:
        log.add(
            "checkpoints",
            "withheld_moments",
            f"design means of {len(linked & released)} factor level indicator(s) not released: their "
            f"factor has categories below min_cell_size={sdc.min_cell_size} in the source, whose "
            "counts the released table (pooled or suppressed levels) and exact level means would "
            "give by subtraction",
            checkpoint=cp.tag,
            terms=len(linked & released),
        )
    mX, mterms, instruments = moment_design(design)
    # Excluded instruments have no coefficient, so the `released` filter cannot speak for them:
    # they enter as candidates and pass or fail the column gates of design_moments (indicator
    # minority, non-zero rows, dominance) like any other column. Not being a term is not being
    # suppressed.
    moments, info = design_moments(
        mX,
        mterms,
        design.weights,
        (released | set(instruments)) - linked,
        sdc.min_cell_size,
        sdc.round_significant,
        sdc.dominance,
        offmode=minority if mX is design.X else None,
    )
    if moments is not None and instruments:
        moments["instruments"] = [t for t in moments["terms"] if t in instruments]
    if moments is not None:
        log.add(
            "checkpoints",
            "released_moments",
            f"{'weighted ' if design.weights is not None else ''}means, SDs and correlations of {info['columns']} design column(s) on the estimation sample "
            + (
                f"({len(moments.get('instruments', []))} of them excluded instruments, of {len(instruments)}) "
                if instruments
                else ""
            )
            + f"(so synthetic regressors can reproduce X'X: nested specifications and standard errors); {info['left_out']} column(s) left out "
            f"(indicator group or non-zero rows below min_cell_size={sdc.min_cell_size}, or spread dominated by two rows); {info['blanked']} indicator pair(s) blanked "
            "(a cell of their 2x2 table below min_cell_size)",
            checkpoint=cp.tag,
            terms=info["columns"],
        )
    return moments


@dataclass(frozen=True)
class _Released:
    """What the gates let through for one checkpoint, to be assembled into its record."""

    base: dict[str, Any]
    fit: FitResult
    terms: list[dict[str, Any]]
    moments: dict[str, Any] | None
    rounding_cost: float


def _released_record(
    df: pd.DataFrame, cp: Checkpoint, sdc: Sdc, design: Design, rel: _Released, log: SdcLog
) -> dict[str, Any]:
    """The released checkpoint record: fit aggregates, terms, outcome and moments, rounded
    to the profile's significant figures (the rounding logged with its cost)."""
    fit = rel.fit
    scale = fit.scale
    if sdc.round_significant:
        scale = round_significant(scale, sdc.round_significant)
        log.add(
            "checkpoints",
            "rounded",
            f"coefficients, standard errors and residual variance rounded to {sdc.round_significant} significant figures; the rounding moves a coefficient by at most {rel.rounding_cost:.2g} of its standard error",
            checkpoint=cp.tag,
        )
    out = {
        **rel.base,
        "status": "released",
        "n": fit.n,
        "resid_df": fit.resid_df,
        "scale": scale,
        "k": len(fit.terms),
        "terms": rel.terms,
    }
    if (
        fit.extra and cp.model not in GLM_MODELS
    ):  # linear families' aggregates (re: variance components), rounded like the rest
        out["extra"] = {
            k: (round_significant(v, sdc.round_significant) if sdc.round_significant else v)
            for k, v in fit.extra.items()
        }
    if cp.model in GLM_MODELS:
        levels = (
            ordered_levels(df.loc[design.index, cp.outcome], cp)
            if cp.model in GLM_ORDERED
            else None
        )
        out.update(outcome_release(levels, cp, fit.extra, sdc.round_significant))
    if rel.moments is not None:
        out["moments"] = rel.moments
    if sdc.round_significant:
        out["rounding_cost_dbeta_se"] = float(round_significant(rel.rounding_cost, 2))
    return out


def capture_checkpoint_sample(
    df: pd.DataFrame, cp: Checkpoint, manifest: Manifest, index: int
) -> tuple[dict[str, Any], SdcLog, pd.Index | None]:
    """`capture_checkpoint`, plus the estimation sample's row labels in `df` (None when the
    sample was never built), for the disclosure ledger's differencing rule (memory only)."""
    sdc = manifest.sdc
    log = SdcLog()
    where = f"checkpoints[{index}] ({cp.tag})"
    base = _request_fields(df, cp)
    design = build_design(df, cp, where)
    rejected = _sample_rejection(design, cp, sdc, log)
    if rejected is not None:
        return _reject(base, log, cp, *rejected)
    pooled_subset = pooled_subset_rejection(df, cp, manifest.source(cp.source), sdc.min_cell_size)
    if pooled_subset is not None:
        return _reject(base, log, cp, pooled_subset)
    fit = fit_checkpoint(design, cp, where)
    reason = _fit_rejection(design, fit, cp, sdc, log, where)
    reason = reason or group_count_rejection(df, design, cp, sdc.min_cell_size)
    reason = reason or _joint_coding_reason(df, design, manifest.source(cp.source), sdc)
    if reason is not None:
        return _reject(base, log, cp, reason)
    minority = nonmodal_rows(design.X, design.weights, sdc.min_cell_size)
    small_ref = small_reference_terms(design.X, fit.terms, sdc.min_cell_size)
    terms, rounding_cost, n_sup, n_ref = _release_terms(design, fit, sdc, minority, small_ref)
    _log_suppressed(log, cp, sdc, n_sup, n_ref)
    pooled = terms_of_pooled_columns(df, manifest, cp, fit.terms)
    moments = _release_moments(df, cp, sdc, design, fit, terms, minority, log, pooled)
    rel = _Released(base, fit, terms, moments, rounding_cost)
    record = _released_record(df, cp, sdc, design, rel, log)
    return withhold_pooled_outcome_mean(record, df, manifest, cp), log, design.index


def _joint_coding_reason(df: pd.DataFrame, design: Design, src: Source, sdc: Sdc) -> str | None:
    """`joint_coding_rejection` on the row sets a checkpoint counts: its sample, and the
    ones of each 0/1 design column in it (their count is the released mean times n)."""
    pos = df.index.get_indexer(design.index)
    sample = np.zeros(len(df), dtype=np.int64)
    sample[pos] = 1
    sets = {"sample": sample}
    for j, term in enumerate(design.terms[: design.X.shape[1]]):
        col = design.X[:, j]
        if np.all((col == 0) | (col == 1)) and 0 < col.sum() < len(col):
            ones = np.zeros(len(df), dtype=np.int64)
            ones[pos[col == 1]] = 1
            sets[f"term:{term}"] = ones
    return joint_coding_rejection(source_codes(df, src, sdc.min_cell_size), sets, sdc.min_cell_size)


def moment_design(design: Design) -> tuple[np.ndarray, list[str], list[str]]:
    """The design whose cross-moments are released: X (n × k) with its terms and no
    instruments, except for iv, where it is the union [exogenous | endogenous | excluded
    instruments] (n × (k + l − k_exog)): the IV estimator and its SEs depend on Z'X and Z'Z
    (the first stage), not on X'X alone."""
    if design.Z is None or design.n_exog is None or not design.instruments:
        return design.X, list(design.terms), []
    Xu = np.column_stack([design.X, design.Z[:, design.n_exog :]])
    return Xu, [*design.terms[: design.X.shape[1]], *design.instruments], list(design.instruments)


def outcome_minority(y: np.ndarray, model: str) -> int | None:
    """Rows in the smallest outcome class of a binary or ordered model (None for counts):
    a coefficient of a model whose outcome class is small describes that small group."""
    if model in GLM_BINARY or model in GLM_ORDERED:
        return int(np.bincount(y.astype("int64")).min())
    return None


def outcome_release(
    levels: list | None, cp: Checkpoint, extra: dict[str, Any], digits: int | None
) -> dict[str, Any]:
    """What pinning needs about a GLM outcome beyond the coefficients: the ordered categories
    (every one passed the cell gate) and the outcome's (weighted) sample mean or category
    shares, so the pin can report its drift. Rounded like the coefficients."""
    rnd = (lambda x: round_significant(x, digits)) if digits else float
    out: dict[str, Any] = {}
    if cp.model in GLM_ORDERED:
        out["outcome_levels"] = list(levels or [])
        out["outcome_shares"] = [rnd(v) for v in extra["outcome_shares"]]
    else:
        out["outcome_mean"] = rnd(extra["outcome_mean"])
    if "dispersion" in extra:  # poisson: Pearson dispersion, so the pin's draw can carry it
        out["dispersion"] = rnd(extra["dispersion"])
    return out


def round_significant(x: float, digits: int) -> float:
    """x rounded to `digits` significant figures (FSRDC output rule)."""
    return float(f"{x:.{digits}g}") if np.isfinite(x) and x != 0 else float(x)


def budget_warnings(
    released: list[dict[str, Any]], rows: dict[str, int], budget: float | None
) -> list[dict[str, Any]]:
    """SDC log entries for sources whose released coefficients exceed budget × N: many
    coefficients on one sample narrow down the data they were estimated on."""
    if not budget:
        return []
    out = []
    for source, n in rows.items():
        k = sum(
            sum(1 for t in c.get("terms", []) if not t.get("suppressed"))
            for c in released
            if c["source"] == source and c.get("status") == "released"
        )
        if k > budget * n:
            out.append(
                {
                    "stage": "checkpoints",
                    "action": "budget_warning",
                    "source": source,
                    "coefficients": k,
                    "reason": f"{k} released coefficients exceed the budget of {budget:g} × N; an output checker should review the checkpoints",
                }
            )
    return out


# Cluster-robust SEs rest on the number of clusters: below this many, they are biased and
# noisy (Cameron & Miller 2015), and SE shaping may not reach them on the synthetic design.
FEW_CLUSTERS = 20


def few_clusters(df: pd.DataFrame, sample: pd.Index | None, cp: Checkpoint) -> bool:
    """Whether a clustered checkpoint's estimation sample (row labels in `df`) holds fewer
    than FEW_CLUSTERS clusters (False for an unclustered one or no sample)."""
    if not cp.cluster or sample is None:
        return False
    return int(df.loc[sample, cp.cluster].nunique()) < FEW_CLUSTERS


def capture_checkpoints(
    frames: dict[str, pd.DataFrame], manifest: Manifest
) -> tuple[list[dict[str, Any]], SdcLog]:
    """Capture every checkpoint of the manifest (frames: source name -> original data),
    the differencing rule of the disclosure ledger applied across them."""
    fits = [
        capture_checkpoint_sample(frames[cp.source], cp, manifest, i)
        for i, cp in enumerate(manifest.checkpoints)
    ]
    out, log, _ = apply_differencing(
        {s: frames[s] for s in dict.fromkeys(cp.source for cp in manifest.checkpoints)},
        manifest,
        fits,
    )
    return out, log


def design_moments(
    X: np.ndarray,
    terms: list[str],
    weights: np.ndarray | None,
    released: set[str],
    min_cell: int,
    digits: int | None = None,
    dominance: float | None = None,
    offmode: np.ndarray | None = None,
) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """Released cross-moments of a checkpoint design (X: n × k on the estimation sample):
    (weighted) means, SDs (Σw(x−m)²/Σw) and correlations of the released, non-constant
    columns, gated as in the module docstring; and counts for the SDC log (columns,
    left_out, blanked). `offmode`: `nonmodal_rows` of X when the caller has it."""
    n = len(X)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype="float64")
    minority = indicator_minority(X)
    # every column, not only 0/1 ones: (effective) rows off the column's modal value
    offmode = nonmodal_rows(X, weights, min_cell) if offmode is None else offmode
    keep: list[int] = []
    left_out = 0
    for j, t in enumerate(terms):
        if t not in released or n == 0 or np.ptp(X[:, j]) == 0:
            continue
        nz = int(np.count_nonzero(X[:, j]))
        if 0 <= offmode[j] < min_cell or 0 < nz < min_cell or _dominated(X[:, j], w, dominance):
            left_out += 1
            continue
        keep.append(j)
    info = {"columns": len(keep), "left_out": left_out, "blanked": 0}
    if len(keep) == 0:
        return None, info
    # Moments accumulated over row chunks: no n × k copies of the design (three of them were
    # this function's memory peak).
    W = float(w.sum())
    step = 1 << 16
    chunks = [(a, min(a + step, n)) for a in range(0, n, step)]
    m = sum((w[a:b] @ X[a:b][:, keep] for a, b in chunks), np.zeros(len(keep))) / W
    C = np.zeros((len(keep), len(keep)))
    for a, b in chunks:
        D = X[a:b][:, keep] - m
        C += (D * w[a:b, None]).T @ D
    C /= W
    sd = np.sqrt(np.diag(C))
    R = C / np.outer(sd, sd)
    np.fill_diagonal(R, 1.0)
    blank = np.zeros(R.shape, dtype=bool)
    ind = [a for a, j in enumerate(keep) if minority[j] >= 0]
    # 0/1 columns: their sums and products are exact counts, so counted on booleans (the
    # same numbers as the float sums, without a float product per pair).
    ones = {a: X[:, keep[a]] == 1 for a in ind}
    n1 = {a: int(np.count_nonzero(v)) for a, v in ones.items()}
    for ai, a in enumerate(ind):
        for b in ind[ai + 1 :]:
            n11 = float(np.count_nonzero(ones[a] & ones[b]))
            n10, n01 = float(n1[a]) - n11, float(n1[b]) - n11
            cells = np.asarray([n11, n10, n01, n - n11 - n10 - n01])
            if np.any((cells > 0) & (cells < min_cell)):
                blank[a, b] = blank[b, a] = True
    info["blanked"] = int(blank.sum() // 2)

    def rnd(v: float) -> float:
        return round_significant(float(v), digits) if digits else float(v)

    return {
        "terms": [terms[j] for j in keep],
        "weighted": weights is not None,
        "mean": [rnd(v) for v in m],
        "sd": [rnd(v) for v in sd],
        "corr": [
            [None if blank[a, b] else rnd(R[a, b]) for b in range(len(keep))]
            for a in range(len(keep))
        ],
    }, info


def _dominated(x: np.ndarray, w: np.ndarray, dominance: float | None) -> bool:
    """Top-2 dominance rule on the spread: the two largest contributions w (x − m)² make up
    more than `dominance` of Σ w (x − m)², so the SD would nearly give away those rows."""
    if dominance is None:
        return False
    c = w * (x - (w @ x) / w.sum()) ** 2
    total = float(c.sum())
    if not total > 0:
        return False
    # the two largest without a sort (a sort, or a partition of heavily tied 0/1 columns, is
    # slow on large data): the largest, then the largest of the others; their sum is
    # the sum of the sort's last two
    i = int(np.argmax(c))
    top2 = (
        c[i] + max(c[:i].max(initial=-np.inf), c[i + 1 :].max(initial=-np.inf))
        if len(c) >= 2
        else c[i]
    )
    return float(top2) > dominance * total


def nonmodal_rows(X: np.ndarray, weights: np.ndarray | None, min_cell: int) -> np.ndarray:
    """For each design column: the (effective) number of rows not at its most common value,
    -1 for a constant column. With weights the count is Kish's (Σw)²/Σw² over those rows.
    Exact when below `min_cell`; otherwise any number ≥ `min_cell` (the gate needs no more).
    A dummy, a scaled dummy 2·1[x ≥ c], a spline max(x − c, 0) or a column zero but for a
    few rows is a small group when few rows are off its modal value, whatever its values."""
    n, k = X.shape
    out = np.full(k, -1.0)
    if n == 0:
        return out
    m = min(n, 4 * min_cell)
    # Kish count of any half of the rows is at least this (the lighter half's weight, squared,
    # over all the squared weights): the bound for a column where no value holds a majority
    half = (
        None
        if weights is None
        else float(np.partition(weights, n // 2)[: n // 2].sum()) ** 2 / float(weights @ weights)
    )
    for j in range(k):
        col = X[:, j]
        head = col[:m]
        if np.all((head == 0) | (head == 1)) and np.all((col == 0) | (col == 1)):
            ones = col == 1
            c1 = int(np.count_nonzero(ones))
            if 0 < c1 < n:
                minority = ones if 2 * c1 <= n else ~ones
                out[j] = float(min(c1, n - c1)) if weights is None else _kish(weights, minority)
            continue
        # A value held by all but fewer than min_cell rows fills all but fewer than min_cell
        # rows of any m rows, so it is the head's most common value (a majority of the head)
        vals, counts = np.unique(head, return_counts=True)
        top = int(np.argmax(counts))
        if weights is None and int(counts[top]) < m - min_cell + 1:
            out[j] = float(n)  # no value can leave fewer than min_cell rows off it
            continue
        at = col == vals[top]
        c = int(np.count_nonzero(at))
        if c == n:
            continue  # constant
        if 2 * c > n or m == n:  # the majority value, or the head is the column: the mode
            out[j] = float(n - c) if weights is None else _kish(weights, ~at)
        elif weights is None:
            out[j] = float(n)  # by the head argument, at least min_cell rows are off any value
        else:
            off = _off_mode(col)
            if off is not None:
                out[j] = _kish(weights, off)
            else:  # no majority value: at least half the rows are off the mode
                out[j] = (
                    half
                    if half is not None and half >= min_cell
                    else _kish(weights, _off_exact_mode(col))
                )
    return out


def _off_mode(col: np.ndarray) -> np.ndarray | None:
    """Rows not at the column's majority value (a value held by more than half the rows is
    the median), or None when no value holds a majority."""
    n = len(col)
    med = np.partition(col, n // 2)[n // 2]
    at = col == med
    return ~at if 2 * int(np.count_nonzero(at)) > n else None


def _off_exact_mode(col: np.ndarray) -> np.ndarray:
    """Rows not at the column's most common value (np.unique: O(n log n))."""
    vals, counts = np.unique(col, return_counts=True)
    return col != vals[int(np.argmax(counts))]


def _kish(weights: np.ndarray, rows: np.ndarray) -> float:
    """Kish's effective sample size (Σw)²/Σw² of the selected rows (0 when none)."""
    w = weights[rows]
    s2 = float(w @ w)
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def top2_share(c: np.ndarray) -> float:
    """Share of the two largest of the non-negative contributions `c` in their sum (0 when
    the sum is 0): the (2, share) dominance rule of business statistics."""
    total = float(c.sum())
    if len(c) == 0 or not total > 0:
        return 0.0
    if len(c) <= 2:
        return 1.0
    top = np.partition(c, len(c) - 2)[-2:]
    return float(top.sum()) / total


def weight_gate(w: np.ndarray | None, min_cell: int) -> str | None:
    """Why a weighted sample cannot be released, or None: Kish's effective sample size
    (Σw)²/Σw² below `min_cell`, or one row carrying more than 1/min_cell of Σw (a weighted
    mean would then lean on that row as an unweighted mean of fewer than min_cell rows
    would). Row counts alone do not see one weight of 5000 among weights near 1."""
    if w is None:
        return None
    total = float(w.sum())
    if total <= 0:
        return "the weights sum to zero"
    if total * total / float(w @ w) < min_cell:
        return f"effective sample size (Kish) of the weights below min_cell_size={min_cell}"
    if float(w.max()) * min_cell > total:
        return (
            f"one row carries more than 1/{min_cell} of the total weight (min_cell_size={min_cell})"
        )
    return None


def outcome_contributions(design: Design, fit: FitResult, cp: Checkpoint) -> dict[str, np.ndarray]:
    """Per-row contributions to what a checkpoint's release pins down about its outcome: the
    total Σw|y| (the intercept and the released means give ȳ), the spread Σw(y − ȳ)², and the
    residual sum of squares Σw e² (the scale; Pearson residuals² for counts, whose dispersion
    is released). Binary and ordered outcomes are left to the outcome-class gate."""
    if cp.model in GLM_BINARY or cp.model in GLM_ORDERED:
        return {}
    y = design.y
    w = np.ones(len(y)) if design.weights is None else design.weights
    k_x = design.X.shape[1]
    eta = design.X @ fit.beta[:k_x]
    if cp.model in GLM_MODELS:  # counts: Pearson residuals
        mu = np.exp(np.clip(eta, -700, 700))
        e2 = (y - mu) ** 2 / np.maximum(mu, 1e-300)
    else:
        e = y - eta
        if design.absorb is not None:  # fe: the within residual (alternating projections)
            for _ in range(1 if design.absorb.shape[1] == 1 else 10):  # enough for a share test
                for a in range(design.absorb.shape[1]):
                    g = design.absorb[:, a]
                    e = e - (np.bincount(g, weights=w * e) / np.bincount(g, weights=w))[g]
        e2 = e * e
    ybar = float(w @ y) / float(w.sum())
    return {
        "outcome total": w * np.abs(y),
        "outcome spread": w * (y - ybar) ** 2,
        "residual sum of squares": w * e2,
    }


def outcome_dominance(
    design: Design, fit: FitResult, cp: Checkpoint, share: float
) -> tuple[list[str], list[str]]:
    """(names of the outcome aggregates checked, see `outcome_contributions`; those whose two
    largest row contributions exceed `share` of the total): released exactly, with the
    others' rough size known from the marginals, they would give away the largest outcome."""
    parts = outcome_contributions(design, fit, cp)
    return list(parts), [name for name, c in parts.items() if top2_share(c) > share]
