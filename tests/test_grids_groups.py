"""Grids and group sizes under attack: window grids of small blocks release (almost) none of
their values exactly and never average in an extreme; group sizes as disjoint windows cannot
be telescoped into one group's size, which the old overlapping pseudo-percentiles allowed."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import Bounds, LinearConstraint, milp

from replisynth.config.manifest import load_manifest
from replisynth.disclosure.audit import audit_columns, identical_rows
from replisynth.extract.extract import extract_source
from replisynth.io.files import FileMeta
from replisynth.stats.marginals import (
    EXACT_SHARE,
    PSEUDO_WINDOW,
    THIN_WINDOW,
    coded_per_end,
    exposed_share,
    grid_release,
    percentile_grid,
    pseudo_percentiles,
    size_step,
    size_windows,
    window_bounds,
)
from replisynth.synthesize.entities import entity_sizes
from replisynth.synthesize.synthesize import _group_ids, synthesize_source

METHODS = ("fixed", "adaptive", "pseudo", "adaptive+pseudo")
RARE = 3  # a group size held by fewer groups singles them out


# ---------------------------------------------------------------------------------------------
# the attacker: bounds on each sorted group size from linear facts about them


def size_bounds(
    G: int, total: int, sums: list[tuple[int, int, int, int]], positions: list[int]
) -> list[tuple[int, int]]:
    """Smallest and largest value the attacker can prove for each sorted position in
    `positions`, from: integer sizes >= 1, ascending, summing to `total`, and for each
    (start, end, lo, hi) in `sums` a sum of positions start..end-1 in [lo, hi]."""
    rows = [np.eye(G)[i] - np.eye(G)[i + 1] for i in range(G - 1)]  # x_i - x_{i+1} <= 0
    cons = [
        LinearConstraint(np.asarray(rows), -np.inf, 0.0),
        LinearConstraint(np.ones((1, G)), total, total),
    ]
    for s, e, lo, hi in sums:
        a = np.zeros(G)
        a[s:e] = 1.0
        cons.append(LinearConstraint(a[None, :], lo, hi))
    out = []
    for i in positions:
        c = np.zeros(G)
        c[i] = 1.0
        got = []
        for sign in (1.0, -1.0):
            r = milp(sign * c, constraints=cons, integrality=np.ones(G), bounds=Bounds(1, total))
            assert r.status == 0, r.message  # the truth is feasible
            got.append(int(round(r.x[i])))
        out.append((got[0], got[1]))
    return out


def old_size_grid(sizes: np.ndarray, trim: float = 1.0) -> np.ndarray:
    """The group-size release before windows: 101 pseudo-percentiles of overlapping windows of
    11 sizes, clipped at the pseudo-percentiles of the widened trim levels."""
    x = np.sort(sizes.astype("float64"))
    q = pseudo_percentiles(x, np.arange(101.0))
    t = min(max(trim, 200.0 / len(x)), 50.0)
    lo, hi = pseudo_percentiles(x, np.asarray([t, 100 - t]))
    return np.maximum.accumulate(np.clip(q, lo, hi))


def old_form_sums(grid: np.ndarray, G: int, trim: float = 1.0) -> list[tuple[int, int, int, int]]:
    """What the attacker reads off an old size grid: each point inside the clip range, and the
    two clip points, is the mean of a known window of 11 sorted sizes (the code is public)."""

    def start(p: float) -> int:
        r = int(round(p / 100.0 * (G - 1)))
        return int(np.clip(r - 5, 0, G - 11))

    t = min(max(trim, 200.0 / G), 50.0)
    lo, hi = grid[0], grid[-1]
    facts = {(start(t), round(11 * lo)), (start(100 - t), round(11 * hi))}
    facts |= {(start(p), round(11 * g)) for p, g in enumerate(grid) if lo < g < hi}
    return [(s, s + 11, v, v) for s, v in facts]


def new_form_sums(release: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    """What the attacker reads off `size_windows`: each window's total to within the rounding."""
    out, s = [], 0
    step = release["step"]
    for w in release["size_windows"]:
        g = w["groups"]
        lo, hi = g * (w["mean"] - step / 2), g * (w["mean"] + step / 2)
        out.append((s, s + g, int(np.ceil(lo - 1e-9)), int(np.floor(hi + 1e-9))))
        s += g
    return out


def cluster_sizes(G: int, seed: int, smallest: int = 7) -> np.ndarray:
    """G distinct-ish cluster sizes with a unique smallest one."""
    rng = np.random.default_rng(seed)
    x = smallest + 1 + rng.poisson(12, size=G) + rng.integers(0, 6, size=G)
    x[rng.integers(G)] = smallest
    return x.astype(int)


