"""Attacks on the atoms of continuous columns and the empty-cell flags, run on whole bundles
(cmd_extract) and reading only what an intruder holding the bundle reads. Each asserts what
should hold: the attack recovers nothing. The xfail tests are leaks still open; the leaks of the first section
are fixed; the others are attacks that failed and stand as regression tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import manifest_for

from replisynth.config.manifest import load_manifest
from replisynth.workflow.cli import cmd_extract

K = 50  # the standard profile's min_cell_size


def _bundle(
    tmp: Path,
    df: pd.DataFrame,
    checkpoints: list[dict[str, Any]] | None = None,
    sdc: dict[str, Any] | None = None,
    **source: Any,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], str]:
    """Extract `df` as source `people`: (its source release, the checkpoints by tag, the text
    of every bundle file), all from the bundle on disk."""
    df.to_csv(tmp / "people.csv", index=False)
    raw = manifest_for(tmp / "people.csv", **source)
    raw["checkpoints"] = [{"source": "people", "model": "ols", **c} for c in checkpoints or []]
    if sdc:
        raw["sdc"] = sdc
    bundle = cmd_extract(load_manifest(raw), tmp / "out")
    rel = json.loads((bundle / "source_people.json").read_text())
    cps = json.loads((bundle / "checkpoints.json").read_text())["checkpoints"]
    text = "\n".join(p.read_text() for p in sorted(bundle.iterdir()) if p.suffix == ".json")
    return rel, {c["tag"]: c for c in cps}, text


def _column(atoms: dict[float, int], extra: list[float], seed: int) -> np.ndarray:
    """Values held by many rows (`atoms`: value -> rows) plus a few `extra` values, shuffled."""
    rng = np.random.default_rng(seed)
    parts = [np.full(c, v, dtype="float64") for v, c in atoms.items()]
    return rng.permutation(np.concatenate([*parts, np.asarray(extra, dtype="float64")]))


def _people(col: str, x: np.ndarray, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 1)
    return pd.DataFrame(
        {"pid": np.arange(len(x)), col: x, "wage": 5 + 0.3 * x + rng.normal(size=len(x))}
    )


def _atom_total(atoms: dict[str, Any]) -> float:
    return float(sum(v * c for v, c in zip(atoms["values"], atoms["counts"], strict=True)))


# ---------------------------------------------------------------- leaks found, then fixed

POOLED_OUTLIERS = [
    ("school", {0.0: 400, 10.0: 150, 12.0: 120, 16.0: 200, 20.0: 130}, 27.0, 3),
    ("visits", {1.0: 300, 2.0: 250, 4.0: 90, 8.0: 60}, 19.5, 11),
]


@pytest.mark.parametrize(("col", "atoms", "outlier", "seed"), POOLED_OUTLIERS)
def test_pooled_outlier_value_not_given_by_a_checkpoint_mean(
    tmp_path: Path, col: str, atoms: dict[float, int], outlier: float, seed: int
) -> None:
    """Leak fixed: rows pooled into an atom (rest null) were the only unknown values, so a
    checkpoint's exact design mean gave a top-coded outlier's value. Now no atoms are released
    when 1..k-1 rows are off them."""
    df = _people(col, _column(atoms, [outlier], seed), seed)
    rel, cps, _ = _bundle(
        tmp_path, df, [{"tag": "w", "formula": f"wage ~ {col}"}], continuous=[col]
    )
    released = rel["blocks"]["all"]["marginals"][col].get("atoms")
    cp = cps["w"]
    assert cp["status"] == "released" and cp["moments"]["terms"] == [col]
    # attacker: with atoms and nothing off them (rest null) every value is known but the
    # pooled rows'; n · mean minus Σ value × count is their excess over their atom. With a
    # rest (or no atoms) the difference is the total of at least k unknown rows.
    assert (
        released is None
        or released["rest"] is not None
        or (
            abs(
                max(released["values"])
                + cp["n"] * cp["moments"]["mean"][0]
                - _atom_total(released)
                - outlier
            )
            > 0.5
        )
    ), "the pooled outlier's value follows exactly"


@pytest.mark.parametrize(("pooled", "seed"), [(1, 5), (3, 8)])
def test_pooled_rows_count_not_given_by_a_coding_table(
    tmp_path: Path, pooled: int, seed: int
) -> None:
    """Leak fixed: a coding of the column's range (a source-level table) differed from the
    atoms' counts by the pooled rows crossing its cut (1..k-1)."""
    x = _column({0.0: 400, 10.0: 150, 12.0: 120, 16.0: 200}, [2.0 + i for i in range(pooled)], seed)
    df = _people("hours", x, seed)
    df["works"] = np.where(df["hours"] > 0, "yes", "no")
    rel, _, _ = _bundle(tmp_path, df, continuous=["hours"])
    atoms = rel["blocks"]["all"]["marginals"]["hours"].get("atoms")
    table = rel["blocks"]["all"]["marginals"]["works"]["table"]
    assert table["levels"] == ["no", "yes"]  # the coding's table is still released
    # attacker: rows at atom 0 per the atoms, less the rows with hours == 0 per the table
    if atoms is not None and 0.0 in atoms["values"]:
        diff = atoms["counts"][atoms["values"].index(0.0)] - table["counts"][0]
        assert not 0 < diff < K, f"{diff} rows with hours in (0, 5] follow"
    # nor, with a rest, the rows of the rest below the cut (atoms at 0 are all of "no")
    if atoms is not None and atoms["rest"] is not None:
        zero = atoms["counts"][atoms["values"].index(0.0)] if 0.0 in atoms["values"] else 0
        assert not 0 < table["counts"][0] - zero < K


