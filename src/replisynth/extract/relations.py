"""Exact relations between the columns of a source, at extraction: declared derived columns
are checked on the data; undeclared logs, squares, thresholds and sums are detected and the
user is told how to declare them. Only column names are ever reported, never a value (not
even a threshold's cut-off). Method: docs/method.md, "Derived columns".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from replisynth.config.formula_grammar import derive_breaks, parse_derive, parse_subset, subset_mask
from replisynth.config.manifest import Checkpoint, Source
from replisynth.core.errors import CheckpointError, DataError
from replisynth.extract.release_guards import pooled_numeric_columns

MAX_COLUMNS = 100  # pair search over at most this many numeric columns (wide data sets)
SCREEN_ROWS = 64  # rows a candidate relation is screened on before the full check
MIN_ROWS = 10  # a relation must hold on at least this many observed rows


@dataclass(frozen=True)
class Relation:
    """`column` is an exact function of `inputs`: kind log | square | threshold | sum |
    difference (the latter two possibly plus a constant, never shown)."""

    column: str
    kind: str
    inputs: tuple[str, ...]
    offset: bool = False
    sign: str = ""  # a threshold's direction: "<" or ">"

    def advice(self, source: str) -> str:
        """One line telling the user how to declare the relation (names only)."""
        where = f"declare it under sources.{source}.derive"
        a = self.inputs[0]
        if self.kind == "threshold":
            return (
                f"{source}: column {self.column} looks like a threshold of {a}: {where} "
                f'(as {self.column}: "{a} {self.sign} cut-off" with your cut-off)'
            )
        if self.kind == "log":
            expr = f"log({a})"
        elif self.kind == "square":
            expr = f"{a}**2"
        else:
            expr = f"{a} {'+' if self.kind == 'sum' else '-'} {self.inputs[1]}"
        if self.offset:
            return (
                f"{source}: column {self.column} looks like {expr} plus a constant: {where} "
                f'(as {self.column}: "{expr} + constant" with your constant)'
            )
        return (
            f'{source}: column {self.column} looks like {expr}: {where} ({self.column}: "{expr}")'
        )


def check_declared(df: pd.DataFrame, src: Source) -> None:
    """Each declared identity must hold in every row of the data; one line naming the key."""
    for col, text in src.derive:
        key = f"sources.{src.name}.derive.{col}"
        if derive_breaks(df, col, parse_derive(text, key), key, DataError):
            raise DataError(
                f"{key}: {col!r} is not {text!r} in every row of {src.path} (a row with a missing "
                "input must have it missing too); correct the expression or drop the key"
            )


def check_pooled_codings(df: pd.DataFrame, src: Source, min_cell: int) -> None:
    """No column may count the rows at a level of a pooled column apart from the rows its
    table pools into that level: `mid = visits == 3` (or `(visits == 3) + 10 female`, or a
    spend that is 0 exactly where visits is 3) has levels or atoms that hold the true 3s and
    nothing else, visits' table counts 3 with the pooled rows, and the difference is their
    count. Read over the whole source and inside each stratum (whose tables count the same
    classes there). Declared (`derive`) or not, the data are read; one line naming the
    columns, never a value."""
    pooled = sorted(pooled_numeric_columns(df, src, min_cell))
    if not pooled:
        return
    skip = set(src.ids) | set(src.exclude) | set(src.key_columns)
    others = [c for c in df.columns if isinstance(c, str) and c not in skip]
    classes = {c: _at_released_level(df[c], min_cell) if c in pooled else df[c] for c in others}
    pooled = [a for a in pooled if a in classes]  # an excluded column has no table
    declared = dict(src.derive)
    for rows in block_rows(df, src, min_cell):
        codes = {c: _released_codes(v[rows], min_cell) for c, v in classes.items()}
        for a in pooled:
            b, pair = _coding_in_rows(df[a][rows], classes[a][rows], a, codes, min_cell)
            if b is not None:
                raise DataError(_coding_message(src, a, b, b in declared, min_cell))
            if pair is not None:
                raise DataError(_pair_message(src, a, pair, min_cell))


def block_rows(df: pd.DataFrame, src: Source, min_cell: int) -> list[np.ndarray]:
    """Row masks of the blocks whose tables an attacker reads: every row, each stratum of at
    least `min_cell` rows, and the smaller strata together (the residual block)."""
    out = [np.ones(len(df), dtype=bool)]
    if not src.strata:
        return out
    key = np.zeros(len(df), dtype=np.int64)  # one code per combination of the strata values
    for c in src.strata:
        part, uniques = pd.factorize(df[c], use_na_sentinel=True)
        key = np.where((key < 0) | (part < 0), -1, key * (len(uniques) + 1) + part)
    values, counts = np.unique(key[key >= 0], return_counts=True)
    out += [key == v for v in values[counts >= min_cell]]
    residual = (key < 0) | np.isin(key, values[counts < min_cell])
    return [*out, residual] if residual.any() else out


def _coding_in_rows(
    true: pd.Series, level: pd.Series, a: str, codes: dict[str, np.ndarray], min_cell: int
) -> tuple[str | None, tuple[str, str] | None]:
    """Among some rows: a column, or a pair of few-class columns, whose counted classes give
    a level's true count of the pooled column `a` (`_counts_apart`), or (None, None)."""
    moved = (true.notna() & (true != level)).to_numpy()
    levels, uniques = pd.factorize(level, use_na_sentinel=False)  # released levels, missing too
    # a level's count is released (and may be subtracted) when it holds at least min_cell
    # rows here, and for the missing rows always; inside a stratum smaller classes are
    # bucketed
    counts = np.bincount(levels, minlength=len(uniques))
    counted = (counts >= min_cell) | pd.isna(np.asarray(uniques, dtype=object))
    levels = np.where(counted[levels], levels, -1)  # -1: a level that cannot be subtracted
    few = {c: k for c, k in codes.items() if c != a and _few_classes(k)}
    for value in sorted(set(level.to_numpy()[moved])):
        exact = (true == value).to_numpy()
        into = moved & (level == value).to_numpy()
        for b in (c for c in codes if c != a):
            if _counts_apart(codes[b], exact, into, levels):
                return b, None
        pair = _pair_counts_apart(few, exact, into, levels)
        if pair is not None:
            return None, pair
    return None, None


