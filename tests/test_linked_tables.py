"""Frequency tables as a linked system (replisynth.disclosure.linked_tables): with the bundle alone, an
attacker who solves the linear program over every published total (strata rows, the residual
block, the source-level table, listed cells) bounds no unlisted cell more narrowly than the
protection rule; publishing the primary suppression alone lets the same attack recover cells."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import release_of
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from replisynth.config.manifest import load_manifest
from replisynth.disclosure.linked_tables import audit_release_tables, widen_bucket
from replisynth.io.files import dumps_json, read_source


def _ok(lo: int, hi: int, k: int, cap: int) -> bool:
    """The protection the profile promises, written out again (not imported)."""
    return hi <= 0 or lo >= k or hi - lo >= k or (lo <= 0 and hi >= min(k - 1, cap))


def attack(release: dict, k: int) -> list[tuple[str, str, int, int, int]]:
    """The attacker LP, written independently of the code under test: per categorical column,
    unknown cells blocks × (released levels, suppressed bucket), equal to every published
    total; min and max of each unlisted cell. Returns the unprotected cells (column, block,
    level index, lo, hi)."""
    strata = release["strata"]
    all_m = release["blocks"]["all"]["marginals"]
    bad = []
    for col, m in all_m.items():
        if (
            col in strata["columns"]
            or m["kind"] != "categorical"
            or not (strata["cells"] or strata["residual_rows"])
        ):
            continue
        levels = m["table"]["levels"]
        col_tot = list(m["table"]["counts"]) + (
            [m["table"]["suppressed"]] if m["table"]["suppressed"] else []
        )
        L = len(col_tot)
        rows, known = [], []
        miss = 0
        for cell in strata["cells"]:
            bm = release["blocks"][cell["id"]]["marginals"][col]
            miss += bm["missing"]
            rows.append((cell["id"], release["blocks"][cell["id"]]["rows"] - bm["missing"]))
            kn = {}
            if bm["kind"] == "categorical":
                kn = {
                    levels.index(v): c
                    for v, c in zip(bm["table"]["levels"], bm["table"]["counts"], strict=True)
                }
            known.append(kn)
        if strata["residual_rows"]:
            rows.append(("residual", strata["residual_rows"] - (m["missing"] - miss)))
            known.append({})
        B = len(rows)
        A, b = [], []
        for i, (_, total) in enumerate(rows):
            a = np.zeros(B * L)
            a[i * L : (i + 1) * L] = 1
            A.append(a), b.append(total)
        for j in range(L):
            a = np.zeros(B * L)
            a[j::L] = 1
            A.append(a), b.append(col_tot[j])
        for i in range(B):
            for j, c in known[i].items():
                a = np.zeros(B * L)
                a[i * L + j] = 1
                A.append(a), b.append(c)
        A, b = np.asarray(A), np.asarray(b, dtype=float)
        for i in range(B):
            for j in range(L):
                if j in known[i]:
                    continue
                e = np.zeros(B * L)
                e[i * L + j] = 1
                lo = linprog(e, A_eq=A, b_eq=b, bounds=(0, None), method="highs")
                hi = linprog(-e, A_eq=A, b_eq=b, bounds=(0, None), method="highs")
                assert lo.status == 0 and hi.status == 0, f"{col}: the release contradicts itself"
                lo_i, hi_i = int(np.ceil(lo.fun - 1e-6)), int(np.floor(-hi.fun + 1e-6))
                if not _ok(lo_i, hi_i, k, rows[i][1]):
                    bad.append((col, rows[i][0], j, lo_i, hi_i))
    return bad


def primary_only(release: dict, data: pd.DataFrame, k: int) -> dict:
    """The release as it would be with primary suppression alone (every stratum cell of at
    least k rows listed, the rest as one suppressed count): counted again from the data."""
    out = json.loads(dumps_json(release))
    strata = release["strata"]["columns"]
    for cell in release["strata"]["cells"]:
        rows = np.logical_and.reduce(
            [
                data[c].astype(str).to_numpy() == str(v)
                for c, v in zip(strata, cell["key"], strict=True)
            ]
        )
        for col, m in release["blocks"]["all"]["marginals"].items():
            if col in strata or m["kind"] != "categorical":
                continue
            levels = m["table"]["levels"]
            vc = data.loc[rows, col].dropna().astype(str).value_counts()
            listed = [(v, int(vc.get(str(v), 0))) for v in levels if vc.get(str(v), 0) >= k]
            n = int(vc.sum())
            out["blocks"][cell["id"]]["marginals"][col] = {
                "kind": "categorical",
                "missing": int(data.loc[rows, col].isna().sum()),
                "table": {
                    "levels": [v for v, _ in listed],
                    "counts": [c for _, c in listed],
                    "ordered": m["table"]["ordered"],
                    "suppressed": n - sum(c for _, c in listed),
                    "pooled_levels": 0,
                    "classes": True,
                },
            }
    return out


def planted(
    seed: int, k: int, n_strata: int, n_levels: int, col: str, rare: int, small: int
) -> pd.DataFrame:
    """Strata g0..g{n_strata-1} of 3k..6k rows plus one small stratum of `small` rows; a
    nominal column `col` with common levels and `rare` planted cells of 1..k-1 rows (a rare
    level in some strata); a 0/1 column with a rare 1 in one stratum."""
    rng = np.random.default_rng(seed)
    parts = []
    for g in range(n_strata):
        n = int(rng.integers(3 * k, 6 * k))
        lv = rng.choice([f"L{j}" for j in range(n_levels)], size=n)
        parts.append(
            pd.DataFrame(
                {"grp": f"g{g}", col: lv, "flag": (rng.random(n) < (0.5 if g else 0.0)).astype(int)}
            )
        )
    for r in range(rare):
        g = r % n_strata
        m = int(rng.integers(1, k))
        parts.append(
            pd.DataFrame({"grp": [f"g{g}"] * m, col: [f"L{n_levels + r % 2}"] * m, "flag": [1] * m})
        )
    if small:
        parts.append(
            pd.DataFrame({"grp": ["tiny"] * small, col: ["L0"] * small, "flag": [0] * small})
        )
    df = pd.concat(parts, ignore_index=True)
    df.insert(0, "pid", np.arange(1, len(df) + 1))
    df["x"] = rng.normal(size=len(df))
    return df


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 10_000),
    k=st.sampled_from([5, 10, 20]),
    n_strata=st.integers(2, 4),
    n_levels=st.integers(2, 5),
    col=st.sampled_from(["region", "occ_code", "Kategorie"]),
    rare=st.integers(1, 4),
    small=st.integers(0, 4),
)
@example(  # a stratum whose table of `col` is not released at all: nothing primary to list
    seed=107, k=10, n_strata=2, n_levels=4, col="region", rare=1, small=0
)
def test_attack_bounds_no_unlisted_cell_too_narrowly(
    tmp_path_factory, seed, k, n_strata, n_levels, col, rare, small
):
    tmp = tmp_path_factory.mktemp("lt")
    df = planted(seed, k, n_strata, n_levels, col, rare, small)
    release, data, log = release_of(
        df, tmp, sdc={"min_cell_size": k}, strata=["grp"], categorical=["flag"]
    )
    # (a) the independent attacker LP finds nothing, and neither does the review's audit
    assert attack(release, k) == []
    assert audit_release_tables(release, k) == []
    # every listed stratum cell is true and at least k
    for cell in release["strata"]["cells"]:
        sub = data[data["grp"].astype(str) == str(cell["key"][0])]
        for c, m in release["blocks"][cell["id"]]["marginals"].items():
            if m["kind"] == "categorical":
                vc = sub[c].astype(str).value_counts()
                assert all(
                    n >= k and n == vc[str(v)]
                    for v, n in zip(m["table"]["levels"], m["table"]["counts"], strict=True)
                )
    # no correlation of an indicator of an unlisted level is released inside the stratum
    for cell in release["strata"]["cells"]:
        block = release["blocks"][cell["id"]]
        for j, d in enumerate(release["dims"]):
            bm = block["marginals"].get(d["column"])
            if (
                d["kind"] == "indicator"
                and bm is not None
                and bm["kind"] == "categorical"
                and d["level"] not in bm["table"]["levels"]
            ):
                assert all(v is None for i, v in enumerate(block["spearman"][j]) if i != j)
    # the residual block, when there is one, holds at least k rows
    assert release["strata"]["residual_rows"] == 0 or release["strata"]["residual_rows"] >= k
    # (b) primary suppression alone: the same attack recovers cells whenever a released
    # stratum holds a rare cell next to only listed ones
    old = primary_only(release, data, k)
    levels = {str(v) for v in release["blocks"]["all"]["marginals"][col]["table"]["levels"]}
    classes = (
        data[col].astype(str).where(data[col].astype(str).isin(levels), "(bucket)")
    )  # the source-level classes
    truth_small = any(
        0 < n < k
        for cell in release["strata"]["cells"]
        for n in classes[data["grp"].astype(str) == str(cell["key"][0])].value_counts()
    )
    if truth_small:
        assert attack(old, k), "primary suppression alone should be attackable here"
        assert audit_release_tables(old, k)
    # (d) the decisions are logged, in counts only (no level value of a rare category)
    entries = [
        e
        for e in log.entries
        if e["action"] == "secondary_suppression"
        and e.get("column") == col
        and e.get("block") == "linked"
    ]
    tabled = [  # strata whose block releases a table of `col` (else nothing is listed there)
        cell
        for cell in release["strata"]["cells"]
        if (release["blocks"][cell["id"]]["marginals"].get(col) or {}).get("kind") == "categorical"
    ]
    if any(
        0 < n < k
        for cell in tabled
        for n in classes[data["grp"].astype(str) == str(cell["key"][0])].value_counts()
    ):
        assert entries and entries[0]["primary"] >= 1
    text = json.dumps(log.entries)
    assert f"L{n_levels}" not in text and f"L{n_levels + 1}" not in text


def test_primary_only_recovers_the_planted_cell_exactly(tmp_path):
    """The issue's attack: one rare level in one stratum, everything else listed."""
    df = planted(3, 20, 3, 3, "occ", 1, 0)
    release, data, _ = release_of(
        df, tmp_path, sdc={"min_cell_size": 20}, strata=["grp"], categorical=["flag"]
    )
    old = primary_only(release, data, 20)
    found = attack(old, 20)
    assert any(lo == hi and 0 < lo < 20 for _, _, _, lo, hi in found)
    assert attack(release, 20) == [] and audit_release_tables(release, 20) == []


