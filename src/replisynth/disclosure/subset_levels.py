"""A checkpoint whose subset reads one column released as a table is a union of that table's
levels, so its n, less the released counts of the levels it takes, counts the rows of the
bucket of suppressed categories (or the pooled rows) it holds: a checkpoint on a level the
table suppressed gives that level's count, and the bucket less it the rare categories'.
Decided from the bundle alone (what the attacker reads), at extract and in the review. Also
the review's check of group counts given by the SEs of an indicator fit. Method:
docs/disclosure.md, "Checkpoint subsets on a table column", "Group counts from standard
errors"."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.formula_grammar import parse_subset, subset_mask
from replisynth.core.errors import ReplisynthError
from replisynth.disclosure.sdc import DisclosureError

REASON = (
    "subset on a table column: its n, less the released counts of the levels the subset "
    "takes (its other conditions read as always true or always false), counts 1..min_cell_size-1 "
    "rows of the bucket of suppressed categories or of pooled levels, or of those levels "
    "dropped by the other conditions (or leaves that few in the bucket); subset on released "
    "levels only, or on the whole bucket, or make the other conditions drop at least "
    "min_cell_size rows"
)


def hidden_rows(rec: Mapping[str, Any], release: Mapping[str, Any]) -> list[tuple[int, int, int]]:
    """For a released checkpoint with a subset: per column of the subset with a source-level
    table, and per reading of the subset's other conditions as always true or always false
    (what an attacker may know of them), the bounds on the sample's rows that the released
    levels the subset takes do not account for (bucket rows in it, less pooled rows counted
    on the other side, less rows of those levels that the other conditions drop), and the
    bucket's size."""
    if rec.get("status") != "released" or not rec.get("subset"):
        return []
    try:
        cols = sorted(parse_subset(rec["subset"], "subset", DisclosureError).columns)
    except ReplisynthError:
        return []
    marginals = release["blocks"]["all"]["marginals"]
    missing = {c["name"]: int(c.get("missing") or 0) for c in release["columns"]}
    out = []
    for col in cols:
        t = (marginals.get(col) or {}).get("table")
        if not t:
            continue
        dropped = sum(missing.get(c, 0) for c in rec.get("columns", []) if c != col)
        for taken_mask in _readings(rec["subset"], col, t["levels"], [c for c in cols if c != col]):
            mask = taken_mask.copy()
            if col in rec.get("columns", []):  # its missing rows leave the sample anyway
                mask[-1] = False
            taken = int(np.asarray(t["counts"])[mask[:-1]].sum())
            low = int(rec["n"]) - taken - (missing.get(col, 0) if mask[-1] else 0)
            out.append((low, low + dropped, int(t.get("suppressed") or 0)))
    return out


_NUMBER = re.compile(r"(?<![A-Za-z_])-?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?")
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")
MAX_READINGS = 64


def _candidates(subset: str) -> list[Any]:
    """Values that put each condition of the subset on either side: its numbers (and just
    beside them), its quoted texts, the extremes and missing."""
    nums = [float(x) for x in _NUMBER.findall(subset)]
    near = [v + d * max(1.0, abs(v)) * 1e-6 for v in nums for d in (-1.0, 0.0, 1.0)]
    texts = [a or b for a, b in _QUOTED.findall(subset)]
    return [*near, -1e300, 1e300, *texts, "\x00", None]


def _readings(subset: str, col: str, levels: list[Any], others: list[str]) -> list[np.ndarray]:
    """The subset's masks over `col`'s released levels and a missing value, for each
    assignment of candidate values to the other columns it reads (at most MAX_READINGS):
    `_block_readings` with no strata, one block."""
    return [m[0] for m in _block_readings(subset, col, levels, others, [], [{"key": []}])]


