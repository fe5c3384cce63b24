"""Attacks of round 22 on whole bundles (cmd_extract), reading only what an intruder holding
the bundle reads: the rows pooled into a level of a few-valued numeric column (their count,
or their value through the column's exact total), recovered from codings that the coding
check does not see as functions of the pooled column (codings of two columns, continuous
codings with a released atom, codings compared through a rank correlation, codings inside
strata), and from standard errors that give back the design means the pooled-totals gate
withholds. Each asserts what should hold: the attack recovers nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import least_squares
from test_attack_round21 import K, _betas, _bundle, _counts_with_outlier, _table, _table_total

from replisynth.core.errors import DataError

# Leaks 1-7, 10 and 11 of this round are closed (model-based SEs count as design totals in
# the pooled-totals gate; HC SEs of a 0/1 outcome count groups; the coding check reads every
# column's exactly counted classes; a subset that selects a pooled row otherwise than its
# level is refused; weighted fits whose weights combine to a constant are refused); the last
# two (a coding masked by XOR, a two-column coding inside a stratum) were closed in round 23
# (docs/disclosure.md, "Residual risks").


def _ses_all(cp: dict) -> dict[str, float]:
    return {t["term"]: t["se"] for t in cp["terms"] if t.get("term")}


def _level_count(t: dict, level: float) -> int:
    return int(t["counts"][t["levels"].index(level)])


def _pooled_frame(n: int, outlier: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"pid": np.arange(n), "x": rng.normal(size=n)})
    df["visits"] = _counts_with_outlier([0, 1, 2, 3], [0.4, 0.3, 0.2, 0.1], n, outlier, seed)
    df["female"] = rng.integers(0, 2, size=n)
    df["age"] = rng.uniform(20, 70, size=n).round(2)
    return df


# ------------------------------------------------ standard errors give back withheld means


@pytest.mark.parametrize(
    ("col", "values", "probs", "outlier", "seed"),
    [
        ("visits", [0, 1, 2, 3], [0.4, 0.3, 0.2, 0.1], 13.0, 1),
        ("school", [8, 10, 12, 14, 16], [0.15, 0.2, 0.35, 0.15, 0.15], 26.0, 4),
    ],
)
def test_nonrobust_ses_of_a_pooled_regressor_do_not_give_its_total(
    tmp_path: Path, col: str, values: list[float], probs: list[float], outlier: float, seed: int
) -> None:
    """`x ~ col` (default nonrobust SEs), its design mean withheld: the SEs are
    scale·(X'X)⁻¹'s diagonal, X'X = [[n, S], [S, Q]], so Q = n·se0²/se1²,
    det = n·Q − S² = scale·n/se1², and S = √(n·Q − det) is the column's exact total;
    less Σ level × count of its table, the pooled row's excess over the top level."""
    n = 1500
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"pid": np.arange(n), "x": rng.normal(size=n)})
    df[col] = _counts_with_outlier(values, probs, n, outlier, seed)
    rel, cps, _ = _bundle(tmp_path, df, [{"tag": "a", "formula": f"x ~ {col}"}])
    t, cp = _table(rel, col), cps["a"]
    assert t["pooled_levels"] == 1
    if cp["status"] == "released":
        se, n_, s = _ses_all(cp), cp["n"], cp["scale"]
        q = n_ * se["Intercept"] ** 2 / se[col] ** 2
        det = s * n_ / se[col] ** 2
        total = np.sqrt(n_ * q - det)
        excess = total - _table_total(t)
        assert abs(excess - (outlier - max(t["levels"]))) > 0.5, (
            f"the pooled value follows: {max(t['levels']) + excess:.6f}"
        )


