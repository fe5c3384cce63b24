"""Atoms of continuous columns (stats/atoms.py): the release holds only values of at least
min_cell_size rows, with counts that leave no small remainder; synthesis reproduces their
counts exactly and byte for byte; tier 1 tests the mixed marginal; the review rechecks it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import manifest_for, run_pipeline
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from replisynth.disclosure.review import check_column_atoms, review_bundle
from replisynth.disclosure.sdc import DisclosureError, check_release
from replisynth.pin.support import support_of
from replisynth.stats.atoms import atom_release, mixed_grid, mixed_sample, split_atoms
from replisynth.stats.marginals import apportion
from replisynth.verify.verify import ks_test

# ------------------------------------------------------------------ the split and the release


@st.composite
def _columns(draw: Any) -> tuple[np.ndarray, int]:
    """A column of tied values (some above, some below the cell size) and continuous noise."""
    k = draw(st.integers(3, 30))
    n_vals = draw(st.integers(0, 12))
    vals = draw(
        st.lists(
            st.floats(-1e6, 1e6, allow_nan=False), min_size=n_vals, max_size=n_vals, unique=True
        )
    )
    counts = draw(st.lists(st.integers(1, 3 * k), min_size=n_vals, max_size=n_vals))
    noise = draw(st.integers(0, 4 * k))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.repeat(vals, counts), rng.normal(1e7, 1.0, size=noise)])
    return rng.permutation(x), k


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_columns())
def test_split_releases_only_values_of_k_rows_and_no_small_remainder(case):
    x, k = case
    split = split_atoms(x, k)
    u, c = np.unique(x, return_counts=True)
    held = dict(zip(u.tolist(), c.tolist(), strict=True))
    # every atom is a value held by at least k rows; every such value is an atom
    assert all(held[v] >= k for v in split.values.tolist())
    assert set(split.values.tolist()) == {v for v, n in held.items() if n >= k}
    # counts are the rows of the value, plus pooled rows only when the rest was small
    assert int(split.counts.sum()) + len(split.rest) == len(x)
    assert len(split.rest) == 0 or len(split.rest) >= k or len(split.values) == 0
    if split.pooled == 0:
        assert [held[v] for v in split.values.tolist()] == split.counts.tolist()
    assert not np.isin(split.rest, split.values).any()


def test_release_counts_rest_and_grid_are_consistent():
    rng = np.random.default_rng(5)
    x = np.concatenate(
        [np.zeros(700), np.full(120, -2.5), np.full(90, 13.0), rng.normal(4, 2, 300)]
    )
    rec = atom_release(x, 50, 1.0)
    assert rec is not None
    assert rec["values"] == [-2.5, 0.0, 13.0] and rec["counts"] == [120, 700, 90]
    assert rec["rest"]["n"] == 300
    g = mixed_grid(rec)
    # the atoms hold their exact share of the mixed grid's steps (at most one step off)
    assert abs(int(np.sum(g == 0.0)) - 100 * 700 / 1210) <= 1.0
    assert g[0] <= -2.5 and np.all(np.diff(g) >= 0)


def test_no_atom_no_record_and_unreleasable_rest_no_atoms():
    rng = np.random.default_rng(1)
    assert atom_release(rng.normal(size=500), 10, 1.0) is None
    # a rest of k..19 values under an adaptive grid releases no grid: no atoms either
    x = np.concatenate([np.zeros(200), rng.normal(size=12)])
    assert atom_release(x, 10, 1.0, "adaptive") is None


def test_small_rest_joins_its_nearest_atom():
    x = np.concatenate([np.full(60, -3.0), np.full(70, 4.0), [1.0, 2.0, 5.0]])
    rec = atom_release(x, 50, 1.0)
    assert rec == {"values": [-3.0, 4.0], "counts": [60, 73], "rest": None}


@pytest.mark.parametrize("n", [1, 7, 100, 1209, 1210, 5000])
def test_mixed_sample_apportions_the_released_counts(n):
    rng = np.random.default_rng(n)
    x = np.concatenate(
        [np.zeros(700), np.full(120, -2.5), np.full(90, 13.0), rng.normal(4, 2, 300)]
    )
    rec = atom_release(x, 50, 1.0)
    assert rec is not None
    s = mixed_sample(rec, n, False)
    want = apportion(np.asarray([*rec["counts"], rec["rest"]["n"]], dtype="float64"), n)
    for v, k in zip(rec["values"], want, strict=False):
        assert int(np.sum(s == v)) >= k
    assert len(s) == n and np.all(np.diff(s) >= 0)
    if n == 1210:  # the released size: every atom's count exactly
        assert [int(np.sum(s == v)) for v in rec["values"]] == rec["counts"]
    # tier 1's statistic of the sample against the mixed marginal is a rounding error
    from replisynth.stats.atoms import mixture_components

    D, _ = ks_test(s, mixture_components(rec), False)
    assert D <= 1.0 / n + 0.011


# ------------------------------------------------------------------ through the pipeline


def _frame(n: int, seed: int, names: dict[str, str]) -> pd.DataFrame:
    """Columns with a zero mass, atoms at a negative minimum and at the maximum, an all-atom
    column with a few rare values, a column without atoms, and an outcome."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    zero = np.where(rng.random(n) < 0.6, 0.0, rng.lognormal(1.0, 0.7, n))
    edges = rng.normal(size=n)
    edges[: n // 5] = -7.25  # an atom at the minimum
    edges[n // 5 : n // 3] = 9.5  # an atom at the maximum
    coded = rng.permutation(np.round(rng.uniform(-5, 30, 25), 3)[np.arange(n) % 25])
    coded[:3] = 123.456  # three rows of a rare value, off the atoms
    return pd.DataFrame(
        {
            "pid": np.arange(n),
            names["zero"]: zero,
            names["edges"]: edges,
            names["coded"]: coded,
            names["plain"]: rng.lognormal(size=n),
            "y": x + zero * 0.3 + rng.normal(size=n),
        }
    )


def _release(out: Path) -> dict[str, Any]:
    return json.loads(next((out / "t" / "bundle").glob("source_*.json")).read_text())


@pytest.mark.parametrize(
    ("n", "seed", "names"),
    [
        (1500, 3, {"zero": "earn", "edges": "score", "coded": "disea", "plain": "inc"}),
        (4100, 11, {"zero": "fmde", "edges": "Bal_2", "coded": "lncoins", "plain": "z_9"}),
    ],
)
def test_pipeline_draws_atoms_exactly_and_reproducibly(tmp_path, n, seed, names):
    df = _frame(n, seed, names)
    left = names["coded"] + "_left"  # keeps the 3 rows of a rare value: no atoms
    df[left] = df[names["coded"]]
    df.loc[:2, names["coded"]] = df[names["coded"]].to_numpy()[3:6]  # all on atoms
    df.to_csv(tmp_path / "d.csv", index=False)
    raw = manifest_for(tmp_path / "d.csv")
    raw["verify"] = {"tier": 1}
    tiers = run_pipeline(raw, tmp_path / "a")
    assert tiers["passed"] and tiers["tier_met"] >= 1
    rel = _release(tmp_path / "a")
    marg = rel["blocks"]["all"]["marginals"]
    assert "atoms" not in marg[names["plain"]] and "atoms" not in marg["y"]
    assert marg[names["coded"]]["atoms"]["rest"] is None  # every row on an atom
    assert "atoms" not in marg[left]  # 1..k-1 rows off the atoms: no atoms, never pooled
    assert 123.456 not in marg[names["coded"]]["atoms"]["values"]
    edges = marg[names["edges"]]["atoms"]
    assert edges["values"][0] == -7.25 and edges["values"][-1] == 9.5
    syn = pd.read_parquet(tmp_path / "a" / "t" / "synthetic" / "people.parquet")
    for col in (names["zero"], names["edges"], names["coded"]):
        a = marg[col]["atoms"]
        got = [int(np.sum(syn[col].to_numpy() == v)) for v in a["values"]]
        assert got == a["counts"], col  # same rows as the original: the exact counts
    assert set(np.unique(syn[names["coded"]])) <= set(marg[names["coded"]]["atoms"]["values"])
    # same bundle, same seed: byte-identical synthetic data
    run_pipeline(raw, tmp_path / "b")
    for f in ("people.parquet", "people.csv"):
        a_bytes = (tmp_path / "a" / "t" / "synthetic" / f).read_bytes()
        assert a_bytes == (tmp_path / "b" / "t" / "synthetic" / f).read_bytes()
    assert review_bundle(tmp_path / "a" / "t" / "bundle")["verdict"].startswith("clean")
    sup = support_of(rel, names["zero"])
    assert sup is not None and 0.0 in sup.mass


def test_strata_keep_atoms_at_source_level_only(tmp_path):
    df = _frame(3000, 4, {"zero": "earn", "edges": "e", "coded": "c", "plain": "p"})
    df["region"] = np.repeat([1, 2], 1500)
    df.to_csv(tmp_path / "d.csv", index=False)
    raw = manifest_for(tmp_path / "d.csv", strata=["region"], categorical=["region"])
    run_pipeline(raw, tmp_path)
    rel = _release(tmp_path)
    assert "atoms" in rel["blocks"]["all"]["marginals"]["earn"]
    for bid, block in rel["blocks"].items():
        if bid != "all":
            assert not any(m.get("atoms") for m in block["marginals"].values())


# ------------------------------------------------------------------ the gates and the review


def _atom_release() -> dict[str, Any]:
    rng = np.random.default_rng(2)
    x = np.concatenate([np.zeros(400), np.full(80, 2.5), rng.normal(5, 1, 200)])
    m = {"kind": "continuous", "missing": 0, "n": len(x)}
    rec = atom_release(x, 20, 1.0)
    assert rec is not None
    m.update(grid=mixed_grid(rec).tolist(), atoms=rec)
    return {
        "source": "s",
        "blocks": {"all": {"rows": len(x), "marginals": {"v": m}, "spearman": None}},
        "strata": {"cells": []},
        "columns": [{"name": "v", "missing": 0}],
    }


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda a, m: a["counts"].__setitem__(1, 19), "below min_cell_size"),
        (lambda a, m: a["rest"].__setitem__("n", 7), "below min_cell_size"),
        (lambda a, m: m["grid"].__setitem__(50, m["grid"][50] + 0.01), "grid is not the one"),
        (lambda a, m: a["counts"].__setitem__(0, 401), "do not add up"),
        (lambda a, m: a["rest"].__setitem__("window_sizes", [4, 6]), "fewer than 5 values"),
    ],
)
def test_gate_and_review_refuse_a_tampered_atom_release(tamper, message):
    rel = _atom_release()
    check_release(copy.deepcopy(rel), 20)  # the untouched release passes
    m = rel["blocks"]["all"]["marginals"]["v"]
    tamper(m["atoms"], m)
    with pytest.raises(DisclosureError, match=message):
        check_release(rel, 20)
    assert [f["check"] for f in check_column_atoms(rel, 20)] == ["atoms"]