def test_pooled_ordinal_level_value_not_given_by_a_checkpoint_mean(tmp_path: Path) -> None:
    """Leak fixed: an ordered table pools a level below k; a checkpoint's exact mean of the
    column (as a term, or as the outcome: intercept + Σ β · design mean) less Σ level × count
    gave the pooled value. The gate now withholds those means (with robust SEs: model-based
    ones give X'X, the column's total, and are refused, round 22)."""
    col, atoms, outlier, seed = POOLED_OUTLIERS[0]
    df = _people(col, _column(atoms, [outlier], seed), seed)
    (tmp_path / "nonrobust").mkdir()
    plain = _bundle(tmp_path / "nonrobust", df, [{"tag": "w", "formula": f"wage ~ {col}"}])[1]
    assert plain["w"]["status"] == "rejected" and "pooled totals" in plain["w"]["reason"]
    rel, cps, _ = _bundle(tmp_path, df, [{"tag": "w", "formula": f"wage ~ {col}", "vcov": "HC1"}])
    table = rel["blocks"]["all"]["marginals"][col]["table"]
    assert table["ordered"] and table["pooled_levels"] == 1
    cp = cps["w"]
    assert cp["status"] == "released"
    moments = cp.get("moments") or {"terms": [], "mean": []}
    total = sum(v * c for v, c in zip(table["levels"], table["counts"], strict=True))
    for mean in (m for t, m in zip(moments["terms"], moments["mean"], strict=True) if t == col):
        assert abs(max(table["levels"]) + cp["n"] * mean - total - outlier) > 0.5
    # nor from the outcome total of a fit of the column (intercept + Σ β · design mean)
    (tmp_path / "y").mkdir()
    cps2 = _bundle(tmp_path / "y", df, [{"tag": "y", "formula": f"{col} ~ wage", "vcov": "HC1"}])[1]
    y = cps2["y"]
    if y["status"] == "released" and y.get("moments"):
        beta = {t["term"]: t["beta"] for t in y["terms"] if not t.get("suppressed")}
        ybar = beta["Intercept"] + beta["wage"] * y["moments"]["mean"][0]
        assert abs(max(table["levels"]) + y["n"] * ybar - total - outlier) > 0.5


