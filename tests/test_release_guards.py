"""Guards between released numbers (extract/release_guards.py): atoms against row sets that
cut their column, weighted shares against weight classes, checkpoint means against pooled
numeric columns. Unit tests on the rules, and attacks on whole bundles that difference two
released row sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import manifest_for
from hypothesis import given, settings
from hypothesis import strategies as st

from replisynth.config.manifest import load_manifest
from replisynth.extract.release_guards import (
    cut_atom_columns,
    isolated_rest_rows,
    labelling,
    pooled_numeric_columns,
    weight_classes_split,
)
from replisynth.workflow.cli import cmd_extract

K = 50


def _column(atoms: dict[float, int], rest: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = [np.full(c, v) for v, c in atoms.items()]
    return rng.permutation(np.concatenate([*parts, rest]))


ATOMS = {0.0: 300, 20.0: 150, 50.0: 100, 90.0: 80}


@pytest.mark.parametrize(("above", "seed"), [(1, 1), (7, 2), (49, 3)])
def test_threshold_set_with_few_rest_rows_beyond_it_withholds_atoms(above: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rest = np.r_[rng.uniform(1, 40, 80), rng.uniform(60, 85, above)]
    x = _column(ATOMS, rest, seed)
    withheld = cut_atom_columns({"x": x}, {}, [x > 55], K, {})
    assert "x" in withheld
    # the same data, cut where both sides hold 0 or >= k rest rows: atoms kept
    assert cut_atom_columns({"x": x}, {}, [x > 0], K, {}) == {}
    assert cut_atom_columns({"x": x}, {}, [x > 90], K, {}) == {}


@pytest.mark.parametrize("seed", [4, 5])
def test_difference_of_two_thresholds_isolating_few_rows_withholds_atoms(seed: int) -> None:
    """Each cut alone leaves >= k rest rows on each side; the interval between holds 3."""
    rng = np.random.default_rng(seed)
    rest = np.r_[rng.uniform(1, 15, 60), rng.uniform(25, 45, 3), rng.uniform(55, 85, 60)]
    x = _column(ATOMS, rest, seed)
    assert cut_atom_columns({"x": x}, {}, [x > 20], K, {}) == {}
    assert cut_atom_columns({"x": x}, {}, [x > 50], K, {}) == {}
    assert "x" in cut_atom_columns({"x": x}, {}, [x > 20, x > 50], K, {})
    # a coding table with both cuts does the same
    coded = np.select([x <= 20, x <= 50], [0, 1], 2)
    assert "x" in cut_atom_columns({"x": x}, {"band": coded}, [], K, {})


def test_row_sets_not_a_function_of_the_column_do_not_cut() -> None:
    rng = np.random.default_rng(6)
    rest = np.r_[rng.uniform(1, 40, 80), rng.uniform(60, 85, 2)]
    x = _column(ATOMS, rest, 6)
    other = rng.integers(0, 2, len(x))  # varies inside every atom
    assert cut_atom_columns({"x": x}, {"g": other}, [(x > 55) & (other == 1)], K, {}) == {}


@given(
    st.lists(st.integers(0, 200), min_size=1, max_size=30),
    st.sets(st.integers(0, 28), max_size=6),
)
@settings(max_examples=200, deadline=None)
def test_isolated_rest_rows_matches_the_segment_sums(rest: list[int], cuts: set[int]) -> None:
    r = np.asarray(rest, dtype="int64")
    cuts = {c for c in cuts if c < len(r) - 1}
    edges = [0, *sorted(c + 1 for c in cuts), len(r)]
    sums = [int(r[a:b].sum()) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    assert isolated_rest_rows(r, cuts, K) == any(0 < s < K for s in sums)


def test_labelling_codes_missing_as_its_own_level() -> None:
    lab = labelling(pd.Series(["a", None, "b", "a"]))
    assert lab[0] == lab[3] and len(set(lab.tolist())) == 3


# ------------------------------------------------------------------ weight classes


@pytest.mark.parametrize(("small", "seed"), [(1, 1), (3, 2), (49, 3)])
def test_two_valued_weight_with_a_small_class_in_a_cell_is_split(small: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.permutation(np.r_[np.ones(800), np.full(200, 4.0)])
    cls = np.zeros(1000, dtype="int64")
    heavy = np.flatnonzero(w == 4.0)
    cls[heavy[:small]] = 1
    cls[np.flatnonzero(w == 1.0)[:60]] = 1
    assert weight_classes_split(cls, w, 2, K)
    cls[heavy[: small + K]] = 1  # the cell's heavy rows reach k
    assert not weight_classes_split(cls, w, 2, K)


@pytest.mark.parametrize("seed", [7, 8])
def test_continuous_weight_is_not_split(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.lognormal(size=2000)
    cls = rng.integers(0, 4, 2000)
    assert not weight_classes_split(cls, w, 4, K)
    # a cell of 60 rows whose weights take two values of 30 rows each (neither a class of
    # its own): its "other" rows take 2 distinct weights, so its total splits them
    sub = np.flatnonzero(cls == 3)[:60]
    w[sub] = np.resize([2.0, 5.0], len(sub))
    cls[sub] = 4
    assert weight_classes_split(cls, w, 5, K)


# ------------------------------------------------------------------ pooled numeric columns


def test_pooled_numeric_columns_are_the_tables_with_rare_values() -> None:
    df = pd.DataFrame(
        {
            "school": np.r_[np.full(300, 12.0), np.full(200, 16.0), [27.0]],
            "age": np.r_[np.full(250, 30), np.full(251, 40)],
            "inc": np.linspace(0, 1, 501),
        }
    )
    src = load_manifest(_raw(df)).source("people")
    assert pooled_numeric_columns(df, src, K) == {"school"}


def _raw(df: pd.DataFrame, tmp: Path | None = None, **source: Any) -> dict[str, Any]:
    path = (tmp or Path("/nonexistent")) / "people.csv"
    if tmp is not None:
        df.to_csv(path, index=False)
    return manifest_for(path, **source)


# ------------------------------------------------------------------ whole bundles


@pytest.mark.parametrize(("col", "seed"), [("earn", 3), ("spend", 9)])
def test_two_subsets_do_not_count_the_rest_rows_between_them(
    tmp_path: Path, col: str, seed: int
) -> None:
    """Attacker: n of the sample above each cut, less the atoms above it, counts the rest rows
    above it; the difference of the two counts is the rest rows between the cuts (2 here)."""
    rng = np.random.default_rng(seed)
    rest = np.r_[rng.uniform(1, 15, 60), [31.5, 38.25], rng.uniform(55, 85, 60)]
    x = _column(ATOMS, np.round(rest, 2), seed)
    df = pd.DataFrame({"pid": np.arange(len(x)), col: x, "wage": 5 + 0.1 * x})
    df["wage"] += rng.normal(size=len(x))
    raw = _raw(df, tmp_path, continuous=[col])
    raw["checkpoints"] = [
        {"tag": t, "source": "people", "model": "ols", "formula": f"wage ~ {col}", "subset": s}
        for t, s in (("a", f"{col} > 20"), ("b", f"{col} > 50"))
    ]
    bundle = cmd_extract(load_manifest(raw), tmp_path / "out")
    rel = json.loads((bundle / "source_people.json").read_text())
    cps = {
        c["tag"]: c for c in json.loads((bundle / "checkpoints.json").read_text())["checkpoints"]
    }
    assert cps["a"]["status"] == "released" and cps["b"]["status"] == "released"
    atoms = rel["blocks"]["all"]["marginals"][col].get("atoms")
    if atoms is None:
        return  # withheld: no exact count of the rows above each cut
    pairs = list(zip(atoms["values"], atoms["counts"], strict=True))
    above = {
        t: cps[t]["n"] - sum(c for v, c in pairs if v > cut) for t, cut in (("a", 20), ("b", 50))
    }
    assert not 0 < above["a"] - above["b"] < K, "the rest rows between the cuts are counted"


@pytest.mark.parametrize(("col", "rare", "seed"), [("visits", 9, 1), ("trips", 14, 5)])
def test_count_outcome_with_a_pooled_value_releases_no_exact_total(
    tmp_path: Path, col: str, rare: int, seed: int
) -> None:
    """A Poisson outcome whose table pools a rare count: its outcome mean times n, less
    Σ level × count, would give the pooled value; the mean and the design means are
    withheld, the coefficients kept."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.r_[np.repeat([0, 1, 2, 3], [400, 300, 200, 99]), [rare]])
    df = pd.DataFrame({"pid": np.arange(len(y)), col: y, "x": rng.normal(size=len(y))})
    raw = _raw(df, tmp_path)
    raw["checkpoints"] = [
        {"tag": "p", "source": "people", "model": "poisson", "formula": f"{col} ~ x"}
    ]
    bundle = cmd_extract(load_manifest(raw), tmp_path / "out")
    rel = json.loads((bundle / "source_people.json").read_text())
    cp = json.loads((bundle / "checkpoints.json").read_text())["checkpoints"][0]
    assert rel["blocks"]["all"]["marginals"][col]["table"]["pooled_levels"] >= 1
    assert cp["status"] == "released" and any(not t.get("suppressed") for t in cp["terms"])
    assert cp.get("outcome_mean") is None and not cp.get("moments")