def test_gate_refuses_atoms_inside_a_stratum():
    rel = _atom_release()
    rel["blocks"]["s0"] = copy.deepcopy(rel["blocks"]["all"])
    with pytest.raises(DisclosureError, match="inside a stratum"):
        check_release(rel, 20)


# ------------------------------------------------------------------ attacks on the release


def _texts(root: Path) -> str:
    return "\n".join(p.read_text(errors="ignore") for p in sorted(root.glob("*.json")))


@settings(
    max_examples=5,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    k=st.integers(10, 40),
    planted=st.floats(1e3, 1e5).map(lambda v: round(v, 2) + 0.017),
    extreme=st.floats(1e6, 1e7).map(lambda v: round(v, 2) + 0.031),
    seed=st.integers(0, 10_000),
)
def test_attacker_recovers_no_small_value_or_count(tmp_path_factory, k, planted, extreme, seed):
    """Beside atoms, a value held by k−1 rows (no atom: neither it nor its count leaves), one
    held by 4 rows and three extreme rows (never in the bundle: a grid window averages at
    least 5 values, the extremes are coded), in two strata and with a checkpoint: no sum of
    released counts differences to 1..k−1 rows of the column."""
    tmp = tmp_path_factory.mktemp("atoms")
    rng = np.random.default_rng(seed)
    n = 30 * k
    spend = np.where(rng.random(n) < 0.5, 0.0, np.round(rng.lognormal(3, 1, n), 2))
    spend[: 2 * k] = 25.0
    spend[2 * k : 3 * k - 1] = 777.5  # k − 1 rows: below the cell size
    spend[3 * k : 3 * k + 4] = planted
    spend[3 * k + 4 : 3 * k + 7] = extreme
    df = pd.DataFrame(
        {
            "pid": np.arange(n),
            "spend": rng.permutation(spend),
            "x": rng.normal(size=n),
            "region": rng.choice([1, 2], n),
        }
    )
    df["y"] = df["x"] + 0.01 * df["spend"] + rng.normal(size=n)
    df.to_csv(tmp / "d.csv", index=False)
    raw = manifest_for(tmp / "d.csv", strata=["region"], categorical=["region"])
    raw["sdc"] = {"min_cell_size": k}
    raw["checkpoints"] = [
        {"tag": "c", "source": "people", "model": "ols", "formula": "y ~ x + spend"}
    ]
    from replisynth.config.manifest import load_manifest
    from replisynth.workflow.cli import cmd_extract

    bundle = cmd_extract(load_manifest(raw), tmp / "out")
    text = _texts(bundle)
    for v in (planted, extreme):
        for s in (repr(v), f"{v:.3f}"):
            assert s not in text
    rel = json.loads((bundle / "source_people.json").read_text())
    m = rel["blocks"]["all"]["marginals"]["spend"]
    atoms = m["atoms"]
    assert 777.5 not in atoms["values"] and 25.0 in atoms["values"]
    assert k - 1 not in atoms["counts"]
    rest_n = (atoms["rest"] or {}).get("n", 0)
    counts = [*atoms["counts"], rest_n]
    # every released count, and every difference of the released totals, is 0 or >= k
    assert all(c >= k for c in counts if c) and m["n"] - sum(counts) == 0
    sub_sums = {
        sum(c for c, b in zip(counts, bits, strict=True) if b) for bits in _subsets(len(counts))
    }
    assert not any(0 < m["n"] - s < k for s in sub_sums)
    # the strata release their own grids only: no atom count splits by stratum
    assert all(
        not mm.get("atoms")
        for bid, b in rel["blocks"].items()
        if bid != "all"
        for mm in b["marginals"].values()
    )
    assert review_bundle(bundle)["verdict"].startswith("clean")


