"""Empty cells of two-way tables of categorical columns: flagged at extract only when every
non-empty cell holds >= min_cell_size rows at source level and in every released block (an
LP attacker over the strata tables recovers a small cell from flags released on the source
level alone, nothing from the released ones); kept empty by synthesis with every block margin
exact and the same output for the same seed; checked by tier 0, the review and the bundle
reader; proposed as strata by `replisynth init`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import release_of
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from replisynth.core.errors import BundleError
from replisynth.disclosure.bundle import check_release as check_bundle_release
from replisynth.disclosure.cell_audit import check_empty_cells
from replisynth.extract.empty_cells import detect_empty_cells
from replisynth.io.draft import draft_manifest
from replisynth.io.files import FileMeta
from replisynth.io.schema import ColumnSpec
from replisynth.stats.cells import flagged_rows
from replisynth.synthesize.cells import repair_empty_cells
from replisynth.synthesize.synthesize import synthesize_source
from replisynth.verify.verify import empty_cell_problems

K = 50  # the standard profile's min_cell_size (release_of)


def plans(n: int, seed: int, names: tuple[str, str] = ("coins", "ded")) -> pd.DataFrame:
    """Six insurance plans as (coinsurance code, deductible flag): 6 of the 10 cells, plus a
    continuous column tied to the plan and two dummies that are never both 1."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(6, size=n, p=[0.25, 0.15, 0.15, 0.15, 0.15, 0.15])
    hisp = (rng.random(n) < 0.2).astype(int)
    return pd.DataFrame(
        {
            "pid": np.arange(n),
            names[0]: np.array([0, 0, 25, 50, 95, 95])[plan],
            names[1]: np.array([0, 1, 0, 0, 0, 1])[plan],
            "spend": rng.normal(size=n) + 0.4 * plan,
            "hisp": hisp,
            "black": np.where(hisp == 1, 0, (rng.random(n) < 0.25).astype(int)),
        }
    )


def _cells(release: dict[str, Any], a: str, b: str) -> set[tuple[Any, Any]]:
    for f in release.get("empty_cells") or []:
        if f["columns"] == [a, b]:
            return {(x, y) for x, y in f["cells"]}
    return set()


@pytest.mark.parametrize(
    ("n", "seed", "names"), [(3000, 1, ("coins", "ded")), (5200, 9, ("lc", "idp"))]
)
def test_empty_cells_flagged_exactly(
    tmp_path: Path, n: int, seed: int, names: tuple[str, str]
) -> None:
    df = plans(n, seed, names)
    release, data, log = release_of(df, tmp_path)
    a, b = names
    want = {(v, w) for v in (0, 25, 50, 95) for w in (0, 1)} - set(zip(df[a], df[b], strict=True))
    assert _cells(release, a, b) == want and len(want) == 2
    assert _cells(release, "hisp", "black") == {(1, 1)}
    assert not any("spend" in f["columns"] for f in release["empty_cells"])
    assert any(e["stage"] == "empty_cells" for e in log.entries)
    text = " ".join(e["reason"] for e in log.entries if e["stage"] == "empty_cells")
    assert str(int((df[a] == 95).sum())) not in text  # names and cell numbers, never counts


def test_sensitive_columns_are_never_flagged(tmp_path: Path) -> None:
    release, _, _ = release_of(plans(3000, 6), tmp_path, sensitive=["black"])
    assert _cells(release, "coins", "ded")
    assert not any("black" in f["columns"] for f in release["empty_cells"])


def _specs(df: pd.DataFrame) -> list[ColumnSpec]:
    return [
        ColumnSpec(c, "numeric", "int64", "categorical", True, False, 0, len(df))
        for c in df.columns
    ]


def _marginals(df: pd.DataFrame) -> dict[str, Any]:
    out = {}
    for c in df.columns:
        vc = df[c].value_counts().sort_index()
        table = {
            "levels": [int(v) for v in vc.index],
            "counts": [int(x) for x in vc],
            "ordered": False,
        }
        out[c] = {"kind": "categorical", "table": table}
    return out


