"""Secure side: guards between released numbers that would combine into an exact small count
or value. Atoms against rows left over off them and against released row sets that cut the
column (subsets, codings, tables); weighted shares against weight classes; checkpoint means
against numeric columns whose table pools levels. Reasoning: docs/disclosure.md, "Atoms and
the row sets that cut them", "Weight classes" and "Pooled numeric levels in checkpoints".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.formula_grammar import subset_mask
from replisynth.config.manifest import Checkpoint, Manifest, Source
from replisynth.core.errors import CheckpointError, ReplisynthError
from replisynth.disclosure.sdc import SdcLog
from replisynth.io.schema import MAX_ORDINAL_LEVELS, ColumnSpec
from replisynth.stats.atoms import split_atoms
from replisynth.stats.copula_dims import numeric_values
from replisynth.stats.design import used_columns
from replisynth.stats.weights import SHARE_DECIMALS, TOTAL_SIGNIFICANT


def leftover_rows(v: np.ndarray, min_cell: int, dominance: float | None) -> bool:
    """Whether 1..min_cell−1 of the finite values `v` are off the atoms. Their column then
    releases no atoms: pooled into an atom they would be the only unknown rows (an exact mean
    or a coding's count gives them away), and atoms moved into a rest to fill it stay visible
    in the rest's grid (docs/disclosure.md, "Atoms and the row sets that cut them")."""
    return split_atoms(v, min_cell, dominance).pooled > 0


# ------------------------------------------------------------------ row sets cutting a column


def _value_runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct values of `x` (ascending), each value's code, the row order by value, and
    the rows per distinct value."""
    u, code, counts = np.unique(x, return_inverse=True, return_counts=True)
    return u, code.ravel(), np.argsort(code, kind="stable"), counts


def _cuts_of(code: np.ndarray, order: np.ndarray, n_values: int, labels: np.ndarray) -> set[int]:
    """Where a row labelling that is a function of the column changes between consecutive
    distinct values (i: between values i and i+1); none when it is not a function of it."""
    xs, ls = code[order], labels[order]
    if np.any((xs[1:] == xs[:-1]) & (ls[1:] != ls[:-1])):
        return set()
    per_value = np.empty(n_values, dtype=labels.dtype)
    per_value[xs] = ls
    return set(np.flatnonzero(per_value[1:] != per_value[:-1]).tolist())


def isolated_rest_rows(rest_per_value: np.ndarray, cuts: Iterable[int], min_cell: int) -> bool:
    """Whether a segment of distinct values between consecutive cuts holds 1..min_cell−1 rows
    off the atoms: the released counts of the row sets, less the atoms inside the segment,
    would count them, and an exact total of the column on those sets would sum them."""
    starts = np.asarray(sorted({0, *(c + 1 for c in cuts)}), dtype="int64")
    seg = np.add.reduceat(rest_per_value, starts)
    return bool(np.any((seg > 0) & (seg < min_cell)))


def checkpoint_samples(df: pd.DataFrame, manifest: Manifest, source: str) -> list[np.ndarray]:
    """The estimation-sample row masks of the source's checkpoints (subset, listwise deletion,
    positive weights); a checkpoint whose sample cannot be built is left out here (its capture
    reports the problem)."""
    out = []
    for cp in manifest.checkpoints:
        if cp.source == source:
            mask = _sample_mask(df, cp)
            if mask is not None:
                out.append(mask)
    return out


def _sample_mask(df: pd.DataFrame, cp: Checkpoint) -> np.ndarray | None:
    cols = used_columns(cp)
    if any(c not in df.columns for c in cols):
        return None
    try:
        mask = subset_mask(df, cp.subset, "subset", CheckpointError) if cp.subset else None
    except ReplisynthError:
        return None
    keep = df[cols].notna().all(axis=1).to_numpy().copy()
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    if cp.weights:
        keep &= (pd.to_numeric(df[cp.weights], errors="coerce") > 0).to_numpy()
    return keep


def cut_atom_columns(
    values: dict[str, np.ndarray],
    labellings: dict[str, np.ndarray],
    samples: list[np.ndarray],
    min_cell: int,
    dominance: dict[str, float | None],
) -> dict[str, str]:
    """Continuous columns (`values`: all rows, NaN missing) whose atoms are withheld because
    released row sets cut them so that 1..min_cell−1 rows off the atoms lie between cuts:
    categorical columns released as tables (`labellings`: integer codes per row) and
    checkpoint samples (`samples`: row masks). Column -> what cut it (for the log)."""
    out: dict[str, str] = {}
    for col, x in values.items():
        ok = ~np.isnan(x)
        v = x[ok]
        split = split_atoms(v, min_cell, dominance.get(col))
        if len(v) == 0 or len(split.values) == 0 or len(split.rest) == 0:
            continue
        u, code, order, counts = _value_runs(v)
        rest = np.where(np.isin(u, split.values), 0, counts)
        cuts: set[int] = set()
        what = set()
        for name, lab in labellings.items():
            if name != col:
                found = _cuts_of(code, order, len(u), lab[ok])
                cuts |= found
                what |= {"a released table"} if found else set()
        for m in samples:
            found = _cuts_of(code, order, len(u), m[ok].astype("int8"))
            cuts |= found
            what |= {"a checkpoint sample"} if found else set()
        if cuts and isolated_rest_rows(rest, cuts, min_cell):
            out[col] = " and ".join(sorted(what))
    return out


def labelling(s: pd.Series) -> np.ndarray:
    """Integer codes of a column's values per row (missing: its own code)."""
    return pd.factorize(s, use_na_sentinel=True)[0].astype("int64")