def test_nonrobust_ses_beside_a_dummy_do_not_give_a_pooled_total(tmp_path: Path) -> None:
    """`x ~ visits + female`: female's mean is released (and its table gives its total), so
    X'X has three unknowns (Σ visits, Σ visits², Σ visits·female), and the three SEs with
    the scale give three equations; of their (few) roots one has an integer total, found by
    trying each integer total above the table's and solving for the other two."""
    n, outlier = 1500, 13.0
    df = _pooled_frame(n, outlier, 7)
    rel, cps, _ = _bundle(tmp_path, df, [{"tag": "b", "formula": "x ~ visits + female"}])
    t, f, cp = _table(rel, "visits"), _table(rel, "female"), cps["b"]
    assert t["pooled_levels"] == 1
    if cp["status"] == "released":
        se, s = _ses_all(cp), cp["scale"]
        nf = _level_count(f, 1)
        want = np.array([se["Intercept"], se["visits"], se["female"]]) ** 2

        def resid(p: np.ndarray) -> np.ndarray:
            v, q, c = p
            m = np.array([[n, v, nf], [v, q, c], [nf, c, nf]], float)
            return s * np.diag(np.linalg.inv(m)) / want - 1.0

        v0 = _table_total(t)
        q0 = float(sum(lv**2 * c for lv, c in zip(t["levels"], t["counts"], strict=True)))
        fits = []  # integer candidates for Σ visits above the table's total that fit exactly
        for v in range(int(v0) + 1, int(v0) + 200):
            sol = least_squares(
                lambda qc, v=v: resid(np.array([v, *qc])),
                [q0 + 10 * (v - v0), v * nf / n],
                xtol=1e-15,
                ftol=1e-15,
                gtol=1e-15,
            )
            if sol.cost < 1e-20:
                fits.append(v - v0)
        assert fits != [outlier - 3], f"the pooled value follows: {3 + fits[0]}"


# ------------------------------------------------ codings the coding check does not see


@pytest.mark.parametrize("declared", [False, True])
def test_coding_of_a_pooled_column_and_a_dummy_does_not_count_pooled_rows(
    tmp_path: Path, declared: bool
) -> None:
    """`code = (visits == 3) + 10·female` is not a function of visits alone, so the coding
    check passes it; its table's levels 1 and 11 count the true 3s, visits' table counts 3
    with the pooled row, and the difference is the pooled rows' count."""
    df = _pooled_frame(1500, 13.0, 1)
    df["code"] = (df["visits"] == 3).astype(int) + 10 * df["female"]
    derive = {"derive": {"code": "(visits == 3) + 10 * female"}} if declared else {}
    try:
        rel, _, _ = _bundle(tmp_path, df, [], **derive)
    except DataError:
        return  # refused: safe
    t, c = _table(rel, "visits"), _table(rel, "code")
    assert t["pooled_levels"] == 1
    threes = _level_count(c, 1) + _level_count(c, 11)
    assert not 0 < _level_count(t, 3) - threes < K, (
        f"{_level_count(t, 3) - threes} pooled row(s) follow"
    )


def test_atom_of_a_continuous_coding_does_not_count_pooled_rows(tmp_path: Path) -> None:
    """`spend` is 0 exactly on the rows with visits == 3 and continuous elsewhere: released as
    a continuous column whose atom at 0 is listed with its count, the true 3s; less than
    visits' table at 3 by the pooled row."""
    df = _pooled_frame(1500, 13.0, 1)
    rng = np.random.default_rng(5)
    df["spend"] = np.where(df["visits"] == 3, 0.0, rng.lognormal(size=len(df)).round(4))
    try:
        rel, _, _ = _bundle(tmp_path, df, [])
    except DataError:
        return
    t = _table(rel, "visits")
    atoms = rel["blocks"]["all"]["marginals"]["spend"].get("atoms")
    if atoms and 0.0 in atoms["values"]:
        zero = atoms["counts"][atoms["values"].index(0.0)]
        assert not 0 < _level_count(t, 3) - zero < K, f"{_level_count(t, 3) - zero} pooled"


