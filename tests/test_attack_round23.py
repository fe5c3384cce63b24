"""Round 23: an adversary's attacks on the coding gates of round 22-23 (pooled levels read
through codings that also hold listed levels, pairs with missing values or a third class,
codings inside strata, the withheld column's source table, checkpoint subsets inside a
stratum). Each test fails when the attack recovers a protected count from the bundle; the
closed ones also assert the gate that stops them. Three remain open (strict xfail),
documented in docs/disclosure.md ("Residual risks")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_attack_round21 import K, _bundle, _counts_with_outlier, _table
from test_attack_round22 import _level_count, _pooled_frame
from test_stratum_codings import _north, _regions

from replisynth.core.errors import DataError

POOLED = r"count(s)? the rows at a level of 'visits'"


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"pid": np.arange(n), "x": rng.normal(size=n)})
    df["visits"] = _counts_with_outlier([0, 1, 2, 3], [0.35, 0.3, 0.2, 0.15], n, 13.0, seed)
    return df


# ------------------------------------------- a coding that also holds whole listed levels


@pytest.mark.parametrize("other", [2, 0])
def test_union_with_a_listed_level_does_not_count_pooled_rows(tmp_path: Path, other: int) -> None:
    """`mid = visits in {other, 3}` (the pooled 13 left out): mid's count less visits'
    listed count at `other` is the true 3s. Refused: mid's class holds whole listed levels
    besides the 3s, whose counts cancel."""
    df = _pooled_frame(1500, 13.0, 1)
    df["mid"] = df["visits"].isin([other, 3]).astype(int)
    with pytest.raises(DataError, match=rf"column 'mid': {POOLED}"):
        rel, _, _ = _bundle(tmp_path, df, [])
        t, m = _table(rel, "visits"), _table(rel, "mid")
        pooled = _level_count(t, 3) - (_level_count(m, 1) - _level_count(t, other))
        assert not 0 < pooled < K, f"{pooled} pooled row(s) follow"


# ------------------------------------------- pairs with missing values or a third class


@pytest.mark.parametrize("which", ["both", "w_only"])
def test_masked_coding_with_missing_values_does_not_count_pooled_rows(
    tmp_path: Path, which: str
) -> None:
    """`u = (visits == 3) XOR w`, w missing on 100 rows (none a 3), u too or not: integer
    counts from phi leave one pooled count. Refused: missing rows are a third class."""
    n = 1500
    df = _pooled_frame(n, 13.0, 1)
    rng = np.random.default_rng(8)
    df["w"] = rng.integers(0, 2, size=n).astype("float64")
    df["u"] = ((df["visits"] == 3).astype(int) ^ df["w"].astype(int)).astype("float64")
    gone = rng.choice(np.flatnonzero((df["visits"] != 3).to_numpy()), 100, replace=False)
    df.loc[gone, "w"] = np.nan
    if which == "both":
        df.loc[gone, "u"] = np.nan
    with pytest.raises(DataError, match=rf"columns 'u' and 'w' together {POOLED}"):
        rel, _, _ = _bundle(tmp_path, df, [])
        cols = [d["column"] for d in rel["dims"]]
        rho = rel["blocks"]["all"]["spearman"][cols.index("u")][cols.index("w")]
        m, nw = n - 100, _level_count(_table(rel, "w"), 1)
        tot = _level_count(_table(rel, "u"), 1)
        found = set()
        for nu in [tot] if which == "both" else range(tot - 100, tot + 1):
            n11 = (rho * np.sqrt(nu * (m - nu) * nw * (m - nw)) + nu * nw) / m
            if abs(n11 - round(n11)) <= 1e-6:
                found.add(_level_count(_table(rel, "visits"), 3) - round(nu + nw - 2 * n11))
        assert not (len(found) == 1 and 0 < next(iter(found)) < K), f"pooled: {found}"


def test_strata_column_as_mask_does_not_count_pooled_rows(tmp_path: Path) -> None:
    """u = (visits == 3) in strata a and b; in c, 0 on the 3s and 1 + z elsewhere: u's
    stratum tables count the 3s. Refused: the pair (strata column, u) has three classes
    each, and their joint classes hold the 3s with whole levels of visits."""
    n = 3000
    df = _frame(n, 1)
    rng = np.random.default_rng(4)
    df["g"] = rng.choice(["a", "b", "c"], size=n)
    three = (df["visits"] == 3).to_numpy()
    z = rng.integers(0, 2, size=n)
    df["u"] = np.where(df["g"] == "c", np.where(three, 0, 1 + z), three.astype(int))
    with pytest.raises(DataError, match=POOLED):
        rel, _, _ = _bundle(tmp_path, df, [], strata=["g"])
        threes = sum(
            _level_count(b["marginals"]["u"]["table"], 0 if b["key"] == ["c"] else 1)
            for b in rel["blocks"].values()
            if b.get("key") is not None
        )
        pooled = _level_count(_table(rel, "visits"), 3) - threes
        assert not 0 < pooled < K, f"{pooled} pooled row(s) follow"


def test_stratum_phi_of_a_flipping_mask_does_not_count_pooled_rows(tmp_path: Path) -> None:
    """`u = (visits == 3) XOR w` in north, `(visits != 3) XOR w` in south: over the source
    every joint class mixes, inside each stratum phi gives the 2x2 table. Refused: the
    coding check also reads each stratum's rows."""
    n = 3000
    df = _frame(n, 2)
    rng = np.random.default_rng(5)
    df["region"] = rng.choice(["north", "south"], size=n)
    df["w"] = rng.integers(0, 2, size=n)
    three = (df["visits"] == 3).astype(int)
    df["u"] = np.where(df["region"] == "north", three ^ df["w"], (1 - three) ^ df["w"])
    with pytest.raises(DataError, match=rf"columns 'u' and 'w' together {POOLED}"):
        _bundle(tmp_path, df, [], strata=["region"])


