"""The three-way gate (replisynth.disclosure.three_way): the 2x2x2-move certificate is sound,
the review finds the 3-way pins of a release built without the gate, and the gated bundle
has none, whatever the triple's names and the order of its axes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_attack_round20 import THREE_WAY, K, _bundle, _three_way_bounds, _three_way_frame

from replisynth.disclosure.three_way import check_three_way, zero_certified, zeros_certified


def _min_with_two_way_margins(T: np.ndarray, cell: tuple[int, int, int]) -> float:
    """Smallest value of `cell` over nonnegative tables with T's two-way margins (LP)."""
    from scipy.optimize import linprog

    shape = T.shape
    rows, rhs = [], []
    for axes in ((0, 1), (0, 2), (1, 2)):
        other = ({0, 1, 2} - set(axes)).pop()
        margin = T.sum(axis=other)
        for idx in np.ndindex(margin.shape):
            w = np.zeros(shape)
            sl: list[Any] = [slice(None)] * 3
            sl[axes[0]], sl[axes[1]] = idx
            w[tuple(sl)] = 1
            rows.append(w.ravel())
            rhs.append(margin[idx])
    e = np.zeros(T.size)
    e[np.ravel_multi_index(cell, shape)] = 1
    res = linprog(e, A_eq=np.asarray(rows), b_eq=np.asarray(rhs), bounds=(0, None))
    assert res.status == 0
    return float(res.fun)


@settings(max_examples=60, deadline=None)
@given(
    st.tuples(st.integers(2, 3), st.integers(2, 3), st.integers(2, 4)).flatmap(
        lambda s: st.tuples(
            st.just(s),
            st.lists(st.integers(0, 9), min_size=s[0] * s[1] * s[2], max_size=s[0] * s[1] * s[2]),
        )
    )
)
def test_certificate_is_sound(case: tuple[tuple[int, int, int], list[int]]) -> None:
    """When the certificate says a table with the same two-way margins leaves the cell
    empty, the LP over all such tables indeed reaches 0 there."""
    shape, cells = case
    T = np.asarray(cells).reshape(shape)
    for cell in np.ndindex(shape):
        c = (int(cell[0]), int(cell[1]), int(cell[2]))
        if T[c] > 0 and zero_certified(T, c):
            assert _min_with_two_way_margins(T, c) < 1e-6


def test_certificate_refuses_a_forced_cell() -> None:
    """A 2x2x2 table whose two-way margins force a cell (the cells the only move would take
    rows from are empty) is not certified there, and the LP agrees the cell is forced."""
    T = np.asarray([[[3, 5], [5, 0]], [[5, 0], [0, 4]]])
    assert not zero_certified(T, (0, 0, 0))
    assert _min_with_two_way_margins(T, (0, 0, 0)) > 0.5


@pytest.mark.parametrize("seed", range(4))
def test_batched_certificate_is_the_greedy_one(seed: int) -> None:
    """`zeros_certified` (every cell's moves in one array pass per round) gives
    `zero_certified` on every cell, on integer tables and on the float tables of LP solutions."""
    rng = np.random.default_rng(seed)
    for it in range(40):
        shape = tuple(int(x) for x in rng.integers(2, 7, 3))
        if it % 2:
            T = rng.poisson(rng.uniform(0.2, 4), shape).astype(np.int64)
        else:
            T = np.clip(rng.normal(1, 2, shape), 0, None) * (rng.random(shape) < 0.7)
        cells = [(int(c[0]), int(c[1]), int(c[2])) for c in np.ndindex(shape)]
        assert zeros_certified(T, cells) == [zero_certified(T, c) for c in cells]


def _permuted(case: Any, axes: tuple[int, int, int], names: tuple[str, str, str]) -> Any:
    cols, table, seed = case
    return names, np.transpose(np.asarray(table), axes).tolist(), seed + 11


CASES = [
    THREE_WAY[0],
    _permuted(THREE_WAY[0], (2, 0, 1), ("zone", "arm", "kind")),
    _permuted(THREE_WAY[1], (1, 2, 0), ("site", "wave", "dose")),
]


@pytest.mark.parametrize(("cols", "table", "seed"), CASES)
def test_review_finds_the_pins_the_gate_withholds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cols: Any, table: Any, seed: int
) -> None:
    """Built without the gate, the release pins a 3-way cell and the review (bundle alone)
    says so; with the gate, the attacker's LP and the review find nothing, and the log says
    what was withheld by column names and counts of items only."""
    import replisynth.extract.extract as ex

    df = _three_way_frame(cols, table, seed)
    with monkeypatch.context() as m:
        m.setattr(ex, "gate_three_way", lambda *a, **kw: [])
        (tmp_path / "raw").mkdir()
        raw, _, _ = _bundle(tmp_path / "raw", df)
    found, _ = check_three_way(raw, K)
    assert any(all(c in f["finding"] for c in cols) for f in found)
    assert check_three_way(raw, K, budget=0)[1]  # unbounded triples are noted, not passed
    rel, _, text = _bundle(tmp_path, df)
    bounds = _three_way_bounds(rel, cols)
    assert not ((bounds[..., 0] > 0.5) & (bounds[..., 1] < K - 0.5)).any()
    assert check_three_way(rel, K) == ([], [])
    log = json.loads((tmp_path / "out" / "t" / "bundle" / "sdc_log.json").read_text())
    entries = [e for e in log["decisions"] if e["stage"] == "three_way"]
    assert entries and all(e["column"] in cols for e in entries)


def test_a_feasible_value_between_k_minus_one_and_k_clears_no_cell() -> None:
    """A cell an LP solution puts at k - 0.5 rows may still have its maximum below k (so its
    integer count in 1..k-1): only a solution at k rows or more, or at 0, clears it."""
    from replisynth.disclosure.three_way import TripleLP

    lp = TripleLP.__new__(TripleLP)
    lp.shape = (1, 1, 3)
    act = np.arange(3)
    x = np.array([K - 0.5, float(K), 0.0])
    open_ = {(0, 0, 0): 0, (0, 0, 1): 1, (0, 0, 2): 2}
    lp._clear(open_, x, act, K)
    assert list(open_) == [(0, 0, 0)]