def _subsets(m: int) -> list[tuple[bool, ...]]:
    """Every subset of m cells (m is small here), as flags."""
    return [tuple(bool(i >> j & 1) for j in range(m)) for i in range(2**m)] if m <= 12 else []


@pytest.mark.parametrize(("off_atoms", "atoms_released"), [(3, False), (0, True), (120, True)])
def test_subset_on_an_atom_column_cannot_difference_off_atom_rows(
    tmp_path, off_atoms, atoms_released
):
    """`spend > 0` less the released atoms above 0 would count the rows above 0 off the atoms:
    when that is 1..k−1 rows the column's atoms are withheld and the checkpoint kept; otherwise
    both are released, and the ledger holds the atom row sets (without counts)."""
    k, n = 20, 1000
    rng = np.random.default_rng(off_atoms)
    spend = np.resize(np.asarray([0.0, 0.0, 0.0, 10.0, 25.0, -4.5]), n)
    spend[:off_atoms] = rng.uniform(30.0, 90.0, off_atoms)  # positive, each value once
    spend[-60:] = rng.uniform(-9.0, -5.0, 60)  # a rest below 0, so the rest is >= k
    df = pd.DataFrame(
        {"pid": np.arange(n), "spend": rng.permutation(spend), "x": rng.normal(size=n)}
    )
    df["y"] = df["x"] + rng.normal(size=n)
    df.to_csv(tmp_path / "d.csv", index=False)
    raw = manifest_for(tmp_path / "d.csv")
    raw["sdc"] = {"min_cell_size": k}
    raw["checkpoints"] = [
        {
            "tag": "pos",
            "source": "people",
            "model": "ols",
            "formula": "y ~ x",
            "subset": "spend > 0",
        }
    ]
    from replisynth.config.manifest import load_manifest
    from replisynth.workflow.cli import cmd_extract

    bundle = cmd_extract(load_manifest(raw), tmp_path / "out")
    cp = json.loads((bundle / "checkpoints.json").read_text())["checkpoints"][0]
    assert cp["status"] == "released"
    release = json.loads((bundle / "source_people.json").read_text())
    atoms = release["blocks"]["all"]["marginals"]["spend"].get("atoms")
    assert (atoms is not None) is atoms_released
    led = json.loads((bundle / "sdc_log.json").read_text())["ledger"]
    atom_sets = [e for e in led["entries"] if e["kind"] == "atoms"]
    assert bool(atom_sets) is atoms_released
    assert all("rows" not in e for e in atom_sets)  # the ledger adds no count


