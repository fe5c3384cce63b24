"""Column schema: logical type, storage and role of each column, and the pandera schema built
from the *released* schema. Method: docs/method.md, "Schema and classification".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.manifest import Source
from replisynth.core.errors import DataError
from replisynth.io.files import FileMeta

MAX_ORDINAL_LEVELS = 20
SPREAD_LEVELS = 6  # an integer column with this many values or more ...
SPREAD_MARGIN = (
    0.02  # ... that pooling would rob of this much more variance than trimming is continuous
)
EPOCH = pd.Timestamp("1970-01-01")


@dataclass(frozen=True)
class ColumnSpec:
    """The released description of one column.

    role: continuous | categorical | id | group.  `ordered` matters for categoricals only.
    `missing` is the count of missing values in the source (rows in `rows`).
    """

    name: str
    logical_type: str
    storage_type: str
    role: str
    integer: bool
    ordered: bool
    missing: int
    rows: int
    variable_label: str | None = None
    time_invariant: bool = False
    display_format: str | None = None  # a date column's storage (FileMeta.display_formats)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ColumnSpec:
        return cls(**d)


def logical_type(s: pd.Series) -> str:
    """integer, float, categorical, string, boolean or date, from the pandas dtype."""
    dt = s.dtype
    if pd.api.types.is_bool_dtype(dt):
        return "boolean"
    if pd.api.types.is_datetime64_any_dtype(dt):
        return "date"
    if isinstance(dt, pd.CategoricalDtype):
        return "categorical"
    if pd.api.types.is_integer_dtype(dt):
        return "integer"
    if pd.api.types.is_float_dtype(dt):
        return "float"
    if pd.api.types.is_numeric_dtype(dt):
        return "float"
    nonmiss = s.dropna()
    if len(nonmiss) and nonmiss.map(lambda v: isinstance(v, bool)).all():
        return "boolean"
    return "string"


def is_integer_valued(s: pd.Series) -> bool:
    """True when every non-missing value of a numeric column is a whole number."""
    if not pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        return False
    v = s.dropna().to_numpy(dtype="float64")
    return bool(len(v) and np.all(np.isfinite(v)) and np.all(v == np.round(v)))


def date_period(display: str | None) -> str | None:
    """The calendar period a date display format counts in (Stata %tw -> W, %tm -> M, %tq ->
    Q, %th -> H, %ty -> Y; SPSS MOYR -> M, QYR -> Q), or None for days and datetimes."""
    d = (display or "").lstrip("%-").upper()
    for prefix, period in (
        ("TW", "W"),
        ("TM", "M"),
        ("TQ", "Q"),
        ("TH", "H"),
        ("TY", "Y"),
        ("MOYR", "M"),
        ("QYR", "Q"),
    ):
        if d.startswith(prefix):
            return period
    return None


def period_start(t: pd.Series, period: str) -> pd.Series:
    """Each date moved to the first day of its Stata week (weeks 1-51 of a year are 7 days from
    1 January, week 52 takes the rest of the year), month, quarter, half year or year."""
    if period == "W":
        jan1 = t.dt.to_period("Y").dt.to_timestamp()
        week = np.minimum((t - jan1).dt.days // 7, 51)
        return (jan1 + pd.to_timedelta(week * 7, unit="D")).where(t.notna())
    if period == "H":
        month = np.where(t.dt.month <= 6, 1, 7)
        out = pd.to_datetime({"year": t.dt.year, "month": month, "day": 1}, errors="coerce")
        return out.where(t.notna())
    return t.dt.to_period(period).dt.to_timestamp()


def _whole_numbers(s: pd.Series, lt: str, missing: int, source: Source) -> bool:
    """Whether every non-missing value of the column is a whole number (dates: whole days,
    no time of day, as synthesis rounds to days); infinite floats are refused."""
    if lt == "float":  # the non-missing values once, for the finiteness and whole-number tests
        v = s.to_numpy(dtype="float64", na_value=np.nan)
        v = v[~np.isnan(v)] if missing else v
        if not np.all(np.isfinite(v)):
            raise DataError(
                f"{source.path}: column {str(s.name)!r} holds infinite values; recode them as missing or finite"
            )
        integer = bool(len(v) and np.all(v == np.round(v)))
    else:  # integer dtypes are whole and finite
        integer = lt == "integer" or is_integer_valued(s)
    if lt == "date":
        d = s.dropna()
        integer = bool(len(d) and (d == d.dt.normalize()).all())
    return integer


def _numeric_role(
    s: pd.Series,
    meta: FileMeta,
    integer: bool,
    min_cell: int | None,
    keep_categorical: frozenset[str] | set[str],
    trim: float,
    spread: dict[str, tuple[int, float, float]] | None,
) -> str:
    """The documented rule for a numeric column no override names: categorical with at most
    MAX_ORDINAL_LEVELS distinct values, whole or not, unless cell suppression would rob it of its spread
    (`spread_losses`, recorded in `spread`; see `infer_column`)."""
    name = str(s.name)
    n_distinct = few_values(s, MAX_ORDINAL_LEVELS)
    role = "categorical" if n_distinct <= MAX_ORDINAL_LEVELS else "continuous"
    if (
        role == "categorical"
        and min_cell
        and n_distinct >= SPREAD_LEVELS
        and name not in keep_categorical
        and not meta.value_labels.get(name)
    ):
        pooled, trimmed = spread_losses(s, min_cell, trim)
        if pooled > trimmed + SPREAD_MARGIN:
            role = "continuous"
            if spread is not None:
                spread[name] = (int(n_distinct), pooled, trimmed)
    return role


def _override_role(name: str, lt: str, source: Source) -> str | None:
    """The role the manifest or the logical type fixes (categorical/continuous overrides,
    text, categories, booleans, dates); None when the numeric rule decides."""
    if name in source.categorical:
        return "categorical"
    if name in source.continuous:
        if lt in ("string", "categorical", "boolean"):
            raise DataError(
                f"sources.{source.name}.continuous: column {name!r} is {lt}, not numeric; "
                "remove it from continuous"
            )
        return "continuous"
    if lt in ("string", "categorical", "boolean"):
        return "categorical"
    if lt == "date":
        return "continuous"
    return None


def _is_ordered(s: pd.Series, lt: str, meta: FileMeta) -> bool:
    """Whether a categorical column's levels are ordered: a pandas ordered categorical, a
    boolean, or numbers unless value labels name more than two levels."""
    if lt == "categorical":
        return bool(s.dtype.ordered)
    if lt in ("boolean",):
        return True
    if lt in ("integer", "float", "date"):
        labelled = bool(meta.value_labels.get(str(s.name)))
        return not (labelled and s.nunique(dropna=True) > 2)
    return False


def infer_column(
    s: pd.Series,
    source: Source,
    meta: FileMeta,
    min_cell: int | None = None,
    keep_categorical: frozenset[str] | set[str] = frozenset(),
    trim: float = 0.0,
    spread: dict[str, tuple[int, float, float]] | None = None,
) -> ColumnSpec:
    """Classify one column under the documented rule and the manifest overrides. With
    `min_cell`, integer columns that cell suppression would rob of their spread are
    continuous (`spread_losses`; `trim`: the share top/bottom-coded on each side), unless
    named in `keep_categorical` (strata, panel time, C() factors, ordered outcomes); such a
    switch is recorded in `spread` as name -> (values, pooled loss, trimmed loss) for the SDC log."""
    name = str(s.name)
    lt = logical_type(s)
    storage = meta.storage_types.get(name, str(s.dtype))
    missing = int(s.isna().sum())
    label = meta.variable_labels.get(name)
    base: dict[str, Any] = dict(
        name=name,
        logical_type=lt,
        storage_type=storage,
        missing=missing,
        rows=len(s),
        variable_label=label,
    )
    if name in meta.display_formats and lt == "date":
        base["display_format"] = meta.display_formats[name]
    if name in source.ids:
        return ColumnSpec(role="id", integer=True, ordered=False, **base)
    if name in source.key_columns:
        return ColumnSpec(role="group", integer=True, ordered=False, **base)
    integer = _whole_numbers(s, lt, missing, source)
    role = _override_role(name, lt, source)
    if role is None:
        role = _numeric_role(s, meta, integer, min_cell, keep_categorical, trim, spread)
    ordered = _is_ordered(s, lt, meta) if role == "categorical" else False
    return ColumnSpec(role=role, integer=bool(integer), ordered=ordered, **base)


def few_values(s: pd.Series, limit: int, head: int = 4096) -> int:
    """Distinct non-missing values of a numeric column, or limit + 1 as soon as it has more:
    a column of few values, whole or not (age in 5-year bands at their midpoints, a coded
    log coinsurance rate), is released as a frequency table; a percentile grid would place
    synthetic values between them. The first `head` rows settle most long columns."""
    v = s.to_numpy(dtype="float64", na_value=np.nan)
    for part in (v[:head], v):
        u = np.unique(part[~np.isnan(part)])
        if len(u) > limit:
            return limit + 1
    return len(u)


def spread_losses(s: pd.Series, min_cell: int, trim: float) -> tuple[float, float]:
    """Shares of the variance of a numeric column lost (pooled, trimmed): when its values
    with fewer than `min_cell` rows are pooled into the nearest value that has enough, and
    when it is clipped to its `trim` and 1 − `trim` quantiles."""
    x = pd.to_numeric(s, errors="coerce").dropna().to_numpy(dtype="float64")
    v = float(np.var(x)) if len(x) > 1 else 0.0
    if v <= 0:
        return 0.0, 0.0
    vals, counts = np.unique(x, return_counts=True)
    kept = vals[counts >= min_cell]
    if len(kept) == 0:
        return 1.0, 0.0
    nearest = kept[np.abs(vals[:, None] - kept[None, :]).argmin(axis=1)]
    pooled = np.repeat(nearest, counts)
    clipped = np.clip(x, np.quantile(x, trim), np.quantile(x, 1 - trim)) if trim > 0 else x
    return 1.0 - float(np.var(pooled)) / v, 1.0 - float(np.var(clipped)) / v


def infer_schema(
    df: pd.DataFrame,
    source: Source,
    meta: FileMeta,
    min_cell: int | None = None,
    keep_categorical: frozenset[str] | set[str] = frozenset(),
    trim: float = 0.0,
    spread: dict[str, tuple[int, float, float]] | None = None,
) -> list[ColumnSpec]:
    """ColumnSpecs for every column that is not excluded, in file order (`spread`: see `infer_column`)."""
    return [
        infer_column(df[c], source, meta, min_cell, keep_categorical, trim, spread)
        for c in df.columns
        if c not in source.exclude
    ]


# ---------------------------------------------------------------------------------------------
# pandera, from the released schema


_PANDERA_DTYPES = {"integer": None, "float": "float64", "boolean": None, "date": "datetime64[ns]"}


# The column checks (pandera runs them as element_wise=False checks; their results are
# what the lambdas pandera_schema used to hold returned).


def _numeric_dtype(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s.dtype)


def _integer_valued(s: pd.Series) -> Any:
    if pd.api.types.is_integer_dtype(s.dtype):
        return np.True_  # every value an integer: no need to look
    return np.all(np.equal(np.mod(s.dropna().to_numpy(dtype="float64"), 1), 0))


def _date_dtype(s: pd.Series) -> bool:
    return pd.api.types.is_datetime64_any_dtype(s.dtype)


def _boolean_values(s: pd.Series) -> Any:
    return s.dropna().isin([True, False, 0, 1]).all()


@dataclass(frozen=True)
class ColumnCheck:
    """One check of the released schema on one column: `test(series) -> bool`, or, when
    `allowed` is set, membership of every non-missing value in `allowed`."""

    error: str
    test: Any = None
    allowed: tuple[Any, ...] | None = None

    def passes(self, s: pd.Series) -> bool:
        if self.allowed is not None:
            return bool(s.dropna().isin(list(self.allowed)).all())
        return bool(self.test(s))


@dataclass(frozen=True)
class ReleasedSchema:
    """The checks `pandera_schema` puts on a frame, kept apart from pandera: columns present in
    this order and nothing else (strict, ordered), and each column's `ColumnCheck`s."""

    columns: tuple[tuple[str, tuple[ColumnCheck, ...]], ...]

    def passes(self, df: pd.DataFrame) -> bool:
        """True when pandera would find nothing: the cheap check that spares importing pandera
        (a slow import) and its row-level validation when a frame is clean; a check that raises
        counts as failed (pandera then reports it)."""
        if list(df.columns) != [name for name, _ in self.columns]:
            return False
        try:
            return all(c.passes(df[name]) for name, checks in self.columns for c in checks)
        except Exception:  # pandera records the exception as a failure; let it
            return False

    def to_pandera(self) -> Any:
        """The pandera DataFrameSchema running these checks (pandera imported here)."""
        import pandera.pandas as pa

        def check(c: ColumnCheck) -> Any:
            if c.allowed is not None:
                return pa.Check.isin(list(c.allowed), ignore_na=True, error=c.error)
            return pa.Check(c.test, element_wise=False, error=c.error)

        cols = {
            name: pa.Column(
                dtype=None, checks=[check(c) for c in checks], nullable=True, required=True
            )
            for name, checks in self.columns
        }
        return pa.DataFrameSchema(
            cols, strict=True, ordered=True, name="replisynth released schema"
        )