# ------------------------------------------- codings inside strata


@pytest.mark.parametrize("split", [True, False])
def test_stratum_coding_with_a_listed_level_does_not_split_a_bucket(
    tmp_path: Path, split: bool
) -> None:
    """`code = (visits in {1, 2}) + 10 g`: north's code levels less visits' listed 1 give
    north's 2s, and the unlisted total less them the 20. code's stratum tables are withheld."""
    df = _regions("none")
    g = np.random.default_rng(11).integers(0, 3, size=len(df))
    df["code"] = df["visits"].isin([1, 2]).astype(int) + (10 * g if split else 0)
    rel, _, _ = _bundle(tmp_path, df, [], strata=["region"])
    north = _north(rel)
    v = north["marginals"]["visits"]["table"]
    assert v["suppressed"] > 20 and 1.0 in v["levels"] and 2.0 not in v["levels"]
    assert north["marginals"]["code"]["kind"] == "suppressed"
    c = north["marginals"]["code"].get("table")
    if c is not None:  # the attack, had the table been listed
        ones_twos = sum(_level_count(c, lv) for lv in (1, 11, 21) if lv in c["levels"])
        hidden = v["suppressed"] - (ones_twos - _level_count(v, 1))
        assert not 0 < hidden < K, f"the bucket's small cell of {hidden} rows follows"


@pytest.mark.parametrize("split", [True, False])
def test_withheld_codings_source_table_does_not_split_a_bucket(tmp_path: Path, split: bool) -> None:
    """`code = (visits == 2 & region == 'north') + 10 female`: withholding its stratum tables
    would leave its source-level table, whose levels 1 and 11 are the north 2s. Refused."""
    df = _regions("none")
    df["code"] = ((df["visits"] == 2) & (df["region"] == "north")).astype(int) + (
        10 * df["female"] if split else 0
    )
    with pytest.raises(DataError, match=r"column 'code' counts, inside a stratum"):
        rel, _, _ = _bundle(tmp_path, df, [], strata=["region"])
        v = _north(rel)["marginals"]["visits"]["table"]
        c = rel["blocks"]["all"]["marginals"]["code"]["table"]
        hidden = v["suppressed"] - sum(_level_count(c, lv) for lv in (1, 11) if lv in c["levels"])
        assert not 0 < hidden < K, f"the bucket's small cell of {hidden} rows follows"


# ------------------------------------------- checkpoint subsets inside a stratum

SUBSETS = {
    "code": ["region == 'north' & code == 1", "region == 'north' & code == 11"],
    "visits": ["region == 'north' & visits == 2"],
    "visits_not": ["region == 'north' & visits != 2"],
}


def _stratum_subsets(tmp_path: Path, how: str) -> None:
    cps_in = [{"tag": f"c{i}", "formula": "x ~ 1", "subset": s} for i, s in enumerate(SUBSETS[how])]
    rel, cps, _ = _bundle(tmp_path, _regions("split"), cps_in, strata=["region"])
    north = _north(rel)
    v = north["marginals"]["visits"]["table"]
    assert v["suppressed"] > 20 and 2.0 not in v["levels"]
    if how != "code":  # the subset-levels rule, read inside the stratum, refuses them
        assert all(cps[c["tag"]]["status"] == "rejected" for c in cps_in)
    if any(cps[c["tag"]]["status"] != "released" for c in cps_in):
        return
    n = sum(cps[c["tag"]]["n"] for c in cps_in)
    twos = north["rows"] - n if how == "visits_not" else n
    hidden = v["suppressed"] - twos
    assert not 0 < hidden < K, f"the bucket's small cell of {hidden} rows follows"


@pytest.mark.parametrize("how", ["visits", "visits_not"])
def test_subsets_inside_a_stratum_do_not_split_its_bucket(tmp_path: Path, how: str) -> None:
    """`x ~ 1` on `region == 'north' & visits == 2` (or `!= 2`): its n is north's 2s (or
    the rest), and the unlisted total less them the 20."""
    _stratum_subsets(tmp_path, how)


@pytest.mark.xfail(
    reason="open: two subsets on a coding's levels inside a stratum add up to an unlisted class",
    strict=True,
)
def test_subsets_on_a_coding_inside_a_stratum_do_not_split_its_bucket(tmp_path: Path) -> None:
    """`region == 'north' & code == 1` and `... & code == 11`: each n alone is no table's
    count, their sum is north's 2s (code's stratum tables are withheld)."""
    _stratum_subsets(tmp_path, "code")


