"""Checks of a source's data against its manifest section before extraction: one line per
failure, never a data value. See docs/method.md, "Bad input".
"""

from __future__ import annotations

import pandas as pd

from replisynth.config.manifest import Manifest, Source, formula_variables
from replisynth.core.errors import DataError, ManifestError

# A text column is "numbers stored as text" when nearly all its values read as numbers (a
# decimal comma allowed) and it has more distinct values than a list of codes would.
NUMERIC_TEXT_SHARE = 0.95
NUMERIC_TEXT_MIN_DISTINCT = 20


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
        if col not in src.categorical and _numbers_as_text(s):
            raise DataError(
                f"{where}: column {col!r} holds numbers stored as text (e.g. with a decimal comma); convert it "
                f"to numbers, or list it under sources.{src.name}.categorical to keep it as text"
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
        dup = int(df.duplicated([src.panel.entity, src.panel.time]).sum())
        if dup:
            raise DataError(
                f"{where}: {dup} row(s) repeat an ({src.panel.entity}, {src.panel.time}) pair of another row; "
                f"a panel has one row per entity and time (drop the duplicates, or fix sources.{src.name}.panel)"
            )


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
    parsed = pd.to_numeric(
        v.astype(str).str.strip().str.replace(",", ".", regex=False), errors="coerce"
    )
    return bool(parsed.notna().mean() >= NUMERIC_TEXT_SHARE)