@pytest.mark.parametrize("G,seed", [(60, 1), (200, 2)])
def test_old_overlapping_size_grid_telescopes_to_the_smallest_group(G: int, seed: int) -> None:
    """The attack works: on the pre-window release the smallest group's size (7) is pinned."""
    x = cluster_sizes(G, seed)
    sums = old_form_sums(old_size_grid(x), G)
    ((lo, hi),) = size_bounds(G, int(x.sum()), sums, [0])
    assert lo == hi == 7


def test_old_size_grid_gives_every_size_of_a_60_group_source() -> None:
    x = np.sort(cluster_sizes(60, 1))
    b = size_bounds(60, int(x.sum()), old_form_sums(old_size_grid(x), 60), list(range(60)))
    assert sum(lo == hi == v for (lo, hi), v in zip(b, x, strict=True)) >= 50


def rare_positions(x: np.ndarray, fewer_than: int = RARE) -> list[int]:
    """Sorted positions whose size is held by fewer than `fewer_than` groups."""
    x = np.sort(x)
    _, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
    return np.flatnonzero(cnt[inv] < fewer_than).tolist()


@pytest.mark.parametrize("G,k,seed", [(60, 20, 1), (200, 50, 2), (200, 20, 3)])
def test_size_windows_pin_no_rare_group_size(G: int, k: int, seed: int) -> None:
    """The smallest (unique) group, the largest and every size held by fewer than RARE groups
    stay open to the attacker, whom the old form gave them exactly."""
    x = np.sort(cluster_sizes(G, seed))
    wins = size_windows(x, k)
    assert (
        wins is not None
        and sum(w["groups"] for w in wins) == G
        and min(w["groups"] for w in wins) >= k
    )
    rel = {"size_windows": wins, "step": size_step(k)}
    pos = rare_positions(x)
    assert pos[0] == 0 and x[0] == 7
    b = size_bounds(G, int(x.sum()), new_form_sums(rel), pos)
    assert not [i for i, (lo, hi) in zip(pos, b, strict=True) if lo == hi]
    assert b[0][0] < 7 <= b[0][1]  # the smallest group, pinned by the old form (test above)


def test_size_windows_do_not_pin_a_unique_size_between_ties() -> None:
    """99 groups of 7, one of 8, 100 larger ones: with exact window totals the attacker would
    prove a window of 49 sevens and one eight; the rounding leaves it open."""
    x = np.asarray([7] * 99 + [8] + list(20 + np.arange(100) % 9))
    wins = size_windows(x, 50)
    assert wins is not None
    b = size_bounds(
        len(x), int(x.sum()), new_form_sums({"size_windows": wins, "step": size_step(50)}), [99]
    )
    assert b[0][0] < b[0][1]


@given(G=st.integers(40, 120), k=st.sampled_from([10, 20, 50]), seed=st.integers(0, 10_000))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_rare_group_size_is_pinned(G: int, k: int, seed: int) -> None:
    """Whatever the sizes (ties included), no size held by fewer than RARE groups is proved by
    the attacker (long runs of one size can be: several groups share it)."""
    rng = np.random.default_rng(seed)
    x = np.sort(1 + rng.geometric(rng.uniform(0.05, 0.5), size=G))
    wins = size_windows(x, k)
    if wins is None:
        assert G < 2 * k
        return
    pos = rare_positions(x)
    b = size_bounds(
        G, int(x.sum()), new_form_sums({"size_windows": wins, "step": size_step(k)}), pos
    )
    assert not [i for i, (lo, hi) in zip(pos, b, strict=True) if lo == hi]


def test_fewer_than_two_windows_of_groups_release_count_and_mean_only() -> None:
    assert size_windows(np.arange(1, 99), 50) is None
    assert size_windows(np.arange(1, 101), 50) is not None


# ---------------------------------------------------------------------------------------------
# synthesis from both forms