SUBSET_REASON = (
    "subset on a pooled column: on a row whose value the column's table pools into a "
    "neighbouring level it selects otherwise than on that level, so its n, with other "
    "releases, would count the pooled rows; write the condition so that a pooled value is "
    "selected as its level is (>= or <= at a top or bottom level)"
)


def pooled_subset_rejection(
    df: pd.DataFrame, cp: Checkpoint, src: Source, min_cell: int
) -> str | None:
    """Why a checkpoint's subset is refused, or None: it reads a column whose table pools
    values and selects some row otherwise than it would with that column at its released
    level (`visits == 3 & female == 1` beside `... & female == 0`: their n add up to the
    true 3s, short of the table's count by the pooled rows)."""
    if not cp.subset:
        return None
    key = f"checkpoints.{cp.tag}.subset"
    read = set(parse_subset(cp.subset, key, CheckpointError).columns) & set(df.columns)
    pooled = pooled_numeric_columns(df, src, min_cell) & read
    if not pooled:
        return None
    frame = df[sorted(read)]
    released = frame.assign(**{c: _at_released_level(frame[c], min_cell) for c in pooled})
    true = subset_mask(frame, cp.subset, key, CheckpointError)
    return (
        SUBSET_REASON
        if np.any(true != subset_mask(released, cp.subset, key, CheckpointError))
        else None
    )


def _coding_message(src: Source, a: str, b: str, declared: bool, min_cell: int) -> str:
    where = f"sources.{src.name}.derive.{b}" if declared else f"{src.name}: column {b!r}"
    fix = (
        "write it so that a pooled value gives what its level gives (at a top or bottom "
        "level, >= or <= instead of ==)"
        if declared
        else f"exclude it, or declare it under sources.{src.name}.derive as a coding that "
        "gives a pooled value what its level gives (>= or <= at a top or bottom level)"
    )
    return (
        f"{where}: counts the rows at a level of {a!r} apart from the rows that {a!r}'s table "
        f"pools into that level (values held by fewer than min_cell_size={min_cell} rows), so "
        f"beside that table it would give their count; {fix}"
    )


