"""The panel's between-entity refinement at scale: a batch's pairs as one flat row array with
offsets, candidates ordered by a partition only as far as needed, entity labels sorted by a
radix pass (synthesize/entities.py `_PairRows`, `best_first`; synthesize/refine.py
`stable_label_order`, `draw_pairs`)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from replisynth.synthesize.entities import (
    _PairRows,
    best_first,
    improving_candidates,
    improving_swaps,
)
from replisynth.synthesize.refine import draw_pairs, stable_label_order


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(0, 3000),
    top=st.sampled_from([2, 300, 2**16, 2**16 + 7, 2**20, 2**31]),
    seed=st.integers(0, 10_000),
)
def test_stable_label_order_is_the_stable_argsort(n: int, top: int, seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, top, n)
    assert np.array_equal(stable_label_order(labels), np.argsort(labels, kind="stable"))


def test_stable_label_order_falls_back_on_negative_and_float_labels() -> None:
    rng = np.random.default_rng(5)
    for labels in (rng.integers(-40, 40, 500), rng.integers(0, 9, 500).astype(float)):
        assert np.array_equal(stable_label_order(labels), np.argsort(labels, kind="stable"))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 4000), entities=st.integers(1, 900), seed=st.integers(0, 10_000))
def test_draw_pairs_pairs_rows_of_one_entity_earliest_first(
    n: int, entities: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, entities, n)
    order = rng.permutation(n)
    half = int(rng.integers(1, n // 2 + 1))
    a, b = draw_pairs(order, half, labels)
    assert len(a) == len(b) <= half
    assert np.array_equal(labels[a], labels[b])
    assert len(np.unique(np.concatenate([a, b]))) == 2 * len(a)  # disjoint
    # the reference: a stable sort by label, runs paired in order, earliest first rows kept
    idx = np.argsort(labels[order], kind="stable")
    o, lab = order[idx], labels[order[idx]]
    new = np.concatenate([[True], lab[1:] != lab[:-1]])
    pos = np.arange(n) - np.maximum.accumulate(np.where(new, np.arange(n), 0))
    i = np.flatnonzero((pos % 2 == 0) & np.concatenate([lab[1:] == lab[:-1], [False]]))
    if len(i) > half:
        i = np.sort(i[np.argsort(idx[i], kind="stable")[:half]])
    assert np.array_equal(a, o[i]) and np.array_equal(b, o[i + 1])


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 2000), levels=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_best_first_prefix_is_the_full_stable_sort(n: int, levels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gain = -rng.integers(0, levels, n).astype(float)  # many ties
    cand = np.flatnonzero(gain < 0)
    full = cand[np.argsort(gain[cand], kind="stable")]
    k = int(rng.integers(1, n + 2))
    got = best_first(gain, cand, k)
    assert len(got) >= min(k, len(cand))
    assert np.array_equal(got, full[: len(got)])


@settings(max_examples=40, deadline=None)
@given(p=st.integers(1, 50), d=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_improving_candidates_sorted_are_improving_swaps(p: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    E0, dC = rng.normal(size=(1, d)), rng.normal(size=(p, 1, d))
    gain, cand = improving_candidates(E0, dC)
    assert np.array_equal(best_first(gain, cand, len(cand)), improving_swaps(E0, dC)[1])


@settings(max_examples=60, deadline=None)
@given(classes=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_pair_rows_are_the_candidates_blocks_concatenated(classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(classes):
        pairs, periods = int(rng.integers(1, 30)), int(rng.integers(1, 6))
        rows = rng.permutation(10_000)[: 2 * pairs * periods].reshape(2 * pairs, periods)
        groups.append((rows[:pairs], rows[pairs:]))
    firsts = [r for e, _ in groups for r in e]
    seconds = [r for _, f in groups for r in f]
    gain = rng.normal(size=len(firsts))
    cand = np.flatnonzero(gain < 0)
    if not len(cand):
        return
    rows_of = _PairRows(groups, gain, cand)
    ranked = cand[np.argsort(gain[cand], kind="stable")]
    for m in sorted({1, len(cand), int(rng.integers(1, len(cand) + 1))}):
        a, b = rows_of(m)
        assert np.array_equal(a, np.concatenate([firsts[i] for i in ranked[:m]]))
        assert np.array_equal(b, np.concatenate([seconds[i] for i in ranked[:m]]))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(8, 400),
    d=st.integers(2, 6),
    present=st.floats(0.5, 1.0),
    seed=st.integers(0, 10_000),
)
def test_kept_cross_sums_after_swaps_are_the_recomputed_sums(
    n: int, d: int, present: float, seed: int
) -> None:
    from replisynth.synthesize.entities import _BlockSwaps, _pair_sums, _pairwise_error

    rng = np.random.default_rng(seed)
    state = _BlockSwaps.__new__(_BlockSwaps)
    state.P = rng.random((n, d)) < present
    state.Pf = state.P.astype("float64")
    state.U = np.where(state.P, rng.normal(size=(n, d)), 0.0)
    state.perm = {"x": np.arange(n)}
    state.target = rng.uniform(-0.6, 0.6, (d, d))
    state.target[rng.random((d, d)) < 0.2] = np.nan
    state.sums = state._sums_of(state.U, state.Pf)
    for _ in range(int(rng.integers(1, 6))):
        J = sorted(rng.choice(d, int(rng.integers(1, d)), replace=False).tolist())
        k = int(rng.integers(1, n // 2 + 1))
        order = rng.permutation(n)
        state._swap("x", J, order[:k], order[k : 2 * k])
        out = np.setdiff1d(np.arange(d), J)
        want = _pair_sums(state.U[:, J], state.Pf[:, J], state.U[:, out], state.Pf[:, out])
        for got, ref in zip(state._pair_base(J, out), want, strict=True):
            assert np.allclose(got, ref, rtol=1e-12, atol=1e-9)
    mask = np.isfinite(state.target) & ~np.eye(d, dtype=bool)
    full = _pairwise_error(state.U, state.P, state.U, state.P, np.nan_to_num(state.target), mask)
    assert abs(state.error() - full) <= 1e-9 * max(1.0, full)


def test_kept_cross_sums_in_a_small_sparse_case() -> None:
    """Found by a random property run: with half the values missing in 8 rows, a pair with
    one common row has no spread, which the kept sums' rounding read as a correlation."""
    test_kept_cross_sums_after_swaps_are_the_recomputed_sums.hypothesis.inner_test(  # type: ignore[attr-defined]
        n=8, d=4, present=0.5, seed=1
    )