def _with_groups(G: int, seed: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    sizes = cluster_sizes(G, seed)
    rng = np.random.default_rng(seed)
    n = int(sizes.sum())
    df = pd.DataFrame(
        {
            "hosp": np.repeat(np.arange(1000, 1000 + G), sizes),
            "y": rng.normal(size=n),
            "z": rng.gamma(2.0, size=n),
        }
    )
    raw = {
        "name": "g",
        "seed": seed,
        "sources": {"s": {"path": "x.csv", "groups": ["hosp"]}},
        "sdc": {"min_cell_size": 20},
    }
    return df, raw


@pytest.mark.parametrize("old", [False, True])
def test_group_sizes_synthesize_from_windows_and_from_old_size_grids(old: bool) -> None:
    df, raw = _with_groups(120, 5)
    man = load_manifest(raw)
    rel, _ = extract_source(df, FileMeta(), man, man.sources[0])
    g = rel["groups"]["hosp"]
    assert g["groups"] == 120 and g["size_grid"] is None and len(g["size_windows"]) == 6
    if old:  # a bundle written before size_windows existed
        del g["size_windows"]
        g["size_grid"] = old_size_grid(df["hosp"].value_counts().to_numpy()).tolist()
    syn = synthesize_source(rel, 5)
    counts = syn["hosp"].value_counts()
    assert len(syn) == len(df) and len(counts) == 120 and counts.min() >= 1
    top = max(g["size_grid"]) if old else max(w["mean"] for w in g["size_windows"])
    assert counts.max() <= np.ceil(top)
    ids = _group_ids(len(df), g, np.random.default_rng(0))
    assert len(np.unique(ids)) == 120 and len(ids) == len(df)
    assert entity_sizes(g, len(df)).sum() == len(df)


def test_group_release_never_holds_a_sum_of_fewer_than_k_sizes() -> None:
    df, raw = _with_groups(200, 8)
    man = load_manifest(raw)
    rel, log = extract_source(df, FileMeta(), man, man.sources[0])
    g = rel["groups"]["hosp"]
    assert all(w["groups"] >= 20 for w in g["size_windows"])
    assert set(g) == {"groups", "size_grid", "size_windows", "mean_size"}
    assert any(e["stage"] == "groups" and "non-overlapping" in e["reason"] for e in log.entries)


# ---------------------------------------------------------------------------------------------
# thinned grids


def _released(g: Any) -> np.ndarray:
    return np.concatenate([g.grid, np.asarray(g.window_means or [], dtype="float64")])


@given(n=st.integers(50, 2600), method=st.sampled_from(METHODS), seed=st.integers(0, 10_000))
@settings(max_examples=60, deadline=None)
def test_a_grid_releases_at_most_the_exact_share_of_its_values(
    n: int, method: str, seed: int
) -> None:
    v = np.round(np.random.default_rng(seed).lognormal(3.0, 1.0, size=n), 4)
    v = v + np.arange(n) * 1e-7  # distinct, so an equal released number is that value
    g = grid_release(v, 1.0, method)
    share = float(np.isin(v, _released(g)).mean())
    assert share <= EXACT_SHARE
    if n < 200:
        assert share == 0.0


@given(
    values=st.lists(st.integers(60, 140), min_size=400, max_size=3000),
    method=st.sampled_from(METHODS),
)
@settings(max_examples=40, deadline=None)
def test_tied_values_exposed_by_percentiles_stay_below_the_share(
    values: list[int], method: str
) -> None:
    """With ties one released percentile can be the value of up to 4 rows (an IQ-like
    integer in a stratum: 10.9% of rows under the adaptive grid before the check)."""
    v = np.asarray(values, dtype="float64")
    g = grid_release(v, 1.0, method)
    assert exposed_share(np.sort(v), _released(g)) <= EXACT_SHARE or g.window_sizes is not None


def test_a_percentile_grid_exposing_many_tied_rows_falls_back_to_windows() -> None:
    v = np.repeat(np.arange(100.0, 234.0), 3)[:400]  # 3 rows per value: 13 levels expose 39 rows
    assert exposed_share(np.sort(v), percentile_grid(v, 1.0, "adaptive")) > EXACT_SHARE
    g = grid_release(v, 1.0, "adaptive")
    assert g.window_sizes is not None and exposed_share(np.sort(v), _released(g)) <= EXACT_SHARE


@pytest.mark.parametrize("n", [50, 63, 80, 150, 199])
def test_small_blocks_release_no_value_where_the_percentile_grid_released_nine_in_ten(
    n: int,
) -> None:
    v = np.random.default_rng(n).normal(size=n)
    assert np.isin(v, percentile_grid(v, 1.0)).mean() > 0.25  # what a fixed grid did
    assert not np.isin(v, _released(grid_release(v, 1.0, "fixed"))).any()


def test_large_blocks_keep_the_percentile_grid() -> None:
    v = np.random.default_rng(1).normal(size=2500)
    g = grid_release(v, 1.0, "fixed")
    assert g.window_sizes is None and np.array_equal(g.grid, percentile_grid(v, 1.0))
    assert grid_release(v[:2000], 1.0, "fixed").window_sizes is not None  # 101 levels > 5% of 2000


@given(
    n=st.integers(9, 3000), method=st.sampled_from(METHODS), trim=st.sampled_from([1.0, 2.0, 5.0])
)
@settings(max_examples=80, deadline=None)
def test_windows_are_disjoint_large_enough_and_never_hold_an_extreme(
    n: int, method: str, trim: float
) -> None:
    w = PSEUDO_WINDOW if "pseudo" in method else THIN_WINDOW
    b = window_bounds(n, trim, w, 100)
    if b is None:
        assert n - 2 * coded_per_end(n, trim) < w
        return
    assert b[0] >= 2 and b[-1] <= n - 2  # the two most extreme values at each end are coded
    assert np.all(np.diff(b) >= w) and len(b) - 1 <= 100


@given(
    values=st.lists(st.integers(0, 12), min_size=50, max_size=400),
    method=st.sampled_from(METHODS),
)
@settings(max_examples=60, deadline=None)
def test_no_released_value_is_an_extreme_unless_its_window_is_constant(
    values: list[int], method: str
) -> None:
    """Integer data with ties: a released number equal to the block's minimum or maximum comes
    only from windows all of whose values are that minimum or maximum."""
    v = np.asarray(values, dtype="float64")
    g = grid_release(v, 1.0, method)
    if g.window_sizes is None:
        return
    x = np.sort(v)
    ends = np.cumsum([0, *g.window_sizes])
    first = coded_per_end(len(x), 1.0)  # the first window starts after the coded values
    for j, mean in enumerate(g.window_means):
        win = x[first + ends[j] : first + ends[j + 1]]
        assert mean == pytest.approx(win.mean())
        if mean in (x[0], x[-1]):
            assert np.all(win == mean)
    for extreme in (x[0], x[-1]):
        if extreme in g.grid:
            assert extreme in g.window_means


def test_dominated_windows_are_merged() -> None:
    rng = np.random.default_rng(5)
    v = np.exp(rng.normal(10, 1.0, size=800))
    top = np.argsort(v)[-10:]
    v[top[:2]] = [3e7, 2e7]  # two units dominate the top window (8 larger ones are coded)
    v[top[2:]] = np.linspace(4e7, 5e7, 8)
    g = grid_release(v, 1.0, "pseudo", dominance=0.85)
    plain = grid_release(v, 1.0, "pseudo")
    assert len(g.window_sizes) < len(plain.window_sizes)
    x = np.sort(v)
    ends = np.cumsum([0, *g.window_sizes]) + coded_per_end(800, 1.0)
    for j in range(len(g.window_sizes)):
        win = np.abs(x[ends[j] : ends[j + 1]])
        assert np.sort(win)[-2:].sum() <= 0.85 * win.sum()


# ---------------------------------------------------------------------------------------------
# end to end: small strata


def test_fifty_row_strata_no_longer_reproduce_their_records() -> None:
    """One continuous column in 50-row strata: a fixed 101-point grid released 92% of the
    values and the synthetic rows were those values; now neither."""
    rng = np.random.default_rng(9)
    cells, rows = 24, 50
    df = pd.DataFrame(
        {
            "cell": np.repeat([f"k{i}" for i in range(cells)], rows),
            "pay": np.round(np.exp(9 + 0.5 * rng.normal(size=cells * rows)), 2),
        }
    )
    raw = {"name": "t", "seed": 4, "sources": {"s": {"path": "x.csv", "strata": ["cell"]}}}
    man = load_manifest(raw)
    rel, log = extract_source(df, FileMeta(), man, man.sources[0])
    thinned = {e["block"] for e in log.entries if e["action"] == "thinned" and e["column"] == "pay"}
    assert thinned == set(rel["blocks"])  # the source level too: 1,200 rows < 2,020
    for block in rel["blocks"].values():
        if block["key"] is None:
            continue
        m = block["marginals"]["pay"]
        own = df.loc[df["cell"] == block["key"][0], "pay"].to_numpy()
        released = np.asarray(m["grid"] + m["window_means"])
        assert np.isin(own, released).mean() <= EXACT_SHARE
        assert min(m["window_sizes"]) >= THIN_WINDOW
    syn = synthesize_source(rel, man.seed)
    cols = [c["name"] for c in audit_columns(rel)]
    assert identical_rows(df[cols], syn[cols], cols)["share"] <= 0.01


def test_release_gate_rejects_small_windows() -> None:
    from replisynth.disclosure.sdc import DisclosureError, check_release

    df, raw = _with_groups(120, 6)
    df["cell"] = np.where(np.arange(len(df)) % 3 == 0, "a", "b")
    raw["sources"]["s"]["strata"] = ["cell"]
    man = load_manifest(raw)
    rel, _ = extract_source(df, FileMeta(), man, man.sources[0])
    check_release(rel, 20)
    bad = copy.deepcopy(rel)
    bad["groups"]["hosp"]["size_windows"][0]["groups"] = 19
    with pytest.raises(DisclosureError, match="group-size window"):
        check_release(bad, 20)
    bad = copy.deepcopy(rel)
    bad["blocks"]["s0"]["marginals"]["y"]["window_sizes"][0] = 4
    with pytest.raises(DisclosureError, match="grid window"):
        check_release(bad, 20)