def test_rank_correlation_of_a_masked_coding_does_not_count_pooled_rows(tmp_path: Path) -> None:
    """`u = (visits == 3) XOR w` (w a released 0/1 column) is a function of neither alone; the
    rank correlation of two 0/1 columns is their phi coefficient, which with both tables
    gives their 2×2 table, and #(visits == 3) = #(u=1, w=0) + #(w=1) − #(u=1, w=1).
    Extraction stops, naming the pair; if anything were released, the attack is run."""
    n = 1500
    df = _pooled_frame(n, 13.0, 1)
    df["w"] = np.random.default_rng(8).integers(0, 2, size=n)
    df["u"] = ((df["visits"] == 3).astype(int) ^ df["w"]).astype(int)
    with pytest.raises(DataError, match="columns 'u' and 'w' together count the rows"):
        rel, _, _ = _bundle(tmp_path, df, [])
        sp = rel["blocks"]["all"]["spearman"]
        cols = [d["column"] for d in rel["dims"]]
        rho = sp[cols.index("u")][cols.index("w")]
        nu, nw = _level_count(_table(rel, "u"), 1), _level_count(_table(rel, "w"), 1)
        n11 = (rho * np.sqrt(nu * (n - nu) * nw * (n - nw)) + nu * nw) / n
        threes = (nu - n11) + nw - n11
        t = _table(rel, "visits")
        assert not 0 < _level_count(t, 3) - round(threes) < K, "pooled row(s) follow"


@pytest.mark.parametrize("mask", ["independent", "one_side"])
def test_unrelated_zero_one_columns_beside_a_pooled_column_are_released(
    tmp_path: Path, mask: str
) -> None:
    """The pair check refuses only a pair whose joint classes hold a pooled level's true rows
    and nothing else: two independent 0/1 columns, or `u = (visits == 3) OR w` (whose cell
    u = 1, w = 0 holds 3s only but whose cell u = 1, w = 1 mixes them with others), pass."""
    n = 1500
    df = _pooled_frame(n, 13.0, 1)
    rng = np.random.default_rng(9)
    df["w"] = rng.integers(0, 2, size=n)
    if mask == "independent":
        df["u"] = rng.integers(0, 2, size=n)
    else:
        df["u"] = ((df["visits"] == 3).astype(int) | df["w"]).astype(int)
    rel, _, _ = _bundle(tmp_path, df, [])
    assert _table(rel, "visits")["pooled_levels"] == 1
    assert {"u", "w"} <= {d["column"] for d in rel["dims"]}


def test_coding_and_a_dummy_inside_strata_do_not_split_a_bucket(tmp_path: Path) -> None:
    """Inside stratum north, visits' table buckets 2 (256 rows) with 3 (20 rows);
    `code = (visits == 2) + 10·female` (a function of visits alone nowhere) has its own
    table in north, whose levels 1 and 11 count the 2s: the bucket less them is the cell
    of 20 rows."""
    rng = np.random.default_rng(3)
    north = rng.choice([0, 1, 2], p=[0.4, 0.35, 0.25], size=1100).astype("float64")
    north[:20] = 3.0
    south = rng.choice([0, 1, 2, 3], p=[0.3, 0.3, 0.2, 0.2], size=1300).astype("float64")
    df = pd.DataFrame({"region": ["north"] * 1100 + ["south"] * 1300, "visits": [*north, *south]})
    df = df.sample(frac=1.0, random_state=3).reset_index(drop=True)
    df.insert(0, "pid", np.arange(len(df)))
    df["female"] = rng.integers(0, 2, size=len(df))
    df["code"] = (df["visits"] == 2).astype(int) + 10 * df["female"]
    df["x"] = rng.normal(size=len(df))
    try:
        rel, _, _ = _bundle(tmp_path, df, [], strata=["region"])
    except DataError:
        return
    for block in rel["blocks"].values():
        if block.get("key") != ["north"]:
            continue
        v, c = block["marginals"]["visits"].get("table"), block["marginals"]["code"].get("table")
        if v is None or c is None or not v.get("suppressed"):
            continue
        twos = sum(_level_count(c, lv) for lv in (1, 11) if lv in c["levels"])
        hidden = v["suppressed"] - twos
        assert not 0 < hidden < K, f"the bucket's small cell of {hidden} rows follows"


