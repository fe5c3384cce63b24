"""Checks of a source's data against its manifest section before extraction: one line per
failure, never a data value. See docs/method.md, "Bad input".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from replisynth.config.manifest import Manifest, Source, formula_variables
from replisynth.core.errors import DataError, ManifestError

# A text column is "numbers stored as text" when nearly all its values read as numbers (a
# decimal comma allowed) and it has more distinct values than a list of codes would.
NUMERIC_TEXT_SHARE = 0.95
NUMERIC_TEXT_MIN_DISTINCT = 20
DOTTED_DATE = r"\d{1,2}\.\d{1,2}\.\d{2,4}|\d{4}\.\d{1,2}\.\d{1,2}"


def check_formulas(manifest: Manifest) -> None:
    """A checkpoint's outcome may not also be a regressor (`y ~ y + x1`)."""
    for i, cp in enumerate(manifest.checkpoints):
        if "~" not in cp.formula:
            continue
        rhs = formula_variables("replisynth_outcome ~ " + cp.formula.split("~", 1)[1]) - {
            "replisynth_outcome"
        }
        if cp.outcome in rhs:
            raise ManifestError(
                f"checkpoints[{i}].formula: the outcome {cp.outcome!r} is also on the right-hand side; "
                "remove it from the regressors"
            )


def check_source_frame(manifest: Manifest, src: Source, df: pd.DataFrame) -> None:
    """Column types the pipeline cannot represent, strata that are not categories, and panel
    keys that are not unique."""
    skip = set(src.ids) | set(src.exclude)
    where = f"{src.path}"
    check_weight_column(src, df)
    for col in df.columns:
        if col in skip:
            continue
        s = df[col]
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            raise DataError(
                f"{where}: column {col!r} is a timezone-aware timestamp; store it without a time zone "
                f"(e.g. converted to UTC) or list it under sources.{src.name}.exclude"
            )
        if s.dtype == object:
            first = s.dropna().head(50)
            if any(
                isinstance(v, (list, tuple, dict, set))
                or hasattr(v, "__array__")
                and not isinstance(v, str)
                for v in first
            ):
                raise DataError(
                    f"{where}: column {col!r} holds lists or nested values; flatten it into plain columns "
                    f"or list it under sources.{src.name}.exclude"
                )
        if col not in src.categorical and col not in src.numeric and _numbers_as_text(s):
            if _dotted_dates(s):  # 31.12.2020 reads as a number with dots grouping thousands
                raise DataError(
                    f"{where}: column {col!r} holds dates stored as text (day, month and year "
                    f"between dots); give their format under sources.{src.name}.dates (e.g. "
                    f'"%d.%m.%Y") to read them as dates, or list it under sources.{src.name}.exclude'
                )
            raise DataError(
                f"{where}: column {col!r} holds numbers stored as text (thousands separators, a decimal "
                f"comma or a token such as n/a); declare it under sources.{src.name}.numeric (with "
                f"missing_tokens and decimal_comma as needed) to read it as numbers, or list it under "
                f"sources.{src.name}.categorical to keep it as text"
            )
    for col in src.strata:
        s = df[col]
        if col in src.continuous or (
            pd.api.types.is_float_dtype(s) and not (s.dropna() == s.dropna().round()).all()
        ):
            raise ManifestError(
                f"sources.{src.name}.strata: column {col!r} is continuous; strata must be categories "
                "(bin it into a categorical column first, or drop it from strata)"
            )
    if src.panel is not None:
        pair = [src.panel.entity, src.panel.time]
        dup = int(df.dropna(subset=pair).duplicated(pair).sum())  # a missing time repeats nothing
        if dup:
            raise DataError(
                f"{where}: {dup} row(s) repeat an ({src.panel.entity}, {src.panel.time}) pair of another row; "
                f"a panel has one row per entity and time (drop the duplicates, or fix sources.{src.name}.panel)"
            )


def coerce_numeric(src: Source, df: pd.DataFrame) -> pd.DataFrame:
    """The columns of `sources.<name>.numeric` read as numbers: thousands separators dropped,
    a decimal comma read when `decimal_comma`, `missing_tokens` as missing. A value that still
    does not read is an error naming the column and the count (never the value)."""
    if not src.numeric:
        return df
    tokens = {t.strip().lower() for t in src.missing_tokens}
    out = df.copy()
    for col in src.numeric:
        s = out[col]
        if pd.api.types.is_numeric_dtype(s.dtype):
            continue
        text = s.astype("string").str.strip()
        missing = text.isna() | text.str.lower().isin(tokens) | (text == "")
        plain = _plain_number(text.where(~missing), src.decimal_comma)
        parsed = pd.to_numeric(plain, errors="coerce")
        bad = int((parsed.isna() & ~missing).sum())
        if bad:
            raise DataError(
                f"{src.path}: column {col!r} (sources.{src.name}.numeric): {bad} value(s) do not read as "
                f"numbers; add the tokens they hold to sources.{src.name}.missing_tokens, set "
                f"decimal_comma, or fix the data"
            )
        out[col] = parsed.astype("float64")
    return out


def _plain_number(text: pd.Series, decimal_comma: bool) -> pd.Series:
    """Number text without thousands separators (commas; with `decimal_comma`, dots and
    spaces), the decimal comma as a dot."""
    if decimal_comma:
        return text.str.replace(r"[.\s\u00a0']", "", regex=True).str.replace(",", ".", regex=False)
    return text.str.replace(r"[,\s\u00a0']", "", regex=True)


def _dotted_dates(s: pd.Series) -> bool:
    """Every value has the form of a date written with dots (31.12.2020, 2020.12.31)."""
    text = s.dropna().astype("string").str.strip()
    return bool(len(text)) and bool(text.str.fullmatch(DOTTED_DATE).all())


def looks_numeric(s: pd.Series) -> bool:
    """A text column that holds numbers stored as text (extraction stops on it unless declared)."""
    return _numbers_as_text(s)


def _numbers_as_text(s: pd.Series) -> bool:
    if not (s.dtype == object or pd.api.types.is_string_dtype(s)) or pd.api.types.is_numeric_dtype(
        s
    ):
        return False
    v = s.dropna()
    if not len(v) or not all(isinstance(x, str) for x in v.head(50)):
        return False
    if v.nunique() <= NUMERIC_TEXT_MIN_DISTINCT:
        return False
    text = v.astype("string").str.strip()
    point = pd.to_numeric(_plain_number(text, False), errors="coerce")
    comma = pd.to_numeric(_plain_number(text, True), errors="coerce")
    return bool((point.notna() | comma.notna()).mean() >= NUMERIC_TEXT_SHARE)


def check_weight_column(src: Source, df: pd.DataFrame) -> None:
    """The declared survey weight (`sources.<name>.weight`) is numeric, never missing, and
    positive; the message counts the rows at fault, never shows a value."""
    if src.weight is None:
        return
    key = f"sources.{src.name}.weight"
    s = df[src.weight]
    if not pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        raise DataError(
            f"{src.path}: {key}: column {src.weight!r} is not numeric; a survey weight must be a "
            "positive number on every row (convert it, or declare it under "
            f"sources.{src.name}.numeric)"
        )
    v = pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=float("nan"))
    bad = {
        "missing or infinite": int((~np.isfinite(v)).sum()),
        "zero or negative": int((np.isfinite(v) & (v <= 0)).sum()),
    }
    for what, n in bad.items():
        if n:
            raise DataError(
                f"{src.path}: {key}: column {src.weight!r} has {n} row(s) with a {what} weight; "
                "a survey weight must be positive on every row (drop those rows or fix the weight)"
            )
