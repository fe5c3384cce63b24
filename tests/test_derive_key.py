"""Derived columns (`sources.<name>.derive`): identities hold in every synthetic row after the
whole pipeline (CLI `run`), also where the derived column is a checkpoint outcome or regressor;
bad keys give one line naming the key; exact relations are detected at extract and advised by
name, never with a threshold's value. (tests/test_codings.py is about categorical codings.)"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_people, manifest_for
from hypothesis import given, settings
from hypothesis import strategies as st

from replisynth.config.formula_grammar import derive_breaks, parse_derive
from replisynth.config.manifest import Source, load_manifest
from replisynth.core.errors import DataError, ManifestError
from replisynth.extract.relations import MAX_COLUMNS, check_declared, detect_relations
from replisynth.io.files import read_json
from replisynth.pin.derived import recompute_derived, solve_input
from replisynth.workflow.cli import main


def _with_derived(n: int, seed: int, names: dict[str, str], cut: int) -> pd.DataFrame:
    """make_people plus a wage and its log, a year of birth, and a 0/1 low-weight flag below
    `cut`; `names` renames the derived columns (varied across cases)."""
    df = make_people(n, seed=seed)
    rng = np.random.default_rng(seed + 100)
    df["wage"] = np.round(np.exp(1.5 + 0.3 * df["x1"] + rng.normal(scale=0.4, size=n)), 2)
    df[names["log"]] = np.log(df["wage"])
    df["year"] = rng.integers(1990, 1996, size=n)
    df["birthyear"] = df["year"] - df["age"]
    df["bwght"] = rng.integers(50, 160, size=n)
    df[names["flag"]] = (df["bwght"] < cut).astype(int)
    df["linc"] = np.log(df["income"])  # missing where income is (10%)
    return df


CASES = [
    (1200, 3, {"log": "lwage", "flag": "lowbw"}, 88),
    (900, 11, {"log": "log_pay", "flag": "small"}, 101),
]


@pytest.mark.parametrize(("n", "seed", "names", "cut"), CASES)
def test_identities_hold_in_every_row_after_run(
    tmp_path: Path, n: int, seed: int, names: dict[str, str], cut: int
) -> None:
    """A derived outcome (log wage, one input: solved), derived regressors (age, the flag):
    after `replisynth run` each identity holds in 100% of rows and the checkpoints still
    meet tier 4."""
    lw, flag = names["log"], names["flag"]
    df = _with_derived(n, seed, names, cut)
    df.to_csv(tmp_path / "people.csv", index=False)
    raw = manifest_for(
        tmp_path / "people.csv",
        derive={
            lw: "log(wage)",
            "age": "year - birthyear",
            flag: f"bwght < {cut}",
            "linc": "log(income)",
        },
    )
    raw["checkpoints"] = [
        {
            "tag": "w",
            "source": "people",
            "model": "ols",
            "formula": f"{lw} ~ x1 + age + {flag}",
            "vcov": "HC1",
        },
        {
            "tag": "y",
            "source": "people",
            "model": "ols",
            "formula": f"y ~ x1 + {flag} + age",
            "vcov": "nonrobust",
        },
    ]
    raw["verify"] = {"tier": 4}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(raw))
    res = tmp_path / "res"
    assert main(["run", str(tmp_path / "m.yaml"), "--results", str(res), "--quiet"]) == 0
    syn = pd.read_parquet(res / "t" / "synthetic" / "people.parquet")
    assert np.allclose(syn[lw], np.log(syn["wage"]), rtol=1e-12, atol=0)
    assert (syn["age"] == syn["year"] - syn["birthyear"]).all()
    assert (syn[flag] == (syn["bwght"] < cut).astype(int)).all()
    assert syn["income"].isna().any() and (syn["linc"].isna() == syn["income"].isna()).all()
    assert np.allclose(syn["linc"].dropna(), np.log(syn["income"].dropna()), rtol=1e-12)
    tiers = read_json(res / "t" / "verify" / "tiers.json")
    derived = tiers["sources"]["people"]["schema"]["derived"]
    assert derived == {lw: 0, "age": 0, flag: 0, "linc": 0}
    assert tiers["tier_met"] == 4
    for cp in tiers["checkpoints"].values():
        assert cp["max_dbeta_se"] < 1e-6


def test_tier0_fails_when_an_identity_is_broken(tmp_path: Path) -> None:
    from replisynth.disclosure.bundle import load_bundle
    from replisynth.verify.verify import verify

    df = _with_derived(600, 5, {"log": "lw", "flag": "fl"}, 90)
    df.to_csv(tmp_path / "people.csv", index=False)
    raw = manifest_for(tmp_path / "people.csv", derive={"lw": "log(wage)"})
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(raw))
    res = tmp_path / "res"
    assert main(["run", str(tmp_path / "m.yaml"), "--results", str(res), "--quiet"]) == 0
    syn = pd.read_parquet(res / "t" / "synthetic" / "people.parquet")
    syn.loc[syn.index[:7], "lw"] += 0.5
    t0 = verify(load_bundle(res / "t" / "bundle"), {"people": syn})["sources"]["people"]["schema"]
    assert not t0["passed"] and t0["derived"] == {"lw": 7}


BAD_KEYS = [
    ({"a": "log(a)"}, "sources.people.derive.a: 'a' is computed from itself (a cycle)"),
    ({"a": "x1 + b", "b": "a * 2"}, "are computed from each other (a cycle)"),
    ({"a": "log(x1)", "c": "a + 1"}, "sources.people.derive.c: input 'a' is itself derived"),
    ({"a": "__import__('os')"}, "sources.people.derive.a: "),
    ({"a": "x1.values"}, "sources.people.derive.a: attribute access"),
    ({"pid": "x1 + 1"}, "sources.people.derive.pid: 'pid' is in ids/exclude"),
    ({"a": "pid * 2"}, "sources.people.derive.a: input 'pid' is in sources.people.ids"),
    ({"a": "7"}, "sources.people.derive.a: expression '7' names no column"),
]


@pytest.mark.parametrize(("derive", "message"), BAD_KEYS)
def test_bad_keys_one_line(derive: dict[str, str], message: str) -> None:
    with pytest.raises(ManifestError) as err:
        load_manifest(manifest_for("people.csv", derive=derive))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_column_names_the_key(tmp_path: Path) -> None:
    make_people(200).to_csv(tmp_path / "people.csv", index=False)
    raw = manifest_for(tmp_path / "people.csv", derive={"x9": "log(income)", "y": "x1 + nope"})
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(raw))
    assert main(["extract", str(tmp_path / "m.yaml"), "--results", str(tmp_path / "r")]) != 0
    with pytest.raises(ManifestError, match=r"sources\.people\.derive\.x9: column 'x9' is not"):
        from replisynth.config.manifest import check_columns

        check_columns(load_manifest(raw), "people", list(make_people(5).columns))


def test_declared_identity_must_hold_on_the_data() -> None:
    df = make_people(300, seed=2)
    df["lx"] = np.log(df["income"])
    row = df.index[df["income"].notna()][7]
    df.loc[row, "lx"] += 1.0
    src = Source(name="people", path="people.csv", derive=(("lx", "log(income)"),))
    with pytest.raises(DataError, match=r"^sources\.people\.derive\.lx: 'lx' is not") as err:
        check_declared(df, src)
    assert "\n" not in str(err.value)
    df.loc[row, "lx"] -= 1.0
    check_declared(df, src)  # holds, missing income giving a missing lx


def _relations_data(seed: int, n: int, cut: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "earn": np.round(rng.lognormal(9, 0.7, n), 2),
            "score": rng.normal(50, 10, n).round(3),
            "start": rng.integers(1950, 1980, n),
            "spell": rng.integers(0, 30, n),
            "noise": rng.normal(size=n),
        }
    )
    df["log_earn"] = np.log(df["earn"])
    df["score_sq"] = df["score"] ** 2
    df["passed"] = (df["score"] >= cut).astype(int)
    df["end"] = df["start"] + df["spell"]
    df.loc[rng.random(n) < 0.1, ["score", "score_sq", "passed"]] = np.nan
    return df.sample(frac=1.0, axis=1, random_state=seed)


@pytest.mark.parametrize(("seed", "n", "cut"), [(0, 400, 47.123), (4, 3000, 61.5)])
def test_detection_finds_log_square_threshold_sum(seed: int, n: int, cut: float) -> None:
    df = _relations_data(seed, n, cut)
    found = {(r.column, r.kind, tuple(sorted(r.inputs))) for r in detect_relations(df, _src())}
    assert ("log_earn", "log", ("earn",)) in found
    assert ("score_sq", "square", ("score",)) in found
    assert ("passed", "threshold", ("score",)) in found
    signs = {r.column: r.sign for r in detect_relations(df, _src())}
    assert signs["passed"] == ">"
    assert {frozenset((c, *i)) for c, k, i in found if k in ("sum", "difference")} == {
        frozenset(("end", "start", "spell"))
    }
    assert not any("noise" in (c, *i) for c, _, i in found)


def _src(**keys: Any) -> Source:
    return Source(name="people", path="people.csv", **keys)


def test_detection_quiet_on_unrelated_columns() -> None:
    rng = np.random.default_rng(9)
    df = pd.DataFrame({f"v{i}": rng.normal(size=500) for i in range(12)})
    df["d"] = rng.integers(0, 2, 500)
    assert detect_relations(df, _src()) == []


def test_detection_skips_declared_and_caps_columns() -> None:
    df = _relations_data(1, 500, 50.0)
    found = detect_relations(df, _src(derive=(("log_earn", "log(earn)"),), exclude=("score_sq",)))
    assert {r.column for r in found} & {"log_earn", "score_sq"} == set()
    wide = pd.concat(
        [pd.DataFrame(np.random.default_rng(2).normal(size=(50, MAX_COLUMNS + 5))), df.head(50)],
        axis=1,
    )
    wide.columns = [str(c) for c in wide.columns]
    assert detect_relations(wide, _src()) == []  # the relations sit beyond the first 100


def test_threshold_value_never_leaves(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The cut-off is a data value: it is in no log line and no bundle file (the user sees
    the column names and how to declare them)."""
    df = make_people(700, seed=8)
    cut = 0.7318
    df = df[(df["x2"] - cut).abs() > 0.01].reset_index(drop=True)  # the cut sits in a gap
    df["high"] = (df["x2"] > cut).astype(int)
    df["lincome"] = np.log(df["income"])
    df.to_csv(tmp_path / "people.csv", index=False)
    raw = manifest_for(tmp_path / "people.csv")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(raw))
    res = tmp_path / "res"
    with caplog.at_level(logging.INFO, logger="replisynth"):
        assert main(["extract", str(tmp_path / "m.yaml"), "--results", str(res)]) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert any("column high looks like a threshold of x2: declare it" in m for m in lines)
    assert any("lincome looks like log(income)" in m for m in lines)
    # the data values either side of the cut, as the detector saw them
    below, above = df["x2"][df["x2"] < cut].max(), df["x2"][df["x2"] > cut].min()
    sides = (below, above, (below + above) / 2)
    near = {f"{v:.{d}g}" for v in sides for d in (4, 6, 8)}
    for line in lines:
        assert "0.7318" not in line and not any(s in line for s in near), line
    for path in (res / "t" / "bundle").rglob("*.json"):
        assert "0.7318" not in path.read_text(), path