# ------------------------------------------------ robust SEs of a 0/1 outcome count groups


@pytest.mark.parametrize("vcov", ["HC1", "HC0"])
def test_robust_ses_of_a_binary_outcome_on_a_pooled_factor_do_not_count_groups(
    tmp_path: Path, vcov: str
) -> None:
    """`emp ~ C(visits)` with robust SEs: each group's residual variance is m(1 − m) for its
    mean m (the coefficients give it), so se² of the reference group is c·m0(1 − m0)/n0
    and of level l, c·m_l(1 − m_l)/n_l + se0² (c = n/(n − k) for HC1, 1 for HC0): n_3 is the
    true 3s, and visits' table at 3 less it is the pooled rows' count. The group-counts gate
    looks at nonrobust SEs only."""
    n = 1500
    df = _pooled_frame(n, 13.0, 1)
    df["emp"] = np.random.default_rng(5).integers(0, 2, size=n)
    rel, cps, _ = _bundle(tmp_path, df, [{"tag": "g", "formula": "emp ~ C(visits)", "vcov": vcov}])
    cp, t = cps["g"], _table(rel, "visits")
    if cp["status"] != "released":
        return
    b, se = _betas(cp), _ses_all(cp)
    c = cp["n"] / (cp["n"] - cp["k"]) if vcov == "HC1" else 1.0
    term = next(k for k in b if k.startswith("C(visits)[T.3"))
    m3 = b["Intercept"] + b[term]
    n3 = c * m3 * (1 - m3) / (se[term] ** 2 - se["Intercept"] ** 2)
    assert not 0 < _level_count(t, 3) - round(n3) < K or abs(n3 - round(n3)) > 1e-6, (
        f"{_level_count(t, 3) - n3:.6f} pooled row(s) follow"
    )


# ------------------------------------------------ more ways back to a withheld total


def test_nonrobust_ses_of_an_outcome_fit_give_the_regressor_total(tmp_path: Path) -> None:
    """`visits ~ age` (the gate's own "safe" OLS of the pooled outcome, its means withheld):
    the SEs give Σ age = √(n·Q − det) as above, and the zero residual sum gives
    Σ visits = n·b0 + b_age·Σ age; less Σ level × count, the pooled row's excess."""
    outlier = 13.0
    df = _pooled_frame(1500, outlier, 7)
    rel, cps, _ = _bundle(tmp_path, df, [{"tag": "a", "formula": "visits ~ age"}])
    t, cp = _table(rel, "visits"), cps["a"]
    assert t["pooled_levels"] == 1
    if cp["status"] == "released":
        se, b, n = _ses_all(cp), _betas(cp), cp["n"]
        q = n * se["Intercept"] ** 2 / se["age"] ** 2
        age_total = np.sqrt(n * q - cp["scale"] * n / se["age"] ** 2)
        excess = n * b["Intercept"] + b["age"] * age_total - _table_total(t)
        assert abs(excess - (outlier - 3)) > 0.5, f"the pooled value follows: {3 + excess:.6f}"


