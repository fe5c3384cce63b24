"""The disclosure ledger of the checkpoint stage: released row sets (source, strata blocks,
checkpoint samples) held as in-memory masks, so releases are checked against each other.
Method: docs/method.md, "Checkpoint disclosure rules".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.manifest import Checkpoint, Manifest, Source
from replisynth.disclosure.sdc import SdcLog
from replisynth.extract.pooled_totals_gate import PooledTotalsGate
from replisynth.extract.release_guards import checkpoint_samples, cut_atom_columns, leftover_rows
from replisynth.io.files import FileMeta
from replisynth.io.schema import MAX_ORDINAL_LEVELS, few_values
from replisynth.stats.atoms import nearest_atom, split_atoms
from replisynth.stats.design import subset_columns

MOMENTS_WITHHELD = (
    "pooled totals: the design means and the outcome mean are not released (with them, the "
    "tables and the checkpoints before it, the fit would give the exact total of a numeric "
    "column whose table pools or buckets values below min_cell_size); the coefficients and "
    "standard errors are"
)


def without_moments(rec: dict[str, Any]) -> dict[str, Any]:
    """A released checkpoint record without its design moments and outcome mean (the same
    record when it has neither): the pooled-totals gate's lesser remedy before a refusal."""
    if "moments" not in rec and rec.get("outcome_mean") is None:
        return rec
    out = {key: value for key, value in rec.items() if key != "moments"}
    if rec.get("outcome_mean") is not None:
        out["outcome_mean"] = None
    return out


# The fields of a checkpoint record that describe the request, not its results: what a
# refused checkpoint keeps (as `capture_checkpoint`'s rejected records).
REQUEST_KEYS = (
    "tag",
    "source",
    "model",
    "formula",
    "outcome",
    "vcov",
    "weights",
    "subset",
    "absorb",
    "entity",
    "time",
    "levels",
    "columns",
    "subset_columns",
)

RULE = (
    "a checkpoint whose estimation sample differs by 1..min_cell_size-1 rows from the source, a released stratum, "
    "the residual block, a union of these, another released checkpoint's sample or its complement is refused; between "
    "statistics weighted differently only a row count can be differenced, allowed when it is a released missing count"
)


@dataclass
class Entry:
    """One registered row set: `rows` is a boolean mask over the source's rows (never written),
    or for a stratum or the residual block `cell`, its label in the source's partition (no
    mask per stratum: a source may have thousands)."""

    id: str
    kind: str
    source: str
    rows: np.ndarray | None
    released: str
    count: int | None = None  # the released row count, None when not released
    weights: str | None = None  # the weights column of its statistics (None: unweighted)
    cell: int | None = None