def test_residual_block_below_k_takes_the_smallest_stratum(tmp_path):
    df = planted(11, 20, 3, 2, "occ", 0, 3)  # a 3-row stratum: a residual of 3 rows
    release, _, log = release_of(df, tmp_path, sdc={"min_cell_size": 20}, strata=["grp"])
    assert release["strata"]["residual_rows"] >= 20
    sizes = df["grp"].value_counts()
    assert len(release["strata"]["cells"]) == 2
    assert min(sizes[sizes >= 20]) + 3 == release["strata"]["residual_rows"]
    assert any(
        e["stage"] == "strata" and e["action"] == "secondary_suppression" and e["cells"] == 1
        for e in log.entries
    )
    assert attack(release, 20) == []


def test_source_bucket_below_k_is_widened(tmp_path):
    rng = np.random.default_rng(2)
    v = np.array(
        ["a"] * 300 + ["b"] * 60 + ["c"] * 90 + ["rare1"] * 4 + ["rare2"] * 3, dtype=object
    )
    df = pd.DataFrame(
        {"pid": np.arange(len(v)), "kind": rng.permutation(v), "x": rng.normal(size=len(v))}
    )
    release, _, log = release_of(df, tmp_path, sdc={"min_cell_size": 50})
    t = release["blocks"]["all"]["marginals"]["kind"]["table"]
    assert t["levels"] == ["a", "c"] and t["suppressed"] == 67
    assert audit_release_tables(release, 50) == []
    assert any(
        e["action"] == "secondary_suppression" and e["column"] == "kind" for e in log.entries
    )
    assert "rare1" not in json.dumps(log.entries) and "rare1" not in dumps_json(release)
    m, moved = widen_bucket(
        {"kind": "categorical", "missing": 0, "table": {**t, "suppressed": 0}}, 50
    )
    assert moved == 0 and m["table"]["levels"] == ["a", "c"]


