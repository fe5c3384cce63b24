"""Secure side: refuse a checkpoint whose release, with the tables and the checkpoints before
it, gives the exact total of a numeric column whose table pools values below k on a row set
whose table is known (the source, or a sample that is a function of the column), so that
less Σ level × count the pooled rows' values follow. The attacker's system is
`disclosure.pooled_totals`; method: docs/disclosure.md, "Pooled totals across checkpoints".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.manifest import Manifest, Source
from replisynth.disclosure.pooled_totals import (
    INTERCEPT,
    REASON,
    TotalsSystem,
    patterned_terms,
    readers,
    reads,
    record_equations,
)
from replisynth.extract.release_guards import pooled_numeric_columns
from replisynth.io.files import FileMeta
from replisynth.io.schema import MAX_ORDINAL_LEVELS, few_values, infer_column

MAX_CELLS = 256  # cells of the released row sets beyond which the gate refuses without solving
MAX_BLOCKS = 32  # released blocks (strata, residual) whose own totals are checked one by one
TOO_MANY = (
    "pooled totals: too many overlapping checkpoint samples to solve the attacker's system "
    "for a column whose table pools values below min_cell_size; refused to be safe"
)

Fit = tuple[dict[str, Any], Any, pd.Index | None]
WEIGHTS_REASON = (
    "pooled totals: its weights and those of weighted checkpoints released before it on the "
    "same rows add up, in some combination, to a constant, so their weighted means give the "
    "unweighted total of a numeric column whose table pools or buckets values below "
    "min_cell_size; weight it otherwise or drop one of the weighted checkpoints"
)


class PooledTotalsGate:
    """Per source with a pooled numeric column that a checkpoint's term or outcome reads
    (directly or through a derived column): the cells of the checkpoint samples, the attacker's system seeded with the source
    tables' exact totals, and the totals that must stay undetermined."""

    def __init__(
        self,
        frames: dict[str, pd.DataFrame],
        manifest: Manifest,
        fits: list[Fit],
        metas: dict[str, FileMeta] | None = None,
        blocks: dict[str, np.ndarray] | None = None,
    ):
        self.systems: dict[str, TotalsSystem] = {}
        self.cells: dict[int, list[int]] = {}
        self.targets: dict[str, list[tuple[list[int], str]]] = {}
        self.few: dict[str, set[str]] = {}
        self.crowded: set[str] = set()
        self.alone: dict[str, set[str]] = {}
        self.constant: set[int] = set()  # checkpoints whose weights are constant on the sample
        self.weighted: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}  # released
        self.weights: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for name, df in frames.items():
            meta = (metas or {}).get(name)
            part = (blocks or {}).get(name)
            self._source(df, manifest.source(name), manifest, fits, meta, part)

    def _source(
        self,
        df: pd.DataFrame,
        source: Source,
        manifest: Manifest,
        fits: list[Fit],
        meta: FileMeta | None,
        part: np.ndarray | None,
    ) -> None:
        """`part`: each row's released block (stratum or residual), whose tables are known."""
        k = manifest.sdc.min_cell_size
        idx = [
            i
            for i, (cp, (rel, _, index)) in enumerate(zip(manifest.checkpoints, fits, strict=True))
            if cp.source == source.name and rel.get("status") == "released" and index is not None
        ]
        names = {t["term"] for i in idx for t in fits[i][0]["terms"] if t.get("term")}
        names |= {str(fits[i][0]["outcome"]) for i in idx}
        columns = [  # the columns the released checkpoints read, directly or through derive
            c
            for c in df.columns
            if isinstance(c, str) and any(reads(t, readers(c, source.derive)) for t in names)
        ]
        pooled = pooled_tables(df[columns], source, manifest, meta) if columns else set()
        part = np.zeros(len(df), dtype="int64") if part is None else part.astype("int64")
        if not pooled and (len(part) == 0 or int(part.max()) == 0):
            return  # nothing pooled and no blocks: no total to protect
        few = few_valued(df, source, columns)
        read = set(columns) & few - pooled
        blockwise = tables_of(df, source, manifest, meta, rare_in_blocks(df, part, read, k))
        alone = {
            (t, p) for t in names for p in pooled | blockwise if reads(t, readers(p, source.derive))
        }
        if not alone:
            return
        self.alone[source.name] = {t for t, _ in alone}
        masks = {i: _mask(df, fits[i][2]) for i in idx}
        n_blocks = int(part.max()) + 1 if len(part) else 1
        label = part.copy() if n_blocks <= MAX_BLOCKS else np.zeros(len(df), dtype="int64")
        for m in masks.values():
            label = pd.factorize(label * 2 + m)[0].astype("int64")
        if int(label.max()) + 1 > MAX_CELLS:
            self.crowded.add(source.name)
            return
        self.cells.update({i: np.unique(label[m]).tolist() for i, m in masks.items()})
        self.few[source.name] = few
        self.constant |= {
            i
            for i in idx
            if fits[i][0].get("weights") and _constant(df[fits[i][0]["weights"]], masks[i])
        }
        self.weights.update(
            {
                i: (masks[i], df[fits[i][0]["weights"]].to_numpy(dtype="float64", na_value=0.0))
                for i in idx
                if fits[i][0].get("weights") and i not in self.constant
            }
        )
        every = list(range(int(label.max()) + 1))
        system = TotalsSystem()
        known = [{INTERCEPT: 1.0}] + [{t: 1.0} for t in names if "[T." in t or t in few - pooled]
        system.add(system.equations(every, known))
        self.systems[source.name] = system
        targets = _targets(df, part, label, masks, self.cells, alone, pooled, k)
        # A total the tables give already (a level's count on the source, released in its
        # table) is not one a checkpoint could reveal: only the others are protected here.
        self.targets[source.name] = [
            (cells, t) for cells, t in targets if not system.determined(cells, t, [])
        ]

    def refusal(self, i: int, source: str, rec: dict[str, Any]) -> str | None:
        """Why checkpoint `i` (its record `rec`) is refused, or None (its totals then join
        the system)."""
        if source in self.crowded:
            names = {str(rec["outcome"]), *(t["term"] for t in rec["terms"] if t.get("term"))}
            return TOO_MANY if names & self.alone[source] else None
        system = self.systems.get(source)
        if system is None or i not in self.cells:
            return None
        terms = [t["term"] for t in rec["terms"] if t.get("term")]
        pooled_weighted = i in self.weights and bool(
            {str(rec["outcome"]), *terms} & self.alone[source]
        )
        if pooled_weighted and self._weights_combine(source, i):
            return WEIGHTS_REASON
        if i in self.constant:
            rec = {**rec, "weights": None}  # a constant weight: weighted totals are scaled ones
        eqs = record_equations(
            rec, patterned_terms(terms, self.few[source]), frozenset(self.alone[source])
        )
        rows = system.equations(self.cells[i], eqs)
        if any(system.determined(cells, t, rows) for cells, t in self.targets[source]):
            return REASON
        system.add(rows)
        if pooled_weighted:
            self.weighted.setdefault(source, {})[i] = self.weights[i]
        return None

    def _weights_combine(self, source: str, i: int) -> bool:
        """Whether checkpoint i's weights, with those of the weighted fits released before it
        on the same rows (reading a pooled column) and a constant, are linearly dependent
        there: Σ a_j w_j = c makes Σ a_j (Σ w_j y) = c Σ y, an unweighted total (w2 = 3 − w1:
        two weighted means gave a pooled column's exact total)."""
        mask, w = self.weights[i]
        released = self.weighted.get(source, {}).values()
        earlier = [v for m, v in released if np.array_equal(m, mask)]
        if not earlier:
            return False
        M = np.column_stack([np.ones(int(mask.sum())), *(v[mask] for v in earlier), w[mask]])
        return bool(np.linalg.matrix_rank(M) < M.shape[1])


