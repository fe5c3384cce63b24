"""A stratum table that counts another column's unlisted class apart: inside a stratum,
column b's listed classes can hold exactly the rows of a class v of column a that a's table
leaves unlisted (secondary suppression), so their counts give v's count, and a's unlisted
total less it the cells it protects. Such a b is released at source level only (its stratum
tables withheld). Method: docs/disclosure.md, "Codings inside strata".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from replisynth.core.errors import DataError
from replisynth.disclosure.linked_tables import blank_unlisted_dims, n_classes

MISSING = -1  # b's missing rows: a class every stratum table counts (its `missing`)


def stratum_codings(
    classes: dict[str, tuple[np.ndarray, Any]], mask: np.ndarray, min_cell: int
) -> list[dict[str, Any]]:
    """Secure side, one stratum (rows `mask`): every (a, class v, b) where the classes of b
    held by a's class-v rows hold, besides them, only whole other classes of a (`minus`,
    which the stratum's table may list), and each holds at least `min_cell` rows (so the
    stratum table may list them); `source`: those classes of b hold no row outside the
    stratum (its source-level table counts the same rows). Class codes only, never a
    value; never released."""
    out = []
    names = sorted(classes)
    codes = {c: classes[c][0][mask] for c in names}
    for a in names:
        na = n_classes(classes[a][1])
        for b in names:
            if b == a:
                continue
            table_b = classes[b][1]
            nb = n_classes(table_b)
            # joint counts: a's classes (missing first) × b's classes (missing first)
            joint = np.bincount(
                (codes[a].astype(np.int64) + 1) * (nb + 1) + codes[b] + 1,
                minlength=(na + 1) * (nb + 1),
            ).reshape(na + 1, nb + 1)
            source = np.asarray(
                [-1, *table_b.counts, *([table_b.suppressed] if nb > len(table_b.counts) else [])]
            )
            out.extend(_pure_classes(joint, a, b, min_cell, source))
    return out


def _pure_classes(
    joint: np.ndarray, a: str, b: str, min_cell: int, source: np.ndarray
) -> list[dict[str, Any]]:
    """The records of `stratum_codings` for one ordered pair from its joint counts and b's
    source-level class counts (`source`, missing first as -1: never compared)."""
    col_total, row_total = joint.sum(axis=0), joint.sum(axis=1)
    held = joint[1:] > 0  # per class v of a (missing excluded): the classes of b it holds
    ok = held.any(axis=1) & ~(held & (col_total < min_cell)).any(axis=1)
    inside = joint @ held.T.astype(joint.dtype)  # [u, v]: a's class-u rows in v's held classes
    u = np.arange(joint.shape[0])[:, None]
    other = (inside > 0) & (u != np.arange(1, joint.shape[0])[None, :])
    part = (inside != row_total[:, None]) | ((u > 0) & (row_total[:, None] < min_cell))
    ok &= ~(other & part).any(axis=0)  # no class of a only partly inside, or unlistable
    recs = []
    for v in np.flatnonzero(ok) + 1:
        cols = np.flatnonzero(held[v - 1])
        recs.append(
            {
                "column": a,
                "class": int(v) - 1,
                "by": b,
                "held": [int(h) - 1 for h in cols],
                "minus": [int(w) - 1 for w in np.flatnonzero(other[:, v - 1])],
                "source": bool(np.all(source[cols] == col_total[cols])),
            }
        )
    return recs


def withhold_coding_tables(
    release: dict[str, Any], codings: dict[str, list[dict[str, Any]]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The release with the stratum tables of every column b withheld (source-level table
    kept) whose listed classes in some stratum count a class that a's table there leaves
    unlisted, while a's unlisted total holds other rows too, and their correlations blanked
    as `blank_unlisted_dims` does; and the SDC log entries."""
    blocks = dict(release["blocks"])
    source_tables = {
        c: m["table"] for c, m in blocks["all"]["marginals"].items() if m["kind"] == "categorical"
    }
    # a derived column lists no stratum table (its parent's give it): nothing of it to protect
    derived = set(release.get("derived") or {})
    withheld: dict[str, tuple[str, str]] = {}
    changed = True
    while changed:  # withholding b changes nothing else's counts; a few passes at most
        changed = False
        for bid, recs in codings.items():
            for r in recs:
                b = r["by"]
                if b in withheld or r["column"] in derived:
                    continue
                if not _counts_apart(blocks[bid], source_tables, r):
                    continue
                if r.get("source"):
                    raise DataError(_source_message(release["source"], r["column"], b))
                withheld[b] = (r["column"], bid)
                blocks = _withhold(blocks, b, [bid for bid in blocks if bid != "all"])
                changed = True
    entries = [
        {
            "stage": "marginals",
            "action": "withheld_coding",
            "source": release["source"],
            "block": "linked",
            "column": b,
            "reason": (
                f"stratum tables withheld (source-level table kept): in a stratum its listed "
                f"classes hold exactly the rows of a class of {a!r} that {a!r}'s table there "
                "leaves unlisted, so beside that table they would give the count of the cells "
                "it protects"
            ),
        }
        for b, (a, _bid) in sorted(withheld.items())
    ]
    if not withheld:
        return release, entries
    # the withheld columns' correlations inside the strata and with the strata columns go
    # too, as for any column whose stratum tables leave cells unlisted
    return blank_unlisted_dims({**release, "blocks": blocks}, entries)


