"""The attacker LP solved part by part (with answers cached across a suppression loop) gives
exactly the intervals and the suppression patterns of one LP per cell over the whole system."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

import replisynth.disclosure.linked_tables as lt_mod
from replisynth.disclosure.linked_tables import LinkedTable


def reference_intervals(
    lt: LinkedTable,
    listed: np.ndarray | None = None,
    only: list[tuple[int, int]] | None = None,
    cache: Any = None,
) -> dict[tuple[int, int], tuple[int, int]]:
    """The audit as first written: two LPs per cell over the whole system."""
    listed = lt.listed if listed is None else listed
    A, b, var = lt_mod._constraints(lt, listed)
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for cell in list(var) if only is None else only:
        obj = np.zeros(A.shape[1])
        obj[var[cell]] = 1.0
        lo = linprog(obj, A_eq=A, b_eq=b, bounds=(0, None), method="highs")
        hi = linprog(-obj, A_eq=A, b_eq=b, bounds=(0, None), method="highs")
        if lo.status != 0 or hi.status != 0:
            out[cell] = (-1, -1)
            continue
        out[cell] = (int(np.ceil(lo.fun - 1e-6)), int(np.floor(-hi.fun + 1e-6)))
    return out


@st.composite
def tables(draw: st.DrawFn) -> tuple[LinkedTable, np.ndarray, int]:
    """A stratified table as an attacker sees it: strata over one or two columns (a 2- or 3-way
    table), sparse counts, a residual block, cells below k unlisted, sometimes a pooled old
    bundle or totals that contradict the listed cells."""
    ways = draw(st.sampled_from([2, 3]))
    shape = [draw(st.integers(1, 4)) for _ in range(ways - 1)]
    L = draw(st.integers(2, 6))
    k = draw(st.sampled_from([2, 3, 5, 10]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    lam = draw(st.sampled_from([0.5, 3.0, 12.0]))
    truth = rng.poisson(lam, size=(int(np.prod(shape)), L)).astype("int64")
    residual = draw(st.booleans())
    listed = truth >= k
    if residual:  # the rows outside the listed strata: only their total is published
        truth = np.vstack([truth, rng.poisson(lam, size=(1, L))])
        listed = np.vstack([listed, np.zeros((1, L), dtype=bool)])
    values = np.where(listed, truth, 0)
    row_totals, col_totals = truth.sum(axis=1), truth.sum(axis=0)
    if draw(st.integers(0, 9)) == 0:  # a release inconsistent with itself
        row_totals = row_totals.copy()
        row_totals[draw(st.integers(0, len(row_totals) - 1))] += draw(st.sampled_from([-3, 1]))
    blocks = [f"b{i}" for i in range(len(truth))]
    lt = LinkedTable(
        f"s{seed % 7}",
        f"c{seed % 5}",
        blocks,
        row_totals,
        col_totals,
        listed,
        values,
        pooled=draw(st.integers(0, 5)) == 0,
    )
    return lt, truth, k


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=tables(), pick=st.integers(0, 10**6))
def test_part_by_part_intervals_equal_the_whole_system_lp(case, pick):
    lt, _, _ = case
    cache: dict[Any, Any] = {}
    whole = reference_intervals(lt)
    assert lt_mod.intervals(lt, cache=cache) == whole
    assert list(lt_mod.intervals(lt, cache=cache)) == list(whole)  # same order, from the cache
    if whole:
        cells = list(whole)
        only = [cells[pick % len(cells)], cells[(pick // 7) % len(cells)]]
        assert lt_mod.intervals(lt, only=only) == reference_intervals(lt, only=only)


def reference_paths(mp: pytest.MonkeyPatch) -> None:
    """Route the audit through `reference_intervals`: every cell solved, nothing reused."""

    def every_cell(lt, listed, k, cache, first=False):
        return reference_intervals(lt, listed)

    mp.setattr(lt_mod, "intervals", reference_intervals)
    mp.setattr(lt_mod, "_audited_intervals", every_cell)
    mp.setattr(lt_mod, "_seen_protected", lambda *args: False)
    mp.setattr(
        lt_mod, "_first_unprotected", lambda lt, k, listed, cache: lt_mod.unprotected(lt, k, listed)
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=tables())
def test_unprotected_cells_and_their_intervals_unchanged(case, monkeypatch_module):
    lt, _, k = case
    cache: dict[Any, Any] = {}
    new = lt_mod.unprotected(lt, k, cache=cache)
    assert lt_mod.unprotected(lt, k, cache=cache) == new
    with monkeypatch_module.context() as mp:
        reference_paths(mp)
        assert lt_mod.unprotected(lt, k) == new


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=tables(), tries=st.sampled_from([1, 3, 40]))
def test_secondary_suppression_unchanged(case, tries, monkeypatch_module):
    lt, truth, k = case
    truth = np.where(truth >= 0, truth, 0)
    new = lt_mod.secondary_suppression(lt, truth, k, tries)
    with monkeypatch_module.context() as mp:
        reference_paths(mp)
        old = lt_mod.secondary_suppression(lt, truth, k, tries)
    assert np.array_equal(new[0], old[0]) and new[1:] == old[1:]
    assert lt_mod.unprotected(lt, k, new[0]) == [] or new[2]


def test_an_infeasible_part_voids_the_intervals_of_every_other_part():
    # unknowns: (0,0), (0,1) in one part; (1,2), (1,3), (2,2), (2,3) in another
    truth = np.array([[2, 3, 1, 1], [1, 1, 2, 0], [1, 1, 0, 2]])
    listed = np.array([[0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=bool)
    values = np.where(listed, truth, 0)
    rows, cols = truth.sum(axis=1), truth.sum(axis=0)
    ok = LinkedTable("s", "c", ["a", "b", "c"], rows, cols, listed, values)
    assert lt_mod.intervals(ok) == reference_intervals(ok)
    assert lt_mod.intervals(ok)[(0, 0)] == (2, 2) and lt_mod.intervals(ok)[(1, 2)] == (0, 2)
    bad = LinkedTable(
        "s", "c", ["a", "b", "c"], rows, cols - np.array([0, 0, 0, 3]), listed, values
    )
    only = [(0, 0)]
    assert (
        lt_mod.intervals(bad, only=only)
        == reference_intervals(bad, only=only)
        == {(0, 0): (-1, -1)}
    )
    empty = LinkedTable(
        "s", "c", ["a", "b", "c"], rows + np.array([0, 0, 1]), cols, np.ones_like(listed), truth
    )
    assert lt_mod.intervals(empty) == reference_intervals(empty) == {}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp
