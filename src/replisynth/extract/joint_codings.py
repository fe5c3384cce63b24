"""A column coded from two others (`c = a OR b`, `a AND b`, `a XOR b`, a label of their
combinations): its table sums cells of the a × b table, and with a's and b's tables the sums
can fix a cell that holds 1..k−1 rows (`n(a=1, b=1) = n(a) + n(b) − n(c)` for an OR), however
the pair's own correlation is gated. Read from the data at extraction; one line naming the
columns, never a value. Method: docs/disclosure.md, "Codings of two columns".
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from replisynth.config.manifest import Source
from replisynth.core.errors import DataError
from replisynth.extract.relations import _at_released_level, block_rows
from replisynth.extract.release_guards import scan_once
from replisynth.io.schema import MAX_ORDINAL_LEVELS

SCREEN = 4096  # rows a candidate coding is screened on before the full check
PREFIX = 1000  # first rows whose count of values passes over a continuous column
MAX_NOMINAL_CLASSES = 50  # a nominal column's table read up to this many classes


def check_joint_codings(df: pd.DataFrame, src: Source, min_cell: int) -> None:
    """Stop when a column of few values is a function of two others (of neither alone) and
    the three tables fix a cell of the pair's table that holds 1..min_cell−1 rows, over the
    whole source or inside a stratum (whose tables count the same classes there)."""
    codes = source_codes(df, src, min_cell)
    for rows in block_rows(df, src, min_cell):
        found = coded_pair(codes, codes, rows, min_cell)
        if found is not None:
            raise DataError(_message(src, *found, min_cell))


def joint_coding_rejection(
    codes: dict[str, np.ndarray], sets: dict[str, np.ndarray], min_cell: int
) -> str | None:
    """Why a checkpoint is refused, or None: a row set whose count it releases (its sample,
    a 0/1 design column's ones in it: `subset: a == 1 | b == 1`, `I(a + b - a*b)`) is a
    function of two table columns, and with their tables the count fixes a small cell of
    their joint table. `codes`: `source_codes`; `sets`: 0/1 per row of the source."""
    coded = {name: v.astype(np.int64) for name, v in sets.items()}
    found = coded_pair(codes, coded, np.ones(len(next(iter(sets.values()))), bool), min_cell)
    if found is None:
        return None
    a, b, _ = found
    return (
        f"a count it releases (its n, or a 0/1 term's mean times n) is a coding of {a!r} and "
        f"{b!r} together, and beside their tables it gives a cell of their joint table that "
        f"holds fewer than min_cell_size={min_cell} rows"
    )


def source_codes(df: pd.DataFrame, src: Source, min_cell: int) -> dict[str, np.ndarray]:
    """`_few_valued_codes`, once per frame while the frames are unchanged (the checkpoints
    of one source share it)."""
    return scan_once(
        "joint_codes", (df, src, min_cell), lambda: _few_valued_codes(df, src, min_cell)
    )


def coded_pair(
    codes: dict[str, np.ndarray],
    coded: dict[str, np.ndarray],
    rows: np.ndarray,
    min_cell: int,
) -> tuple[str, str, str] | None:
    """(a, b, c): a pair of `codes` and a column of `coded` that is a function of the pair
    (of neither alone) among `rows` and fixes a small cell of the pair's table there."""
    names = sorted(codes)
    if len(names) < 2 or not rows.any():
        return None
    idx = np.flatnonzero(rows)
    screen = idx[_screen_rows(len(idx))]
    sample = {c: v[screen] for c, v in {**codes, **coded}.items()}
    varied = [c for c, v in coded.items() if v[idx].min() != v[idx].max()]  # else n only
    stacked = np.stack([sample[c] for c in varied]) if varied else np.zeros((0, len(screen)))
    for a, b in combinations(names, 2):
        held = _functions_of(_pair_codes(sample[a], sample[b]), stacked)
        found = [c for c, ok in zip(varied, held, strict=True) if ok and c not in (a, b)]
        if not found:
            continue
        ca, cb = codes[a][idx], codes[b][idx]
        joint = _pair_codes(ca, cb)
        counts = np.bincount(joint)
        if not np.any((counts > 0) & (counts < min_cell)):
            continue  # nothing small in the pair's table to fix
        for c in found:
            if _determines_a_small_cell(joint, coded[c][idx], ca, cb, min_cell):
                return a, b, c
    return None


def _few_valued_codes(df: pd.DataFrame, src: Source, min_cell: int) -> dict[str, np.ndarray]:
    """Each column with a released table as integer codes of its released classes (missing
    as a class): a numeric column of at most MAX_ORDINAL_LEVELS values with its rare values
    at the level its table pools them into; a nominal (or declared categorical) column of
    at most MAX_NOMINAL_CLASSES values with its rare values in one bucket. What an
    attacker's tables count; a coding of the true values is `check_pooled_codings`'s."""
    skip = set(src.ids) | set(src.exclude) | set(src.key_columns)
    out = {}
    for c in df.columns:
        if not isinstance(c, str) or c in skip:
            continue
        s = df[c]
        numeric = pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s)
        most = MAX_NOMINAL_CLASSES if c in src.categorical or not numeric else MAX_ORDINAL_LEVELS
        if c in src.continuous or s.iloc[:PREFIX].nunique(dropna=False) > most:
            continue  # a continuous column, passed over without factorizing every row
        codes, uniques = pd.factorize(
            _at_released_level(s, min_cell) if numeric else s, use_na_sentinel=False
        )
        if not 1 < len(uniques) <= most:
            continue
        counts = np.bincount(codes)
        out[c] = np.where(counts[codes] < min_cell, len(uniques), codes).astype(np.int64)
    return out