def test_recompute_solves_one_input_pinned_outcome() -> None:
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"w": rng.lognormal(size=50), "k": rng.integers(0, 9, size=50)})
    df["lw"] = np.log(df["w"]) * 2 + 1
    df["kk"] = df["k"] * 3
    df["lw"] += rng.normal(scale=0.1, size=50)  # the pin moved lw
    derive = (("lw", "log(w) * 2 + 1"), ("kk", "k * 3"))
    out, notes = recompute_derived(df, derive, frozenset({"lw"}))
    assert np.allclose(out["lw"], df["lw"])  # pinned values kept
    assert np.allclose(out["lw"], np.log(out["w"]) * 2 + 1)
    assert [n.action for n in notes] == ["solved", "recomputed"]
    assert out["kk"].dtype == df["kk"].dtype
    two = parse_derive("a - b")
    assert solve_input(two, np.ones(3)) is None
    for text in ("exp(a) / 4", "-(a - 3)", "sqrt(a) + 1", "log10(a * 5)"):
        p = parse_derive(text)
        a = np.array([1.5, 2.0, 4.0])
        v = pd.DataFrame({"a": a})
        got = solve_input(p, pd.Series(_eval(v, p)).to_numpy())
        assert got is not None and np.allclose(got, a), text
    assert derive_breaks(out, "kk", parse_derive("k * 3"), "k") == 0


