"""Seeded register-like data at any size, with a manifest (benchmarks for issue 6).

True structure (so the checkpoints have known targets): 20 columns. age ~ U{18..80};
female ~ B(0.5); region (8 nominal levels), county_type (3, a stratum); educ_years = 9..18
ordinal from a latent; income = exp(9.5 + 0.05 educ + 0.01 age + N(0, 0.6)), 5% missing;
hours continuous; employed = 1{latent > 0}; children Poisson(1.1) capped at 6; married
B(0.55); tenure integer; sector (12 nominal); 5 extra continuous x1..x5 correlated with
income. Strata: female x county_type. Checkpoints: 5 OLS (log income equations, hours,
tenure) with HC1, weights, a factor, an interaction and a subset. `--nested` adds three
short specifications beside long ones on the same outcome (x1, hours, tenure), which the
cross-moment alignment (`design_moments.align_moments`) always has to work on.

  python benchmarks/generate.py ROWS OUTDIR [--nested]   -> OUTDIR/register.parquet, OUTDIR/manifest.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def register(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 81, size=n)
    female = rng.binomial(1, 0.5, size=n)
    region = rng.choice(np.arange(1, 9), p=[0.2, 0.15, 0.15, 0.12, 0.12, 0.1, 0.1, 0.06], size=n)
    county = rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2], size=n)
    z = rng.normal(size=n)
    educ = np.clip(np.round(12.5 + 2.2 * z + 0.3 * (county == 1)), 9, 18).astype(int)
    lninc = (
        9.5
        + 0.05 * educ
        + 0.01 * age
        - 0.15 * female
        + 0.05 * (region % 3)
        + rng.normal(scale=0.6, size=n)
    )
    income = np.exp(lninc)
    income[rng.random(n) < 0.05] = np.nan
    employed = (0.4 * z - 0.02 * (age - 45) + rng.normal(size=n) > -0.8).astype(int)
    hours = np.where(
        employed == 1, np.clip(38 + 3 * z - 4 * female + rng.normal(scale=6, size=n), 5, 70), 0.0
    )
    children = np.minimum(rng.poisson(1.1, size=n), 6)
    married = rng.binomial(1, np.clip(0.3 + 0.006 * (age - 18), 0, 0.9))
    tenure = np.clip(np.round((age - 18) * rng.uniform(0, 0.6, size=n)), 0, 45).astype(int)
    sector = rng.choice(np.arange(1, 13), size=n)
    extra = {f"x{k}": 0.3 * np.nan_to_num(lninc - 10) + rng.normal(size=n) for k in range(1, 6)}
    return pd.DataFrame(
        {
            "pid": np.arange(1, n + 1),
            "age": age,
            "female": female,
            "region": region,
            "county_type": county,
            "educ_years": educ,
            "income": income,
            "employed": employed,
            "hours": hours,
            "children": children,
            "married": married,
            "tenure": tenure,
            "sector": sector,
            "weight": rng.uniform(0.5, 3.0, size=n),
            **extra,
        }
    )


NESTED = [  # short specifications nested in mincer, hours_w and tenure_f (same outcome, sample, weights)
    {
        "tag": "mincer_short",
        "source": "reg",
        "model": "ols",
        "formula": "x1 ~ educ_years + age",
        "vcov": "HC1",
    },
    {
        "tag": "hours_short",
        "source": "reg",
        "model": "ols",
        "formula": "hours ~ female + age",
        "weights": "weight",
    },
    {"tag": "tenure_short", "source": "reg", "model": "ols", "formula": "tenure ~ age + married"},
]


def manifest(path: str, name: str = "register", nested: bool = False) -> dict:
    out = {
        "name": name,
        "seed": 20261123,
        "sources": {
            "reg": {
                "path": path,
                "ids": ["pid"],
                "strata": ["female", "county_type"],
                "categorical": ["region", "sector"],
            }
        },
        "checkpoints": [
            {
                "tag": "mincer",
                "source": "reg",
                "model": "ols",
                "formula": "x1 ~ educ_years + age + I(age**2) + female",
                "vcov": "HC1",
            },
            {
                "tag": "hours_w",
                "source": "reg",
                "model": "ols",
                "formula": "hours ~ female * children + age",
                "weights": "weight",
            },
            {
                "tag": "tenure_f",
                "source": "reg",
                "model": "ols",
                "formula": "tenure ~ age + C(sector) + married",
            },
            {
                "tag": "x2_sub",
                "source": "reg",
                "model": "ols",
                "formula": "x2 ~ educ_years + x3",
                "subset": "employed == 1",
            },
            {
                "tag": "x4_reg",
                "source": "reg",
                "model": "ols",
                "formula": "x4 ~ C(region) + x5 + hours",
                "vcov": "HC1",
            },
        ],
        "verify": {"tier": 4},
    }
    if nested:
        out["checkpoints"] += [dict(c) for c in NESTED]
    return out


def main(rows: int, out: str, nested: bool = False) -> None:
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    register(rows).to_parquet(d / "register.parquet")
    name = f"register_{rows}" + ("_nested" if nested else "")
    (d / "manifest.yaml").write_text(
        yaml.safe_dump(manifest(str(d / "register.parquet"), name, nested))
    )
    print(f"wrote {d}/register.parquet ({rows} rows) and {d}/manifest.yaml")


if __name__ == "__main__":
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if flags - {"--nested"}:
        sys.exit(f"unknown option(s): {', '.join(sorted(flags - {'--nested'}))}")
    main(
        int(args[0]), args[1] if len(args) > 1 else f"/tmp/register_{args[0]}", "--nested" in flags
    )


# ---------------------------------------------------------------------------------------------
# The benchmark matrix (issue 17): kinds of manifests x sizes. Each kind names its columns its
# own way (RENAMES), so nothing depends on one data set's names.

KINDS = ("ols", "glm", "register", "ordered", "panel", "strata", "claims")


def register_plus(n: int, seed: int = 1) -> pd.DataFrame:
    """`register` with x5 replaced by two outcomes the GLM kinds need: an overdispersed count
    (visits ~ NB2 with mean exp(0.2 + 0.01 age - 0.2 female), alpha 0.8) and a 5-level
    ordered score (satisfaction, cut points of a logistic latent in hours and married)."""
    df = register(n, seed).drop(columns=["x5"])
    rng = np.random.default_rng(seed + 7)
    mean = np.exp(0.2 + 0.01 * (df["age"] - 45) - 0.2 * df["female"])
    df["visits"] = rng.poisson(rng.gamma(1 / 0.8, mean * 0.8))
    latent = 0.03 * (df["hours"] - 30) + 0.4 * df["married"] + rng.logistic(size=n)
    df["satisfaction"] = np.digitize(latent, [-1.5, -0.5, 0.5, 1.5]) + 1
    return df


def panel_data(n: int, seed: int = 1, periods: int = 8) -> pd.DataFrame:
    """A balanced panel of n // periods units over `periods` years: a unit effect correlated
    with the regressors, a year trend, wages on experience, union and hours."""
    rng = np.random.default_rng(seed)
    units = max(n // periods, 2)
    unit = np.repeat(np.arange(1, units + 1), periods)
    year = np.tile(np.arange(2001, 2001 + periods), units)
    a = rng.normal(size=units)[unit - 1]
    exper = np.clip(rng.integers(0, 20, units)[unit - 1] + (year - 2001), 0, 40)
    union = (0.5 * a + rng.normal(size=len(unit)) > 0.4).astype(int)
    hours = np.clip(38 + 2 * a + rng.normal(scale=5, size=len(unit)), 5, 70)
    lw = 1.5 + a * 0.3 + 0.04 * exper + 0.1 * union + 0.005 * hours + rng.normal(0, 0.3, len(unit))
    return pd.DataFrame(
        {
            "unit": unit,
            "year": year,
            "exper": exper,
            "union": union,
            "hours": hours,
            "married": (rng.random(len(unit)) < 0.5 + 0.1 * np.tanh(a)).astype(int),
            "sector": rng.integers(1, 7, units)[unit - 1],
            "lwage": lw,
            "z1": a + rng.normal(size=len(unit)),
            "z2": rng.normal(size=len(unit)),
        }
    )


def claims_data(n: int, seed: int = 1) -> pd.DataFrame:
    """Health-claims-like data, shaped unlike `register`: 20 columns, a 40-level provider,
    a skewed cost with 22% exact zeros, a zero-heavy overdispersed count, a rare binary
    outcome (8%), a bounded score, 10% missing income, 15 diagnosis groups."""
    rng = np.random.default_rng(seed + 101)
    age = rng.integers(0, 96, size=n)
    sex = rng.binomial(1, 0.52, size=n)
    urban = rng.binomial(1, 0.7, size=n)
    region = rng.choice(np.arange(1, 7), p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.1], size=n)
    provider = rng.integers(1, 41, size=n)
    year = rng.integers(2015, 2023, size=n)
    diag = rng.choice(np.arange(1, 16), size=n)
    bmi = np.round(np.exp(rng.normal(3.25, 0.18, size=n)) + 0.03 * (age - 45) / 10, 1)
    smoker = (rng.random(n) < 0.18 + 0.05 * (1 - urban)).astype(int)
    eta = -2.9 + 0.02 * (age - 50) + 0.06 * (bmi - 26) + 0.3 * smoker + 0.05 * (region % 3)
    chronic = (eta + rng.normal(size=n) > 0).astype(int)
    mu = np.exp(-0.4 + 0.012 * age + 0.6 * chronic - 0.1 * sex)
    gp = rng.poisson(rng.gamma(1 / 1.6, mu * 1.6))
    admits = rng.poisson(np.exp(-2.0 + 0.01 * age + 0.4 * smoker + 0.5 * chronic))
    stay = np.where(admits > 0, rng.integers(1, 30, size=n), 0)
    prov_fx = rng.normal(0, 0.3, size=41)[provider]
    cost = np.exp(
        6.5 + 0.01 * age + 0.02 * (bmi - 26) + 0.05 * stay + prov_fx + rng.normal(0, 1.0, n)
    )
    cost[rng.random(n) < 0.22] = 0.0
    income = np.exp(10.2 + 0.1 * urban + 0.004 * np.minimum(age, 65) + rng.normal(0, 0.5, n))
    income[rng.random(n) < 0.10] = np.nan
    score = np.clip(
        np.round(70 - 0.2 * age + 5 * urban - 8 * chronic + rng.normal(0, 10, n)), 0, 100
    )
    return pd.DataFrame(
        {
            "member": np.arange(1, n + 1),
            "age": age,
            "sex": sex,
            "urban": urban,
            "region": region,
            "provider": provider,
            "year": year,
            "diag": diag,
            "bmi": bmi,
            "smoker": smoker,
            "chronic": chronic,
            "gp_visits": gp,
            "admits": admits,
            "stay_days": stay,
            "cost": cost,
            "income": income,
            "score": score,
            "w": rng.uniform(0.2, 5.0, size=n),
            "u1": rng.normal(size=n) + 0.2 * chronic,
            "u2": rng.standard_t(4, size=n),
        }
    )


def _claims_checkpoints() -> list[dict]:
    return [
        {
            "tag": "chronic_probit",
            "model": "probit",
            "formula": "chronic ~ age + bmi + smoker + C(region)",
        },
        {"tag": "gp_nb", "model": "nbreg", "formula": "gp_visits ~ age + sex + chronic"},
        {
            "tag": "cost_fe",
            "model": "fe",
            "formula": "cost ~ age + bmi + stay_days",
            "absorb": ["provider", "year"],
            "vcov": "cluster:provider",
        },
        {"tag": "admits_pois", "model": "poisson", "formula": "admits ~ age + smoker + chronic"},
        {
            "tag": "score_w",
            "model": "ols",
            "formula": "score ~ sex * urban + age + C(diag)",
            "weights": "w",
            "vcov": "HC1",
        },
    ]


RENAMES = {  # the columns of each kind under its own names
    "ols": {"x1": "score_a", "x2": "score_b", "x3": "score_c", "x4": "score_d", "hours": "hrs"},
    "glm": {
        "employed": "in_work",
        "visits": "gp_visits",
        "married": "partnered",
        "sector": "industry",
        "region": "district",
        "weight": "pw",
    },
    "register": {"age": "alder", "region": "landsdel", "sector": "naering", "income": "inntekt"},
    "ordered": {"satisfaction": "rating", "educ_years": "school_yrs", "hours": "workhours"},
    "panel": {"unit": "person", "year": "wave", "lwage": "log_pay"},
    "strata": {"county_type": "urbanity", "region": "area", "female": "sex", "married": "civil"},
    "claims": {"provider": "prov_id", "chronic": "chronic_dx", "cost": "paid_amt"},
}


def _ols_checkpoints() -> list[dict]:
    return [dict(c, source="reg") for c in manifest("")["checkpoints"] if c["tag"] != "x4_reg"] + [
        {
            "tag": "x4_reg",
            "source": "reg",
            "model": "ols",
            "formula": "x4 ~ C(region) + x3 + hours",
            "vcov": "HC1",
        }
    ]


def _glm_checkpoints() -> list[dict]:
    return [
        {
            "tag": "work_probit",
            "model": "probit",
            "formula": "employed ~ age + female + educ_years + C(region)",
        },
        {
            "tag": "visits_nb",
            "model": "nbreg",
            "formula": "visits ~ age + female + children",
            "vcov": "HC1",
        },
        {
            "tag": "x1_fe",
            "model": "fe",
            "formula": "x1 ~ educ_years + age + hours",
            "absorb": ["sector", "region"],
            "vcov": "cluster:sector",
        },
        {
            "tag": "married_logit",
            "model": "logit",
            "formula": "married ~ age + female + educ_years",
        },
        {
            "tag": "hours_wi",
            "model": "ols",
            "formula": "hours ~ female * children + age",
            "weights": "weight",
        },
    ]


def _register_checkpoints() -> list[dict]:
    return [
        {
            "tag": "earn_hc1",
            "model": "ols",
            "formula": "x1 ~ educ_years + age + I(age**2) + C(region)",
            "vcov": "HC1",
        },
        {
            "tag": "hours_aw",
            "model": "ols",
            "formula": "hours ~ female + age + children",
            "weights": "weight",
        },
        {"tag": "work_logit", "model": "logit", "formula": "employed ~ age + female + educ_years"},
        {"tag": "kids_pois", "model": "poisson", "formula": "children ~ age + married + female"},
        {"tag": "tenure_sec", "model": "ols", "formula": "tenure ~ age + C(sector) + married"},
    ]


def _ordered_checkpoints() -> list[dict]:
    lv = [1, 2, 3, 4, 5]
    return [
        {
            "tag": "sat_ologit",
            "model": "ologit",
            "formula": "satisfaction ~ hours + married + age",
            "levels": lv,
        },
        {
            "tag": "sat_oprobit",
            "model": "oprobit",
            "formula": "satisfaction ~ hours + female",
            "levels": lv,
            "subset": "age >= 30",
        },
        {"tag": "x2_ols", "model": "ols", "formula": "x2 ~ x3 + educ_years", "vcov": "HC1"},
        {"tag": "married_logit", "model": "logit", "formula": "married ~ age + female"},
        {"tag": "tenure_ols", "model": "ols", "formula": "tenure ~ age + married"},
    ]


def _panel_checkpoints() -> list[dict]:
    return [
        {
            "tag": "fe_twoway",
            "model": "fe",
            "formula": "lwage ~ union + hours + married",
            "absorb": ["unit", "year"],
            "vcov": "cluster:unit",
        },
        {
            "tag": "fe_hours",
            "model": "fe",
            "formula": "hours ~ union + exper",
            "entity": "unit",
            "time": "year",
            "vcov": "cluster:unit",
        },
        {"tag": "z1_ols", "model": "ols", "formula": "z1 ~ exper + C(sector)", "vcov": "HC1"},
        {"tag": "union_logit", "model": "logit", "formula": "union ~ z1 + exper"},
        {"tag": "z2_ols", "model": "ols", "formula": "z2 ~ hours + married"},
    ]


def _rename(text: str, names: dict[str, str]) -> str:
    import re

    return re.sub(r"\b(" + "|".join(map(re.escape, names)) + r")\b", lambda m: names[m[1]], text)


def _renamed(obj, names: dict[str, str]):
    """`obj` (a manifest part) with every column name replaced (formulas and subsets by word)."""
    if isinstance(obj, dict):
        return {k: _renamed(v, names) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_renamed(v, names) for v in obj]
    if isinstance(obj, str) and names:
        return _rename(obj, names)
    return obj


def matrix_case(kind: str, rows: int, out: str, seed: int = 1) -> Path:
    """Write the data and manifest of one matrix cell; the manifest's path."""
    if kind not in KINDS:
        raise SystemExit(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    d = Path(out).resolve()
    d.mkdir(parents=True, exist_ok=True)
    names = RENAMES[kind]
    if kind == "panel":
        df = panel_data(rows, seed)
        src = {"ids": [], "panel": {"entity": "unit", "time": "year"}, "continuous": ["hours"]}
        cps = _panel_checkpoints()
    elif kind == "claims":
        df = claims_data(rows, seed)
        src = {
            "ids": ["member"],
            "strata": ["sex", "urban"],
            "categorical": ["region", "provider", "diag"],
        }
        cps = _claims_checkpoints()
    else:
        df = register_plus(rows, seed)
        strata = {
            "glm": ["female", "county_type"],
            "strata": ["female", "county_type", "region", "married"],
        }
        src = {
            "ids": ["pid"],
            "strata": strata.get(kind, ["county_type"]),
            "categorical": ["region", "sector"],
        }
        cps = {
            "ols": _ols_checkpoints,
            "glm": _glm_checkpoints,
            "register": _register_checkpoints,
            "ordered": _ordered_checkpoints,
            "strata": _register_checkpoints,
        }[kind]()
    data = d / f"{kind}.parquet"
    df.rename(columns=names).to_parquet(data)
    m = {
        "name": f"{kind}_{rows}",
        "seed": 20261206,
        "sources": {"reg": {"path": str(data), **src}},
        "checkpoints": [dict(c, source="reg") for c in cps],
        "verify": {"tier": 4},
    }
    path = d / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(_renamed(m, names), sort_keys=False))
    return path