def withheld_atom_columns(
    df: pd.DataFrame,
    work: pd.DataFrame,
    released: list[ColumnSpec],
    manifest: Manifest,
    source: Source,
    log: SdcLog,
) -> frozenset[str]:
    """Continuous columns of the source that release no atoms (each logged): the survey
    weight (exact class counts of a weight split every weighted share), and the columns cut
    by a released row set (`cut_atom_columns`)."""
    sdc = manifest.sdc
    cont = [s for s in released if s.role == "continuous"]
    values = {s.name: numeric_values(work[s.name], s) for s in cont if s.name != source.weight}
    tables = {s.name: labelling(work[s.name]) for s in released if s.role == "categorical"}
    dominance = {c: sdc.dominance if c in source.sensitive else None for c in values}
    samples = checkpoint_samples(df, manifest, source.name) if values else []
    withheld = cut_atom_columns(values, tables, samples, sdc.min_cell_size, dominance)
    log_withheld_atoms(log, source.name, withheld)
    if source.weight and any(s.name == source.weight for s in cont):
        log.add(
            "marginals",
            "atoms_withheld",
            "atoms not released for the survey weight: exact counts of its values would split "
            "every weighted share into weight classes; released as a plain grid",
            source=source.name,
            column=source.weight,
        )
        return frozenset({*withheld, source.weight})
    return frozenset(withheld)


def log_withheld_atoms(log: SdcLog, source: str, withheld: dict[str, str]) -> None:
    """Log the columns whose atoms a threshold row set withholds (never where it cuts)."""
    for col, what in withheld.items():
        log.add(
            "marginals",
            "atoms_withheld",
            f"atoms not released: {what} cuts the column so that fewer than min_cell_size rows "
            "off the atoms lie between cuts (their count and total would follow); the column "
            "is released as a plain grid",
            source=source,
            column=col,
        )


# ------------------------------------------------------------------ weight classes


WEIGHT_CLASS_REASON = (
    "a cell's weight total, with the cell counts and the weight's value counts, bounds the "
    "cell's rows at one weight value inside 1..min_cell_size-1 (a weight of few values): its "
    "weighted share would give that count"
)
MAX_LP_CELLS = 4000  # cells x weight values beyond which a few-valued weight is withheld


