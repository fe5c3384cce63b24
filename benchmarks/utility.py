"""Utility beyond the checkpoints, on published data (issue 15's table): analyses a replication
package runs that were never declared as checkpoints, refitted on each synthetic file and
compared with the original.

Data sets: cases of benchmarks/real_data.py (its loaders, checkpoints and source settings,
2-3 checkpoints each, standard SDC profile), each run through `replisynth run`. About 70
analyses that are not checkpoints (other covariate sets, subgroups, interactions, a
checkpoint's outcome as a regressor, median regressions, logits of binarised outcomes, pooled,
random-effects, between, first-difference and two-way fixed-effects fits of the panel).

Methods compared (rows of the table):
- pinned: replisynth's synthetic file (results/<name>/synthetic/<source>.parquet);
- copula draw: the same run's draw before pinning (results/<name>/synthesize/<source>.parquet);
- bootstrap: the original's rows (the panel's entities) drawn with replacement;
- sequential CART: synthpop-style, each column in data order drawn from the leaf of a
  regression or classification tree on the columns before it (leaves of at least 5 rows,
  donors drawn from the leaf's original values); the panel keeps the original's entity and
  period columns;
- half split (noise reference): the original's rows (entities) split at random in two halves;
  the first half plays the original, the second the synthetic file.

z of a coefficient = |β_method − β_original| / SE_original (SE of the original fit with the
analysis's own SE type; for the half split, the first half's). The table's *median z* is the
median over all coefficients but the intercept of all analyses; an analysis is *beyond 5 SE*
when its largest z is, or when it cannot be fitted on the method's data (worst: the largest z).
The pMSE ratios (logistic, CART; replisynth.stats.utility_measures) compare each method's file
with its original on the released columns but ids and the panel's entity, medians over data
sets. Support of each pinned outcome: shares of rows negative where the original has no
negative value, non-integer where every original value is an integer, outside the original's
[min, max].

Usage: python benchmarks/utility.py [--only NAME ...] [--seeds S ...] [--keep DIR]
       [--no-cart] [--json OUT] [--markdown OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_data as rd  # noqa: E402

from replisynth.stats.utility_measures import encode, pmse_ratios  # noqa: E402

SEED = 20261126  # real_data.py's manifest seed
BEYOND = 5.0  # an analysis is beyond when its largest z exceeds this
METHODS = ("pinned", "copula draw", "bootstrap", "sequential CART", "half split")
CART_LEAF = 5  # synthpop's minbucket


# ---------------------------------------------------------------------------------------------
# data sets and analyses


@dataclass
class Analysis:
    """A fit a replication package might run. kind: ols, logit, poisson, quantreg (the
    median), or pooled, re, fe, twfe, between, fd (linearmodels on the panel). `{q50:col}` in
    the formula is the original's median of col (for binarised outcomes)."""

    kind: str
    formula: str
    subset: str | None = None


@dataclass
class DataSet:
    case: rd.Case
    analyses: list[Analysis]
    panel: tuple[str, str] | None = None  # (entity, time)
    ids: list[str] = field(default_factory=list)


def _case(name: str, tags: Sequence[str] = (), extra: Sequence[dict[str, Any]] = ()) -> rd.Case:
    """A real_data.py case with the checkpoints named in `tags` (all when empty) and `extra`."""
    case = next(c for c in rd.CASES if c.name == name)
    cps = [c for c in case.checkpoints if not tags or c["tag"] in tags] + list(extra)
    return dataclasses.replace(case, checkpoints=cps)


def _a(kind: str, formula: str, subset: str | None = None) -> Analysis:
    return Analysis(kind, formula, subset)


HI = "I((lwage > {q50:lwage}) * 1)"
WP_X = "educ + exper + black + hisp + married + union"