@dataclass
class Ledger:
    """Registered row sets of every source and the differencing decisions."""

    min_cell: int
    entries: list[Entry] = field(default_factory=list)
    cells: dict[str, np.ndarray] = field(default_factory=dict)  # source -> partition label per row
    frames: dict[str, tuple[pd.DataFrame, Source]] = field(default_factory=dict)
    pairs_checked: int = 0
    refused: list[str] = field(default_factory=list)

    def register_source(self, df: pd.DataFrame, source: Source) -> None:
        """The source total, its released strata and the residual block (as `extract` forms them)."""
        from replisynth.extract.extract import _strata_keys

        n = len(df)
        self.frames[source.name] = (df, source)
        self.entries.append(
            Entry(
                f"{source.name}/all",
                "source",
                source.name,
                np.ones(n, dtype=bool),
                "source-level marginals, tables and correlations",
                n,
            )
        )
        if not source.strata:
            self.cells[source.name] = np.zeros(n, dtype=np.intp)
            return
        key_idx, keys = _strata_keys(df, source.strata)
        sizes = np.bincount(key_idx[key_idx >= 0], minlength=len(keys))
        released = sorted(
            [k for k, s in zip(keys, sizes, strict=True) if s >= self.min_cell],
            key=lambda k: tuple(map(str, k)),
        )
        pos = {k: i for i, k in enumerate(keys)}
        label = np.full(n, len(released), dtype=np.intp)  # the residual block's label
        remap = np.full(
            len(keys) + 1, len(released), dtype=np.intp
        )  # last slot: a missing stratum value
        remap[[pos[key] for key in released]] = np.arange(len(released))
        label = remap[key_idx]
        sizes = np.bincount(label, minlength=len(released) + 1)
        for i in range(len(released)):
            self.entries.append(
                Entry(
                    f"{source.name}/s{i}",
                    "stratum",
                    source.name,
                    None,
                    "stratum block: marginals, tables and correlations",
                    int(sizes[i]),
                    cell=i,
                )
            )
        if sizes[-1]:
            self.entries.append(
                Entry(
                    f"{source.name}/residual",
                    "residual",
                    source.name,
                    None,
                    "row count (rows synthesized from the source-level statistics)",
                    int(sizes[-1]),
                    cell=len(released),
                )
            )
        self.cells[source.name] = label

    def register_atoms(self, source: str, column: str, values: np.ndarray) -> None:
        """The row sets a column's released atoms make known exactly (`stats.atoms`): for each
        atom, the rows on the atoms at or below it and at or above it. A subset that
        thresholds the column (`spend > 0`) differs from one of these by the rows off the
        atoms on its side, which the differencing rule must then bound (docs/disclosure.md,
        "Atoms of continuous columns"). Registered for the columns a subset reads only."""
        ok = ~np.isnan(values)
        split = split_atoms(values[ok], self.min_cell)
        if len(split.values) == 0:
            return
        # each row's atom as released: its own value, or its nearest atom when rows joined one
        label = np.full(len(values), -1, dtype=np.intp)
        if split.pooled:
            label[ok] = nearest_atom(split.values, values[ok])
        else:
            pos = np.searchsorted(split.values, values[ok])
            hit = (pos < len(split.values)) & (
                split.values[np.minimum(pos, len(split.values) - 1)] == values[ok]
            )
            label[ok] = np.where(hit, pos, -1)
        every = not len(split.rest)  # the atoms hold every non-missing row
        last = len(split.values) - 1
        for i in range(len(split.values)):
            for side, rows in (("<=", (label >= 0) & (label <= i)), (">=", label >= i)):
                if every and ((side == "<=" and i == last) or (side == ">=" and i == 0)):
                    continue  # every non-missing row: the column's released row count
                self.entries.append(
                    Entry(
                        f"{source}/{column}/atoms {side} #{i + 1}",
                        "atoms",
                        source,
                        rows,
                        "atom counts of a continuous column",
                        int(rows.sum()),
                    )
                )

    def conflicts(self, source: str, rows: np.ndarray, weights: str | None = None) -> list[str]:
        """Ids of the registered sets (or 'a union of strata') that `rows` differs from by
        1..k−1 rows, directly or through a complement. Statistics weighted differently
        (a weighted checkpoint against the unweighted source) difference to a row count only:
        allowed when that count is already released (the rows missing in one column)."""
        k, n, a = self.min_cell, len(rows), int(rows.sum())
        label = self.cells[source]
        inside = np.bincount(label[rows], minlength=int(label.max()) + 1)
        mine = [
            e
            for e in self.entries
            if e.source == source and (e.rows is not None or e.cell is not None)
        ]
        dist: dict[
            int, int
        ] = {}  # |A Δ B| per entry, computed when a count bound does not clear it

        def distance(i: int, e: Entry) -> int:
            if i not in dist:
                b = int(e.count or 0)
                dist[i] = (
                    a + b - 2 * int(inside[e.cell])
                    if e.cell is not None
                    else int(np.count_nonzero(rows ^ e.rows))
                )
            return dist[i]

        total = np.bincount(label, minlength=len(inside))
        nearest = int(
            np.minimum(inside, total - inside).sum()
        )  # |A Δ the nearest union of strata cells|
        if (weights is None and nearest == 0) or any(
            e.weights == weights and e.count == a and distance(i, e) == 0
            for i, e in enumerate(mine)
        ):
            return []  # a row set already released with these weights (or a union of them): nothing new to difference
        out = []
        for i, e in enumerate(mine):
            self.pairs_checked += 1
            b = int(e.count or 0)
            if (
                abs(a - b) >= k and abs(a - (n - b)) >= k
            ):  # both lower bounds clear: no pass over the rows
                continue
            d = distance(i, e)
            if (0 < d < k or 0 < n - d < k) and (
                e.weights == weights
                or not self._count_released(source, self._difference(e, rows, d < k))
            ):
                out.append(e.id)
        self.pairs_checked += 1
        if (
            0 < nearest < k
            and not out
            and (
                weights is None
                or not self._count_released(source, rows ^ (2 * inside > total)[label])
            )
        ):
            out.append(f"{source}/union of strata")
        return out

    def _difference(self, e: Entry, rows: np.ndarray, direct: bool) -> np.ndarray:
        """A Δ B (direct) or A Δ Bᶜ as a mask."""
        other = e.rows if e.rows is not None else self.cells[e.source] == e.cell
        diff = rows ^ other
        return diff if direct else ~diff

    def _count_released(self, source: str, diff: np.ndarray) -> bool:
        """Whether the rows `diff` are exactly those missing in one released column of the
        source (their number is in the released schema)."""
        df, src = self.frames[source]
        size = int(np.count_nonzero(diff))
        hidden = set(src.ids) | set(src.exclude)
        for c in df.columns:
            if c not in hidden:
                miss = df[c].isna().to_numpy()
                if int(np.count_nonzero(miss)) == size and not np.any(miss ^ diff):
                    return True
        return False

    def register_checkpoint(
        self, cp: Checkpoint, rows: np.ndarray | None, released: bool, what: str
    ) -> None:
        self.entries.append(
            Entry(
                f"checkpoint/{cp.tag}",
                "checkpoint",
                cp.source,
                rows if released else None,
                what,
                int(rows.sum()) if released and rows is not None else None,
                cp.weights,
            )
        )

    def summary(self) -> dict[str, Any]:
        """The public part, for sdc_log.json: no mask, no difference size, row counts only
        where they are released anyway."""
        entries = []
        for e in self.entries:
            item: dict[str, Any] = {"id": e.id, "kind": e.kind, "source": e.source}
            if e.count is not None and e.kind != "atoms":  # atom sets: no count written
                item["rows"] = e.count
            item["released"] = e.released
            entries.append(item)
        return {
            "entries": entries,
            "differencing": {
                "rule": RULE,
                "min_cell_size": self.min_cell,
                "pairs_checked": self.pairs_checked,
                "refused": list(self.refused),
            },
        }


