"""Disclosure policy: the decisions log and the gates every released artifact passes.

Log entries say *what* was suppressed, trimmed, pooled or rejected and *why*, with counts of
levels or terms, never a row value and never the value of a suppressed category.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from replisynth.config.manifest import Sdc
from replisynth.core.errors import ReplisynthError


@dataclass
class SdcLog:
    """An append-only list of disclosure decisions."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def add(self, stage: str, action: str, reason: str, **where: Any) -> None:
        self.entries.append({"stage": stage, "action": action, **where, "reason": reason})

    def extend(self, other: SdcLog | list[dict[str, Any]]) -> None:
        self.entries.extend(other.entries if isinstance(other, SdcLog) else other)


def resolved_settings(sdc: Sdc) -> dict[str, Any]:
    """The SDC settings in force, for sdc_log.json and the report."""
    return {
        "profile": sdc.profile,
        "min_cell_size": sdc.min_cell_size,
        "quantile_trim": sdc.quantile_trim,
        "min_resid_df": sdc.min_resid_df,
        "grid": sdc.grid,
        "round_significant": sdc.round_significant,
        "budget": sdc.budget,
        "dominance": sdc.dominance,
        "overridden_by_manifest": list(sdc.overridden),
    }


class DisclosureError(ReplisynthError):
    """An artifact about to be written fails a disclosure gate (a bug: gates run earlier)."""


def assert_no_small_cells(counts: list[int], min_cell: int, where: str) -> None:
    """Gate: every released count is at least the minimum cell size."""
    bad = [c for c in counts if 0 < c < min_cell]
    if bad:
        raise DisclosureError(
            f"{where}: {len(bad)} released count(s) below min_cell_size={min_cell}"
        )


def check_release(release: dict[str, Any], min_cell: int) -> None:
    """Gate run on a source release before it is written: frequency tables, stratum sizes,
    and sample sizes behind every grid respect the minimum cell size."""
    name = release["source"]
    for bid, block in release["blocks"].items():
        if block["rows"] < min_cell and bid != "all":
            raise DisclosureError(f"{name}/{bid}: stratum of {block['rows']} rows released")
        for col, m in block["marginals"].items():
            if m["kind"] == "categorical":
                assert_no_small_cells(m["table"]["counts"], min_cell, f"{name}/{bid}/{col}")
            elif m["kind"] in ("continuous", "ordinal_grid") and m["n"] < min_cell:
                raise DisclosureError(f"{name}/{bid}/{col}: grid from {m['n']} values released")
        sp = (
            np.asarray(block["spearman"], dtype="float64")
            if block["spearman"]
            else np.zeros((0, 0))
        )
        if sp.size:
            off = sp[~np.eye(len(sp), dtype=bool)]
            off = off[np.isfinite(off)]
            if np.any(np.abs(off) > 1 + 1e-12):
                raise DisclosureError(f"{name}/{bid}: correlation outside [-1, 1]")
    for cell in release["strata"]["cells"]:
        if cell["rows"] < min_cell:
            raise DisclosureError(f"{name}: stratum cell of {cell['rows']} rows released")
    check_windows(release, min_cell)
    check_release_atoms(release, min_cell)
    check_missing_codes(release, min_cell)
    check_weights(release, min_cell)


def check_release_atoms(release: dict[str, Any], min_cell: int) -> None:
    """`check_atoms` on every marginal of the release that carries atoms."""
    for bid, block in release["blocks"].items():
        for col, m in block["marginals"].items():
            if m.get("atoms"):
                check_atoms(m, min_cell, f"{release['source']}/{bid}/{col}", bid)


def check_atoms(m: Mapping[str, Any], min_cell: int, where: str, block: str) -> None:
    """Gate: atoms are released at source level only; every atom holds at least min_cell
    rows, the rest none or at least min_cell (its grid then counts them in `n`), the counts
    add up to the column's non-missing rows, and the column's `grid` is the one the atoms and
    the rest give (`stats.atoms.mixed_grid`: it adds no number of its own)."""
    from replisynth.stats.atoms import mixed_grid
    from replisynth.stats.marginals import THIN_WINDOW

    atoms = m["atoms"]
    if block != "all":
        raise DisclosureError(f"{where}: atoms released inside a stratum")
    rest = atoms.get("rest") or {}
    n_rest = int(rest.get("n") or 0)
    assert_no_small_cells([*atoms["counts"], n_rest], min_cell, f"{where}/atoms")
    if len(atoms["counts"]) != len(atoms["values"]) or sum(atoms["counts"]) + n_rest != m["n"]:
        raise DisclosureError(f"{where}: atom counts and the rest do not add up to n")
    if rest and min(rest.get("window_sizes") or [THIN_WINDOW]) < THIN_WINDOW:
        raise DisclosureError(f"{where}: grid window of fewer than {THIN_WINDOW} values released")
    derived = mixed_grid(dict(atoms))
    if not np.allclose(np.asarray(m["grid"], dtype="float64"), derived, rtol=1e-12, atol=0.0):
        raise DisclosureError(f"{where}: grid is not the one its atoms and rest give")


