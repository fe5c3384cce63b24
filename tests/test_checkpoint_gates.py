"""Checkpoint disclosure gates against the attacks of a bundle reader: differencing two
samples, small groups hidden in non-0/1 columns, dominated outcomes, heavy weights and
cluster ids in formulas. Each test plants the risk, runs the secure-side capture and asserts
that the released numbers recover nothing; each says why it fails on the code before the
gates (the old path released the numbers the attack uses)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replisynth.config.manifest import load_manifest
from replisynth.core.errors import ManifestError
from replisynth.extract.checkpoints import (
    capture_checkpoint,
    capture_checkpoints,
    indicator_minority,
    nonmodal_rows,
    weight_gate,
)
from replisynth.stats.design import build_design

K = 50  # the standard profile's min_cell_size


def _manifest(path: str, checkpoints: list[dict[str, Any]], **source: Any) -> Any:
    src = {"path": path, "ids": ["pid"], **source}
    return load_manifest(
        {
            "name": "gates",
            "seed": 3,
            "sources": {"p": src},
            "checkpoints": checkpoints,
            "verify": {"tier": 0},
        }
    )


def _cp(tag: str, formula: str, **kw: Any) -> dict[str, Any]:
    return {"tag": tag, "source": "p", "model": kw.pop("model", "ols"), "formula": formula, **kw}


def _people(n: int, seed: int, x: str = "x", y: str = "y") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    xv = rng.normal(size=n)
    return pd.DataFrame(
        {
            "pid": np.arange(n),
            x: xv,
            y: 1.0 + 0.5 * xv + rng.normal(size=n),
            "age": rng.integers(20, 80, size=n),
            "grp": rng.choice(list("abc"), size=n),
            "w": rng.uniform(0.8, 1.2, size=n),
            "hosp": rng.integers(1, 30, size=n),
        }
    )


def _outcome_total(rel: dict[str, Any]) -> float:
    """What a bundle reader computes: n · ȳ, with ȳ = intercept + Σ slope × released mean."""
    beta = {t["term"]: t["beta"] for t in rel["terms"] if not t.get("suppressed")}
    means = dict(zip(rel["moments"]["terms"], rel["moments"]["mean"], strict=True))
    return rel["n"] * (
        beta["Intercept"] + sum(b * means[t] for t, b in beta.items() if t != "Intercept")
    )


def _released(rels: list[dict[str, Any]]) -> list[str]:
    return [r["tag"] for r in rels if r["status"] == "released"]


# --- 1. differencing -------------------------------------------------------------------------


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    missing=st.integers(1, K - 1),
    seed=st.integers(0, 10_000),
    name=st.sampled_from(["z", "tenure", "bmi"]),
)
def test_nested_samples_one_missing_value_apart_are_not_both_released(
    missing: int, seed: int, name: str
) -> None:
    """A nested specification whose added regressor is missing on `missing` < k rows: both
    samples released give those rows' outcome total as a difference of n·ȳ. The old path
    (capture_checkpoint alone, no ledger) releases both and the difference recovers the
    outcome of the missing row(s) exactly (asserted below as the positive control)."""
    df = _people(400, seed)
    rng = np.random.default_rng(seed + 1)
    df[name] = rng.normal(size=len(df))
    gone = rng.choice(len(df), size=missing, replace=False)
    df.loc[gone, name] = np.nan
    m = _manifest("p.csv", [_cp("short", "y ~ x"), _cp("long", f"y ~ x + {name}")])
    # old path: both released, and the attack works
    old = [capture_checkpoint(df, cp, m, i)[0] for i, cp in enumerate(m.checkpoints)]
    assert _released(old) == ["short", "long"]
    truth = float(df.loc[gone, "y"].sum())
    assert abs((_outcome_total(old[0]) - _outcome_total(old[1])) - truth) < 1e-6 * max(
        1.0, abs(truth)
    )
    # with the ledger: the later one is refused, the reason names the earlier one and no count
    rels, log = capture_checkpoints({"p": df}, m)
    assert _released(rels) == ["short"]
    assert rels[1]["reason"].startswith("differencing") and "checkpoint/short" in rels[1]["reason"]
    assert "n" not in rels[1] and "terms" not in rels[1] and "moments" not in rels[1]
    assert str(missing) not in rels[1]["reason"].replace(f"min_cell_size={K}", "")
    assert any(
        e["action"] == "differencing" and "1 checkpoint(s) refused" in e["reason"]
        for e in log.entries
    )
    assert [e["checkpoint"] for e in log.entries if e["action"] == "rejected"] == ["long"]
    # no released entry describes the long sample
    assert not any(e.get("checkpoint") == "long" and e["action"] != "rejected" for e in log.entries)


def test_nested_samples_k_rows_apart_are_both_released() -> None:
    """Control: k or more rows apart, both are released (the rule is not a blanket refusal)."""
    df = _people(400, 5)
    df["z"] = np.random.default_rng(6).normal(size=len(df))
    df.loc[: K - 1, "z"] = np.nan
    rels, _ = capture_checkpoints(
        {"p": df}, _manifest("p.csv", [_cp("short", "y ~ x"), _cp("long", "y ~ x + z")])
    )
    assert _released(rels) == ["short", "long"]


@pytest.mark.parametrize("excluded", [1, 2, 3])
def test_subset_that_drops_a_few_rows_is_refused_against_the_source_total(excluded: int) -> None:
    """`subset: income < 5e6` excluding 1-3 rows: against the source-level release (exact
    tables and missing counts of all rows) its sample is all rows but those. The old path
    released it (n ≥ k passes the sample-size gate)."""
    df = _people(300, excluded)
    df["income"] = np.random.default_rng(excluded).lognormal(10, 0.5, size=len(df))
    df.loc[df.index[-excluded:], "income"] = 6e6 + np.arange(excluded)
    m = _manifest("p.csv", [_cp("rich_out", "y ~ x + income", subset="income < 5e6")])
    assert capture_checkpoint(df, m.checkpoints[0], m, 0)[0]["status"] == "released"  # old path
    rels, _ = capture_checkpoints({"p": df}, m)
    assert rels[0]["status"] == "rejected" and "p/all" in rels[0]["reason"]


def test_weighted_sample_against_the_unweighted_source_differences_only_a_count() -> None:
    """A weighted checkpoint's means cannot be subtracted from the source's unweighted
    tables; what remains is its n. All rows but those missing a regressor (their count is
    in the released schema): released. All rows but three with a large income (a count not
    released anywhere): refused. An unweighted checkpoint on the same rows as the first is
    refused (its exact means minus the source's tables describe the missing rows); the old
    path released all three."""
    df = _people(400, 17)
    df["z"] = np.random.default_rng(4).normal(size=len(df))
    df.loc[[5, 9], "z"] = np.nan
    df["income"] = np.random.default_rng(5).lognormal(10, 0.5, size=len(df))
    df.loc[[1, 2, 3], "income"] = 7e6
    m = _manifest(
        "p.csv",
        [
            _cp("w_missing", "y ~ x + z", weights="w"),
            _cp("w_subset", "y ~ x", weights="w", subset="income < 5e6"),
            _cp("u_missing", "y ~ age + z"),
        ],
    )
    assert _released(
        [capture_checkpoint(df, cp, m, i)[0] for i, cp in enumerate(m.checkpoints)]
    ) == ["w_missing", "w_subset", "u_missing"]
    rels, _ = capture_checkpoints({"p": df}, m)
    assert _released(rels) == ["w_missing"]
    assert "p/all" in rels[1]["reason"] and "p/all" in rels[2]["reason"]


def test_subset_one_stratum_but_two_rows_is_refused() -> None:
    """A subset equal to a released stratum but for two rows (a regressor missing there):
    the stratum block and the checkpoint would describe the two rows by difference."""
    df = _people(600, 9)
    df["v"] = np.random.default_rng(3).normal(size=len(df))
    in_b = np.flatnonzero(df["grp"].to_numpy() == "b")
    df.loc[in_b[:2], "v"] = np.nan
    m = _manifest("p.csv", [_cp("only_b", "y ~ x + v", subset="grp == 'b'")], strata=["grp"])
    rels, _ = capture_checkpoints({"p": df}, m)
    assert rels[0]["status"] == "rejected" and "p/s1" in rels[0]["reason"]


def test_union_of_strata_plus_a_few_residual_rows_is_refused_and_a_released_set_is_not() -> None:
    """Strata a, b (released) and a 20-row stratum c (residual block). A subset "a, b and
    three rows of c" gives those three rows as its total minus the two strata blocks; a
    checkpoint on every row equals the source total and adds no row set (released), although
    the residual block is all rows but the two strata."""
    df = _people(600, 13)
    df["grp"] = np.where(np.arange(600) < 20, "c", np.where(np.arange(600) % 2 == 0, "a", "b"))
    df["keep"] = (df["grp"] != "c").astype(int)
    df.loc[:2, "keep"] = 1
    m = _manifest(
        "p.csv",
        [_cp("all_rows", "y ~ x"), _cp("ab_plus", "y ~ x", subset="keep == 1")],
        strata=["grp"],
    )
    rels, _ = capture_checkpoints({"p": df}, m)
    assert _released(rels) == ["all_rows"]
    # `keep` is 0 on 17 rows, below k: its table pools them into 1, so the subset's n would
    # count them too (refused as a subset on a pooled column, before the differencing rule)
    why = rels[1]["reason"]
    assert "union of strata" in why or "p/residual" in why or "subset on a pooled column" in why


def test_two_samples_covering_the_source_with_a_small_overlap_are_refused() -> None:
    """A: x < c1, B: x > c2 with c2 < c1 and three rows between: A and B cover every row and
    overlap in three, so T_A + T_B − T_all describes those three (B differs from A's
    complement by three rows)."""
    df = _people(500, 11)
    xs = np.sort(df["x"].to_numpy())
    c1, c2 = float(xs[250] + xs[251]) / 2, float(xs[247] + xs[246]) / 2
    m = _manifest(
        "p.csv",
        [_cp("low", "y ~ age", subset=f"x < {c1!r}"), _cp("high", "y ~ age", subset=f"x > {c2!r}")],
    )
    rels, _ = capture_checkpoints({"p": df}, m)
    assert _released(rels) == ["low"] and "checkpoint/low" in rels[1]["reason"]


def test_ledger_summary_in_the_bundle(tmp_path: Path) -> None:
    """sdc_log.json carries the ledger: the source, its strata, every checkpoint, the rule,
    the pairs checked and the refused tags; row counts only where released (≥ k or the
    released residual count), never the size of a difference."""
    from replisynth.workflow.cli import cmd_extract

    df = _people(600, 21)
    df["z"] = np.random.default_rng(2).normal(size=len(df))
    df.loc[[3, 7], "z"] = np.nan
    df.to_csv(tmp_path / "p.csv", index=False)
    m = _manifest(
        str(tmp_path / "p.csv"), [_cp("a", "y ~ x"), _cp("b", "y ~ x + z")], strata=["grp"]
    )
    bundle = cmd_extract(m, tmp_path / "out")
    sdc_log = json.loads((bundle / "sdc_log.json").read_text())
    led = sdc_log["ledger"]
    ids = [e["id"] for e in led["entries"]]
    assert ids[:4] == ["p/all", "p/s0", "p/s1", "p/s2"] and ids[-2:] == [
        "checkpoint/a",
        "checkpoint/b",
    ]
    assert led["differencing"]["refused"] == ["b"] and led["differencing"]["pairs_checked"] > 0
    assert all(e.get("rows", K) >= K for e in led["entries"] if e["kind"] != "residual")
    assert "rows" not in led["entries"][-1]  # the refused checkpoint's n is not given
    checkpoints = json.loads((bundle / "checkpoints.json").read_text())["checkpoints"]
    assert [c["status"] for c in checkpoints] == ["released", "rejected"]
    assert '"rows": 598' not in json.dumps(led) and all(
        c.get("n") != 598 for c in checkpoints
    )  # b's sample size


# --- 2. small groups in every design column --------------------------------------------------


FEW = st.integers(1, K - 1)


@settings(max_examples=8, deadline=None)
@given(
    few=FEW,
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(["scaled", "scaled_majority", "spline", "sparse"]),
)
def test_small_groups_in_non_indicator_columns_are_not_released(
    few: int, seed: int, kind: str
) -> None:
    """A scaled dummy 2·1[age ≥ c] (or its majority form 2·1[age < c]), a spline
    (age − c)·1[age ≥ c] or a column zero but for `few` rows: the coefficient and the
    column's moments describe those rows. The old gate saw only 0/1 columns
    (indicator_minority = -1 here, asserted), and the majority form also passed the old
    moments gate (non-zero on most rows)."""
    rng = np.random.default_rng(seed)
    df = _people(500, seed)
    ages = rng.integers(20, 80, size=len(df))
    top = rng.choice(len(df), size=few, replace=False)
    ages[top] = 95 + rng.integers(0, 5, size=few)
    df["age"] = ages
    df["dose"] = 0.0
    df.loc[top, "dose"] = rng.uniform(1, 9, size=few)
    term = {
        "scaled": "I(2 * (age >= 95))",
        "scaled_majority": "I(2 * (age < 95))",
        "spline": "I((age - 94) * (age >= 95))",
        "sparse": "dose",
    }[kind]
    m = _manifest("p.csv", [_cp("c", f"y ~ x + {term}")])
    d = build_design(df, m.checkpoints[0])
    assert indicator_minority(d.X)[2] == -1  # the old gate could not see it
    rel, log = capture_checkpoint(df, m.checkpoints[0], m, 0)
    assert rel["status"] == "released"
    assert rel["terms"][2]["suppressed"] and rel["terms"][2]["term"] is None
    assert term not in rel["moments"]["terms"] and rel["moments"]["terms"] == ["x"]
    assert any(e["action"] == "suppressed_terms" and e["terms"] == 1 for e in log.entries)


def test_continuous_and_common_columns_keep_their_coefficients() -> None:
    """Control: a continuous column and a spline with k or more non-zero rows are released."""
    df = _people(500, 4)
    df.loc[: K + 5, "age"] = 95
    m = _manifest("p.csv", [_cp("c", "y ~ x + I((age - 94) * (age >= 95))")])
    rel, _ = capture_checkpoint(df, m.checkpoints[0], m, 0)
    assert not any(t.get("suppressed") for t in rel["terms"])
    assert len(rel["moments"]["terms"]) == 2


def test_nonmodal_rows_counts_rows_off_the_mode_and_weights_them() -> None:
    """Exact below k, at least k otherwise; Kish-weighted with weights (the old
    indicator_minority gave -1 for columns 0 and 2, which are not 0/1)."""
    x = np.zeros((300, 3))
    x[:4, 0] = [3.0, 7.5, 1.0, 2.0]  # sparse continuous
    x[:, 1] = np.arange(300)  # continuous
    x[:, 2] = 5.0
    x[:60, 2] = 0.0  # 60 rows off the mode 5
    w = np.ones(300)
    w[0] = 500.0  # one heavy row among the 60 off-mode rows of column 2
    assert (
        nonmodal_rows(x, None, K).tolist()[0] == 4 and nonmodal_rows(x, None, K)[2] >= K
    )  # exact only below K
    assert nonmodal_rows(x, None, K)[1] >= K
    assert nonmodal_rows(x, w, K)[2] < K  # Kish count of the 60 off-mode rows: one weight dominates
    assert nonmodal_rows(np.ones((10, 1)), None, K)[0] == -1
    assert indicator_minority(x)[[0, 2]].tolist() == [-1, -1]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    n=st.integers(20, 400),
    k=st.integers(5, 80),
    zero_share=st.floats(0.0, 1.0),
    weighted=st.booleans(),
    sort=st.booleans(),
)
def test_nonmodal_rows_agrees_with_a_full_count(
    seed: int, n: int, k: int, zero_share: float, weighted: bool, sort: bool
) -> None:
    """The shortcuts (head of 4k rows, majority value) decide the gate as a full count of
    the rows off the most common value (np.unique) does, sorted data included."""
    rng = np.random.default_rng(seed)
    col = np.where(rng.random(n) < zero_share, 0.0, rng.choice([1.5, 2.0, rng.normal()], size=n))
    col = np.sort(col) if sort else col
    w = rng.uniform(0.2, 5.0, size=n) if weighted else None
    vals, counts = np.unique(col, return_counts=True)
    got = nonmodal_rows(col[:, None], w, k)[0]
    if len(vals) == 1:
        assert got == -1
        return
    off = col != vals[int(np.argmax(counts))]
    want = float(off.sum()) if w is None else float(w[off].sum()) ** 2 / float(w[off] @ w[off])
    assert (got < k) == (want < k)
    if want < k:
        assert got == pytest.approx(want)


def test_heavy_row_inside_a_dummy_group_suppresses_its_coefficient() -> None:
    """60 rows in a group (≥ k), one of them with a weight of 60 among weights of 1: the
    group's weighted coefficient and mean lean on that row. The row count passes (old gate);
    the Kish count of the group does not. The sample as a whole passes the weight gate."""
    df = _people(4000, 8)
    df["w"] = 1.0
    df["flag"] = 0
    df.loc[:59, "flag"] = 1
    df.loc[0, "w"] = 60.0
    m = _manifest("p.csv", [_cp("c", "y ~ x + flag", weights="w")])
    rel, _ = capture_checkpoint(df, m.checkpoints[0], m, 0)
    assert rel["status"] == "released" and rel["terms"][2]["suppressed"]
    assert "flag" not in rel["moments"]["terms"]


# --- 3. outcome dominance --------------------------------------------------------------------


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), factor=st.sampled_from([30.0, 100.0, 1000.0]))
def test_dominant_outcome_is_not_released(seed: int, factor: float) -> None:
    """One outcome far above the rest: ȳ (intercept + slopes × means) and the residual
    variance would give it within a fraction of a percent. The old path released it; now
    the checkpoint is rejected, and nothing about its outcome is in the record."""
    df = _people(300, seed)
    df["y"] = np.abs(df["y"]) + 1.0
    i = int(np.random.default_rng(seed).integers(len(df)))
    df.loc[i, "y"] = factor * float(df["y"].max())
    m = _manifest("p.csv", [_cp("c", "y ~ x + age")])
    rel, log = capture_checkpoint(df, m.checkpoints[0], m, 0)
    assert rel["status"] == "rejected" and "outcome dominance" in rel["reason"]
    assert "scale" not in rel and "terms" not in rel
    assert any(e["action"] == "rejected" for e in log.entries)


def test_ordinary_outcome_passes_dominance_and_logs_it() -> None:
    df = _people(300, 2)
    m = _manifest("p.csv", [_cp("c", "y ~ x + age")])
    rel, log = capture_checkpoint(df, m.checkpoints[0], m, 0)
    assert rel["status"] == "released"
    assert any(e["action"] == "outcome_dominance" for e in log.entries)


def test_dominant_count_is_not_released() -> None:
    """Poisson counts with one count of 400 among counts near 1: the released outcome mean
    and Pearson dispersion would give it away."""
    df = _people(400, 3)
    df["visits"] = np.random.default_rng(3).poisson(1.0, size=len(df))
    df.loc[17, "visits"] = 400
    m = _manifest("p.csv", [_cp("c", "visits ~ x", model="poisson")])
    rel, _ = capture_checkpoint(df, m.checkpoints[0], m, 0)
    assert rel["status"] == "rejected" and "outcome dominance" in rel["reason"]
    assert "dispersion" not in rel and "outcome_mean" not in rel


# --- 4. weights --------------------------------------------------------------------------------


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), heavy=st.sampled_from([500.0, 5000.0]))
def test_one_heavy_weight_is_not_released(seed: int, heavy: float) -> None:
    """One person with weight 5000 among weights near 1: the weighted means are that
    person's values (age, schooling) to a few percent. The old gate counted rows (500 ≥ k)."""
    df = _people(500, seed)
    j = int(np.random.default_rng(seed).integers(len(df)))
    df.loc[j, "w"] = heavy
    m = _manifest("p.csv", [_cp("c", "y ~ x + age", weights="w")])
    rel, log = capture_checkpoint(df, m.checkpoints[0], m, 0)
    assert rel["status"] == "rejected" and "weights" in rel["reason"]
    assert "moments" not in rel
    assert any(
        e["action"] == "rejected" and ("Kish" in e["reason"] or "total weight" in e["reason"])
        for e in log.entries
    )


def test_weight_gate_limits() -> None:
    """Kish ESS below k fails; one row above 1/k of the total weight fails; near-equal weights pass."""
    assert weight_gate(None, K) is None
    assert weight_gate(np.ones(60), K) is None
    w = np.ones(3000)
    w[0] = 100.0  # ESS ≈ 914, but 100 / 3099 > 1/50
    assert "1/50" in (weight_gate(w, K) or "")
    assert "Kish" in (weight_gate(np.r_[np.ones(40), np.full(40, 30.0)], K) or "")


# --- 5. cluster ids and entities in formulas --------------------------------------------------


@pytest.mark.parametrize(
    "where, extra, source",
    [
        ("groups", {}, {"groups": ["hosp"]}),
        ("cluster", {"vcov": "cluster:hosp"}, {}),
        ("absorb", {"model": "fe", "absorb": ["hosp"]}, {}),
    ],
)
def test_cluster_id_in_a_formula_is_a_manifest_error(
    where: str, extra: dict[str, Any], source: dict[str, Any]
) -> None:
    """C(hosp) releases raw cluster codes and which clusters are small: refused at load,
    naming the checkpoint's formula key and the column."""
    with pytest.raises(ManifestError) as err:
        _manifest("p.csv", [_cp("ok", "y ~ x"), _cp("bad", "y ~ x + C(hosp)", **extra)], **source)
    msg = str(err.value)
    assert msg.startswith("checkpoints[1].formula") and "'hosp'" in msg and "\n" not in msg


def test_panel_entity_in_a_formula_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match=r"checkpoints\[0\]\.formula: column 'pid2'"):
        _manifest("p.csv", [_cp("bad", "y ~ x + pid2")], panel={"entity": "pid2", "time": "age"})


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    n=st.integers(60, 300),
    k=st.integers(3, 40),
    n_cells=st.integers(1, 6),
    n_prior=st.integers(0, 3),
    flips=st.integers(0, 45),
)
def test_ledger_refuses_exactly_the_small_differences(
    seed: int, n: int, k: int, n_cells: int, n_prior: int, flips: int
) -> None:
    """The ledger's decision equals a brute force over every registered set, its complement
    and every union of strata cells: refused iff some |A Δ B| is in 1..k−1 (unless A is a
    set already registered or a union of strata). Samples are built near those sets so that
    the small cases occur."""
    from replisynth.config.manifest import Checkpoint, Source
    from replisynth.extract.ledger import Ledger

    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"g": rng.integers(0, n_cells, size=n)})
    led = Ledger(k)
    led.register_source(df, Source(name="p", path="p.csv", strata=("g",)))
    sets = [e for e in led.entries]
    masks = [np.ones(n, dtype=bool)] + [led.cells["p"] == e.cell for e in sets[1:]]
    for i in range(n_prior):
        m = rng.random(n) < 0.5
        led.register_checkpoint(
            Checkpoint(tag=f"c{i}", source="p", model="ols", formula="y ~ x"), m, True, "x"
        )
        masks.append(m)
    label = led.cells["p"]
    unions = [
        np.isin(label, [c for c in range(int(label.max()) + 1) if (bits >> c) & 1])
        for bits in range(1 << (int(label.max()) + 1))
    ]
    base = (masks + unions)[int(rng.integers(len(masks) + len(unions)))]
    a = base.copy()
    a[rng.choice(n, size=min(flips, n), replace=False)] ^= True
    ds = [int(np.count_nonzero(a ^ m)) for m in masks + unions]
    want = 0 not in ds and any(0 < d < k or 0 < n - d < k for d in ds)
    assert bool(led.conflicts("p", a)) == want