DATA_SETS = [
    DataSet(
        _case("mroz", ["wage_ols", "wage_iv", "inlf_logit"]),
        [
            _a("ols", "lwage ~ educ + exper + age + city"),
            _a("ols", "lwage ~ educ + exper + I(exper**2)", "city == 1"),
            _a("ols", "lwage ~ educ * city + exper"),
            _a("ols", "hours ~ educ + exper + kidslt6 + kidsge6 + nwifeinc"),
            _a("ols", "faminc ~ lwage + huswage + hushrs"),
            _a("quantreg", "lwage ~ educ + exper + I(exper**2)"),
            _a("logit", f"{HI} ~ educ + exper", "inlf == 1"),
            _a("ols", "huswage ~ huseduc + husage + city"),
            _a("ols", "educ ~ motheduc + fatheduc + city"),
        ],
    ),
    DataSet(
        _case("wage_nested"),
        [
            _a("ols", "lwage ~ educ + exper + tenure + KWW"),
            _a("ols", "lwage ~ educ + exper + tenure", "married == 1"),
            _a("ols", "lwage ~ educ * urban + exper + tenure"),
            _a("ols", "KWW ~ IQ + educ + age"),
            _a("quantreg", "lwage ~ educ + exper + tenure + IQ"),
            _a("logit", f"{HI} ~ educ + exper + tenure + black"),
            _a("ols", "hours ~ lwage + married + age"),
            _a("ols", "sibs ~ meduc + feduc + black"),
        ],
    ),
    DataSet(
        _case("meps_iv"),
        [
            _a("ols", "ldrugexp ~ totchr + age + female + educyr + private"),
            _a("ols", "ldrugexp ~ hi_empunion + totchr + age + linc", "female == 1"),
            _a("ols", "ldrugexp ~ totchr * female + age + linc"),
            _a("ols", "totchr ~ ldrugexp + age + female"),
            _a("quantreg", "ldrugexp ~ hi_empunion + totchr + age + female + blhisp + linc"),
            _a("logit", "I((ldrugexp > {q50:ldrugexp}) * 1) ~ totchr + age + female + linc"),
            _a("logit", "private ~ linc + educyr + age + female"),
            _a("ols", "linc ~ educyr + age + female + msa"),
        ],
    ),
    DataSet(
        _case("card_iv2"),
        [
            _a("ols", "lwage ~ educ + exper + I(exper**2) + black + south + smsa"),
            _a("ols", "lwage ~ educ + exper + black", "south == 1"),
            _a("ols", "lwage ~ educ * black + exper + smsa"),
            _a("ols", "IQ ~ KWW + educ"),
            _a("quantreg", "lwage ~ educ + exper + black + south + smsa"),
            _a("logit", f"{HI} ~ educ + exper + black + south"),
            _a("ols", "educ ~ nearc4 + fatheduc + motheduc + black"),
            _a("logit", "smsa ~ educ + black + south"),
        ],
        ids=["id"],
    ),
    DataSet(
        _case("wage_panel_hausman"),
        [
            _a("pooled", f"lwage ~ 1 + {WP_X}"),
            _a("re", "lwage ~ 1 + educ + exper + expersq + married + union"),
            _a("twfe", "lwage ~ expersq + married + union + EntityEffects + TimeEffects"),
            _a("between", "lwage ~ 1 + educ + black + hisp + union"),
            _a("fd", "lwage ~ expersq + married + union"),
            _a("fe", "hours ~ married + union + EntityEffects"),
            _a("pooled", "lwage ~ 1 + hours + educ + exper"),
            _a("ols", "lwage ~ educ + exper + union", "year == 1987"),
            _a("quantreg", "lwage ~ educ + exper + union + married"),
        ],
        panel=("nr", "year"),
    ),
    DataSet(
        _case("fair_ordered", ["rate_ologit", "affairs_ols"]),
        [
            _a("ols", "affairs ~ age + yrs_married + religious"),
            _a("ols", f"affairs ~ {rd.FAIR_X} + rate_marriage", "religious >= 3"),
            _a("ols", f"rate_marriage ~ {rd.FAIR_X}"),
            _a("logit", f"I((affairs > 0) * 1) ~ {rd.FAIR_X} + rate_marriage"),
            _a("quantreg", "yrs_married ~ age + children + educ"),
            _a("ols", "educ ~ occupation + occupation_husb + age"),
            _a("logit", "I((rate_marriage >= 5) * 1) ~ age + yrs_married + children + religious"),
            _a("ols", "affairs ~ rate_marriage * religious + age + yrs_married"),
        ],
    ),
    DataSet(
        _case("randhie_counts"),
        [
            _a("ols", f"mdvis ~ {rd.RAND_X}"),
            _a("poisson", "mdvis ~ lncoins + idp + disea + physlm"),
            _a("logit", f"I((mdvis > 0) * 1) ~ {rd.RAND_X}"),
            _a("quantreg", "disea ~ physlm + hlthg + hlthf + hlthp + lncoins"),
            _a("ols", "disea ~ mdvis + physlm + hlthp"),
            _a("poisson", f"mdvis ~ {rd.RAND_X}", "disea > 10"),
            _a("ols", "mdvis ~ lncoins * physlm + disea"),
            _a("ols", "lpi ~ lncoins + idp + fmde"),
        ],
    ),
    DataSet(
        _case("fertility_counts"),
        [
            _a("ols", "kids ~ educ + age + black + C(year)"),
            _a("ols", f"kids ~ {rd.FERT_X}", "east == 0"),
            _a("ols", "kids ~ educ * black + age + I(age**2) + C(year)"),
            _a("logit", "I((kids > 2) * 1) ~ educ + age + black + C(year)"),
            _a("quantreg", "kids ~ educ + age + black"),
            _a("ols", "educ ~ meduc + feduc + black + kids"),
            _a("poisson", "kids ~ educ + age + I(age**2) + black + meduc"),
            _a("ols", "meduc ~ feduc + black + east"),
        ],
    ),
    DataSet(
        _case(
            "anes_vote",
            extra=[
                {
                    "tag": "lr_ols",
                    "model": "ols",
                    "formula": "selfLR ~ PID + age + educ + income + logpopul",
                    "vcov": "HC1",
                }
            ],
        ),
        [
            _a("ols", "vote ~ selfLR + ClinLR + DoleLR + PID"),
            _a("logit", "vote ~ PID + age + educ + income"),
            _a("ols", "selfLR ~ PID + age + educ + income"),
            _a("logit", "vote ~ selfLR + PID + income", "educ >= 4"),
            _a("quantreg", "selfLR ~ PID + age + educ"),
            _a("logit", "I((TVnews > {q50:TVnews}) * 1) ~ age + educ + income"),
            _a("ols", "ClinLR ~ selfLR + PID + vote"),
            _a("ols", "TVnews ~ age * educ + income"),
        ],
    ),
]


