"""Secure side: the release of a column's missing-value codes (Stata .a-.z, SPSS user-missing
values) and of the free-text columns that release nothing. Method: docs/method.md,
"Missing-value codes".
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from replisynth.config.manifest import Source
from replisynth.disclosure.sdc import SdcLog
from replisynth.io.files import FileMeta
from replisynth.io.schema import ColumnSpec


def gate_codes(
    counts: dict[str, int], total: int, min_cell: int
) -> tuple[dict[str, int], int, int]:
    """The codes of one column's missingness table released: each with at least `min_cell`
    rows, the rest pooled into plain missing; plain missing then holds none or at least
    `min_cell` rows (else the smallest released codes join it, as a suppressed category's
    bucket is widened). Returns (released code -> rows, codes pooled, codes joined)."""
    released = {c: n for c, n in counts.items() if n >= min_cell}
    pooled = len(counts) - len(released)
    plain = total - sum(released.values())
    joined = 0
    while 0 < plain < min_cell and released:
        smallest = min(released, key=lambda c: (released[c], c))
        plain += released.pop(smallest)
        joined += 1
    return released, pooled, joined


def release_missing_codes(
    meta: FileMeta,
    specs: list[ColumnSpec],
    marginals: dict[str, dict[str, Any]],
    source: Source,
    min_cell: int,
    log: SdcLog,
) -> dict[str, dict[str, Any]]:
    """column -> {codes, counts, labels} for the codes that pass `gate_codes`, at the source
    level only (no stratum's table splits its missing rows by code). Strata columns (whose
    missing rows the strata suppression rewrites) and columns that release nothing keep
    plain missing."""
    out: dict[str, dict[str, Any]] = {}
    by_name = {s.name: s for s in specs}
    for col, counts in meta.missing_codes.items():
        spec = by_name.get(col)
        m = marginals.get(col)
        if spec is None or m is None or m["kind"] == "suppressed" or col in source.strata:
            continue
        released, pooled, joined = gate_codes(counts, spec.missing, min_cell)
        where = {"source": source.name, "block": "all", "column": col}
        if pooled or joined:
            log.add(
                "missing_codes",
                "pooled",
                f"{pooled + joined} missing-value code(s) pooled into plain missing: {pooled} below "
                f"min_cell_size={min_cell}, {joined} joining them so that plain missing holds none "
                f"or at least min_cell_size rows",
                **where,
            )
        if not released:
            continue
        codes = sorted(released)
        labels = meta.missing_labels.get(col, {})
        out[col] = {
            "codes": codes,
            "counts": [int(released[c]) for c in codes],
            "labels": {c: labels[c] for c in codes if c in labels},
        }
        log.add(
            "missing_codes",
            "released",
            f"{len(codes)} missing-value code(s) released with their exact counts (each at least min_cell_size={min_cell})",
            **where,
        )
    return out


def free_text_columns(df: pd.DataFrame, specs: list[ColumnSpec], source: Source) -> list[str]:
    """Text columns that have values in the source but release none (every value below the
    cell size, as free text is): all-missing in the synthetic data. Columns the manifest
    lists as categorical are not free text (they get the warning of any emptied column)."""
    return [
        s.name
        for s in specs
        if s.logical_type == "string"
        and s.role == "categorical"
        and s.name not in source.categorical
        and s.rows
        and s.missing >= s.rows
        and bool(df[s.name].notna().any())
    ]
