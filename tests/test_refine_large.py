"""The outside stages at scale: the swap refinement of large views moves only the units with
a pair past comfort, views share one sort per column, ordered levels without a full sort,
category shares counted per distinct value (synthesize/refine.py, stats/copula.py,
verify/utility.py; docs/method.md, "Swap refinement at scale")."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from replisynth.stats.copula import fill_by_rank, ordered_values
from replisynth.stats.copula_dims import norm_key
from replisynth.synthesize.refine import (
    COMFORT,
    ColumnRanks,
    _view,
    off_moves,
    refine_swaps,
    scores,
)
from replisynth.verify.utility import _key_shares


@settings(max_examples=60, deadline=None)
@given(d=st.integers(2, 8), seed=st.integers(0, 10_000), views=st.integers(1, 3))
def test_off_moves_keep_exactly_the_units_with_a_pair_past_comfort(
    d: int, seed: int, views: int
) -> None:
    rng = np.random.default_rng(seed)
    errs = []
    for _ in range(views):
        e = rng.uniform(-0.06, 0.06, (d, d)) * (rng.random((d, d)) < 0.3)
        e = np.triu(e, 1)
        errs.append(e + e.T)
    units = [[j] for j in range(d)]
    moves = [([i], u) for i, u in enumerate(units)]
    kept = {tuple(dims) for _, dims in off_moves(moves, errs, COMFORT)}
    for j in range(d):
        past = any(np.abs(e[j]).max() > COMFORT for e in errs)
        assert ((j,) in kept) == past


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(5, 600),
    blocks=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    missing=st.floats(0.0, 0.4),
)
def test_column_ranks_give_each_view_the_scores_of_its_own_rows(
    n: int, blocks: int, seed: int, missing: float
) -> None:
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            rng.normal(size=n),
            rng.integers(0, 4, n).astype(float),  # small integers: counted, never sorted
            np.round(rng.normal(size=n), 1),  # ties
            np.where(rng.random(n) < missing, np.nan, rng.exponential(size=n)),
        ]
    )
    ranks = ColumnRanks(X)
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(blocks - 1, n - 1), replace=False))
    for rows in np.split(np.arange(n), cuts) + [np.arange(n)]:
        inside = np.zeros(n, dtype=bool)
        inside[rows] = True
        for j in range(X.shape[1]):
            assert np.array_equal(ranks.scores(j, inside), scores(X[rows, j]))
        target = np.eye(X.shape[1])
        a, b = _view(X, rows, target, n, ranks=ranks), _view(X, rows, target, n)
        assert np.array_equal(a.U, b.U) and np.array_equal(a.C, b.C)


def test_large_views_refine_only_the_units_with_a_pair_past_comfort() -> None:
    # a large view (>= 1/0.004² rows) whose only pair past comfort is (0, 1): dims 2 and 3
    # keep their rows, and the refinement brings the pair within comfort
    rng = np.random.default_rng(11)
    n = 70_000
    a = rng.normal(size=n)
    X = np.column_stack([a, a + rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)])
    target = np.eye(4)
    target[0, 1] = target[1, 0] = 0.55  # drawn near 0.68
    units = [[0], [1], [2], [3]]
    perms = refine_swaps(X, [np.arange(n)], [target], None, units, rng)
    assert np.array_equal(perms[2], np.arange(n)) and np.array_equal(perms[3], np.arange(n))
    moved = np.column_stack([X[perms[j], j] for j in range(2)])
    from replisynth.stats.correlations import spearman_matrix

    assert abs(spearman_matrix(moved)[0, 1] - 0.55) <= COMFORT


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 300),
    k=st.integers(2, 6),
    seed=st.integers(0, 10_000),
    rounding=st.sampled_from([None, 0, 1]),
    nans=st.integers(0, 3),
)
def test_ordered_values_are_the_stable_rank_fill(
    n: int, k: int, seed: int, rounding: int | None, nans: int
) -> None:
    rng = np.random.default_rng(seed)
    counts = [int(c) for c in rng.multinomial(n, rng.dirichlet(np.ones(k)))]
    z = rng.normal(size=n)
    if rounding is not None:  # ties, some across a level's first rank
        z = np.round(z, rounding)
    z[rng.integers(0, n, nans)] = np.nan
    want = fill_by_rank(z, np.repeat(np.arange(k), counts))
    got = ordered_values(z, counts)
    assert got.dtype == want.dtype and np.array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.integers(-3, 3),
            st.sampled_from([0.5, 1.0, 2.0, -1.0]),
            st.sampled_from(["a", "b", "1"]),
            st.booleans(),
            st.none(),
        ),
        min_size=1,
        max_size=60,
    ),
    as_category=st.booleans(),
)
def test_category_shares_count_as_the_per_row_keys(values: list, as_category: bool) -> None:
    s = pd.Series(values, dtype=object)
    if as_category:
        try:
            s = s.astype("category")
        except TypeError:
            return
    v = s.dropna()
    if not len(v):
        return
    want = v.map(norm_key).value_counts(normalize=True)
    got = _key_shares(v)
    assert {k: x for k, x in want.items() if x > 0} == {k: x for k, x in got.items() if x > 0}


def _assign_periods_per_entity(
    ent: np.ndarray, ok: np.ndarray, codes_multiset: np.ndarray, z: np.ndarray
) -> np.ndarray:
    """The per-entity loop `assign_periods` replaced (the reference it must reproduce)."""
    G = int(ent.max()) + 1 if len(ent) else 0
    size = np.bincount(ent[ok], minlength=G)
    vals, left = np.unique(codes_multiset, return_counts=True)
    left = left.astype("int64")
    sets: dict[int, list[np.ndarray]] = {}
    for e in sorted(range(G), key=lambda e: (-size[e], e)):
        s = int(size[e])
        if s == 0:
            continue
        pick = np.lexsort((vals, -left))[: min(s, len(vals))]
        left[pick] -= 1
        got = vals[pick]
        if s > len(vals):
            extra = np.repeat(vals[np.argmax(left)], s - len(vals))
            left[np.argmax(left)] -= len(extra)
            got = np.concatenate([got, extra])
        keep = left > 0
        vals, left = vals[keep], left[keep]
        sets.setdefault(s, []).append(np.sort(got))
    out = np.full(len(ent), -1, dtype="int64")
    rows_of = pd.Series(np.flatnonzero(ok)).groupby(ent[ok]).agg(list)
    zmean = np.zeros(G)
    np.add.at(zmean, ent[ok], z[ok])
    zmean /= np.maximum(size, 1)
    for s, lst in sets.items():
        ents = sorted([e for e in range(G) if size[e] == s], key=lambda e: (zmean[e], e))
        lst = sorted(lst, key=lambda a: (float(a.mean()), tuple(a)))
        for e, codes in zip(ents, lst, strict=True):
            r = np.asarray(rows_of[e])
            out[r[np.argsort(z[r], kind="stable")]] = codes
    return out


@settings(max_examples=120, deadline=None)
@given(
    entities=st.integers(1, 50),
    periods=st.integers(1, 9),
    balanced=st.booleans(),
    present=st.sampled_from([1.0, 0.85]),
    ties=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_assign_periods_is_the_per_entity_greedy(
    entities: int, periods: int, balanced: bool, present: float, ties: bool, seed: int
) -> None:
    from replisynth.synthesize.entities import assign_periods

    rng = np.random.default_rng(seed)
    sizes = np.full(entities, periods) if balanced else rng.integers(1, periods + 3, entities)
    ent = rng.permutation(np.repeat(np.arange(entities), sizes))
    ok = rng.random(len(ent)) < present
    m = int(ok.sum())
    codes = np.tile(np.arange(periods), entities)[:m] if balanced else rng.integers(0, periods, m)
    z = rng.normal(size=len(ent))
    if ties:
        z = np.round(z)
    try:
        want = _assign_periods_per_entity(ent, ok, codes, z)
    except ValueError:  # no code left for an entity: both fail
        return
    assert np.array_equal(assign_periods(ent, ok, codes, z), want)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(10, 300),
    d=st.integers(3, 7),
    present=st.floats(0.6, 1.0),
    seed=st.integers(0, 10_000),
)
def test_block_swap_error_from_the_swapped_rows_is_the_recomputed_error(
    n: int, d: int, present: float, seed: int
) -> None:
    from replisynth.synthesize.entities import _BlockSwaps, _pair_sums, _pairwise_error

    rng = np.random.default_rng(seed)
    state = _BlockSwaps.__new__(_BlockSwaps)
    P = rng.random((n, d)) < present
    state.U = np.where(P, rng.normal(size=(n, d)), 0.0)
    state.Pf = P.astype("float64")
    J = [int(rng.integers(0, d))]
    out = np.setdiff1d(np.arange(d), J)
    T = rng.uniform(-0.5, 0.5, (1, len(out)))
    M = rng.random((1, len(out))) < 0.8
    k = int(rng.integers(1, n // 2 + 1))
    order = rng.permutation(n)
    a, b = order[:k], order[k : 2 * k]
    Uo = state.U[:, out]
    other = (Uo, state.Pf[:, out], Uo * Uo)
    base = _pair_sums(state.U[:, J], state.Pf[:, J], *other)
    UJ, PJ = state.U[:, J].copy(), state.Pf[:, J].copy()
    UJ[a], UJ[b] = state.U[b][:, J], state.U[a][:, J]
    PJ[a], PJ[b] = state.Pf[b][:, J], state.Pf[a][:, J]
    full = _pairwise_error(UJ, PJ, other[0], other[1], T, M)
    assert abs(state.swapped_error(J, other, base, T, M, a, b) - full) <= 1e-12 * max(1.0, full)
