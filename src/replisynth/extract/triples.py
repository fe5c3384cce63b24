"""The secure side of the three-way gate (replisynth.disclosure.three_way): each block's true
3-way tables of released categorical columns, coded by the block's released levels, so the
gate bounds by LP only the cells that hold 1..k-1 rows and that no table with the same two-way
margins leaves empty. Rule: docs/disclosure.md, "Three-way cells"."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from replisynth.disclosure.three_way import Triple, TrueTable, withhold_pins
from replisynth.extract.empty_cells import _coded
from replisynth.stats.copula_dims import norm_key
from replisynth.stats.marginals import FrequencyTable


def _block_map(source_levels: list[Any], table: dict[str, Any]) -> np.ndarray:
    """Source extended code -> the block's: released levels by value, the rest to the
    block's bucket, missing to missing."""
    at = {norm_key(v): i for i, v in enumerate(table["levels"])}
    L = len(table["levels"])
    out = [at.get(norm_key(v), L) for v in source_levels]
    return np.asarray([*out, L, L + 1], dtype=np.intp)


def true_tables(
    work: pd.DataFrame, release: dict[str, Any], rows_of: dict[str, np.ndarray | slice]
) -> TrueTable:
    """A function (block, triple) -> the block's true 3-way table over extended levels."""
    top = release["blocks"]["all"]["marginals"]
    in_block: dict[tuple[str, str], np.ndarray] = {}
    src: dict[str, Any] = {}

    def codes(bid: str, col: str) -> np.ndarray:
        """Each row of the block coded by the block's extended levels (kept per block)."""
        if (bid, col) not in in_block:
            if col not in src:
                src[col] = _coded(work[col], FrequencyTable.from_dict(top[col]["table"]))
            x = src[col]
            m = _block_map(x.levels, release["blocks"][bid]["marginals"][col]["table"])
            in_block[(bid, col)] = m[x.codes[rows_of[bid]]].astype(np.int32)
        return in_block[(bid, col)]

    def table(bid: str, t: Triple) -> np.ndarray | None:
        marg = release["blocks"][bid]["marginals"]
        if bid not in rows_of or any(top.get(c, {}).get("kind") != "categorical" for c in t):
            return None
        shape = tuple(len(marg[c]["table"]["levels"]) + 2 for c in t)
        parts = [codes(bid, c) for c in t]
        flat = (parts[0] * shape[1] + parts[1]) * shape[2] + parts[2]
        return np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape)

    return table


def gate_three_way(
    work: pd.DataFrame,
    release: dict[str, Any],
    rows_of: dict[str, np.ndarray | slice],
    k: int,
) -> list[dict[str, Any]]:
    """Withhold what forces a 3-way cell into 1..k-1 in the release's blocks (in place);
    the SDC log entries."""
    return withhold_pins(release, k, true_tables(work, release, rows_of))