def sample_mask(df: pd.DataFrame, index: pd.Index) -> np.ndarray:
    """Boolean mask over `df`'s rows of the labels `index` (an estimation sample)."""
    mask = np.zeros(len(df), dtype=bool)
    mask[df.index.get_indexer(index)] = True
    return mask


def register_subset_atoms(ledger: Ledger, df: pd.DataFrame, manifest: Manifest, name: str) -> None:
    """Register the atom unions (`Ledger.register_atoms`) of every numeric column, not declared
    categorical nor a stratum column, that a checkpoint subset of source `name` reads. Columns
    released as tables are included when numeric: more row sets only refuse more, and the
    ledger's summary writes no count of them."""
    source = manifest.source(name)
    cols: set[str] = set()
    for cp in manifest.checkpoints:
        if cp.source == name and cp.subset:
            cols |= subset_columns(cp.subset, df.columns)
    numeric = [
        c
        for c in sorted(cols - set(source.categorical) - set(source.strata))
        if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
    ]
    values = {c: df[c].to_numpy(dtype="float64", na_value=np.nan) for c in numeric}
    for c in sorted(set(numeric) - _unreleased_atoms(df, manifest, name, values)):
        ledger.register_atoms(name, c, values[c])


def _unreleased_atoms(
    df: pd.DataFrame, manifest: Manifest, name: str, values: dict[str, np.ndarray]
) -> set[str]:
    """Continuous columns (declared, or more than MAX_ORDINAL_LEVELS values) whose atoms extraction
    withholds (rows left over off them, the weight, or cut by a checkpoint sample:
    `release_guards`): their atom row sets are never released, so the ledger does not
    refuse a checkpoint for differing from them."""
    source, sdc = manifest.source(name), manifest.sdc
    cont = {
        c: x
        for c, x in values.items()
        if c in source.continuous or few_values(df[c], MAX_ORDINAL_LEVELS) > MAX_ORDINAL_LEVELS
    }
    dom = {c: sdc.dominance if c in source.sensitive else None for c in cont}
    out = {c for c, x in cont.items() if leftover_rows(x[~np.isnan(x)], sdc.min_cell_size, dom[c])}
    out |= {source.weight} & set(cont) if source.weight else set()
    samples = checkpoint_samples(df, manifest, name) if cont else []
    return out | set(cut_atom_columns(cont, {}, samples, sdc.min_cell_size, dom))