def _counts_apart(
    block: dict[str, Any], tables: dict[str, dict[str, Any]], r: dict[str, Any]
) -> bool:
    """Whether the record's class is unlisted in a's stratum table, every class of b holding
    it is listed in b's, and a's unlisted total exceeds their sum (the rest would follow)."""
    a, b, v = r["column"], r["by"], r["class"]
    ma, mb = block["marginals"].get(a), block["marginals"].get(b)
    if ma is None or mb is None or mb["kind"] != "categorical" or a not in tables:
        return False
    levels_a = tables[a]["levels"]
    if ma["kind"] == "categorical":
        if v < len(levels_a) and levels_a[v] in ma["table"]["levels"]:
            return False
        unlisted = int(ma["table"].get("suppressed", 0))
    elif ma["kind"] == "suppressed":
        unlisted = int(ma["n"])
    else:
        return False
    held = _listed_total(mb, tables[b]["levels"], r["held"])
    minus = _listed_total(ma, levels_a, r.get("minus", []))
    if held is None or minus is None:
        return False
    return unlisted > held - minus


def _listed_total(m: dict[str, Any], levels: list[Any], classes: list[int]) -> int | None:
    """Rows of `classes` (source-level class codes, -1 missing) in a stratum's table `m`, or
    None when one of them is not listed there."""
    if not classes:
        return 0
    if m["kind"] != "categorical":
        return None
    listed = dict(zip(m["table"]["levels"], m["table"]["counts"], strict=True))
    total = 0
    for h in classes:
        if h == MISSING:
            total += int(m["missing"])
        elif h < len(levels) and levels[h] in listed:
            total += int(listed[levels[h]])
        else:
            return None
    return total


def _source_message(source: str, a: str, b: str) -> str:
    return (
        f"{source}: column {b!r} counts, inside a stratum, the rows of a class of {a!r} that "
        f"the stratum's table leaves unlisted (with the rows of classes it lists), and its "
        "source-level table counts the same rows, so beside those tables it would give the "
        f"cells they protect; exclude it (sources.{source}.exclude)"
    )


def _withhold(blocks: dict[str, Any], col: str, ids: list[str]) -> dict[str, Any]:
    """`blocks` with `col`'s table in each stratum block `ids` replaced by its row counts."""
    out = dict(blocks)
    for bid in ids:
        m = out[bid]["marginals"].get(col)
        if m is None or m["kind"] != "categorical":
            continue
        n = int(sum(m["table"]["counts"])) + int(m["table"].get("suppressed", 0))
        out[bid] = {
            **out[bid],
            "marginals": {
                **out[bid]["marginals"],
                col: {"kind": "suppressed", "missing": int(m["missing"]), "n": n},
            },
        }
    return out
