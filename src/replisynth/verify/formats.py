"""Tier 0, the file's shape beyond its values: each date column in its released storage and
display format (on its period's first day for month, quarter, half-year and year formats),
each released missing-value code on its expected number of rows with its label.
Method: docs/method.md, "Dates" and "Missing-value codes".
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from replisynth.io.files import csv_date_format
from replisynth.io.schema import ColumnSpec, date_period, period_start
from replisynth.stats.missing_codes import code_targets


def date_problems(df: pd.DataFrame, specs: list[ColumnSpec], formats: dict[str, str]) -> list[str]:
    """Date columns whose written storage differs from the released one (csv dates are
    formatted as text on export and not read back here) or whose values are not on their
    period's first day."""
    out: list[str] = []
    for s in specs:
        want = s.display_format
        if not want or s.name not in df.columns:
            continue
        got = formats.get(s.name)
        if csv_date_format(want) is None and (got or "").upper() != want.upper():
            out.append(f"{s.name}: date stored as {got or 'no date format'}, released {want}")
        period = date_period(want)
        col = df[s.name]
        if period and pd.api.types.is_datetime64_any_dtype(col):
            t = col.dropna()
            if len(t) and not bool((period_start(t, period) == t).all()):
                out.append(f"{s.name}: dates not on the first day of their period ({want})")
    return out


def code_problems(df: pd.DataFrame, release: dict[str, Any], shape: dict[str, Any]) -> list[str]:
    """Released missing-value codes absent, on another number of rows than the release gives
    for the synthetic column's missing rows, or without their label; codes not released."""
    out: list[str] = []
    missing = {c["name"]: int(c["missing"]) for c in release["columns"]}
    released = release.get("missing_codes") or {}
    got_all = shape.get("missing_codes") or {}
    for col, entry in released.items():
        if col not in df.columns:
            continue
        want = {
            c: n
            for c, n in code_targets(entry, missing[col], int(df[col].isna().sum())).items()
            if n
        }
        got = {str(c): int(n) for c, n in (got_all.get(col) or {}).items()}
        if got != want:
            out.append(f"{col}: missing-value codes {_counts(got)}, expected {_counts(want)}")
        labels = (shape.get("missing_labels") or {}).get(col, {})
        if {c: labels.get(c) for c in entry["labels"]} != entry["labels"]:
            out.append(f"{col}: missing-code labels did not survive")
    for col in sorted(set(got_all) - set(released)):
        out.append(f"{col}: missing-value codes that were not released")
    return out


def _counts(d: dict[str, int]) -> str:
    return "{" + ", ".join(f"{c}: {n}" for c, n in sorted(d.items())) + "}" if d else "none"


def shape_problems(
    df: pd.DataFrame, release: dict[str, Any], specs: list[ColumnSpec], shape: dict[str, Any]
) -> list[str]:
    """`date_problems` and `code_problems` of a written synthetic file (`shape`: its labels,
    display formats and code counts as read back)."""
    return date_problems(df, specs, shape.get("display_formats") or {}) + code_problems(
        df, release, shape
    )