def apply_differencing(
    frames: dict[str, pd.DataFrame],
    manifest: Manifest,
    fits: list[tuple[dict[str, Any], SdcLog, pd.Index | None]],
    metas: dict[str, FileMeta] | None = None,
) -> tuple[list[dict[str, Any]], SdcLog, dict[str, Any]]:
    """Run the ledger over captured checkpoints (manifest order; `fits` from
    `capture_checkpoint_sample`): refuse those that fail the differencing rule. Returns the
    checkpoint records, the SDC log (a refused checkpoint's capture entries replaced by its
    refusal) and the ledger's public summary."""
    k = manifest.sdc.min_cell_size
    ledger = Ledger(k)
    for name in frames:
        ledger.register_source(frames[name], manifest.source(name))
        register_subset_atoms(ledger, frames[name], manifest, name)
    released: list[dict[str, Any]] = []
    log = SdcLog()
    totals = PooledTotalsGate(frames, manifest, fits, metas, ledger.cells)
    for i, (cp, (rel, lg, index)) in enumerate(zip(manifest.checkpoints, fits, strict=True)):
        if rel.get("status") != "released" or index is None:
            ledger.register_checkpoint(
                cp, None, False, f"nothing ({rel.get('status', 'rejected')})"
            )
            released.append(rel)
            log.extend(lg)
            continue
        rows = sample_mask(frames[cp.source], index)
        hit = ledger.conflicts(cp.source, rows, cp.weights)
        if hit:
            reason = (
                f"differencing: the estimation sample differs by fewer than min_cell_size={k} rows from {', '.join(hit)} "
                "(the difference of the two releases would describe those rows); widen or narrow the subset, or drop "
                "or impute the rows with missing values in the source"
            )
            ledger.refused.append(cp.tag)
            ledger.register_checkpoint(cp, None, False, "nothing (refused: differencing)")
            released.append(
                {
                    **{key: rel[key] for key in REQUEST_KEYS if key in rel},
                    "status": "rejected",
                    "reason": reason,
                }
            )
            log.add("checkpoints", "rejected", reason, checkpoint=cp.tag)
            continue
        why = totals.refusal(i, cp.source, rel)
        lean = without_moments(rel)
        if why is not None and lean is not rel and totals.refusal(i, cp.source, lean) is None:
            rel, why = lean, None  # the design means and outcome mean withheld suffice
            log.add("checkpoints", "withheld_moments", MOMENTS_WITHHELD, checkpoint=cp.tag)
        if why is not None:  # the pooled-totals gate: the record keeps its request only
            ledger.register_checkpoint(cp, None, False, "nothing (refused: pooled totals)")
            released.append({**{key: rel[key] for key in REQUEST_KEYS if key in rel}})
            released[-1].update(status="rejected", reason=why)
            log.add("checkpoints", "rejected", why, checkpoint=cp.tag)
            continue
        ledger.register_checkpoint(
            cp,
            rows,
            True,
            "n, coefficients, standard errors, scale"
            + (", regressor moments" if "moments" in rel else ""),
        )
        released.append(rel)
        log.extend(lg)
    log.add(
        "checkpoints",
        "differencing",
        f"{ledger.pairs_checked} pair(s) of row sets checked; {len(ledger.refused)} checkpoint(s) refused "
        f"(samples differing by 1..{k - 1} rows from another release)",
    )
    return released, log, ledger.summary()
