"""Make data/card.dta, the embedded demo: Card (1995) NLS Young Men, as shipped inside
linearmodels (linearmodels.datasets.card), written as Stata 118 with variable labels, value
labels and integer storage types so the schema floor is exercised.

Changes from linearmodels' copy (so that the demo has no deterministic identities the copula
cannot know about): the nine region dummies reg661..reg669 become one labelled factor
`region66`; `married` gets its NLS value labels. Run: python data/make_card_dta.py data/card.dta
"""

import datetime as dt
import sys

import numpy as np
import pandas as pd
from linearmodels.datasets import card

REGIONS = {
    1: "New England",
    2: "Middle Atlantic",
    3: "East North Central",
    4: "West North Central",
    5: "South Atlantic",
    6: "East South Central",
    7: "West South Central",
    8: "Mountain",
    9: "Pacific",
}
MARRIED = {
    1: "married, spouse present",
    2: "married, spouse absent",
    3: "separated",
    4: "divorced",
    5: "widowed",
    6: "never married",
}
LABELS = {
    "id": "person identifier",
    "nearc2": "=1 if near 2 yr college, 1966",
    "nearc4": "=1 if near 4 yr college, 1966",
    "educ": "years of schooling, 1976",
    "age": "age in years, 1976",
    "fatheduc": "father's schooling",
    "motheduc": "mother's schooling",
    "weight": "NLS sampling weight, 1976",
    "momdad14": "=1 if live with mom, dad at 14",
    "sinmom14": "=1 if with single mom at 14",
    "step14": "=1 if with step parent at 14",
    "region66": "census region, 1966",
    "south66": "=1 if in south in 1966",
    "black": "=1 if black",
    "smsa": "=1 if in SMSA, 1976",
    "south": "=1 if in south, 1976",
    "smsa66": "=1 if in SMSA, 1966",
    "wage": "hourly wage in cents, 1976",
    "enroll": "=1 if enrolled in school, 1976",
    "KWW": "knowledge world of work score",
    "IQ": "IQ score",
    "married": "marital status, 1976",
    "libcrd14": "=1 if library card in home at 14",
    "exper": "age - educ - 6",
    "lwage": "log(wage)",
    "expersq": "exper^2",
}


def build() -> pd.DataFrame:
    d = card.load()
    regs = [f"reg66{i}" for i in range(1, 10)]
    region = d[regs].to_numpy().argmax(axis=1) + 1
    assert (d[regs].sum(axis=1) == 1).all()
    d = d.drop(columns=regs)
    d.insert(d.columns.get_loc("south66"), "region66", region.astype("int8"))
    small = [
        "nearc2",
        "nearc4",
        "momdad14",
        "sinmom14",
        "step14",
        "south66",
        "black",
        "smsa",
        "south",
        "smsa66",
        "enroll",
    ]
    for c in small:
        d[c] = d[c].astype("int8")
    for c in ["educ", "age", "exper"]:
        d[c] = d[c].astype("int8")
    d["expersq"] = d["expersq"].astype("int16")
    d["id"] = d["id"].astype("int16")
    d["wage"] = d["wage"].astype("int16")
    d["weight"] = d["weight"].astype("int32")
    for c in ["fatheduc", "motheduc", "KWW", "IQ", "married", "libcrd14"]:
        d[c] = d[c].astype("float64")  # hold missing values
    d["lwage"] = d["lwage"].astype("float64")
    return d


def main(path: str) -> None:
    d = build()
    d.to_stata(
        path,
        write_index=False,
        version=118,
        time_stamp=dt.datetime(2000, 1, 1),
        data_label="Card (1995) NLS Young Men, from linearmodels",
        variable_labels=LABELS,
        value_labels={"region66": REGIONS, "married": MARRIED},
    )
    print(
        f"wrote {path}: {d.shape[0]} rows, {d.shape[1]} columns, {int(np.isnan(d['IQ']).sum())} missing IQ"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/card.dta")