def test_audit_reports_the_bucket_and_never_a_suppressed_value(tmp_path):
    release = {
        "source": "s",
        "strata": {"columns": [], "cells": [], "residual_rows": 0},
        "blocks": {
            "all": {
                "rows": 120,
                "marginals": {
                    "k": {
                        "kind": "categorical",
                        "missing": 0,
                        "table": {
                            "levels": ["a"],
                            "counts": [113],
                            "ordered": False,
                            "suppressed": 7,
                        },
                    }
                },
            }
        },
    }
    f = audit_release_tables(release, 50)
    assert f == [
        {
            "source": "s",
            "column": "k",
            "block": "all",
            "level_index": 1,
            "lo": 7,
            "hi": 7,
            "rule": f[0]["rule"],
        }
    ]


@pytest.mark.parametrize("shards", [1, 3])
def test_scattered_extraction_with_secondary_suppression_is_byte_identical(tmp_path, shards):
    from replisynth.extract.extract import extract_source
    from replisynth.workflow.scatter import gather_release, stratum_blocks

    df = planted(7, 20, 4, 3, "occ", 3, 2)
    path = tmp_path / "p.csv"
    df.to_csv(path, index=False)
    m = load_manifest(
        {
            "name": "t",
            "seed": 7,
            "sources": {
                "people": {
                    "path": str(path),
                    "ids": ["pid"],
                    "strata": ["grp"],
                    "categorical": ["flag"],
                }
            },
            "checkpoints": [],
            "verify": {"tier": 0},
            "sdc": {"min_cell_size": 20},
        }
    )
    data, meta = read_source(path)
    full, full_log = extract_source(data, meta, m, m.source("people"))
    assert any(
        e["action"] == "secondary_suppression" and e.get("secondary", 0) > 0
        for e in full_log.entries
    )
    base, base_log = extract_source(data, meta, m, m.source("people"), strata_blocks=False)
    js = lambda x: json.loads(dumps_json(x))  # noqa: E731
    parts = [js(stratum_blocks(data, m, "people", js(base), s, shards)) for s in range(shards)]
    release, sdc = gather_release(js(base), js(base_log.entries), parts, 20)
    assert dumps_json(release) == dumps_json(full) and dumps_json(sdc) == dumps_json(
        full_log.entries
    )
    assert "counts" not in dumps_json(release).replace(
        '"counts": [', ""
    )  # the true counts stay in the staging files


