"""Seeded register-like data at any size, with a manifest (benchmarks for issue 6).

True structure (so the checkpoints have known targets): 20 columns. age ~ U{18..80};
female ~ B(0.5); region (8 nominal levels), county_type (3, a stratum); educ_years = 9..18
ordinal from a latent; income = exp(9.5 + 0.05 educ + 0.01 age + N(0, 0.6)), 5% missing;
hours continuous; employed = 1{latent > 0}; children Poisson(1.1) capped at 6; married
B(0.55); tenure integer; sector (12 nominal); 5 extra continuous x1..x5 correlated with
income. Strata: female x county_type. Checkpoints: 5 OLS (log income equations, hours,
tenure) with HC1, weights, a factor, an interaction and a subset. `--nested` adds three
short specifications beside long ones on the same outcome (x1, hours, tenure), which the
cross-moment alignment (`xmom.align_moments`) always has to work on.

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