def test_threshold_subset_does_not_count_rows_pooled_across_it(tmp_path: Path) -> None:
    """Leak fixed: a checkpoint subset thresholding an atom column has an exact n, which
    less the atoms above the threshold counted the pooled rows that crossed it."""
    extra = [3.0, 2.0]
    x = _column({0.0: 400, 10.0: 150, 12.0: 120, 16.0: 200, 20.0: 130}, extra, 4)
    df = _people("school", x, 4)
    rel, cps, _ = _bundle(
        tmp_path,
        df,
        [{"tag": "pos", "formula": "wage ~ school", "subset": "school > 0"}],
        continuous=["school"],
    )
    atoms = rel["blocks"]["all"]["marginals"]["school"].get("atoms")
    cp = cps["pos"]
    assert cp["status"] == "released"  # the checkpoint is kept (atoms give way to it)
    if atoms is None:
        return  # nothing exact to subtract: the rows above the cut are not all known
    above = [(v, c) for v, c in zip(atoms["values"], atoms["counts"], strict=True) if v > 0]
    count = cp["n"] - sum(c for _, c in above)
    total = cp["n"] * cp["moments"]["mean"][0] - sum(v * c for v, c in above)
    recovered = 0 < count < K and abs(total - sum(extra)) < 1e-6
    assert not recovered, f"{count} rows in (0, 5] with total {total:g} follow"


@pytest.mark.parametrize(
    ("col", "cut", "value", "seed"), [("earn", 40000, 47123.45, 9), ("rent", 40000, 44810.5, 2)]
)
def test_threshold_subset_does_not_give_a_rest_value(
    tmp_path: Path, col: str, cut: float, value: float, seed: int
) -> None:
    """Leak fixed: a checkpoint whose subset thresholds an atom column gave, less the atoms
    above the threshold, the count (1) and exact value of the one rest row above it. The
    column's atoms are now withheld (the checkpoint is kept)."""
    rng = np.random.default_rng(seed)
    rest = [*np.round(rng.uniform(1000, 39000, 60), 2).tolist(), value]
    x = _column({0.0: 300, 20000.0: 150, 30000.0: 120, 50000.0: 100, 150000.0: 60}, rest, seed)
    df = _people(col, x / 10000, seed)
    df[col] = x
    rel, cps, _ = _bundle(
        tmp_path,
        df,
        [{"tag": "top", "formula": f"{col} ~ wage", "subset": f"{col} > {cut}"}],
        continuous=[col],
    )
    atoms = rel["blocks"]["all"]["marginals"][col].get("atoms")
    cp = cps["top"]
    assert cp["status"] == "released"  # the checkpoint is kept (atoms give way to it)
    if atoms is None:
        return  # nothing exact to subtract: the rows above the cut are not all known
    beta = {t["term"]: t["beta"] for t in cp["terms"]}
    mean_wage = cp["moments"]["mean"][cp["moments"]["terms"].index("wage")]
    total = cp["n"] * (beta["Intercept"] + beta["wage"] * mean_wage)
    above = [(v, c) for v, c in zip(atoms["values"], atoms["counts"], strict=True) if v > cut]
    count = cp["n"] - sum(c for _, c in above)
    recovered = total - sum(v * c for v, c in above)
    assert not (count == 1 and abs(recovered - value) < 0.01), "the rest row's value follows"