def _released_codes(values: pd.Series, min_cell: int) -> np.ndarray:
    """Each row's released class of a column (`values`: a pooled column's rows already at
    the level that counts them) as an integer code, or -1 where no release counts it
    exactly: a value held by fewer than `min_cell` rows (suppressed, pooled by its own
    table, or off the atoms of a continuous column)."""
    codes, _ = pd.factorize(values, use_na_sentinel=False)
    counts = np.bincount(codes)
    return np.where(counts[codes] >= min_cell, codes, -1)


def _counts_apart(
    codes: np.ndarray, exact: np.ndarray, into: np.ndarray, levels: np.ndarray
) -> bool:
    """Whether the classes held by the rows in `exact` (all counted exactly) hold, besides
    `exact` and some of the pooled rows `into`, only whole released levels of the pooled
    column (whose counts its table gives), and leave some pooled row out: their counts less
    those levels' then sum to the level's true count, short of the table's by 1..k−1
    (`visits <= 3` with a 13 pooled into 3: its count less those of 0, 1 and 2)."""
    held = codes[exact]
    if len(held) == 0 or held.min() < 0:
        return False
    inside = _marked(codes, held)
    extra = inside & ~exact & ~into
    if extra.any():
        lv = levels[extra]
        if lv.min() < 0 or np.any(_marked(levels, lv) & ~inside):
            return False  # a level not counted, or only partly inside: it does not cancel
    return bool(np.any(into & ~inside))