def pooled_tables(
    df: pd.DataFrame, source: Source, manifest: Manifest, meta: FileMeta | None
) -> set[str]:
    """The numeric columns whose table pools or buckets a value below k
    (`release_guards.pooled_numeric_columns`) that the schema releases as tables: an integer
    column of many values that pooling would rob of its spread is released as a grid, whose
    exact total adds nothing. Without the file's metadata (value labels keep a column a
    table) every such column counts."""
    pooled = pooled_numeric_columns(df, source, manifest.sdc.min_cell_size)
    return tables_of(df, source, manifest, meta, pooled)


def _targets(
    df: pd.DataFrame,
    part: np.ndarray,
    label: np.ndarray,
    masks: dict[int, np.ndarray],
    cells: dict[int, list[int]],
    alone: set[tuple[str, str]],
    pooled: set[str],
    k: int,
) -> list[tuple[list[int], str]]:
    """The totals that must stay undetermined, as (cells, name): of a column pooled at source
    level, on the source, each block, a union of blocks and a sample that is a function of
    it; of a column rare only inside some block, on each block and each proper union."""
    n_blocks = int(part.max()) + 1 if len(part) else 1
    every = list(range(int(label.max()) + 1))
    out = [(every, t) for t, p in alone if p in pooled]
    if 1 < n_blocks <= MAX_BLOCKS:  # each block's tables are released
        for g in range(n_blocks):
            out += [(np.unique(label[part == g]).tolist(), t) for t, _ in alone]
    for i, m in masks.items():
        whole = _union_of_blocks(part, m)
        proper = whole and not m.all()
        for t, p in alone:
            src = p in pooled and (whole or _cuts_pooled(df[p], m, k))
            if src or (p not in pooled and proper):
                out.append((cells[i], t))
    return out