@pytest.mark.parametrize(
    ("col", "rare_in_heavy", "heavy", "seed"), [("disease", 3, 5.0, 2), ("arrest", 7, 8.0, 6)]
)
def test_weighted_share_does_not_split_a_cell_by_weight_class(
    tmp_path: Path, col: str, rare_in_heavy: int, heavy: float, seed: int
) -> None:
    """Leak fixed: a two-valued survey weight turned a table's weighted share into a linear
    equation in the cell's rows per weight class (1..k-1 heavy rows). Weighted shares are now
    withheld when a cell splits across weight classes into 1..k-1 rows."""
    n, n_heavy, cell = 1000, 100, 60
    rng = np.random.default_rng(seed)
    w = np.r_[np.ones(n - n_heavy), np.full(n_heavy, heavy)]
    v = np.full(n, "no", dtype=object)
    v[: cell - rare_in_heavy] = "yes"
    v[n - n_heavy : n - n_heavy + rare_in_heavy] = "yes"
    order = rng.permutation(n)
    df = pd.DataFrame({"pid": np.arange(n), "wt": w[order], col: v[order]})
    df["x"] = rng.normal(size=n)
    rel, _, _ = _bundle(tmp_path, df, weight="wt")
    grid = rel["blocks"]["all"]["marginals"]["wt"]["grid"]
    light, top = min(grid), max(grid)  # the two weight values
    t = rel.get("weights", {}).get("tables", {}).get(col)
    if t is None:
        return  # no weighted share of the column: nothing to solve
    share = t["shares"][t["levels"].index("yes")]
    count = rel["blocks"]["all"]["marginals"][col]["table"]["counts"][t["levels"].index("yes")]
    total = rel["weights"]["total"]
    # attacker: Σw over the cell = count·light + m·(top − light), share and total rounded
    ends = [
        ((share + ds) * total * (1 + dt) - count * light) / (top - light)
        for ds in (-0.0005, 0.0005)
        for dt in (-0.005, 0.005)
    ]
    inside = range(int(np.ceil(min(ends))), int(np.floor(max(ends))) + 1)
    assert not (len(inside) == 1 and 0 < inside[0] < K), f"{list(inside)} heavy rows follow"


# ---------------------------------------------------------------- attacks that failed


@pytest.mark.parametrize(("rest", "seed"), [(5, 1), (7, 2), (9, 3), (12, 4), (20, 5)])
def test_rest_of_a_few_rows_releases_none_of_their_values(
    tmp_path: Path, rest: int, seed: int
) -> None:
    """Atoms cover all but `rest` rows (k = 5): a grid of the rest over a handful of rows
    would hold their values (a percentile of 5 rows is one of them, or a mean of two). No
    number in the bundle equals one of them, and the rest is either absent or holds >= 9
    values (2 coded at each end and a window of at least 5)."""
    k = 5
    rng = np.random.default_rng(seed)
    vals = np.round(rng.uniform(30.0, 70.0, size=rest), 3) + 0.0007
    x = _column({10.0: 300, 20.0: 250, 40.0: 200, 80.0: 120}, vals.tolist(), seed)
    df = _people("spend", x, seed)
    rel, _, _ = _bundle(tmp_path, df, sdc={"min_cell_size": k}, continuous=["spend"])
    m = rel["blocks"]["all"]["marginals"]["spend"]
    if m.get("atoms") and m["atoms"]["rest"]:
        assert m["atoms"]["rest"]["n"] >= 9
    numbers: set[float] = set()
    for f in sorted(Path(tmp_path / "out").rglob("*.json")):
        numbers |= _numbers(json.loads(f.read_text()))
    s = np.sort(vals)
    pairs = {round((a + b) / 2, 9) for a, b in zip(s[:-1], s[1:], strict=True)}
    exposed = {round(float(v), 9) for v in vals} | pairs
    assert not exposed & {round(v, 9) for v in numbers}