def _pair_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a * (int(b.max()) + 1) + b


def _screen_rows(n: int) -> np.ndarray:
    """Evenly spaced rows (deterministic): a coding must hold on these before the full check."""
    return np.unique(np.linspace(0, n - 1, min(n, SCREEN)).astype(np.int64))


def _function_of(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether y takes one value per value of x (on these rows); both small non-negative
    integer codes, so one bincount of their pairs (no sort)."""
    if not len(x):
        return True
    width = int(y.max()) + 1
    seen = np.bincount(x * width + y, minlength=(int(x.max()) + 1) * width) > 0
    return bool(np.all(seen.reshape(-1, width).sum(axis=1) <= 1))


def _functions_of(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Per row y of Y (columns: the rows of x), whether y takes one value per value of x:
    `_function_of` of every candidate at once, by one sort of x (the screen's rows)."""
    if len(x) < 2:
        return np.ones(len(Y), dtype=bool)
    order = np.argsort(x, kind="stable")
    same = x[order][1:] == x[order][:-1]  # neighbours in the sort sharing a value of x
    Ys = Y[:, order]
    return ~((Ys[:, 1:] != Ys[:, :-1]) & same[None, :]).any(axis=1)


def _determines_a_small_cell(
    joint: np.ndarray, c: np.ndarray, a: np.ndarray, b: np.ndarray, min_cell: int
) -> bool:
    """Whether c is a function of (a, b) on every row, of neither alone, and the tables of
    a, b and c (their level counts, linear in the non-empty cells of a × b) fix a cell of
    1..min_cell−1 rows. The attacker is granted the function and the empty cells."""
    if not _function_of(joint, c) or _function_of(a, c) or _function_of(b, c):
        return False
    cells, idx = np.unique(joint, return_inverse=True)
    n = np.bincount(idx)
    small = np.flatnonzero(n < min_cell)
    if not len(small):
        return False
    first = np.zeros(len(cells), dtype=np.int64)
    first[idx[::-1]] = np.arange(len(idx))[::-1]  # a row of each cell: its a, b and c
    rows = [
        _indicator(a[first]),
        _indicator(b[first]),
        _indicator(c[first]),
    ]
    A = np.vstack(rows).astype("float64")  # equations × cells: the three tables' counts
    margins = np.vstack(rows[:2]).astype("float64")  # a's and b's tables alone
    for j in small:
        e = np.zeros((1, len(cells)))
        e[0, j] = 1.0
        # a combination of released counts with c's table, and not without it (what the
        # pair's own tables and empty cells give is theirs to protect)
        if _in_span(A, e) and not _in_span(margins, e):
            return True
    return False


def _in_span(A: np.ndarray, e: np.ndarray) -> bool:
    return bool(np.linalg.matrix_rank(np.vstack([A, e])) == np.linalg.matrix_rank(A))


def _indicator(v: np.ndarray) -> np.ndarray:
    """One row per value of v: 1 where a cell has that value."""
    return (np.unique(v)[:, None] == v[None, :]).astype("float64")


def _message(src: Source, a: str, b: str, c: str, min_cell: int) -> str:
    declared = c in dict(src.derive)
    where = f"sources.{src.name}.derive.{c}:" if declared else f"{src.name}: column {c!r}"
    fix = (
        "drop the key, or exclude one of the other two"
        if declared
        else f"exclude it (sources.{src.name}.exclude), or one of the other two"
    )
    return (
        f"{where} is a coding of {a!r} and {b!r} together, and beside their tables its table "
        f"gives a cell of {a!r} × {b!r} that holds fewer than min_cell_size={min_cell} rows; "
        f"{fix}"
    )