def stratum_hidden_rows(
    rec: Mapping[str, Any], release: Mapping[str, Any]
) -> list[tuple[int, int, int]]:
    """`hidden_rows` inside the strata, for a subset that reads a strata column: per table
    column of the subset and per reading of its other conditions, the blocks the subset
    reaches, the rows of its sample that those blocks' listed cells (or their row counts,
    for a block taken whole) do not account for, and the other blocks' unlisted rows
    (`region == 'north' & visits == 2`, with north's table leaving 2 and 3 unlisted, counts
    north's 2s, and the unlisted total less them the 3s; `region != 'north' | visits == 2`
    the same once south's rows are subtracted)."""
    strata = list(release["strata"]["columns"])
    cells = release["strata"]["cells"]
    if rec.get("status") != "released" or not rec.get("subset") or not cells:
        return []
    try:
        cols = sorted(parse_subset(rec["subset"], "subset", DisclosureError).columns)
    except ReplisynthError:
        return []
    if not set(cols) & set(strata):
        return []
    marginals = release["blocks"]["all"]["marginals"]
    missing = {c["name"]: int(c.get("missing") or 0) for c in release["columns"]}
    out = []
    for col in (c for c in cols if c not in strata):
        t = (marginals.get(col) or {}).get("table")
        if not t:
            continue
        others = [c for c in cols if c != col and c not in strata]
        dropped = sum(missing.get(c, 0) for c in rec.get("columns", []) if c != col)
        blocks = [release["blocks"][c["id"]] for c in cells]
        for masks in _block_readings(rec["subset"], col, t["levels"], others, strata, cells):
            hit = [i for i, m in enumerate(masks) if m.any()]
            if not hit:
                continue
            taken, bucket = _block_counts(blocks, hit, masks, col, t["levels"], rec)
            low = int(rec["n"]) - taken
            out.append((low, low + dropped, bucket))
    return out


def _block_readings(
    subset: str,
    col: str,
    levels: list[Any],
    others: list[str],
    strata: list[str],
    cells: list[Mapping[str, Any]],
) -> list[list[np.ndarray]]:
    """Per assignment of candidate values to the other columns the subset reads (at most
    MAX_READINGS; distinct results once), the subset's mask over `col`'s levels and a
    missing value in each stratum block (strata columns at the block's key)."""
    numeric = all(isinstance(v, int | float) for v in levels)
    base = pd.Series([*levels, None] * len(cells), dtype="float64" if numeric else "object")
    width = len(levels) + 1
    out: dict[bytes, list[np.ndarray]] = {}
    values = _candidates(subset) if others else [None]
    for combo in itertools.islice(itertools.product(values, repeat=len(others)), MAX_READINGS):
        frame = pd.DataFrame({col: base})
        for j, sc in enumerate(strata):
            frame[sc] = pd.Series([c["key"][j] for c in cells for _ in range(width)])
        for o, v in zip(others, combo, strict=True):
            frame[o] = pd.Series([v] * len(base), dtype="object" if isinstance(v, str) else None)
        try:
            mask = subset_mask(frame, subset, "subset", DisclosureError)
        except (ReplisynthError, TypeError, ValueError):
            continue
        out.setdefault(
            mask.tobytes(), [mask[i * width : (i + 1) * width] for i in range(len(cells))]
        )
    return list(out.values())


def _block_counts(
    blocks: list[Mapping[str, Any]],
    hit: list[int],
    masks: list[np.ndarray],
    col: str,
    levels: list[Any],
    rec: Mapping[str, Any],
) -> tuple[int, int]:
    """(rows the hit blocks' tables list at the levels the subset takes, with their missing
    rows when it takes those, and every row of a block it takes whole; the other hit
    blocks' unlisted rows)."""
    taken = bucket = 0
    for i in hit:
        bm = blocks[i]["marginals"].get(col) or {}
        mask = masks[i]
        if mask[-1] and col not in rec.get("columns", []):
            taken += int(bm.get("missing") or 0)
        if mask[:-1].all():  # the block taken whole: its rows are known
            taken += int(blocks[i]["rows"]) - int(bm.get("missing") or 0)
            continue
        if bm.get("kind") != "categorical":
            bucket += int(blocks[i]["rows"]) - int(bm.get("missing") or 0)
            continue
        listed = dict(zip(bm["table"]["levels"], bm["table"]["counts"], strict=True))
        taken += sum(int(listed.get(v, 0)) for v, m in zip(levels, mask[:-1], strict=True) if m)
        bucket += int(bm["table"].get("suppressed") or 0)
    return taken, bucket