def _marked(values: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Where `values` (integer codes, -1 or more) is one of `chosen` (codes 0 or more): a
    lookup table over the codes, as `np.isin` but without sorting or hashing."""
    table = np.zeros(int(values.max()) + 2, dtype=bool)
    table[chosen + 1] = True
    return table[values + 1]


def _few_classes(codes: np.ndarray) -> bool:
    """Whether every row of a column is counted exactly, in at most three classes (a 0/1
    column, with its missing rows as a third): a pair of such columns has a joint table
    that its tables, missing counts and rank correlation fix or nearly fix."""
    return len(codes) > 0 and int(codes.min()) >= 0 and int(codes.max()) <= 2


def _pair_counts_apart(
    few: dict[str, np.ndarray], exact: np.ndarray, into: np.ndarray, levels: np.ndarray
) -> tuple[str, str] | None:
    """A pair of few-class columns whose joint classes do what `_counts_apart` asks of one
    column's classes, or None. For two 0/1 columns the rank correlation is the phi
    coefficient, which with both tables gives the 2x2 table (`u = (visits == 3) XOR w`
    beside `w` counts the 3s); with missing rows or a third class, integer counts leave few
    tables, so the pair is read as if its joint table were released."""
    names = sorted(few)
    if len(names) < 2 or not exact.any():
        return None
    hot, at = _one_hot(few, names)
    rest = ~exact & ~into
    groups = [exact, into] + [rest & (levels == v) for v in np.unique(levels[rest])]
    cells = [_cross_counts(hot, np.flatnonzero(g)) for g in groups]
    # a level not counted (-1, first when present) cannot be subtracted: any of its rows
    # inside the held cells stops the subtraction
    sizes = [
        int(g.sum()) if v >= 0 else -1
        for g, v in zip(groups[2:], np.unique(levels[rest]), strict=True)
    ]
    for i, b in enumerate(names):
        for c in names[i + 1 :]:
            part = [m[at[b], :][:, at[c]] for m in cells]
            held = part[0] > 0
            whole = all(
                p[held].sum() == 0 or p[held].sum() == n
                for p, n in zip(part[2:], sizes, strict=True)
            )
            if whole and part[1][~held].sum() > 0:
                return b, c
    return None


def _one_hot(few: dict[str, np.ndarray], names: list[str]) -> tuple[np.ndarray, dict[str, slice]]:
    """Rows × (classes of every column) indicators, one byte each, and each column's slice."""
    at, cols, start = {}, [], 0
    for c in names:
        k = int(few[c].max()) + 1
        cols += [few[c] == j for j in range(k)]
        at[c] = slice(start, start + k)
        start += k
    return np.column_stack(cols), at


def _cross_counts(hot: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of `rows` in each pair of indicator columns (both classes held), in slices of
    rows so that no float copy of the whole matrix is made."""
    m = hot.shape[1]
    out = np.zeros((m, m))
    for a in range(0, len(rows), 1 << 16):
        h = hot[rows[a : a + (1 << 16)]].astype("float32")  # exact: a slice's sums < 2^24
        out += (h.T @ h).astype("float64")
    return out


def _pair_message(src: Source, a: str, pair: tuple[str, str], min_cell: int) -> str:
    b, c = pair
    return (
        f"{src.name}: columns {b!r} and {c!r} together count the rows at a level of {a!r} "
        f"apart from the rows that {a!r}'s table pools into that level (values held by fewer "
        f"than min_cell_size={min_cell} rows): both have at most three classes, so their "
        "tables and their rank correlation give their joint table, and beside "
        f"{a!r}'s table it would give the pooled rows' count; exclude one of them (or both)"
    )


def _at_released_level(s: pd.Series, min_cell: int) -> pd.Series:
    """Each value of a few-valued numeric column at the level its source table counts it in:
    a value held by fewer than `min_cell` rows at the nearest level that holds more (by
    position, ties to the lower), the pooling rule of `stats.marginals.frequency_table`."""
    counts = s.value_counts(dropna=True).sort_index()
    kept = [i for i, c in enumerate(counts.to_numpy()) if c >= min_cell]
    if not kept:
        return s
    levels = counts.index.to_list()
    target = {v: levels[min(kept, key=lambda j: (abs(j - i), j))] for i, v in enumerate(levels)}
    return s.map(target)


def _candidates(df: pd.DataFrame, src: Source) -> list[str]:
    """Numeric, non-constant columns that may take part in a relation (capped)."""
    skip = set(src.ids) | set(src.exclude) | set(src.key_columns) | {c for c, _ in src.derive}
    out = []
    for c in df.columns:
        s = df[c]
        if c in skip or not (
            pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype)
        ):
            continue
        if s.count() >= MIN_ROWS and s.min() != s.max():
            out.append(str(c))
        if len(out) == MAX_COLUMNS:
            break
    return out


def _tol(df: pd.DataFrame, cols: tuple[str, ...]) -> float:
    """Relative tolerance: 1e-9, or 1e-6 when a column is stored in single precision."""
    return 1e-6 if any(df[c].dtype == np.float32 for c in cols) else 1e-9


def _holds(df: pd.DataFrame, rel: Relation) -> bool:
    """The full check of a screened candidate on every row where all its columns are observed."""
    cols = (rel.column, *rel.inputs)
    m = df[list(cols)].apply(pd.to_numeric, errors="coerce").astype("float64")
    m = m[np.isfinite(m.to_numpy()).all(axis=1)]
    if len(m) < MIN_ROWS:
        return False
    y, x = m[rel.column].to_numpy(), m[rel.inputs[0]].to_numpy()
    if rel.kind == "threshold":
        return _separates(y, x) == rel.sign
    with np.errstate(all="ignore"):
        if rel.kind == "log":
            want = np.where(x > 0, np.log(x), np.nan)
        elif rel.kind == "square":
            want = x**2
        else:
            z = m[rel.inputs[1]].to_numpy()
            want = x + z if rel.kind == "sum" else x - z
    tol = _tol(df, cols)
    if rel.offset:
        r = y - want
        return bool(np.all(np.isclose(r, r[0], rtol=tol, atol=tol * np.abs(y).max())))
    return bool(np.all(np.isclose(y, want, rtol=tol, atol=tol)))


def _separates(y: np.ndarray, x: np.ndarray) -> str:
    """The direction of y (two values) as a threshold of x: "<" when y's higher value is taken
    exactly where x is below some cut-off, ">" above it, "" when x's ranges overlap."""
    levels = np.unique(y)
    if len(levels) != 2 or len(np.unique(x)) < 3:
        return ""
    a, b = x[y == levels[0]], x[y == levels[1]]
    if b.max() < a.min():
        return "<"
    return ">" if a.max() < b.min() else ""


def _rows(df: pd.DataFrame, cols: list[str], rows: np.ndarray) -> np.ndarray:
    """Columns x the given rows (float64, NaN missing)."""
    part = df.iloc[np.sort(rows)][cols].apply(pd.to_numeric, errors="coerce")
    return part.astype("float64").to_numpy().T


def _screen_rows(n: int) -> np.ndarray:
    """The screen rows, drawn once (never output)."""
    return np.random.default_rng(0).permutation(n)[: max(SCREEN_ROWS, MIN_ROWS)]


def _agree(f: np.ndarray, C: np.ndarray, offset: bool = False) -> np.ndarray:
    """[i, j]: f[i] matches column j (up to a constant when `offset`) on every screen row
    where both are observed, and they are both observed on enough rows."""
    with np.errstate(all="ignore"):
        d = C[None, :, :] - f[:, None, :]
        seen = np.isfinite(d)
        scale = 1e-6 * (np.nanmax(np.abs(C), axis=1)[None, :] + 1.0)
        hi = np.where(seen, d, -np.inf).max(axis=2)
        lo = np.where(seen, d, np.inf).min(axis=2)
        ok = (hi - lo <= scale) if offset else (np.maximum(hi, -lo) <= scale)
    return ok & (seen.sum(axis=2) >= MIN_ROWS // 2)


def _binary(C: np.ndarray) -> np.ndarray:
    return np.array([len(np.unique(r[~np.isnan(r)])) <= 2 for r in C])


def _unary(cols: list[str], C: np.ndarray) -> list[Relation]:
    """Logs and squares screened on the screen rows (neither side two-valued)."""
    out: list[Relation] = []
    binary = _binary(C)
    with np.errstate(all="ignore"):
        logs = np.where(C > 0, np.log(C), np.inf)
        logs[np.isnan(C)] = np.nan
        for kind, f in (("log", logs), ("square", C**2)):
            hit = _agree(f, C)
            np.fill_diagonal(hit, False)
            for i, j in zip(*np.nonzero(hit), strict=True):
                if not binary[i] and not binary[j]:
                    out.append(Relation(cols[j], kind, (cols[i],)))
    return out


def _thresholds(df: pd.DataFrame, cols: list[str], C: np.ndarray) -> list[Relation]:
    """Two-valued columns as thresholds of other columns, screened on the screen rows plus
    rows of the rarer value (a rare 0/1 column may have none among the screen rows)."""
    out: list[Relation] = []
    binary = _binary(C)
    xs = [cols[i] for i in np.nonzero(~binary)[0]]
    if not xs:
        return out
    rng = np.random.default_rng(1)
    for j in np.nonzero(binary)[0]:
        counts = pd.to_numeric(df[cols[j]], errors="coerce").value_counts()
        if len(counts) != 2:
            continue
        rare = np.flatnonzero(df[cols[j]].to_numpy() == counts.index[counts.argmin()])
        rows = np.union1d(_screen_rows(len(df)), rng.permutation(rare)[: SCREEN_ROWS // 2])
        X, y = _rows(df, xs, rows), _rows(df, [cols[j]], rows)[0]
        for x_name, x in zip(xs, X, strict=True):
            seen = ~np.isnan(x) & ~np.isnan(y)
            sign = _separates(y[seen], x[seen]) if seen.sum() >= MIN_ROWS // 2 else ""
            if sign:
                out.append(Relation(cols[j], "threshold", (x_name,), sign=sign))
    return out


def _pairs(cols: list[str], C: np.ndarray) -> list[Relation]:
    out: list[Relation] = []
    found: set[frozenset[str]] = set()
    ia, ib = np.triu_indices(len(cols), 1)
    for kind, f in (("sum", C[ia] + C[ib]), ("difference", C[ia] - C[ib])):
        for lo in range(0, len(ia), 256):
            hit = _agree(f[lo : lo + 256], C, offset=True)
            for p, j in zip(*np.nonzero(hit), strict=True):
                a, b = int(ia[lo + p]), int(ib[lo + p])
                trio = frozenset((cols[a], cols[b], cols[j]))
                if j in (a, b) or len(trio) < 3 or trio in found:
                    continue
                found.add(trio)
                out.append(Relation(cols[j], kind, (cols[a], cols[b]), offset=True))
    return out


def detect_relations(df: pd.DataFrame, src: Source) -> list[Relation]:
    """Undeclared exact relations between the source's released numeric columns: screened on
    a few rows, then checked on every row where the columns are observed."""
    cols = _candidates(df, src)
    if len(cols) < 2:
        return []
    C = _rows(df, cols, _screen_rows(len(df)))
    found = []
    for rel in _unary(cols, C) + _thresholds(df, cols, C) + _pairs(cols, C):
        if rel.offset and _holds(df, Relation(rel.column, rel.kind, rel.inputs)):
            rel = Relation(rel.column, rel.kind, rel.inputs)
        elif not _holds(df, rel):
            continue
        found.append(rel)
    return found