@pytest.mark.parametrize("profile", ["iab", "fsrdc"])
def test_profiles_and_sensitive_magnitudes_release_gated_atoms(tmp_path, profile):
    """Under other profiles and for a `sensitive` magnitude the rest's grid follows the
    profile's method (pseudo-percentiles with the dominance rule) and the gates still pass."""
    df = _frame(2500, 8, {"zero": "earn", "edges": "e", "coded": "c", "plain": "p"})
    df.to_csv(tmp_path / "d.csv", index=False)
    raw = manifest_for(tmp_path / "d.csv", sensitive=["earn"])
    raw["sdc"] = {"profile": profile}
    raw["verify"] = {"tier": 1}
    tiers = run_pipeline(raw, tmp_path)
    assert tiers["passed"]
    m = _release(tmp_path)["blocks"]["all"]["marginals"]["earn"]
    assert m["atoms"]["values"][0] == 0.0 and "pseudo" in m["atoms"]["rest"]["method"]
    assert review_bundle(tmp_path / "t" / "bundle")["verdict"].startswith("clean")


@pytest.mark.parametrize(("count", "dominance", "atom"), [(4, 0.5, True), (3, 0.5, False)])
def test_dominance_rule_on_a_magnitude_atom(count, dominance, atom):
    """Two of `count` equal non-zero values hold 2/count of the cell's total: an atom only
    when that is at most the dominance share; zeros have no total and always qualify."""
    x = np.concatenate([np.full(count, 250.0), np.zeros(count), np.arange(40.0) + 0.5])
    split = split_atoms(x, 3, dominance)
    assert (250.0 in split.values.tolist()) is atom and 0.0 in split.values.tolist()
