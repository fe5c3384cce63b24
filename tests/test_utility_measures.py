"""pMSE ratios (stats/utility_measures.py) and their place in the audit: about 1 for two
independent samples of one distribution, well above 1 when one column's distribution differs,
about 0 for a copy; deterministic under a seed; the audit carries the ratios and no data value."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2

from replisynth.disclosure.audit import audit_run, audit_source, render_text
from replisynth.stats.utility_measures import pmse_ratios

SECRET_NUMBER = 987654.321
SECRET_TEXT = "ZZSECRET"
SECRET_SPELLINGS = ("987654", "9.87654e", "zzsecret")


def people(n: int, seed: int, names: tuple[str, str, str, str], shift: str = "") -> pd.DataFrame:
    """A mixed frame: a normal, a skewed column with 10% missing, a three-level category and a
    column that depends on the first. `shift` names the column whose distribution moves."""
    a, b, g, y = names
    r = np.random.default_rng(seed)
    x = r.normal(size=n) + (0.7 if shift == a else 0.0)
    skew = r.exponential(size=n) * (2.5 if shift == b else 1.0)
    skew[r.random(n) < 0.1] = np.nan
    p = [0.7, 0.25, 0.05] if shift == g else [0.4, 0.35, 0.25]
    levels = r.choice(["north", "south", "west"], size=n, p=p)
    out = 0.8 * x + r.normal(size=n) + (1.2 * (x > 0) if shift == y else 0.0)
    return pd.DataFrame({a: x, b: skew, g: levels, y: out})


CASES = [
    (1200, 1200, ("age", "income", "region", "score"), 1),
    (2500, 900, ("x1", "x2", "grp", "outcome"), 7),
    (700, 1800, ("tenure", "wage", "sector", "hours"), 23),
]


def logit_band(result: dict, q: float) -> tuple[float, float]:
    """The central 1 - 2q band of the logistic ratio under the null: chi-square(k-1)/(k-1)."""
    df = result["logit"]["parameters"] - 1
    return chi2.ppf(q, df) / df, chi2.ppf(1 - q, df) / df


@pytest.mark.parametrize(("n_orig", "n_syn", "names", "seed"), CASES)
def test_independent_samples_score_about_one(n_orig, n_syn, names, seed):
    res = pmse_ratios(
        people(n_orig, seed, names),
        people(n_syn, seed + 500, names),
        np.random.default_rng(seed),
    )
    lo, hi = logit_band(res, 0.001)
    assert lo < res["logit"]["ratio"] < hi
    c = n_syn / (n_orig + n_syn)
    assert res["logit"]["ratio_synthpop"] == pytest.approx(res["logit"]["ratio"] / (1 - c))
    assert 0.7 < res["cart"]["ratio"] < 1.4
    assert res["original_rows_used"] == n_orig and res["synthetic_rows_used"] == n_syn
    assert not res["subsampled"]


@pytest.mark.parametrize(("n_orig", "n_syn", "names", "seed"), CASES)
@pytest.mark.parametrize("moved", [0, 1, 2, 3])
def test_one_column_moved_scores_well_above_one(n_orig, n_syn, names, seed, moved):
    res = pmse_ratios(
        people(n_orig, seed, names),
        people(n_syn, seed + 500, names, shift=names[moved]),
        np.random.default_rng(seed),
    )
    assert res["cart"]["ratio"] > 1.5
    assert res["logit"]["ratio"] > 2 * logit_band(res, 0.001)[1]


def test_a_copy_scores_about_zero():
    df = people(1500, 3, ("a", "b", "c", "d"))
    res = pmse_ratios(df, df.sample(frac=1.0, random_state=1), np.random.default_rng(3))
    assert res["logit"]["ratio"] < 0.01 and res["cart"]["ratio"] < 0.01


def test_deterministic_under_a_seed_and_subsampled_to_the_cap():
    names = ("u", "v", "w", "z")
    o, s = people(3000, 11, names), people(2600, 12, names)
    one = pmse_ratios(o, s, np.random.default_rng(99), max_rows=1000)
    two = pmse_ratios(o, s, np.random.default_rng(99), max_rows=1000)
    other = pmse_ratios(o, s, np.random.default_rng(100), max_rows=1000)
    assert one == two
    assert one != other
    assert one["original_rows_used"] == one["synthetic_rows_used"] == 1000 and one["subsampled"]


def test_columns_categorical_and_empty_ones():
    names = ("p", "q", "r", "t")
    o, s = people(800, 5, names), people(800, 6, names)
    for df in (o, s):
        df["blank"] = np.nan  # all missing: no feature
        df["coded"] = df["r"].map({"north": 1, "south": 2, "west": 3})
    res = pmse_ratios(o, s, np.random.default_rng(5), columns=["p", "coded", "blank"])
    assert res["columns"] == 3
    as_codes = pmse_ratios(
        o, s, np.random.default_rng(5), columns=["p", "coded", "blank"], categorical={"coded"}
    )
    # one-hot (two indicators) instead of one numeric column: one more parameter
    assert as_codes["logit"]["parameters"] == res["logit"]["parameters"] + 1 == 4


def test_the_audit_reports_the_ratios_and_no_data_value():
    names = ("age", "income", "region", "score")
    original = people(900, 31, names)
    original.loc[17, "region"] = SECRET_TEXT
    original.loc[23, "income"] = SECRET_NUMBER
    synthetic = people(900, 32, names, shift="score")
    release = {
        "columns": [
            {"name": "age", "role": "continuous"},
            {"name": "income", "role": "continuous"},
            {"name": "region", "role": "categorical"},
            {"name": "score", "role": "continuous"},
        ]
    }
    src = audit_source(original, synthetic, release, "people", seed=4)
    u = src["pmse"]
    assert u["cart"]["ratio"] > 1.5 and u["logit"]["ratio"] > 0
    for part in (u, u["logit"], u["cart"]):
        assert all(isinstance(v, (int, float, bool, dict)) or v is None for v in part.values())
    again = audit_source(original, synthetic, release, "people", seed=4)
    assert again["pmse"] == u
    result = audit_run("t", 4, {"people": src})
    text = render_text(result)
    assert "pMSE ratio, logistic / CART" in text
    assert f"{u['cart']['ratio']:#.3g}" in result["summary"]
    outputs = (json.dumps(result) + text).lower()
    for spelling in SECRET_SPELLINGS:
        assert spelling not in outputs


# ---------------------------------------------------------------------------------------------
# the benchmark's own pieces (benchmarks/utility.py)


def _bench():
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import utility

    return utility


@pytest.mark.parametrize("seed", [2, 9])
def test_support_shares_count_what_the_original_never_has(seed):
    u = _bench()
    r = np.random.default_rng(seed)
    n = int(r.integers(200, 400))
    counts = pd.Series(r.integers(0, 13, size=n)).astype("float64")
    moved = counts.copy()
    k_neg, k_dec, k_high = 7, 11, 5
    moved.iloc[:k_neg] = -1.0
    moved.iloc[k_neg : k_neg + k_dec] = 3.5
    moved.iloc[k_neg + k_dec : k_neg + k_dec + k_high] = 99.0
    moved.iloc[-3:] = np.nan  # missing values are not counted
    s = u.support(counts, moved)
    m = n - 3
    assert s["negative"] == pytest.approx(k_neg / m)
    assert s["non_integer"] == pytest.approx(k_dec / m)
    assert s["outside"] == pytest.approx((k_neg + k_high) / m)
    signed = u.support(counts - 6.5, moved)  # negatives and decimals in the original: not asked
    assert signed["negative"] is None and signed["non_integer"] is None


@pytest.mark.parametrize(("n", "seed"), [(300, 1), (900, 6)])
def test_a_term_constant_on_the_subset_is_not_compared(n, seed):
    """`y ~ x + east | east == 0`: east is all zeros on the sample, its coefficient and SE are
    of rounding size (so its z is noise); the fit leaves it out and keeps the others."""
    u = _bench()
    r = np.random.default_rng(seed)
    df = pd.DataFrame({"x": r.normal(size=n), "east": r.integers(0, 2, size=n)})
    df["y"] = 1 + 0.5 * df["x"] + r.normal(size=n)
    a = u.Analysis("ols", "y ~ x + east", "east == 0")
    out = u.fit(a, df, df, None)
    assert list(out.index) == ["x"]
    full = u.fit(u.Analysis("ols", "y ~ x + east", None), df, df, None)
    assert list(full.index) == ["x", "east"]


def test_sequential_cart_draws_original_values_and_keeps_the_panel_keys():
    u = _bench()
    r = np.random.default_rng(4)
    ent, per = np.repeat(np.arange(60), 5), np.tile(np.arange(2001, 2006), 60)
    x = r.normal(size=300)
    df = pd.DataFrame({"firm": ent, "yr": per, "x": x, "y": 2 * x + r.normal(size=300)})
    df["kind"] = np.where(df["y"] > 0, "hi", "lo")
    cols = ["yr", "x", "y", "kind"]
    one = u.sequential_cart(df, cols, ("firm", "yr"), np.random.default_rng(1))
    two = u.sequential_cart(df, cols, ("firm", "yr"), np.random.default_rng(1))
    assert one.equals(two)
    assert one[["firm", "yr"]].equals(df[["firm", "yr"]])
    for c in ("x", "y", "kind"):
        assert set(one[c]) <= set(df[c])
    assert np.corrcoef(one["x"], one["y"])[0, 1] > 0.7  # a relation carried by the trees


def test_halves_and_bootstrap_resample_whole_entities():
    u = _bench()
    df = pd.DataFrame({"id": np.repeat(np.arange(41), 3), "t": np.tile([1, 2, 3], 41)})
    a, b = u.halves(df, ("id", "t"), np.random.default_rng(0))
    assert len(a) + len(b) == len(df) and not set(a["id"]) & set(b["id"])
    boot = u.bootstrap(df, ("id", "t"), np.random.default_rng(0))
    assert len(boot) == len(df) and (boot.groupby("id").size() == 3).all()
    assert not boot.duplicated(["id", "t"]).any()  # an entity drawn twice is two entities


def test_the_markdown_goes_between_the_markers_of_an_existing_page(tmp_path):
    u = _bench()
    page = tmp_path / "utility.md"
    u.write_markdown(page, "first table\n")
    assert page.read_text() == f"{u.START}\nfirst table\n{u.END}\n"
    page.write_text(f"# Title\n\nprose\n\n{u.START}\nold\n{u.END}\n\nmore prose\n")
    u.write_markdown(page, "| new |\n")
    assert page.read_text() == f"# Title\n\nprose\n\n{u.START}\n| new |\n{u.END}\n\nmore prose\n"


@pytest.mark.slow
def test_the_benchmark_runs_one_data_set(tmp_path):
    """benchmarks/utility.py end to end on the smallest data set (anes96): every method is
    compared on every analysis and the tables are written."""
    u = _bench()
    out, md = tmp_path / "u.json", tmp_path / "u.md"
    assert u.main(["--only", "anes_vote", "--json", str(out), "--markdown", str(md)]) == 0
    (r,) = json.loads(out.read_text())
    assert r["tier_met"] == 4 and set(r["methods"]) == set(u.METHODS)
    for m in r["methods"].values():
        assert len(m["analyses"]) == 8 and m["pmse_cart"] > 0
    assert "| half split |" in md.read_text() and "Measured" in md.read_text()