def _eval(df: pd.DataFrame, p: Any) -> np.ndarray:
    from replisynth.config.formula_grammar import derive_values

    return derive_values(df, p, "x")


def test_manifest_roundtrip_keeps_derive() -> None:
    raw = manifest_for("people.csv", derive={"b": "x1 >= 0", "c": "maximum(age - 60, 0)"})
    m = load_manifest(copy.deepcopy(raw))
    assert m.source("people").derive == (("b", "x1 >= 0"), ("c", "maximum(age - 60, 0)"))


STEPS = [
    "{} + 1.5",
    "{} - 2",
    "3 - {}",
    "{} * 0.5",
    "{} / 4",
    "-{}",
    "log({})",
    "exp({})",
    "sqrt({})",
    "log1p({})",
    "expm1({})",
    "log10({})",
    "2 * {}",
]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(STEPS), min_size=1, max_size=4), st.integers(0, 10_000))
def test_solve_inverts_every_invertible_chain(steps: list[str], seed: int) -> None:
    """For any chain of invertible steps f, solving f(a) for a gives a back (where f is
    finite), so a pinned derived outcome can hand its values to its input."""
    text = "a"
    for step in steps:
        text = step.format(f"({text})")
    p = parse_derive(text)
    a = np.random.default_rng(seed).uniform(0.2, 2.0, size=20)
    v = _eval(pd.DataFrame({"a": a}), p)
    ok = np.isfinite(v) & (np.abs(v) < 1e6)
    got = solve_input(p, v)
    assert got is not None
    back = np.isfinite(got) & ok
    assert np.allclose(got[back], a[back], rtol=1e-6)


