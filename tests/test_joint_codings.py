"""A column coded from two others: with the three tables, `n(a=1, b=1) = n(a) + n(b) − n(c)`
for c = a OR b gives the pair's small cell, although the pair's own correlation is withheld
(extract/joint_codings.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_attack_round21 import K, _bundle, _table

from replisynth.core.errors import DataError


def _pair(overlap: int, seed: int = 1, n: int = 1500) -> pd.DataFrame:
    """Two 0/1 columns, 400 and 405 ones, sharing `overlap` rows."""
    a, b = np.zeros(n, int), np.zeros(n, int)
    a[:400] = 1
    b[400 - overlap : 805 - overlap] = 1
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    return pd.DataFrame({"pid": np.arange(n), "a": a[perm], "b": b[perm], "x": rng.normal(size=n)})


def _ones(rel: dict, col: str) -> int:
    t = _table(rel, col)
    return int(t["counts"][t["levels"].index(1)])


@pytest.mark.parametrize("op", ["or", "xor", "label"])
def test_a_coding_of_two_columns_that_fixes_a_small_cell_stops_extraction(
    tmp_path: Path, op: str
) -> None:
    """OR, XOR, and a label of the four combinations (`c = 2a + b`, a function of neither
    alone) each give the 5 rows of a = b = 1 from the tables; extraction stops naming c."""
    df = _pair(5)
    df["c"] = {"or": df.a | df.b, "xor": df.a ^ df.b, "label": 2 * df.a + df.b + 7}[op]
    # the label's level of 5 rows is pooled into its neighbour, so the pooled-codings check
    # stops it first (b's class 0 less the label's level a = b = 0 gives the neighbour's
    # true count); every message names the columns
    message = r"column 'c' is a coding of 'a' and 'b' together|counts the rows at a level of 'c'"
    with pytest.raises(DataError, match=message):
        rel, _, _ = _bundle(tmp_path, df, [])
        # were it released: the attacker's step
        if op == "or":
            assert not 0 < _ones(rel, "a") + _ones(rel, "b") - _ones(rel, "c") < K


@pytest.mark.parametrize("overlap", [0, 60])
def test_an_or_coding_without_a_small_cell_is_released(tmp_path: Path, overlap: int) -> None:
    """Mutually exclusive dummies (`vgh = vegood OR good`: the cell is 0, which protects
    nothing) and an overlap of at least k rows pass; what the tables give is that count."""
    df = _pair(overlap)
    df["c"] = df.a | df.b
    rel, _, _ = _bundle(tmp_path, df, [])
    assert _ones(rel, "a") + _ones(rel, "b") - _ones(rel, "c") == overlap


def test_a_coding_of_one_column_is_not_this_check(tmp_path: Path) -> None:
    """c = 1 − a is a function of a alone: its table repeats a's, nothing of a × b."""
    df = _pair(5)
    df["c"] = 1 - df.a
    _bundle(tmp_path, df, [])


def test_a_column_unrelated_to_the_pair_is_released(tmp_path: Path) -> None:
    """A third 0/1 column drawn apart from a and b is a function of neither pair."""
    df = _pair(5)
    df["c"] = np.random.default_rng(4).integers(0, 2, size=len(df))
    rel, _, _ = _bundle(tmp_path, df, [])
    assert _table(rel, "c")["levels"] == [0, 1]


def test_a_declared_coding_is_named_by_its_key(tmp_path: Path) -> None:
    """Declared under `derive`, the message names the manifest key."""
    df = _pair(5)
    df["c"] = df.a | df.b
    with pytest.raises(DataError, match=r"sources\.people\.derive\.c: is a coding of 'a' and 'b'"):
        _bundle(tmp_path, df, [], derive={"c": "a + b - a * b"})


def test_published_meps_blhisp_is_refused_beside_black_and_hisp(tmp_path: Path) -> None:
    """MEPS (linearmodels' data set): `blhisp` is black OR hisp and 26 respondents are both;
    the three tables gave the 26 although the pair's correlation was withheld. With hisp
    excluded, extraction goes on (what benchmarks/real_data.py does)."""
    from conftest import manifest_for
    from linearmodels.datasets import meps

    from replisynth.config.manifest import load_manifest
    from replisynth.extract.joint_codings import check_joint_codings

    df = meps.load()[["black", "hisp", "blhisp", "female", "age"]]
    df.insert(0, "pid", np.arange(len(df)))
    df.to_csv(tmp_path / "people.csv", index=False)
    for exclude, refused in (([], True), (["hisp"], False)):
        raw = manifest_for(tmp_path / "people.csv", exclude=exclude)
        raw["checkpoints"] = []
        src = load_manifest(raw).source("people")
        if refused:
            with pytest.raises(DataError, match="'blhisp' is a coding of 'black' and 'hisp'"):
                check_joint_codings(df, src, 50)
        else:
            check_joint_codings(df.drop(columns=exclude), src, 50)