def _numbers(obj: Any) -> set[float]:
    """Every float in a JSON object."""
    if isinstance(obj, dict):
        return set().union(*(_numbers(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_numbers(v) for v in obj)) if obj else set()
    if isinstance(obj, float):
        return {obj}
    return set()


# ---------------------------------------------------------------- empty cells across pairs

# 3-way tables (a x b x c, three levels each) whose three two-way tables pass the empty-cell
# rule (every non-empty cell >= 50); one 3-way cell is small: 1 row, and 2 rows.
THREE_WAY = [
    (
        ("plan", "tier", "band"),
        [
            [[0, 0, 0], [0, 134, 63], [138, 1, 0]],
            [[0, 0, 0], [0, 129, 0], [0, 82, 0]],
            [[0, 0, 126], [0, 0, 0], [0, 0, 104]],
        ],
        1,
    ),
    (
        ("copay", "region", "grade"),
        [
            [[116, 0, 145], [0, 0, 0], [0, 0, 3]],
            [[0, 67, 0], [0, 2, 0], [0, 0, 0]],
            [[0, 0, 0], [91, 113, 0], [0, 78, 93]],
        ],
        3,
    ),
]


def _three_way_frame(cols: tuple[str, str, str], table: list[Any], seed: int) -> pd.DataFrame:
    T = np.asarray(table)
    cells = [c for c in np.ndindex(T.shape) for _ in range(int(T[c]))]
    rng = np.random.default_rng(seed)
    arr = np.asarray(cells)[rng.permutation(len(cells))] + 1
    df = pd.DataFrame({"pid": np.arange(len(arr))})
    for j, c in enumerate(cols):
        df[c] = arr[:, j]
    df["y"] = rng.normal(size=len(arr))
    return df


def _midranks(counts: np.ndarray) -> np.ndarray:
    return np.cumsum(counts) - (counts - 1) / 2.0


def _dim_scores(dim: dict[str, Any], levels: list[Any], counts: np.ndarray) -> np.ndarray:
    """A copula dim as a function of its column's level: the level's midrank (ordered) or
    the indicator of its level; the dim's Spearman correlation is the Pearson correlation of
    these scores (a binary column's midranks are affine in its indicator)."""
    if dim["kind"] == "indicator":
        return np.asarray([float(v == dim["level"]) for v in levels])
    return _midranks(counts)


def _three_way_bounds(
    rel: dict[str, Any], cols: tuple[str, str, str], flags: bool = True
) -> np.ndarray:
    """Attacker: LP bounds on every cell of the 3-way table from the bundle alone: the three
    source-level tables, the Spearman correlations of the columns' dims across columns (linear
    in the cells given the margins) and the empty-cell flags. (L, L, L, 2) lower, upper."""
    from scipy.optimize import linprog

    tabs = [rel["blocks"]["all"]["marginals"][c]["table"] for c in cols]
    levels = [t["levels"] for t in tabs]
    counts = [np.asarray(t["counts"], dtype="float64") for t in tabs]
    shape = tuple(len(lv) for lv in levels)
    n = float(counts[0].sum())
    rho = np.asarray(rel["blocks"]["all"]["spearman"], dtype="float64")
    dims = [
        (i, d, cols.index(d["column"])) for i, d in enumerate(rel["dims"]) if d["column"] in cols
    ]
    rows, rhs = [], []
    for i in range(3):
        for v in range(shape[i]):
            w = np.zeros(shape)
            w[(slice(None),) * i + (v,)] = 1
            rows.append(w.ravel())
            rhs.append(counts[i][v])
    for (p, dp, a), (q, dq, b) in ((x, y) for x in dims for y in dims if x[2] < y[2]):
        if not np.isfinite(rho[p, q]):
            continue  # blanked
        f = [_dim_scores(d, levels[c], counts[c]) for d, c in ((dp, a), (dq, b))]
        m = [float(f[0] @ counts[a]) / n, float(f[1] @ counts[b]) / n]
        sd = [np.sqrt(float((f[0] - m[0]) ** 2 @ counts[a]) / n)]
        sd.append(np.sqrt(float((f[1] - m[1]) ** 2 @ counts[b]) / n))
        w = np.zeros(shape)
        for c in np.ndindex(shape):
            w[c] = f[0][c[a]] * f[1][c[b]]
        rows.append(w.ravel())
        rhs.append(n * (rho[p, q] * sd[0] * sd[1] + m[0] * m[1]))
    for fl in rel.get("empty_cells", []) if flags else []:
        a, b = (cols.index(fl["columns"][0]), cols.index(fl["columns"][1]))
        for la, lb in fl["cells"]:
            sl: list[Any] = [slice(None)] * 3
            sl[a], sl[b] = levels[a].index(la), levels[b].index(lb)
            w = np.zeros(shape)
            w[tuple(sl)] = 1
            rows.append(w.ravel())
            rhs.append(0.0)
    A, b_eq = np.asarray(rows), np.asarray(rhs)
    out = np.zeros((*shape, 2))
    for c in np.ndindex(shape):
        t = np.zeros(A.shape[1])
        t[np.ravel_multi_index(c, shape)] = 1
        lo = linprog(t, A_eq=A, b_eq=b_eq, bounds=(0, None), method="highs")
        hi = linprog(-t, A_eq=A, b_eq=b_eq, bounds=(0, None), method="highs")
        assert lo.status == 0 and hi.status == 0
        out[c] = (lo.fun, -hi.fun)
    return out


@pytest.mark.parametrize(("cols", "table", "seed"), THREE_WAY)
def test_flags_of_three_pairs_pin_no_three_way_cell(
    tmp_path: Path, cols: tuple[str, str, str], table: list[Any], seed: int
) -> None:
    df = _three_way_frame(cols, table, seed)
    rel, _, _ = _bundle(tmp_path, df)
    assert len(rel.get("empty_cells", [])) >= 2  # the flags the attack combines
    bounds = _three_way_bounds(rel, cols)
    pinned = (bounds[..., 0] > 0.5) & (bounds[..., 1] < K - 0.5)
    assert not pinned.any(), f"3-way cells bounded inside 1..{K - 1}: {np.argwhere(pinned)}"


@pytest.mark.parametrize(("cols", "table", "seed"), THREE_WAY)
def test_three_way_cells_not_pinned_without_the_flags(
    tmp_path: Path, cols: tuple[str, str, str], table: list[Any], seed: int
) -> None:
    """Control of the attack above: the margins and Spearman correlations alone (what the
    bundle released before the flags) bound every 3-way cell of those tables no more narrowly
    than 0 or k, so the flags are what pins the small cell."""
    rel, _, _ = _bundle(tmp_path, _three_way_frame(cols, table, seed))
    bounds = _three_way_bounds(rel, cols, flags=False)
    assert not ((bounds[..., 0] > 0.5) & (bounds[..., 1] < K - 0.5)).any()


@pytest.mark.parametrize(("cols", "table", "seed"), THREE_WAY[:1])
def test_indicator_correlations_of_three_nominal_columns_pin_no_three_way_cell(
    tmp_path: Path, cols: tuple[str, str, str], table: list[Any], seed: int
) -> None:
    _assert_nominal_three_way_safe(tmp_path, cols, table, seed)


@pytest.mark.parametrize(("cols", "table", "seed"), THREE_WAY[1:])
def test_blanked_indicator_correlations_pin_no_three_way_cell(
    tmp_path: Path, cols: tuple[str, str, str], table: list[Any], seed: int
) -> None:
    """The second table's small 3-way cells leave some indicator pairs with a cell below k,
    whose correlations are blanked: the LP on what remains pins nothing."""
    _assert_nominal_three_way_safe(tmp_path, cols, table, seed)


def _assert_nominal_three_way_safe(
    tmp_path: Path, cols: tuple[str, str, str], table: list[Any], seed: int
) -> None:
    df = _three_way_frame(cols, table, seed)
    for c in cols:
        df[c] = df[c].map({1: "low", 2: "mid", 3: "high"})
    rel, _, _ = _bundle(tmp_path, df)
    assert any(d["kind"] == "indicator" for d in rel["dims"])
    bounds = _three_way_bounds(rel, cols, flags=False)
    pinned = (bounds[..., 0] > 0.5) & (bounds[..., 1] < K - 0.5)
    assert not pinned.any(), f"3-way cells bounded inside 1..{K - 1}: {np.argwhere(pinned)}"