def test_identity_wins_over_integer_storage() -> None:
    """An integer-stored derived column whose expression is not integer becomes float (the
    identity holds); an integer-valued one stays integer; a solved integer input is rounded
    and the pinned column recomputed from it."""
    rng = np.random.default_rng(12)
    df = pd.DataFrame({"lw": rng.normal(6, 0.5, 80), "k": rng.integers(1, 9, 80)})
    df["w"] = np.round(np.exp(df["lw"])).astype("int64")
    df["k2"] = (df["k"] * 2).astype("int32")
    out, _ = recompute_derived(df, (("w", "exp(lw)"), ("k2", "k * 2")), frozenset())
    assert (
        out["w"].dtype == np.float64 and derive_breaks(out, "w", parse_derive("exp(lw)"), "w") == 0
    )
    assert out["k2"].dtype == np.int32
    pinned = df.assign(lw2=np.log(df["w"]) + rng.normal(scale=0.01, size=80))
    out, notes = recompute_derived(pinned, (("lw2", "log(w)"),), frozenset({"lw2"}))
    assert notes[0].action == "solved" and out["w"].dtype == np.int64
    assert np.allclose(out["lw2"], np.log(out["w"]), rtol=1e-12)
    assert np.abs(out["lw2"] - pinned["lw2"]).max() <= 0.5 / out["w"].min() + 1e-12


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.text("abcdefghxyz_", min_size=2, max_size=6), min_size=4, max_size=4, unique=True),
    st.floats(-3, 3),
    st.integers(0, 10_000),
)
def test_advice_carries_no_number(names: list[str], cut: float, seed: int) -> None:
    """With digit-free column names, no advice line holds a digit: no cut-off, constant or
    other value can be in it."""
    rng = np.random.default_rng(seed)
    x, y, s, t = names
    df = pd.DataFrame({x: rng.normal(size=300), s: rng.integers(1, 50, 300)})
    df[y] = (df[x] > cut).astype(int)
    df[t] = df[s] + df[x] + 7.25
    df[f"{t}L"] = np.log(df[s])
    found = detect_relations(df, _src())
    kinds = {r.kind for r in found}
    assert {"log", "sum"} <= kinds or {"log", "difference"} <= kinds
    assert ("threshold" in kinds) == (0 < df[y].sum() < len(df))
    for rel in found:
        line = rel.advice("people")
        assert not any(ch.isdigit() for ch in line), line