# --- 6. factor levels linked with the source table ------------------------------------------


@pytest.mark.parametrize(("rare", "factor"), [(5, "C(sector)"), (17, "sector")])
def test_level_means_of_a_factor_with_a_rare_category_are_not_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rare: int, factor: str
) -> None:
    """A nominal column with a rare category: the source table buckets it with the smallest
    released level (the bucket's total is published). An exact level mean on a checkpoint of
    all rows gives that level's count, and the bucket minus it the rare count. The gate keeps
    the factor's level means out of the moments; without it the subtraction is exact."""
    import replisynth.extract.checkpoints as checkpoints
    from replisynth.workflow.cli import cmd_extract

    rng = np.random.default_rng(rare)
    n = 900
    sector = np.array(
        ["agri"] * 400 + ["farm"] * 60 + ["mine"] * rare + ["shop"] * (n - 460 - rare), dtype=object
    )
    rng.shuffle(sector)
    df = _people(n, rare).assign(sector=sector)
    df.to_csv(tmp_path / "p.csv", index=False)
    m = _manifest(str(tmp_path / "p.csv"), [_cp("f", f"y ~ x + {factor}")])

    def attack(out: Path) -> set[float]:
        bundle = cmd_extract(m, out)
        table = json.loads((bundle / "source_p.json").read_text())["blocks"]["all"]["marginals"][
            "sector"
        ]["table"]
        (c,) = json.loads((bundle / "checkpoints.json").read_text())["checkpoints"]
        moments = c.get("moments") or {"terms": [], "mean": []}
        found = set()
        for term, mean in zip(moments["terms"], moments["mean"], strict=True):
            if "sector" in term:
                found.add(round(table["suppressed"] - mean * c["n"], 6))
        return found

    assert rare not in attack(tmp_path / "new")
    monkeypatch.setattr(checkpoints, "factor_terms_with_rare_levels", lambda *a: set())
    assert rare in attack(tmp_path / "old")  # the subtraction the gate prevents