def weight_classes_split(cls: np.ndarray, w: np.ndarray, n: int, min_cell: int) -> bool:
    """Whether released cells' weight totals (`cls`: each row's cell, −1 none; `n` cells)
    pin the rows of a cell at one weight value into 1..min_cell−1. A cell whose rows take at
    least min_cell distinct weights is safe (its total sums at least k unknown values); when
    some cell takes fewer, the attacker's LP is solved: unknowns the rows per cell and weight
    value, known the cell counts, the cell weight totals (to the release's rounding) and the
    rows per weight value (the worst case); a count of 1..min_cell−1 whose bounds exclude 0
    and k is pinned."""
    rows = cls >= 0
    vals, code = np.unique(w[rows], return_inverse=True)
    code = code.ravel()
    c = cls[rows].astype("int64")
    size = np.bincount(c, minlength=n)
    shared = np.bincount(code, minlength=len(vals))[code] > 1
    unique_rows = size - np.bincount(c[shared], minlength=n)  # rows of a weight of their own
    if np.all(unique_rows[size > 0] >= min_cell):
        return False
    pairs = np.unique(c * len(vals) + code)  # the (cell, weight value) pairs present
    distinct = np.bincount(pairs // len(vals), minlength=n)
    if np.all(distinct[size > 0] >= min_cell):
        return False
    if n * len(vals) > MAX_LP_CELLS:
        return True
    table = np.zeros((n, len(vals)), dtype="int64")
    np.add.at(table, (c, code.ravel()), 1)
    return _pinned_class_count(table, vals, min_cell)


def released_weight_slack(sums: np.ndarray) -> np.ndarray:
    """How far each cell's weight total can be from what its released share times the
    released total gives: half a unit of the share's last decimal times the total, plus the
    share times the total's rounding (half a unit of its last significant digit)."""
    total = float(sums.sum())
    if total <= 0:
        return np.zeros(len(sums))
    rel = 0.5 * 10.0 ** (1 - TOTAL_SIGNIFICANT)
    return total * (0.5 * 10.0**-SHARE_DECIMALS + (sums / total) * rel)


def _pinned_class_count(table: np.ndarray, vals: np.ndarray, min_cell: int) -> bool:
    """The LP of `weight_classes_split` on the cells × weight values table of counts, each
    cell's weight total known to within the release's rounding (`released_weight_slack`)."""
    from scipy.optimize import linprog

    n, m = table.shape
    weighted = np.kron(np.eye(n), vals)
    A = np.vstack([np.kron(np.eye(n), np.ones(m)), np.kron(np.ones(n), np.eye(m))])
    b = np.concatenate([table.sum(axis=1), table.sum(axis=0)]).astype("float64")
    sums = (table @ vals).astype("float64")
    slack = released_weight_slack(sums)
    A_ub = np.vstack([weighted, -weighted])
    b_ub = np.concatenate([sums + slack, slack - sums])
    bounds = [(0.0, float(t)) for t in np.tile(table.sum(axis=0), n)]
    few = np.repeat((table > 0).sum(axis=1) < min_cell, m)  # cells of few distinct weights
    for idx in np.flatnonzero((table.ravel() > 0) & (table.ravel() < min_cell) & few):
        t = np.zeros(n * m)
        t[idx] = 1.0
        lo = linprog(t, A_ub, b_ub, A, b, bounds, method="highs")
        hi = linprog(-t, A_ub, b_ub, A, b, bounds, method="highs")
        if lo.status != 0 or hi.status != 0:
            return True
        if lo.fun > 1e-6 and -hi.fun < min_cell - 1e-6:
            return True
    return False


# ------------------------------------------------------------------ checkpoints

PREFIX_ROWS = 4096  # rows whose distinct values are counted before the whole column

# Answers of the per-frame column scans, while a stage keeps its frames unchanged
# (`unchanged_frames`): key -> (the frame and arguments it was computed for, the answer).
_SCANS: dict[tuple[Any, ...], tuple[tuple[Any, ...], Any]] | None = None


@contextmanager
def unchanged_frames() -> Iterator[None]:
    """While the caller changes none of its data frames: a column scan that only reads a
    frame (`pooled_numeric_columns`, `checkpoints._rare_parents`) is computed once per frame
    and arguments instead of once per checkpoint."""
    global _SCANS
    outer = _SCANS
    _SCANS = {} if outer is None else outer
    try:
        yield
    finally:
        _SCANS = outer


def scan_once(name: str, args: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    """`compute()`, remembered under `unchanged_frames` for the same objects `args` (held,
    so their identities stay theirs); computed afresh outside it."""
    memo = _SCANS
    if memo is None:
        return compute()
    key = (name, *(id(a) for a in args))
    hit = memo.get(key)
    if hit is not None and all(x is y for x, y in zip(hit[0], args, strict=True)):
        return hit[1]
    out = compute()
    memo[key] = (args, out)
    return out


def pooled_numeric_columns(df: pd.DataFrame, source: Source, min_cell: int) -> set[str]:
    """Numeric columns released as tables (few values, not forced continuous) with a value
    held by 1..min_cell−1 rows: the table pools or buckets it, so an exact mean (or total) of
    the column, less Σ level × count, would give the rare rows' values."""
    found = scan_once(
        "pooled", (df, source, min_cell), lambda: frozenset(_pooled(df, source, min_cell))
    )
    return set(found)


def _pooled(df: pd.DataFrame, source: Source, min_cell: int) -> set[str]:
    out = set()
    for c in df.columns:
        s = df[c]
        if not isinstance(c, str) or c in source.continuous or c == source.weight:
            continue
        if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            continue
        if c not in source.categorical and _more_values_than(s, MAX_ORDINAL_LEVELS):
            continue
        counts = s.value_counts(dropna=True)
        if len(counts) > MAX_ORDINAL_LEVELS and c not in source.categorical:
            continue
        if np.any((counts.to_numpy() > 0) & (counts.to_numpy() < min_cell)):
            out.add(c)
    return out


def _more_values_than(s: pd.Series, most: int) -> bool:
    """Whether the first rows of `s` alone hold more than `most` distinct values (then the
    whole column does): a continuous column is passed over without counting every value."""
    return bool(s.iloc[:PREFIX_ROWS].nunique(dropna=True) > most)


def _mentions(term: str, col: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_.]){re.escape(col)}(?![A-Za-z0-9_])", term) is not None


def terms_of_pooled_columns(
    df: pd.DataFrame, manifest: Manifest, cp: Checkpoint, terms: list[str]
) -> set[str]:
    """Terms whose design mean would give an exact total of a pooled numeric column: every
    term that reads one, and all terms when the outcome is one (a linear fit's outcome mean is
    the intercept plus the coefficients times the design means; a canonical-link GLM's
    outcome total is the sum of its fitted means, which the design moments of a design of
    dummies give)."""
    try:
        source = manifest.source(cp.source)
    except KeyError:
        return set()
    pooled = pooled_numeric_columns(df, source, manifest.sdc.min_cell_size)
    if not pooled:
        return set()
    if cp.outcome in pooled:
        return set(terms)
    return {t for t in terms if any(_mentions(t, c) for c in pooled)}


def log_pooled_terms(log: SdcLog, cp: Checkpoint, terms: set[str]) -> set[str]:
    """Log the released terms whose design means a pooled numeric column withholds."""
    if terms:
        log.add(
            "checkpoints",
            "withheld_moments",
            f"design means of {len(terms)} term(s) not released: they read (or the outcome is) "
            "a numeric column whose source table pools or buckets values below "
            "min_cell_size, whose exact total would give the pooled rows' values",
            checkpoint=cp.tag,
            terms=len(terms),
        )
    return terms


def withhold_pooled_outcome_mean(
    record: dict[str, Any], df: pd.DataFrame, manifest: Manifest, cp: Checkpoint
) -> dict[str, Any]:
    """A GLM record without its outcome mean when the outcome is a pooled numeric column
    (the mean times n is the outcome's exact total)."""
    if record.get("outcome_mean") is None:
        return record
    try:
        source = manifest.source(cp.source)
    except KeyError:
        return record
    if cp.outcome in pooled_numeric_columns(df, source, manifest.sdc.min_cell_size):
        return {**record, "outcome_mean": None}
    return record