def test_two_weighted_fits_do_not_give_a_pooled_total(tmp_path: Path) -> None:
    """`visits ~ 1` weighted by w1 (1 or 2) and by w2 = 3 − w1: each intercept is a weighted
    mean, the weights' tables give Σ w1 and Σ w2, and Σ w1·v + Σ w2·v = 3 Σ v. The second
    is refused: its weights, the first's and a constant are linearly dependent."""
    n, outlier = 1500, 13.0
    df = _pooled_frame(n, outlier, 7)
    df["w1"] = np.random.default_rng(9).integers(1, 3, size=n).astype("float64")
    df["w2"] = 3 - df["w1"]
    cps_in = [
        {"tag": "d1", "formula": "visits ~ 1", "weights": "w1"},
        {"tag": "d2", "formula": "visits ~ 1", "weights": "w2"},
    ]
    rel, cps, _ = _bundle(tmp_path, df, cps_in)
    assert cps["d1"]["status"] == "released"
    assert cps["d2"]["status"] == "rejected" and "weights" in cps["d2"]["reason"]
    df["w2"] = np.random.default_rng(10).uniform(0.5, 2.0, size=n).round(3)  # not 3 − w1
    (tmp_path / "free").mkdir()
    free = _bundle(tmp_path / "free", df, cps_in)[1]
    assert free["d1"]["status"] == free["d2"]["status"] == "released"
    t = _table(rel, "visits")
    if cps["d1"]["status"] == cps["d2"]["status"] == "released":
        total = (
            sum(
                _betas(cps[tag])["Intercept"] * _table_total(_table(rel, w))
                for tag, w in (("d1", "w1"), ("d2", "w2"))
            )
            / 3
        )
        excess = total - _table_total(t)
        assert abs(excess - (outlier - 3)) > 0.5, f"the pooled value follows: {3 + excess:.6f}"


def test_subsets_on_a_level_and_a_dummy_do_not_count_pooled_rows(tmp_path: Path) -> None:
    """Subsets `visits == 3 & female == 1` and `visits == 3 & female == 0`: their n add up
    to the true 3s (neither differs from a released row set by fewer than k rows), and
    visits' table at 3 less that is the pooled rows' count."""
    df = _pooled_frame(1500, 13.0, 7)
    cps_in = [
        {"tag": "f1", "formula": "x ~ age", "subset": "visits == 3 & female == 1"},
        {"tag": "f0", "formula": "x ~ age", "subset": "visits == 3 & female == 0"},
    ]
    rel, cps, _ = _bundle(tmp_path, df, cps_in)
    t = _table(rel, "visits")
    assert "subset on a pooled column" in cps["f1"].get("reason", "")
    if cps["f1"]["status"] == cps["f0"]["status"] == "released":
        threes = cps["f1"]["n"] + cps["f0"]["n"]
        assert not 0 < _level_count(t, 3) - threes < K, (
            f"{_level_count(t, 3) - threes} pooled row(s) follow"
        )


def test_coding_of_a_column_declared_categorical_does_not_count_pooled_rows(
    tmp_path: Path,
) -> None:
    """`categorical: [visits]` in the manifest: visits' table still pools the row of 13 into
    3, but the coding check skips declared categorical columns, so `mid = visits == 3` is
    released and its table counts the true 3s."""
    df = _pooled_frame(1500, 13.0, 7)
    df["mid"] = (df["visits"] == 3).astype(int)
    try:
        rel, _, _ = _bundle(tmp_path, df, [], categorical=["visits"])
    except DataError:
        return
    t, m = _table(rel, "visits"), _table(rel, "mid")
    if t.get("pooled_levels"):
        assert not 0 < _level_count(t, 3) - _level_count(m, 1) < K, (
            f"{_level_count(t, 3) - _level_count(m, 1)} pooled row(s) follow"
        )


@pytest.mark.parametrize("model", ["logit", "probit"])
def test_model_based_ses_of_a_glm_on_a_pooled_regressor_are_refused(
    tmp_path: Path, model: str
) -> None:
    """`emp ~ visits` (logit, probit) with model-based SEs: X'WX with W a function of the
    fitted value, so with visits' levels and counts the two SEs give the pooled row's value;
    refused by the pooled-totals gate, released with robust SEs."""
    n = 1500
    df = _pooled_frame(n, 13.0, 2)
    df["emp"] = np.random.default_rng(6).integers(0, 2, size=n)
    cps_in = [{"tag": "g", "model": model, "formula": "emp ~ visits"}]
    _, cps, _ = _bundle(tmp_path, df, cps_in)
    assert cps["g"]["status"] == "rejected" and "pooled totals" in cps["g"]["reason"]
    cps_in[0]["vcov"] = "HC1"
    (tmp_path / "hc1").mkdir()
    _, cps, _ = _bundle(tmp_path / "hc1", df, cps_in)
    assert cps["g"]["status"] == "released"