@settings(max_examples=25, deadline=None)
@given(small=st.integers(1, K - 1), big=st.integers(K, 4 * K), seed=st.integers(0, 10**6))
def test_a_small_non_empty_cell_withholds_the_pair(small: int, big: int, seed: int) -> None:
    """Cells (a, b): (0,0) big, (0,1) big, (1,0) `small`, (1,1) empty: the zero with the
    margins would give the small cell, so no flag; with (1,0) >= K the flag is released."""
    rng = np.random.default_rng(seed)
    rows = [(0, 0)] * big + [(0, 1)] * big + [(1, 0)] * (small + K)
    df = pd.DataFrame(rows, columns=["a", "b"]).sample(frac=1.0, random_state=seed)
    flags = detect_empty_cells(df, _specs(df), _marginals(df), K, np.zeros(len(df), dtype=int))
    assert flags == [{"columns": ["a", "b"], "cells": [[1, 1]]}]
    rows = [(0, 0)] * big + [(0, 1)] * big + [(1, 0)] * small
    df = pd.DataFrame(rows, columns=["a", "b"])
    blocks = rng.integers(0, 1, size=len(df))
    assert detect_empty_cells(df, _specs(df), _marginals(df), K, blocks) == []


def stratified(seed: int) -> pd.DataFrame:
    """Region r (the stratum); a in {1, 2}, b in {1, 2, 3}; (1, 2) and (1, 3) never occur.
    In region 1 the cell (2, 1) holds 20 rows, every margin of region 1 at least 200."""
    rng = np.random.default_rng(seed)
    cells = {
        0: {(1, 1): 400, (2, 1): 300, (2, 2): 300, (2, 3): 300},
        1: {(1, 1): 300, (2, 1): 20, (2, 2): 200, (2, 3): 200},
    }
    rows = [(r, a, b) for r, cs in cells.items() for (a, b), m in cs.items() for _ in range(m)]
    df = pd.DataFrame(rows, columns=["r", "a", "b"])
    df["x"] = rng.normal(size=len(df)) + df["a"]
    df["pid"] = np.arange(len(df))
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def attack(release: dict[str, Any], flags: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """An attacker's LP: in every released block, the flags as zeros and the block's released
    tables of a and b as margins; the cells pinned to one value between 1 and K - 1."""
    out = []
    for f in flags:
        a, b = f["columns"]
        for bid, block in release["blocks"].items():
            ma, mb = block["marginals"].get(a), block["marginals"].get(b)
            if not ma or not mb or ma["kind"] != "categorical" or mb["kind"] != "categorical":
                continue
            la, lb = ma["table"]["levels"], mb["table"]["levels"]
            r, c = len(la), len(lb)
            zero = {(la.index(x), lb.index(y)) for x, y in f["cells"] if x in la and y in lb}
            A = np.vstack([np.kron(np.eye(r), np.ones(c)), np.kron(np.ones(r), np.eye(c))])
            rhs = np.r_[ma["table"]["counts"], mb["table"]["counts"]]
            bounds = [(0, 0) if (i, j) in zero else (0, None) for i in range(r) for j in range(c)]
            for k in range(r * c):
                e = np.zeros(r * c)
                e[k] = 1
                lo = linprog(e, A_eq=A, b_eq=rhs, bounds=bounds, method="highs")
                hi = linprog(-e, A_eq=A, b_eq=rhs, bounds=bounds, method="highs")
                if lo.status == 0 and hi.status == 0 and abs(lo.fun + hi.fun) < 1e-6:
                    if 0.5 < lo.fun < K - 0.5:
                        out.append((bid, float(lo.fun)))
    return out


@pytest.mark.parametrize("seed", [3, 17])
def test_strata_tables_with_flags_recover_no_small_cell(tmp_path: Path, seed: int) -> None:
    df = stratified(seed)
    release, data, _ = release_of(df, tmp_path, strata=["r"])
    # flags judged on the whole source only: the strata tables then give region 1's 20 rows
    naive = detect_empty_cells(
        data,
        [ColumnSpec.from_dict(c) for c in release["columns"]],
        release["blocks"]["all"]["marginals"],
        K,
        np.zeros(len(data), dtype=int),
        {"r"},
    )
    assert _cells({"empty_cells": naive}, "a", "b") == {(1, 2), (1, 3)}
    assert [round(v) for _, v in attack(release, naive)] == [20]
    # the released rule checks every released block: the pair is withheld, nothing recovered
    assert _cells(release, "a", "b") == set()
    assert attack(release, release.get("empty_cells") or []) == []
    # the review recomputes the bounds from the bundle alone and finds the planted flags
    planted = {**release, "empty_cells": naive}
    found, notes = check_empty_cells(planted, K)  # type: ignore[arg-type]
    assert found and all("1..49" in f["finding"] for f in found)
    assert not any(str(20) in f["finding"] for f in found)
    assert check_empty_cells(release, K)[0] == []  # type: ignore[arg-type]


def test_a_larger_stratum_cell_releases_the_flags(tmp_path: Path) -> None:
    df = stratified(5)
    grow = df[(df["r"] == 1) & (df["a"] == 2) & (df["b"] == 1)]
    df = pd.concat([df, pd.concat([grow] * 3)], ignore_index=True)  # 20 -> 80 rows
    df["pid"] = np.arange(len(df))
    release, _, _ = release_of(df, tmp_path, strata=["r"])
    assert _cells(release, "a", "b") == {(1, 2), (1, 3)}
    assert attack(release, release["empty_cells"]) == []
    assert check_empty_cells(release, K)[0] == []  # type: ignore[arg-type]


def _block_counts(frame: pd.DataFrame, col: str) -> dict[Any, int]:
    return {k: int(v) for k, v in frame[col].value_counts().items()}


@pytest.mark.parametrize("seed", [4, 31])
def test_synthesis_keeps_empty_cells_and_every_margin(tmp_path: Path, seed: int) -> None:
    df = plans(4000, seed)
    release, data, _ = release_of(df, tmp_path)
    bare = {k: v for k, v in release.items() if k != "empty_cells"}
    drawn, kept = synthesize_source(bare, seed), synthesize_source(release, seed)
    flag = next(f for f in release["empty_cells"] if f["columns"] == ["coins", "ded"])
    assert flagged_rows(drawn, release, flag).sum() > 100  # the copula fills them
    for f in release["empty_cells"]:
        assert flagged_rows(kept, release, f).sum() == 0
    for c in ("coins", "ded", "hisp", "black", "spend"):
        assert _block_counts(kept, c) == _block_counts(drawn, c)
    assert kept.equals(synthesize_source(release, seed))  # deterministic from the seed
    rho = lambda f: f.drop(columns="pid").corr(method="spearman").to_numpy()  # noqa: E731
    truth = rho(data)
    assert np.abs(rho(kept) - truth).max() < 0.03  # the vetoed refinement restores them
    assert empty_cell_problems(kept, release) == []
    problems = empty_cell_problems(drawn, release)
    assert any(p.startswith("coins x ded:") for p in problems)
    exempt = empty_cell_problems(drawn, release, {"ded"})  # a pinned column is exempt
    assert not any(p.startswith("coins x ded:") for p in exempt)


def test_repair_inside_each_group_only() -> None:
    """Two groups: rows swap only with rows of their own group, so each group's margins stay."""
    rng = np.random.default_rng(2)
    n = 600
    cols = {
        "u": rng.integers(0, 3, size=n).astype(float),
        "v": rng.integers(0, 2, size=n).astype(float),
        "z": rng.normal(size=n),
    }
    group = np.repeat([0, 1], n // 2)
    release = {
        "blocks": {
            "all": {
                "marginals": {
                    "u": {"kind": "categorical", "table": {"levels": [0, 1, 2]}},
                    "v": {"kind": "categorical", "table": {"levels": [0, 1]}},
                }
            }
        },
        "empty_cells": [{"columns": ["u", "v"], "cells": [[2, 1]]}],
    }
    out, left = repair_empty_cells(cols, group, release, np.random.default_rng(5))
    assert left == 0 and not np.any((out["u"] == 2) & (out["v"] == 1))
    for g in (0, 1):
        for c in ("u", "v", "z"):
            assert sorted(out[c][group == g]) == sorted(cols[c][group == g])
    same, _ = repair_empty_cells(
        cols, group, {"blocks": release["blocks"]}, np.random.default_rng(5)
    )
    assert same is cols  # no flags: nothing touched (old bundles synthesize as before)


def test_bundle_reader_refuses_a_flag_on_no_level(tmp_path: Path) -> None:
    release, _, _ = release_of(plans(3000, 2), tmp_path)
    bad = {**release, "empty_cells": [{"columns": ["coins", "ded"], "cells": [[7, 1]]}]}
    with pytest.raises(
        BundleError, match=r"empty_cells\[0\]\.cells\[0\]: not a pair of released levels"
    ):
        check_bundle_release(bad, tmp_path / "source_people.json")  # type: ignore[arg-type]
    bad = {**release, "empty_cells": [{"columns": ["coins", "spend"], "cells": [[0, 1]]}]}
    with pytest.raises(BundleError, match="'spend' is not a released categorical column"):
        check_bundle_release(bad, tmp_path / "source_people.json")  # type: ignore[arg-type]


def test_init_proposes_strata_for_a_pair_with_empty_cells(tmp_path: Path) -> None:
    """Seven plans on 5 x 2 codes (too many cells for the draft's own strata rule): the pair
    is named with the strata that would keep its three empty combinations empty."""
    rng = np.random.default_rng(8)
    plan = rng.integers(0, 7, size=7000)
    df = pd.DataFrame(
        {
            "plan_c": np.array([0, 0, 10, 25, 50, 95, 95])[plan],
            "plan_d": np.array([0, 1, 0, 0, 0, 0, 1])[plan],
            "spend": rng.normal(size=len(plan)),
        }
    )
    text = draft_manifest(df, FileMeta(), str(tmp_path / "plans.csv"), seed=1)
    lines = text.splitlines()
    at = next(i for i, ln in enumerate(lines) if "combinations occur" in ln)
    assert lines[at].lstrip().startswith('# "plan_c" x "plan_d": 7 of their 10 combinations occur')
    assert (
        lines[at + 1]
        .rstrip()
        .endswith(
            'strata: ["plan_c", "plan_d"] would also synthesize the other columns per combination.'
        )
    )
    coded = df.assign(plan_c=df["plan_c"] / 10 + 0.05)  # not whole numbers: recode first
    text = draft_manifest(coded, FileMeta(), str(tmp_path / "plans.csv"), seed=1)
    assert "(recode to whole numbers first)." in text
    dummies = pd.DataFrame(
        {"a": (plan == 0).astype(int), "b": (plan == 1).astype(int), "z": df["spend"]}
    )
    text = draft_manifest(dummies, FileMeta(), str(tmp_path / "plans.csv"), seed=1)
    assert "combinations occur" not in text  # a one-hot pair: the flags keep it, no strata
    mixed = df.assign(plan_d=rng.integers(0, 2, size=len(df)))
    text = draft_manifest(mixed, FileMeta(), str(tmp_path / "plans.csv"), seed=1)
    assert "combinations occur" not in text


@pytest.mark.parametrize(("entities", "periods", "seed"), [(900, 4, 3), (700, 5, 11)])
def test_panel_invariant_dummies_swapped_between_whole_entities(
    tmp_path: Path, entities: int, periods: int, seed: int
) -> None:
    """Region dummies fixed per firm: the hierarchical draw puts firms in two regions; the
    repair swaps them between whole firms of one size, so they stay time-invariant and their
    row counts stay as drawn."""
    rng = np.random.default_rng(seed)
    reg = rng.integers(0, 3, size=entities)
    u = np.repeat(rng.normal(size=entities), periods)
    firm = np.repeat(np.arange(entities), periods)
    df = pd.DataFrame(
        {
            "pid": np.arange(entities * periods),
            "firm": firm,
            "year": np.tile(2000 + np.arange(periods), entities),
            **{f"r{k}": np.repeat((reg == k).astype(int), periods) for k in range(3)},
            "x": u + rng.normal(size=len(firm)) + reg[firm],
        }
    )
    release, _, _ = release_of(df, tmp_path, panel={"entity": "firm", "time": "year"})
    assert len(release["empty_cells"]) == 3
    bare = {k: v for k, v in release.items() if k != "empty_cells"}
    drawn, kept = synthesize_source(bare, seed), synthesize_source(release, seed)
    assert sum(flagged_rows(drawn, release, f).sum() for f in release["empty_cells"]) > 0
    assert sum(flagged_rows(kept, release, f).sum() for f in release["empty_cells"]) == 0
    for c in ("r0", "r1", "r2"):
        assert kept.groupby("firm")[c].nunique().max() == 1
        assert int(kept[c].sum()) == int(drawn[c].sum())


def test_rows_left_in_an_empty_cell_are_a_utility_finding_not_a_tier_failure(
    tmp_path: Path,
) -> None:
    """A synthetic file with a row in a released empty cell (margins kept) still passes tier 0;
    verification names the pair and the row count among the utility findings."""
    from conftest import manifest_for

    from replisynth.config.manifest import load_manifest
    from replisynth.disclosure.bundle import load_bundle
    from replisynth.verify.verify import verify
    from replisynth.workflow.cli import cmd_extract

    df = plans(3000, 4, names=("coins", "ded"))
    df.to_csv(tmp_path / "d.csv", index=False)
    bundle = load_bundle(cmd_extract(load_manifest(manifest_for(tmp_path / "d.csv")), tmp_path))
    release = bundle.releases["people"]
    assert any(f["columns"] == ["coins", "ded"] for f in release.get("empty_cells") or [])
    syn = synthesize_source(dict(release), 4)
    i = int(np.flatnonzero((syn["coins"] == 25) & (syn["ded"] == 0))[0])
    j = int(np.flatnonzero((syn["coins"] == 0) & (syn["ded"] == 1))[0])
    syn.loc[[i, j], "ded"] = syn.loc[[j, i], "ded"].to_numpy()  # (25, 1) is an empty cell
    out = verify(bundle, {"people": syn})
    assert out["sources"]["people"]["schema"]["passed"]
    assert "people: coins x ded: 1 rows in the" in " ".join(out["utility"]["findings"])
