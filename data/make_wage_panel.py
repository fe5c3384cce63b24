"""Make data/wage_panel.csv, the panel demo: Vella and Verbeek (1998) NLSY young men, 545 men
observed 1980-1987 (4,360 rows), as shipped inside linearmodels (linearmodels.datasets.wage_panel).

One change from linearmodels' copy: `expersq` is dropped (it is exper squared; write
I(exper ** 2) in formulas instead, since the copula cannot know deterministic identities).
Run: python data/make_wage_panel.py data/wage_panel.csv
"""

import sys

from linearmodels.datasets import wage_panel


def main(path: str) -> None:
    d = wage_panel.load().drop(columns=["expersq"])
    d = d.sort_values(["nr", "year"], kind="stable").reset_index(drop=True)
    d.to_csv(path, index=False, float_format="%.10g", lineterminator="\n")
    print(f"wrote {path}: {d.shape[0]} rows, {d.shape[1]} columns, {d['nr'].nunique()} men")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/wage_panel.csv")