def pandera_schema(
    specs: list[ColumnSpec],
    categories: dict[str, list[Any]] | None = None,
    *,
    exempt: tuple[str, ...] = (),
    check_missing_counts: bool = False,
    rows: int | None = None,
) -> ReleasedSchema:
    """The schema a frame must meet, built from the released schema only (a `ReleasedSchema`;
    `.to_pandera()` gives the pandera DataFrameSchema, which `validation_summary` runs).

    Checks column presence and order, logical type, integer-valuedness, and (when
    `categories` is given) that categorical values come from the released categories.
    Columns in `exempt` (checkpoint outcomes, which Layer 4 moves) skip the integer and
    boolean value checks.
    """
    cols: list[tuple[str, tuple[ColumnCheck, ...]]] = []
    for spec in specs:
        checks = []
        lt = spec.logical_type
        if lt in ("integer", "float") and spec.role != "id":
            checks.append(ColumnCheck("numeric dtype", _numeric_dtype))
            if spec.integer and spec.name not in exempt:
                checks.append(ColumnCheck("integer-valued", _integer_valued))
        if lt == "date":
            checks.append(ColumnCheck("date dtype", _date_dtype))
        if lt == "boolean" and spec.name not in exempt:
            checks.append(ColumnCheck("boolean values", _boolean_values))
        if categories is not None and spec.role == "categorical" and spec.name in categories:
            checks.append(
                ColumnCheck("released categories only", allowed=tuple(categories[spec.name]))
            )
        if check_missing_counts and rows is not None and spec.role in ("continuous", "categorical"):
            want = expected_missing(spec, rows)
            checks.append(
                ColumnCheck(f"{want} missing", lambda s, w=want: int(s.isna().sum()) == w)
            )
        cols.append((spec.name, tuple(checks)))
    return ReleasedSchema(tuple(cols))


def expected_missing(spec: ColumnSpec, rows: int) -> int:
    """Missing count a synthetic column of `rows` rows must have: released share × rows, rounded
    half up (the one rounding rule used by synthesis and verification alike)."""
    if spec.rows == 0:
        return 0
    return int(np.floor(spec.missing * rows / spec.rows + 0.5))


def validation_summary(schema: Any, df: pd.DataFrame) -> list[dict[str, Any]]:
    """Validate lazily; return failures as counts per column and check, never row values.
    A `ReleasedSchema` is first checked without pandera: pandera runs (to count the failing
    rows) only when something fails."""
    if isinstance(schema, ReleasedSchema):
        if schema.passes(df):
            return []
        schema = schema.to_pandera()
    import pandera.errors as pe

    try:
        schema.validate(df, lazy=True)
    except pe.SchemaErrors as err:
        fc = err.failure_cases
        out: list[dict[str, Any]] = []
        for (col, check), grp in fc.groupby(["column", "check"], dropna=False, sort=True):
            out.append(
                {
                    "column": None if pd.isna(col) else str(col),
                    "check": str(check),
                    "failures": int(len(grp)),
                }
            )
        return out
    return []