def test_synthesis_keeps_block_sizes_and_source_totals(tmp_path):
    from replisynth.synthesize.plan import expected_counts, source_plan
    from replisynth.synthesize.synthesize import synthesize_source

    df = planted(5, 20, 3, 3, "occ", 3, 2)
    release, _, _ = release_of(
        df, tmp_path, sdc={"min_cell_size": 20}, strata=["grp"], categorical=["flag"]
    )
    syn = synthesize_source(release, 7, None)
    assert len(syn) == len(df)
    plan = source_plan(release, len(df))
    want = expected_counts(plan, "occ")
    got = syn["occ"].value_counts().to_dict()
    assert {k: v for k, v in want.items() if v} == got
    for cell in release["strata"]["cells"]:
        assert int((syn["grp"] == cell["key"][0]).sum()) == cell["rows"]


def test_audit_of_an_old_bundle_finds_a_pooled_value_inside_a_stratum():
    """Before linked tables a stratum table counted raw values: a 0/1 column whose 7 ones were
    pooled into 0 at source level showed them as the stratum's suppressed count."""

    def block(rows, listed, sup):
        return {
            "rows": rows,
            "marginals": {
                "flag": {
                    "kind": "categorical",
                    "missing": 0,
                    "table": {
                        "levels": [0],
                        "counts": [listed],
                        "ordered": True,
                        "suppressed": sup,
                        "pooled_levels": 0,
                        "suppressed_levels": int(sup > 0),
                    },
                }
            },
        }

    release = {
        "source": "s",
        "strata": {
            "columns": ["g"],
            "cells": [{"id": "s0", "key": [1], "rows": 60}, {"id": "s1", "key": [2], "rows": 40}],
            "residual_rows": 0,
        },
        "blocks": {
            "all": {
                "rows": 100,
                "marginals": {
                    "flag": {
                        "kind": "categorical",
                        "missing": 0,
                        "table": {
                            "levels": [0],
                            "counts": [100],
                            "ordered": True,
                            "suppressed": 0,
                            "pooled_levels": 1,
                            "suppressed_levels": 0,
                        },
                    }
                },
            },
            "s0": block(60, 53, 7),
            "s1": block(40, 40, 0),
        },
    }
    found = audit_release_tables(release, 20)
    assert {(f["block"], f["level_index"], f["lo"], f["hi"]) for f in found} >= {("s0", 1, 7, 7)}
    assert all(f["rule"] != "published totals inconsistent" for f in found)