def subset_level_leak(
    rec: Mapping[str, Any], release: Mapping[str, Any], min_cell: int
) -> str | None:
    """The reason a released checkpoint discloses a suppressed or pooled count through its
    subset, or None: the hidden rows (`hidden_rows`, and inside the strata
    `stratum_hidden_rows`) bounded away from 0 and below min_cell, or the bucket's rows
    outside the sample bounded inside 1..min_cell−1."""
    for low, high, bucket in [*hidden_rows(rec, release), *stratum_hidden_rows(rec, release)]:
        small = not low <= 0 <= high and max(abs(low), abs(high)) < min_cell
        rest = bucket > 0 and bucket - high >= 1 and bucket - low <= min_cell - 1
        if small or rest:
            return REASON
    return None


def check_subset_levels(
    checkpoints: Sequence[Mapping[str, Any]],
    releases: Mapping[str, Mapping[str, Any]],
    min_cell: int,
) -> list[dict[str, Any]]:
    """The review's pass of `subset_level_leak` over every released checkpoint."""
    found = []
    for c in checkpoints:
        rel = releases.get(str(c.get("source")))
        if rel is not None and subset_level_leak(c, rel, min_cell):
            found.append(
                {
                    "check": "subset levels",
                    "checkpoint": c["tag"],
                    "finding": "its n less the released level counts its subset takes gives "
                    f"a count of 1..{min_cell - 1} rows of suppressed or pooled levels",
                }
            )
    return found


_INDICATOR = re.compile(r"\]$|\]:|^I\(.*(==|!=|<|>).*\)$")  # C(g)[T.a], C(g)[a], I(x == 3)
_MODEL_BASED = ("ols", "logit", "probit", "poisson", "nbreg", "ologit", "oprobit")
_CUT = re.compile(r"^cut[0-9]+$")


def indicator_fit(rec: Mapping[str, Any], binary_outcome: bool = False) -> bool:
    """Whether a released record is an unweighted fit of indicators only (factor levels,
    comparisons) with model-based SEs, or HC SEs of a 0/1 outcome (`binary_outcome`): its
    SEs give the counts of its groups (`extract/pattern_counts.py` on the secure side)."""
    robust_binary = binary_outcome and rec.get("vcov") in ("HC0", "HC1", "HC2", "HC3")
    if rec.get("status") != "released" or (rec.get("vcov") != "nonrobust" and not robust_binary):
        return False
    if rec.get("weights") or rec.get("absorb") or rec.get("model") not in _MODEL_BASED:
        return False
    named = [t["term"] for t in rec.get("terms", []) if t.get("term")]
    return all(t in ("Intercept", "alpha") or _INDICATOR.search(t) or _CUT.match(t) for t in named)


def _small_pair(rec: Mapping[str, Any]) -> bool:
    """Whether the released moments blank a pair of indicators (a 2×2 cell of 1..k−1 rows,
    which the SEs of an indicator fit give)."""
    corr = (rec.get("moments") or {}).get("corr") or []
    return any(v is None for row in corr for v in row)


def check_group_counts(
    checkpoints: Sequence[Mapping[str, Any]],
    releases: Mapping[str, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """The review's pass: an indicator fit with model-based SEs with a suppressed coefficient
    (n less the others' counts), a blanked pair of indicators (a 2×2 cell below k), or a
    column whose source table suppresses or pools categories (a level's count against the
    bucket)."""
    found = []
    for c in checkpoints:
        marginals = (releases.get(str(c.get("source"))) or {}).get("blocks", {})
        marginals = marginals.get("all", {}).get("marginals", {})
        y = (marginals.get(str(c.get("outcome"))) or {}).get("table") or {}
        binary = len(y.get("levels", [])) <= 2 and not y.get("suppressed") and bool(y)
        if not indicator_fit(c, binary):
            continue
        read = set(c.get("columns", [])) - {c.get("outcome")}
        tables = [(marginals.get(col) or {}).get("table") or {} for col in sorted(read)]
        hidden = any(t.get("suppressed") or t.get("pooled_levels") for t in tables)
        if hidden or _small_pair(c) or any(x.get("suppressed") for x in c["terms"]):
            found.append(
                {
                    "check": "group counts",
                    "checkpoint": c["tag"],
                    "finding": "model-based SEs of an indicator fit give its groups' counts; "
                    "a group is below min_cell_size or a column's table hides categories",
                }
            )
    return found