# ---------------------------------------------------------------------------------------------
# running replisynth


def original_of(ds: DataSet) -> pd.DataFrame:
    df = ds.case.load()
    return ds.case.prepare(df) if ds.case.prepare is not None else df


def run_replisynth(ds: DataSet, df: pd.DataFrame, root: Path, seed: int) -> dict[str, Any]:
    """`replisynth run` on the data set (real_data.py's manifest, with `seed`): the pinned and
    the pre-pin synthetic frames, the pinned outcomes and the tier met."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / f"{ds.case.name}.csv"
    df.to_csv(data, index=False)
    mf = root / f"{ds.case.name}.yaml"
    mf.write_text(yaml.safe_dump(rd.manifest(ds.case, data) | {"seed": seed}, sort_keys=False))
    cmd = [sys.executable, "-m", "replisynth.workflow.cli", "run", str(mf)]
    cmd += ["--results", str(root / "results"), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    out: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 1), "exit": proc.returncode}
    res = root / "results" / ds.case.name
    pinned, draw = res / "synthetic" / "data.parquet", res / "synthesize" / "data.parquet"
    if not pinned.exists() or not draw.exists():
        out["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return out
    out["frames"] = {"pinned": pd.read_parquet(pinned), "copula draw": pd.read_parquet(draw)}
    pins = json.loads((res / "synthesize" / "data.pin.json").read_text())
    out["outcomes"] = sorted({g["outcome"] for g in pins if g.get("status") != "skipped"})
    tiers = res / "verify" / "tiers.json"
    out["tier_met"] = json.loads(tiers.read_text())["tier_met"] if tiers.exists() else None
    return out


# ---------------------------------------------------------------------------------------------
# reference methods


def _units(df: pd.DataFrame, panel: tuple[str, str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Resampling units (rows, or the panel's entities) and each row's unit."""
    if panel is None:
        return np.arange(len(df)), np.arange(len(df))
    codes, uniq = pd.factorize(df[panel[0]])
    return np.arange(len(uniq)), codes