def check_missing_codes(release: dict[str, Any], min_cell: int) -> None:
    """Gate: each released missing-value code, and the plain missing rows beside them (the
    column's missing count less the codes'), hold none or at least min_cell rows."""
    missing = {c["name"]: int(c["missing"]) for c in release["columns"]}
    for col, entry in (release.get("missing_codes") or {}).items():
        counts = [int(n) for n in entry["counts"]]
        assert_no_small_cells(
            [*counts, missing.get(col, 0) - sum(counts)],
            min_cell,
            f"{release['source']}/all/{col}/missing codes",
        )


def ordering_backed(release: Mapping[str, Any], flag: Mapping[str, Any]) -> bool:
    """Whether an ordering flag adds nothing a gate protects: a `le` flag always passes here
    (its own gate runs at extract); an implication a = 1 => b = 1 only when the source-level
    block releases the correlation of the two columns' single dims, which with their shares
    and the row count already gives the 2 x 2 table and so its zero cell (docs/disclosure.md,
    "Ordering flags")."""
    if flag.get("kind") != "implies":
        return True
    dims: dict[str, list[int]] = {}
    for i, d in enumerate(release["dims"]):
        if d["kind"] != "missing":
            dims.setdefault(d["column"], []).append(i)
    a, b = dims.get(flag.get("if", "")), dims.get(flag.get("then", ""))
    sp = release["blocks"]["all"].get("spearman")
    if not a or not b or len(a) != 1 or len(b) != 1 or not sp:
        return False
    return sp[a[0]][b[0]] is not None


def check_weights(release: dict[str, Any], min_cell: int) -> None:
    """Gate: weighted shares sit on exactly the cells of the column's released source-level
    table (each, the bucket too, of at least min_cell rows; never a derived column's, whose
    cells are unions of its parent's, bucket included), and weighted decile intervals are
    cut at points of the column's released grid (docs/method.md, "Survey weights")."""
    weights = release.get("weights")
    if not weights:
        return
    name, all_m = release["source"], release["blocks"]["all"]["marginals"]
    for col, entry in weights["tables"].items():
        if col in (release.get("derived") or {}):
            raise DisclosureError(f"{name}/all/{col}: weighted shares of a derived column")
        table = (all_m.get(col) or {}).get("table")
        if table is None or entry["levels"] != table["levels"]:
            raise DisclosureError(f"{name}/all/{col}: weighted shares off the table's cells")
        bucket = [table["suppressed"]] if table.get("suppressed") else []
        if min([*table["counts"], *bucket], default=min_cell) < min_cell:
            raise DisclosureError(f"{name}/all/{col}: weighted share of a small cell released")
    for col, entry in (weights.get("grids") or {}).items():
        grid = set((all_m.get(col) or {}).get("grid") or [])
        if not set(entry["cuts"]) <= grid:
            raise DisclosureError(f"{name}/all/{col}: weighted deciles cut off the grid")


def check_windows(release: dict[str, Any], min_cell: int) -> None:
    """Gate: every window grid averages at least THIN_WINDOW values per window, and every
    group-size window at least min_cell groups (docs/method.md, "Percentile grids")."""
    from replisynth.stats.marginals import THIN_WINDOW

    name = release["source"]
    for bid, block in release["blocks"].items():
        for col, m in block["marginals"].items():
            if min(m.get("window_sizes") or [THIN_WINDOW]) < THIN_WINDOW:
                raise DisclosureError(
                    f"{name}/{bid}/{col}: grid window of fewer than {THIN_WINDOW} values released"
                )
    for col, g in (release.get("groups") or {}).items():
        if any(w["groups"] < min_cell for w in g.get("size_windows") or []):
            raise DisclosureError(
                f"{name}: group-size window of fewer than min_cell_size={min_cell} groups released for {col!r}"
            )
