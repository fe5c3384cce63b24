"""The released missing-value codes put back on a synthetic column's missing
rows (Stata .a-.z, SPSS user-missing values). Method: docs/method.md, "Missing-value codes".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from replisynth.core.seeds import rng as make_rng
from replisynth.stats.marginals import apportion


def code_targets(entry: dict[str, Any], original_missing: int, n_missing: int) -> dict[str, int]:
    """Rows per released code among `n_missing` synthetic missing rows: the released counts
    and plain missing (the rest of the `original_missing` rows) apportioned (largest
    remainder), so the counts are exact when the synthetic column has the original's missing
    count."""
    counts = [int(n) for n in entry["counts"]]
    plain = max(int(original_missing) - sum(counts), 0)
    got = apportion(np.asarray([plain, *counts], dtype="float64"), int(n_missing))
    return {c: int(n) for c, n in zip(entry["codes"], got[1:], strict=True)}


def assign_codes(
    s: pd.Series, entry: dict[str, Any], original_missing: int, seed: int, source: str
) -> np.ndarray:
    """Per row of `s`: the code a missing row carries (None for plain missing and for values),
    codes drawn without replacement over the missing rows from a seeded stream of the column."""
    out = np.full(len(s), None, dtype=object)
    rows = np.flatnonzero(s.isna().to_numpy())
    targets = code_targets(entry, original_missing, len(rows))
    order = make_rng(seed, source, "missing_codes", str(s.name)).permutation(rows)
    at = 0
    for code, n in targets.items():
        out[order[at : at + n]] = code
        at += n
    return out


def synthetic_codes(df: pd.DataFrame, release: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """column -> per-row codes for every column of `df` with released missing codes."""
    missing = {c["name"]: int(c["missing"]) for c in release["columns"]}
    return {
        col: assign_codes(df[col], entry, missing[col], seed, release["source"])
        for col, entry in (release.get("missing_codes") or {}).items()
        if col in df.columns
    }