def bootstrap(
    df: pd.DataFrame, panel: tuple[str, str] | None, rng: np.random.Generator
) -> pd.DataFrame:
    """Rows (or entities, renumbered so a unit drawn twice is two entities) with replacement."""
    units, of_row = _units(df, panel)
    draw = rng.choice(units, size=len(units), replace=True)
    if panel is None:
        return df.iloc[draw].reset_index(drop=True)
    rows_of = pd.Series(np.arange(len(df))).groupby(of_row).apply(list)
    parts = [df.iloc[rows_of[u]].assign(**{panel[0]: k}) for k, u in enumerate(draw)]
    return pd.concat(parts, ignore_index=True)


def halves(
    df: pd.DataFrame, panel: tuple[str, str] | None, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows (or entities) split at random into two halves."""
    units, of_row = _units(df, panel)
    first = np.isin(of_row, rng.permutation(units)[: len(units) // 2])
    return df[first].reset_index(drop=True), df[~first].reset_index(drop=True)


def _leaf_donors(
    leaves_o: np.ndarray, leaves_s: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """For each synthetic row, a random original row in the same leaf."""
    order = np.argsort(leaves_o, kind="stable")
    uniq, start, count = np.unique(leaves_o[order], return_index=True, return_counts=True)
    pos = np.searchsorted(uniq, leaves_s)
    pick = start[pos] + np.floor(rng.random(len(leaves_s)) * count[pos]).astype("int64")
    return order[pick]


def _tree_leaves(
    x_o: pd.DataFrame, x_s: pd.DataFrame, y: pd.Series, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    design = encode(pd.concat([x_o, x_s], ignore_index=True), ()).matrix(
        "cart", len(x_o) + len(x_s)
    )
    m_o, m_s = design[: len(x_o)], design[len(x_o) :]
    seed = int(rng.integers(2**31))
    if pd.api.types.is_numeric_dtype(y.dtype) and not pd.api.types.is_bool_dtype(y.dtype):
        v = y.to_numpy(dtype="float64", na_value=np.nan)
        target = np.where(np.isnan(v), np.nanmin(v) - 1.0 - np.nanstd(v), v)
        tree: Any = DecisionTreeRegressor(min_samples_leaf=CART_LEAF, random_state=seed)
    else:
        target = pd.factorize(y.astype(object).where(y.notna(), None), use_na_sentinel=False)[0]
        tree = DecisionTreeClassifier(min_samples_leaf=CART_LEAF, random_state=seed)
    tree.fit(m_o, target)
    return tree.apply(m_o), tree.apply(m_s)


def sequential_cart(
    df: pd.DataFrame, columns: list[str], panel: tuple[str, str] | None, rng: np.random.Generator
) -> pd.DataFrame:
    """synthpop-style sequential CART: the first column bootstrapped, each later one drawn from
    the leaf its predecessors lead to; the panel's entity and period columns kept as they are."""
    fixed = list(panel) if panel else []
    out = df[fixed].reset_index(drop=True).copy()
    given = [panel[1]] if panel else []  # the period conditions every column
    todo = [c for c in columns if c not in fixed]
    for c in todo:
        if not given:
            out[c] = df[c].to_numpy()[rng.integers(len(df), size=len(df))]
        else:
            leaves_o, leaves_s = _tree_leaves(df[given], out[given], df[c], rng)
            out[c] = df[c].to_numpy()[_leaf_donors(leaves_o, leaves_s, rng)]
        given.append(c)
    return out


# ---------------------------------------------------------------------------------------------
# analyses


def fill_formula(formula: str, original: pd.DataFrame) -> str:
    """Replace `{q50:col}` by the original's median of col."""
    return re.sub(r"\{q50:(\w+)\}", lambda m: repr(float(original[m.group(1)].median())), formula)


def _fit_sm(a: Analysis, formula: str, data: pd.DataFrame) -> Any:
    import statsmodels.formula.api as smf

    if a.kind == "ols":
        return smf.ols(formula, data).fit(cov_type="HC1")
    if a.kind == "logit":
        return smf.logit(formula, data).fit(disp=0, maxiter=200)
    if a.kind == "poisson":
        return smf.poisson(formula, data).fit(disp=0, maxiter=200, cov_type="HC0")
    if a.kind == "quantreg":
        return smf.quantreg(formula, data).fit(q=0.5, max_iter=5000)
    raise ValueError(f"unknown analysis kind {a.kind!r}")


PANEL_MODELS = {
    "pooled": "PooledOLS",
    "re": "RandomEffects",
    "fe": "PanelOLS",
    "twfe": "PanelOLS",
    "between": "BetweenOLS",
    "fd": "FirstDifferenceOLS",
}


def _fit_panel(a: Analysis, formula: str, data: pd.DataFrame, panel: tuple[str, str]) -> Any:
    import linearmodels.panel as lp

    model = getattr(lp, PANEL_MODELS[a.kind])
    frame = data.set_index(list(panel))
    if a.kind == "between":
        return model.from_formula(formula, frame).fit(cov_type="robust")
    return model.from_formula(formula, frame).fit(cov_type="clustered", cluster_entity=True)


def fit(a: Analysis, data: pd.DataFrame, original: pd.DataFrame, panel: Any) -> pd.DataFrame:
    """The analysis on `data`: coefficients and SEs (rows: terms but the intercept)."""
    data = data.query(a.subset) if a.subset else data
    formula = fill_formula(a.formula, original)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if a.kind in PANEL_MODELS:
            res = _fit_panel(a, formula, data, panel)
        else:
            res = _fit_sm(a, formula, data)
    se = res.bse if hasattr(res, "bse") else res.std_errors
    out = pd.DataFrame({"b": res.params, "se": se})
    out = out.drop(index=[t for t in ("Intercept", "const") if t in out.index])
    if not np.isfinite(out.to_numpy()).all():
        raise ValueError("non-finite estimates")
    # a term constant on the sample (`east` where east == 0) has a coefficient and an SE of
    # rounding size (1e-17): its z is noise, not a distance
    return out[out["se"] > 1e-9 * float(out["se"].max())]


def compare(ref: pd.DataFrame, other: pd.DataFrame | None) -> dict[str, Any]:
    """z of every coefficient of the reference fit; an analysis that could not be fitted (or
    lost a term) is beyond by definition."""
    if other is None or not set(ref.index) <= set(other.index):
        return {"z": [], "max_z": float("inf"), "failed": True}
    z = (other.loc[ref.index, "b"] - ref["b"]).abs() / ref["se"]
    return {"z": [float(v) for v in z], "max_z": float(z.max()), "failed": False}


def _try_fit(a: Analysis, data: pd.DataFrame, original: pd.DataFrame, panel: Any) -> Any:
    try:
        return fit(a, data, original, panel)
    except Exception:  # a fit that fails on a method's data counts as beyond (see compare)
        return None


# ---------------------------------------------------------------------------------------------
# support of the pinned outcomes


def support(original: pd.Series, synthetic: pd.Series) -> dict[str, float | None]:
    """Shares of the synthetic non-missing values negative (when the original has none),
    non-integer (when every original value is an integer), outside the original's range."""
    o = pd.to_numeric(original, errors="coerce").dropna().to_numpy(dtype="float64")
    s = pd.to_numeric(synthetic, errors="coerce").dropna().to_numpy(dtype="float64")
    if len(o) == 0 or len(s) == 0:
        return {"negative": None, "non_integer": None, "outside": None}
    integer = bool(np.all(o == np.round(o)))
    return {
        "negative": float(np.mean(s < 0)) if o.min() >= 0 else None,
        "non_integer": float(np.mean(np.abs(s - np.round(s)) > 1e-9)) if integer else None,
        "outside": float(np.mean((s < o.min()) | (s > o.max()))),
    }


# ---------------------------------------------------------------------------------------------
# one data set


def compared_columns(ds: DataSet, synthetic: pd.DataFrame, original: pd.DataFrame) -> list[str]:
    """The released columns the pMSE compares, as the audit does: all the synthetic file holds
    but ids, the panel's entity and columns released as all-missing."""
    drop = set(ds.ids) | ({ds.panel[0]} if ds.panel else set())
    return [
        c
        for c in synthetic.columns
        if c in original.columns and c not in drop and synthetic[c].notna().any()
    ]


def method_frames(
    ds: DataSet,
    df: pd.DataFrame,
    run: dict[str, Any],
    cols: list[str],
    seed: int,
    cart: bool,
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Per method: (its original, its synthetic file)."""
    rng = np.random.default_rng([seed, 15])
    first, second = halves(df, ds.panel, rng)
    frames = {
        "pinned": (df, run["frames"]["pinned"]),
        "copula draw": (df, run["frames"]["copula draw"]),
        "bootstrap": (df, bootstrap(df, ds.panel, rng)),
        "half split": (first, second),
    }
    if cart:
        frames["sequential CART"] = (df, sequential_cart(df, cols, ds.panel, rng))
    return {m: frames[m] for m in METHODS if m in frames}


def evaluate_method(
    ds: DataSet, orig: pd.DataFrame, syn: pd.DataFrame, cols: list[str], seed: int
) -> dict[str, Any]:
    """Every analysis on one method's file against its original, and the pMSE ratios."""
    results = []
    for a in ds.analyses:
        ref = _try_fit(a, orig, orig, ds.panel)
        if ref is None:
            continue  # not estimable on the original: not an analysis of this data set
        cmp = compare(ref, _try_fit(a, syn, orig, ds.panel))
        results.append(
            {"analysis": f"{a.kind}: {a.formula}" + (f" | {a.subset}" if a.subset else "")} | cmp
        )
    u = pmse_ratios(orig, syn, np.random.default_rng([seed, 16]), cols)
    return {
        "analyses": results,
        "pmse_logit": u["logit"]["ratio"],
        "pmse_cart": u["cart"]["ratio"],
    }


def run_data_set(ds: DataSet, root: Path, seed: int, cart: bool) -> dict[str, Any]:
    df = original_of(ds)
    run = run_replisynth(ds, df, root, seed)
    out: dict[str, Any] = {"name": ds.case.name, "rows": len(df), "seed": seed}
    out |= {k: run[k] for k in ("seconds", "exit", "error", "tier_met", "outcomes") if k in run}
    if "error" in run:
        return out
    cols = compared_columns(ds, run["frames"]["pinned"], df)
    out["methods"] = {}
    for m, (orig, syn) in method_frames(ds, df, run, cols, seed, cart).items():
        out["methods"][m] = evaluate_method(ds, orig, syn, cols, seed)
        out["methods"][m]["support"] = {
            y: support(orig[y], syn[y]) for y in run["outcomes"] if y in syn and y in orig
        }
    return out


# ---------------------------------------------------------------------------------------------
# tables


def summarize(rows: list[dict[str, Any]], method: str) -> dict[str, Any] | None:
    """One method over the given data-set results: median z, analyses beyond, worst, medians of
    the pMSE ratios over data sets, largest support shares."""
    ms = [r["methods"][method] for r in rows if method in r.get("methods", {})]
    if not ms:
        return None
    an = [a for m in ms for a in m["analyses"]]
    z = [v for a in an for v in a["z"]]
    beyond = [a for a in an if a["max_z"] > BEYOND]
    finite = [a["max_z"] for a in an if np.isfinite(a["max_z"])]

    def med(key: str) -> float | None:
        v = [m[key] for m in ms if m[key] is not None]
        return float(np.median(v)) if v else None

    def worst_share(key: str) -> float | None:
        v = [s[key] for m in ms for s in m["support"].values() if s[key] is not None]
        return max(v) if v else None

    return {
        "data_sets": len(ms),
        "analyses": len(an),
        "median_z": float(np.median(z)) if z else None,
        "beyond": len(beyond),
        "failed": sum(a["failed"] for a in an),
        "worst_z": max(finite) if finite else None,
        "pmse_cart": med("pmse_cart"),
        "pmse_logit": med("pmse_logit"),
        "negative": worst_share("negative"),
        "non_integer": worst_share("non_integer"),
        "outside": worst_share("outside"),
    }


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _beyond(s: dict[str, Any]) -> str:
    failed = f", {s['failed']} not estimable" if s["failed"] else ""
    return f"{s['beyond']}/{s['analyses']} (worst {_f(s['worst_z'], 1)}{failed})"


def markdown(results: list[dict[str, Any]]) -> str:
    """The main table (one row per method), the per-data-set table and the support table."""
    ok = [r for r in results if "methods" in r]
    lines = [
        f"| method | median z | analyses > {BEYOND:g} SE | CART pMSE ratio (median) | logistic pMSE ratio (median) |",
        "|---|---|---|---|---|",
    ]
    for m in METHODS:
        s = summarize(ok, m)
        if s:
            lines.append(
                f"| {m} | {_f(s['median_z'])} | {_beyond(s)} | {_f(s['pmse_cart'], 1)} | {_f(s['pmse_logit'], 1)} |"
            )
    lines += ["", "Per data set:", ""]
    lines += [
        f"| data set (rows, seed) | tier | method | median z | analyses > {BEYOND:g} SE | CART pMSE | logistic pMSE |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        head = f"{r['name']} ({r['rows']}, {r['seed']})"
        if "methods" not in r:
            lines.append(f"| {head} | error | {r.get('error', '')} | | | | |")
            continue
        for m in METHODS:
            s = summarize([r], m)
            if s:
                lines.append(
                    f"| {head} | {_f(r.get('tier_met'))} | {m} | {_f(s['median_z'])} | {_beyond(s)} | "
                    f"{_f(s['pmse_cart'], 1)} | {_f(s['pmse_logit'], 1)} |"
                )
    lines += [
        "",
        "Support of the pinned outcomes (share of rows; — where the original allows it):",
        "",
    ]
    lines += [
        "| data set (seed) | outcome | negative (pinned / draw) | non-integer (pinned / draw) | outside [min, max] (pinned / draw) |",
        "|---|---|---|---|---|",
    ]
    for r in ok:
        pin, draw = r["methods"]["pinned"]["support"], r["methods"]["copula draw"]["support"]
        for y, s in pin.items():
            d = draw.get(y, {})
            cells = [
                f"{_pct(s[k])} / {_pct(d.get(k))}" for k in ("negative", "non_integer", "outside")
            ]
            lines.append(f"| {r['name']} ({r['seed']}) | {y} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="data set names (default: all)")
    ap.add_argument("--seeds", nargs="*", type=int, default=[SEED], help=f"seeds (default {SEED})")
    ap.add_argument("--keep", help="write data, manifests and results here (default: temporary)")
    ap.add_argument("--no-cart", action="store_true", help="leave out the sequential CART")
    ap.add_argument("--json", help="write the results as JSON here")
    ap.add_argument("--markdown", help="write the tables as Markdown here")
    args = ap.parse_args(argv)
    sets = [d for d in DATA_SETS if not args.only or d.case.name in args.only]
    results = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        for seed in args.seeds:
            for ds in sets:
                r = run_data_set(ds, root / f"{ds.case.name}-{seed}", seed, not args.no_cart)
                results.append(r)
                print(_progress(r), flush=True)
    table = markdown(results)
    print(table)
    seconds = time.perf_counter() - t0
    print(f"total {seconds:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    if args.markdown:
        write_markdown(Path(args.markdown), provenance(argv, seconds) + table)
    return 0


START, END = "<!-- utility table: start -->", "<!-- utility table: end -->"


def provenance(argv: list[str] | None, seconds: float) -> str:
    """The line above the tables: when, on which commit, with which command."""
    repo = Path(__file__).resolve().parent.parent
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=repo
    )
    commit = git.stdout.strip() or "unknown"
    shown, skip = [], False
    for a in sys.argv[1:] if argv is None else argv:  # where the outputs went is not the method
        if not skip and a not in ("--json", "--keep"):
            shown.append(a)
        skip = a in ("--json", "--keep")
    args = " ".join(shown)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f"Measured {when} on commit {commit} in {seconds:.0f} s: "
        f"`python benchmarks/utility.py {args}`\n\n"
    )


def write_markdown(path: Path, text: str) -> None:
    """Write the tables to `path`, or, when it already holds the markers, between them (the
    rest of the page stays as it is)."""
    block = f"{START}\n{text}{END}\n"
    old = path.read_text() if path.exists() else ""
    if START in old and END in old:
        head, rest = old.split(START, 1)
        tail = rest.split(END, 1)[1]
        block = head + block + (tail[1:] if tail.startswith("\n") else tail)
    path.write_text(block)


def _progress(r: dict[str, Any]) -> str:
    if "methods" not in r:
        return f"{r['name']} seed {r['seed']}: exit {r.get('exit')}: {r.get('error')}"
    parts = []
    for m in METHODS:
        s = summarize([r], m)
        if s:
            parts.append(
                f"{m} z̃ {_f(s['median_z'])} >5SE {s['beyond']}/{s['analyses']} CART {_f(s['pmse_cart'], 1)}"
            )
    return (
        f"{r['name']} seed {r['seed']} ({r['seconds']} s, tier {r.get('tier_met')}): "
        + "; ".join(parts)
    )


if __name__ == "__main__":
    raise SystemExit(main())