def rare_in_blocks(df: pd.DataFrame, part: np.ndarray, columns: set[str], k: int) -> set[str]:
    """Columns with a value held by 1..k−1 rows inside some released block (its table there
    suppresses cells, which an exact block total would split)."""
    if len(part) == 0 or int(part.max()) == 0:
        return set()
    out = set()
    for c in sorted(columns):
        code, values = pd.factorize(df[c])
        ok = code >= 0
        counts = np.bincount(part[ok] * len(values) + code[ok])
        if np.any((counts > 0) & (counts < k)):
            out.add(c)
    return out


def tables_of(
    df: pd.DataFrame, source: Source, manifest: Manifest, meta: FileMeta | None, cols: set[str]
) -> set[str]:
    """Those of `cols` the schema releases as tables (all of them without the metadata)."""
    if meta is None or not cols:
        return cols
    from replisynth.extract.extract import _kept_categorical  # the ledger's pattern: no cycle

    keep = _kept_categorical(manifest, source)
    sdc = manifest.sdc
    trim = sdc.quantile_trim / 100.0
    return {
        c
        for c in cols
        if infer_column(df[c], source, meta, sdc.min_cell_size, keep, trim).role == "categorical"
    }


def _constant(w: pd.Series, mask: np.ndarray) -> bool:
    v = w.to_numpy(dtype="float64", na_value=np.nan)[mask]
    return bool(len(v) and np.nanmin(v) == np.nanmax(v))


def _union_of_blocks(part: np.ndarray, mask: np.ndarray) -> bool:
    """Whether a sample holds every row or none of each released block (its tables are then
    the sum of the blocks')."""
    inside = np.bincount(part[mask], minlength=int(part.max()) + 1)
    total = np.bincount(part, minlength=len(inside))
    return bool(np.all((inside == 0) | (inside == total)))


def _mask(df: pd.DataFrame, index: pd.Index) -> np.ndarray:
    mask = np.zeros(len(df), dtype=bool)
    mask[df.index.get_indexer(index)] = True
    return mask


def few_valued(df: pd.DataFrame, source: Source, columns: list[str]) -> set[str]:
    """Numeric columns of at most MAX_ORDINAL_LEVELS values, not forced continuous: released
    as tables, so their level counts (exact, or pooled) are known."""
    out = set()
    for c in columns:
        s = df[c]
        if c in source.continuous or c == source.weight or not pd.api.types.is_numeric_dtype(s):
            continue
        if few_values(s, MAX_ORDINAL_LEVELS) <= MAX_ORDINAL_LEVELS:
            out.add(c)
    return out


def _cuts_pooled(s: pd.Series, mask: np.ndarray, k: int) -> bool:
    """Whether a sample is a function of the column (no value on both sides; all its
    non-missing rows are one) and holds a row of a value of 1..k−1 rows: the table then
    gives Σ level × count on it (less the pooled rows), as on the source."""
    v = s.to_numpy(dtype="float64", na_value=np.nan)
    ok = ~np.isnan(v)
    inside, outside = np.unique(v[ok & mask]), np.unique(v[ok & ~mask])
    if np.intersect1d(inside, outside).size:
        return False
    vals, counts = np.unique(v[ok], return_counts=True)
    rare = vals[(counts > 0) & (counts < k)]
    return bool(np.isin(inside, rare).any())