@pytest.mark.xfail(
    reason="open: a pair's rank correlation inside a stratum gives an unlisted class's count",
    strict=True,
)
def test_stratum_phi_of_a_masked_coding_does_not_split_a_bucket(tmp_path: Path) -> None:
    """`u = (visits == 2) XOR w`: in north, phi with u's and w's tables gives their 2x2
    table, whose off-diagonal is north's 2s (secondary-suppressed), the unlisted total less
    them the 20. The stratum rule reads one column at a time."""
    df = _regions("none")
    df["w"] = np.random.default_rng(12).integers(0, 2, size=len(df))
    df["u"] = ((df["visits"] == 2).astype(int) ^ df["w"]).astype(int)
    rel, _, _ = _bundle(tmp_path, df, [], strata=["region"])
    cols = [d["column"] for d in rel["dims"]]
    north = _north(rel)
    v = north["marginals"]["visits"]["table"]
    tu, tw = north["marginals"]["u"].get("table"), north["marginals"]["w"].get("table")
    rho = north["spearman"][cols.index("u")][cols.index("w")]
    if tu is None or tw is None or rho is None:
        return
    m = north["rows"]
    nu, nw = _level_count(tu, 1), _level_count(tw, 1)
    n11 = (rho * np.sqrt(nu * (m - nu) * nw * (m - nw)) + nu * nw) / m
    hidden = v["suppressed"] - round(nu + nw - 2 * n11)
    assert not 0 < hidden < K, f"the bucket's small cell of {hidden} rows follows"


@pytest.mark.xfail(
    reason="open: subsets on a three-class mask add up to a pooled level's true rows",
    strict=True,
)
def test_three_level_mask_and_subsets_do_not_count_pooled_rows(tmp_path: Path) -> None:
    """u = (visits == 3) on w == 0, its complement on w == 2, (visits == 3) + 2z on w == 1;
    three `x ~ 1` subsets on (u, w) cells sum to the true 3s. No subset reads visits."""
    n = 3000
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"pid": np.arange(n), "x": rng.normal(size=n)})
    df["visits"] = _counts_with_outlier([0, 1, 2, 3], [0.35, 0.3, 0.2, 0.15], n, 13.0, 1)
    df["w"] = rng.integers(0, 3, size=n)
    z = rng.integers(0, 2, size=n)
    three = (df["visits"] == 3).astype(int).to_numpy()
    w = df["w"].to_numpy()
    df["u"] = np.select([w == 0, w == 2], [three, 1 - three], three + 2 * z)
    subsets = ["u == 1 & w == 0", "u == 0 & w == 2", "w == 1 & (u == 1 | u == 3)"]
    cps_in = [{"tag": f"s{i}", "formula": "x ~ 1", "subset": s} for i, s in enumerate(subsets)]
    try:
        rel, cps, _ = _bundle(tmp_path, df, cps_in)
    except DataError:
        return
    if any(cps[c["tag"]]["status"] != "released" for c in cps_in):
        return
    pooled = _level_count(_table(rel, "visits"), 3) - sum(cps[c["tag"]]["n"] for c in cps_in)
    assert not 0 < pooled < K, f"{pooled} pooled row(s) follow"


def test_an_excluded_pooled_column_is_not_read(tmp_path: Path) -> None:
    """An excluded column has no table, so nothing of it is protected by pooling: its coding
    `mid` is released (it was a KeyError in the strata-aware check)."""
    df = _pooled_frame(1500, 13.0, 1)
    df["mid"] = (df["visits"] == 3).astype(int)
    rel, _, _ = _bundle(tmp_path, df, [], exclude=["visits"])
    assert _table(rel, "mid")["levels"] == [0, 1]


@pytest.mark.parametrize(
    "subset", ["region != 'north' | visits == 2", "visits == 2 | region == 'south'"]
)
def test_an_or_subset_over_every_stratum_does_not_split_a_bucket(
    tmp_path: Path, subset: str
) -> None:
    """The subset reaches every stratum, south whole: n less south's rows is north's 2s
    (left unlisted beside the 20 threes). Blocks taken whole count with their rows."""
    cps_in = [{"tag": "s", "formula": "x ~ 1", "subset": subset}]
    rel, cps, _ = _bundle(tmp_path, _regions("none"), cps_in, strata=["region"])
    v = _north(rel)["marginals"]["visits"]["table"]
    assert v["suppressed"] > 20 and 2.0 not in v["levels"]
    assert cps["s"]["status"] == "rejected"


def test_a_subset_on_a_level_over_every_stratum_is_released(tmp_path: Path) -> None:
    """`visits == 2` over the whole source: its n is the source table's count of 2; no
    block is taken whole and nothing hidden follows."""
    cps_in = [{"tag": "s", "formula": "x ~ 1", "subset": "visits == 2"}]
    _, cps, _ = _bundle(tmp_path, _regions("none"), cps_in, strata=["region"])
    assert cps["s"]["status"] == "released"
