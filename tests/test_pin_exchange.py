"""The pin moves a continuous outcome with atoms inside its released marginal (exchanges of the
draw's values between rows, `support.swap_repair`), and a lone iv checkpoint is pinned along
the instruments' span (`pin.Operator.step`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import capture_released, refit_terms, release_of
from hypothesis import given, settings
from hypothesis import strategies as st

from replisynth.config.manifest import Checkpoint, load_manifest
from replisynth.pin import pin
from replisynth.pin.pin import _operator, pin_checkpoints
from replisynth.pin.support import INTEGER_TOL, SE_WEIGHT, SeProxy, bounded_min_norm, swap_repair
from replisynth.stats.design import build_design


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(300, 2_000), k=st.integers(1, 6))
def test_swap_repair_keeps_the_values_and_closes_the_gap(seed: int, n: int, k: int) -> None:
    r = np.random.default_rng(seed)
    atoms = np.array([0.5, 1.0, 2.5])
    y = np.where(r.random(n) < 0.4, r.choice(atoms, n), r.exponential(1.0, n))
    V = r.normal(size=(n, k)) / np.sqrt(n)
    r0 = V.T @ r.normal(0.0, 0.3, n)  # a gap one random step of y would close
    out, gap = swap_repair(y, np.arange(n), V, r0)
    assert np.array_equal(np.sort(out), np.sort(y))  # the same multiset: atoms keep counts
    np.testing.assert_allclose(gap, r0 - V.T @ (out - y), atol=1e-9)  # the gap it reports
    assert np.linalg.norm(gap) < 0.5 * np.linalg.norm(r0) or np.max(np.abs(gap)) <= 0.01


def test_swap_repair_tracks_the_se_proxy_exactly() -> None:
    """The log SE gaps the repair carries equal 1/2 log(Q'/Q) recomputed from the rows."""
    r = np.random.default_rng(3)
    n, k = 1_500, 3
    X = np.column_stack([np.ones(n), r.normal(size=(n, k - 1))])
    y = X @ np.array([1.0, 0.5, -0.3]) + r.exponential(1.0, n)
    V = X @ np.linalg.inv(X.T @ X) * np.sqrt(n)
    F = np.repeat((X @ np.linalg.lstsq(X, y, rcond=None)[0])[:, None], k, axis=1)
    W = V**2
    Q0 = np.einsum("ik,ik->k", W, (y[:, None] - F) ** 2)
    gap0 = np.array([0.15, -0.1, 0.05])
    proxy = SeProxy(W, F, Q0.copy(), gap0.copy())
    out, r1 = swap_repair(y, np.arange(n), V, np.zeros(k), se=proxy)
    Q1 = np.einsum("ik,ik->k", W, (out[:, None] - F) ** 2)
    np.testing.assert_allclose(proxy.gap, gap0 + 0.5 * np.log(Q1 / Q0), atol=1e-9)
    # the objective it minimises, coefficient gaps and SE gaps together, fell
    assert r1 @ r1 + SE_WEIGHT**2 * proxy.gap @ proxy.gap < 0.9 * SE_WEIGHT**2 * gap0 @ gap0


def test_rank_step_closes_the_gap_moving_sparse_values_more() -> None:
    """The step in rank units meets V' delta = D like the plain one, inside the bounds, but
    moves values where they are sparse (a long upper tail) more than where they are dense."""
    r = np.random.default_rng(5)
    n = 2_000
    y = np.sort(r.lognormal(0.0, 1.2, n))
    X = np.column_stack([np.ones(n), r.normal(size=n)])
    V = X @ np.linalg.inv(X.T @ X) * np.sqrt(n)
    D = np.array([0.05, 0.01])
    free = np.ones(n, dtype=bool)
    scale = pin._rank_scale(y, free)
    d_rank, ok = bounded_min_norm(V, D, y, free, 0.0, float(y.max()), scale)
    d_plain, ok_plain = bounded_min_norm(V, D, y, free, 0.0, float(y.max()))
    assert ok and ok_plain
    np.testing.assert_allclose(V.T @ d_rank, D, atol=1e-9)
    assert np.all(y + d_rank >= 0.0) and np.all(y + d_rank <= y.max() + 1e-12)
    low, top = slice(0, n // 2), slice(n - n // 10, n)
    assert np.abs(d_rank[low]).mean() < np.abs(d_plain[low]).mean()
    assert np.abs(d_rank[top]).mean() > np.abs(d_rank[low]).mean()
    assert np.all(pin._rank_scale(y, ~free) == 0.0)


def test_rank_scale_of_a_sparse_tail_is_capped() -> None:
    """A few far values (a Pareto tail) get at most RANK_CAP times the median spacing, so a
    step in rank units does not hand the whole mean shift to the farthest rows."""
    r = np.random.default_rng(8)
    y = np.concatenate([r.normal(size=5_000), 50.0 + 1e3 * r.pareto(0.8, size=40)])
    free = np.ones(len(y), dtype=bool)
    s = pin._rank_scale(y, free)
    median = float(np.median(s[s > 0]))
    assert s.max() <= pin.RANK_CAP * median * (1 + 1e-12)
    assert s.max() == pytest.approx(pin.RANK_CAP * median)  # the tail reaches the cap


def _ratio_frame(n: int, seed: int, y: str, slope: float) -> pd.DataFrame:
    """An outcome like a rate per year: about 60% zeros, a fifth of the rest on a few coded
    values (atoms), the others spread; its mean rising with x by `slope`."""
    r = np.random.default_rng(seed)
    x, w = r.normal(size=n), r.normal(size=n)
    pos = r.random(n) < 1 / (1 + np.exp(0.5 - 0.3 * x))
    coded = r.random(n) < 0.2
    val = np.where(
        coded,
        r.choice([0.25, 0.5, 1.4, 3.0], n),
        np.round(r.exponential(np.exp(0.2 + slope * x + 0.2 * w), n), 4),
    )
    return pd.DataFrame({"x": np.round(x, 3), "w": np.round(w, 3), y: np.where(pos, val, 0.0)})


def _partly_shuffled(df: pd.DataFrame, y: str, share: float, seed: int) -> pd.DataFrame:
    """`df` with `y` permuted among a random `share` of the rows: the marginal a draw from
    the release has, its relation to the regressors weakened."""
    r = np.random.default_rng(seed + 100)
    out = df.copy()
    rows = np.flatnonzero(r.random(len(df)) < share)
    out.loc[rows, y] = df[y].to_numpy()[r.permutation(rows)]
    return out


def _pin_partly_shuffled(tmp_path: Path, orig: pd.DataFrame, y: str, seed: int) -> tuple:
    """`orig` released with one HC1 OLS of `y` on x and w, pinned on a partly shuffled draw:
    (release, checkpoint releases, draw, pinned frames, pin results)."""
    release, data, _ = release_of(orig, tmp_path)
    manifest = load_manifest(
        {"name": "t", "seed": 1, "sources": {"people": {"path": "x.csv"}}, "checkpoints": []}
    )
    cp = Checkpoint(tag="cp", source="people", model="ols", vcov="HC1", formula=f"{y} ~ x + w")
    rels = capture_released(data, manifest, cp)
    draw = _partly_shuffled(orig, y, 0.5, seed)
    out, res = pin_checkpoints({"people": draw}, rels, seed=5, releases={"people": release})
    return release, rels, draw, out, res


@pytest.mark.parametrize(("n", "seed", "y"), [(4000, 2, "affairs_rate"), (6000, 5, "spend")])
def test_atoms_keep_the_draws_counts_and_checkpoints_stay_exact(
    tmp_path: Path, n: int, seed: int, y: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The support step used to freeze the rows on atoms and push the rest to the lowest
    released value; the exchange keeps every atom's count and leaves no pile there."""
    orig = _ratio_frame(n, seed, y, 0.5)
    release, rels, draw, out, res = _pin_partly_shuffled(tmp_path, orig, y, seed)
    after, before = out["people"][y], draw[y]
    atoms = release["blocks"]["all"]["marginals"][y]["atoms"]["values"]
    assert len(atoms) >= 3 and res[0].detail["support"]["exchanged"], res[0].note
    for a in atoms:
        assert (after == a).sum() == (before == a).sum()
    monkeypatch.setattr(pin, "_exchange_to_draw", lambda *a, **k: None)  # the former path
    old = pin.pin_checkpoints({"people": draw}, rels, seed=5, releases={"people": release})
    low = after[after > 0].min()  # the lowest value of the support off the zeros
    pile_old = (old[0]["people"][y] == low).mean()
    drawn = ((before > 0) & (before <= low)).mean()  # the draw's rows there or below
    assert (after == low).mean() <= max(0.5 * pile_old, drawn + 0.005)
    assert max(z for _, z, _ in refit_terms(out["people"], rels[0])) <= 1e-6
    ses = [s for _, _, s in refit_terms(out["people"], rels[0])]
    assert max(abs(np.log(s)) for s in ses) <= 0.25


def test_exchange_refused_when_the_marginal_cannot_carry_the_ses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A draw from another distribution (its values' mean a quarter of the one the
    checkpoint implies, which no exchange can change; the step in rank units carries the
    difference in the upper tail, the SEs up by about 0.2 in logs): with a bound of 0.1 the
    pin keeps its former path (exact, inside the support) and its note says nothing of an
    exchange (the unbounded pin spills, so the slack a spill allows is set to 0 too)."""
    monkeypatch.setattr(pin, "EXCHANGE_SE_BOUND", 0.1)
    monkeypatch.setattr(pin, "SPILL_SE_SLACK", 0.0)
    orig = _ratio_frame(9000, 11, "spend", 0.5)
    release, data, _ = release_of(orig, tmp_path)
    manifest = load_manifest(
        {"name": "t", "seed": 1, "sources": {"people": {"path": "x.csv"}}, "checkpoints": []}
    )
    cp = Checkpoint(tag="cp", source="people", model="ols", vcov="HC1", formula="spend ~ x + w")
    rels = capture_released(data, manifest, cp)
    draw = _ratio_frame(9000, 12, "spend", 0.1)
    draw["spend"] *= 0.3
    out, res = pin_checkpoints({"people": draw}, rels, seed=5, releases={"people": release})
    assert res[0].detail["support"]["exchanged"] is False
    assert "exchanged" not in res[0].note
    assert res[0].detail["support"]["outside_after"] == 0
    assert max(z for _, z, _ in refit_terms(out["people"], rels[0])) <= 1e-6


def _scale_frame(n: int, seed: int) -> pd.DataFrame:
    """A 7-point self-placement `place` rising with x, and 0-20 `score` (whole numbers)."""
    r = np.random.default_rng(seed)
    x, w = r.normal(size=n), r.normal(size=n)
    place = np.clip(np.round(4 + 1.1 * x + 0.4 * w + r.normal(0, 1.2, n)), 1, 7)
    score = np.clip(np.round(10 + 2 * x + r.normal(0, 3, n)), 0, 20)
    return pd.DataFrame({"x": np.round(x, 3), "w": np.round(w, 3), "place": place, "score": score})


@pytest.mark.parametrize(("n", "seed", "y"), [(1200, 3, "place"), (3000, 8, "score")])
def test_integer_outcome_keeps_the_draws_level_counts(
    tmp_path: Path, n: int, seed: int, y: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An integer outcome pinned by exchanges: the levels keep the draw's shares but for the
    last lattice steps of the repair (the former path's random rounding moved them more),
    the coefficients within the stated integer tolerance."""
    orig = _scale_frame(n, seed)
    release, rels, draw, out, res = _pin_partly_shuffled(tmp_path, orig, y, seed)
    assert res[0].detail["support"]["exchanged"], res[0].note
    after, before = out["people"][y], draw[y]
    assert max(z for _, z, _ in refit_terms(out["people"], rels[0])) <= INTEGER_TOL
    monkeypatch.setattr(pin, "_exchange_to_draw", lambda *a, **k: None)  # the former path
    old, _ = pin.pin_checkpoints({"people": draw}, rels, seed=5, releases={"people": release})

    def tv(a: pd.Series) -> float:  # total variation distance of level shares to the draw's
        p, q = a.value_counts(normalize=True), before.value_counts(normalize=True)
        return 0.5 * float(p.sub(q, fill_value=0.0).abs().sum())

    assert tv(after) <= 0.02 and tv(after) < tv(old["people"][y])


def test_lone_iv_pin_moves_y_inside_the_instruments_span() -> None:
    """The step that moves 2SLS by `full` lies in the span of [exogenous, instruments]: the
    OLS slope on the endogenous regressor moves by a fraction of the 2SLS change, not all."""
    r = np.random.default_rng(8)
    n = 3_000
    z, w, u = r.normal(size=n), r.normal(size=n), r.normal(size=n)
    x = 0.3 * z + 0.4 * w + u
    df = pd.DataFrame({"z": z, "w": w, "x": x, "y": 0.5 * x + 0.2 * w + u + r.normal(size=n)})
    cp = Checkpoint(tag="iv", source="s", model="iv", vcov="HC0", formula="y ~ w + [x ~ z]")
    d = build_design(df, cp)
    A = _operator(d, cp)
    full = np.zeros(d.X.shape[1])
    j = d.terms.index("x")
    full[j] = 0.2
    step = A.step(d.X, full, [j])
    np.testing.assert_allclose(A.apply(d.y + step) - A.apply(d.y), full, atol=1e-10)
    Z = np.column_stack([np.ones(n), w, z])
    resid = step - Z @ np.linalg.lstsq(Z, step, rcond=None)[0]
    assert np.abs(resid).max() <= 1e-9 * np.abs(step).max()
    ols = np.linalg.lstsq(d.X, step, rcond=None)[0]
    assert 0 < ols[j] < 0.5 * full[j]


def _claims_frame(n: int, seed: int, slope: float) -> pd.DataFrame:
    """A paid amount like a claims register's: 22% exact zeros, log-normal otherwise, rising
    with the days of stay (0 for three quarters of the rows) by `slope`, a provider effect."""
    r = np.random.default_rng(seed)
    age = r.integers(0, 96, n)
    stay = np.where(r.random(n) < 0.25, r.integers(1, 30, n), 0)
    prov = r.integers(1, 21, n)
    cost = np.exp(6.5 + 0.01 * age + slope * stay + r.normal(0, 0.3, 21)[prov] + r.normal(0, 1, n))
    cost[r.random(n) < 0.22] = 0.0
    return pd.DataFrame({"age": age, "stay": stay, "prov": prov, "cost": np.round(cost, 2)})


@pytest.mark.parametrize(("seed", "model"), [(1, "ols"), (4, "ols"), (1, "fe")])
def test_a_spilling_pin_exchanges_the_draws_values(
    tmp_path: Path, seed: int, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A skewed cost whose unbounded pin puts a third of its rows below zero: clipping them
    piled them on the lowest released positive value or stretched the rest (KS 0.26-0.47 to
    the draw's positive values); with the slack a spill allows, the draw's values are
    exchanged, the coefficients exact and the marginal the draw's."""
    from scipy import stats

    orig = _claims_frame(6000, seed, 0.05)
    release, data, _ = release_of(orig, tmp_path)
    manifest = load_manifest(
        {"name": "t", "seed": 1, "sources": {"people": {"path": "x.csv"}}, "checkpoints": []}
    )
    cp = (
        Checkpoint(tag="cp", source="people", model="ols", vcov="HC1", formula="cost ~ age + stay")
        if model == "ols"
        else Checkpoint(
            tag="cp",
            source="people",
            model="fe",
            formula="cost ~ age + stay",
            absorb=["prov"],
            vcov="cluster:prov",
        )  # fmt: skip
    )
    rels = capture_released(data, manifest, cp)
    draw = _claims_frame(6000, seed + 50, 0.0)
    drawn = draw["cost"][draw["cost"] > 0]

    def ks(df: pd.DataFrame) -> float:
        y = df["cost"]
        return float(stats.ks_2samp(y[y > 0], drawn).statistic)

    out, res = pin_checkpoints({"people": draw}, rels, seed=5, releases={"people": release})
    assert res[0].detail["support"]["outside_before"] > 0.2 * len(draw)
    assert res[0].detail["support"]["exchanged"], res[0].note
    assert "the draw's values exchanged between rows" in res[0].note
    assert ks(out["people"]) < 0.12
    assert ((out["people"]["cost"] == 0) == (draw["cost"] == 0)).all()
    assert max(z for _, z, _ in refit_terms(out["people"], rels[0])) <= 1e-6
    monkeypatch.setattr(pin, "SPILL_SE_SLACK", 0.0)  # the former rule
    old, res_old = pin_checkpoints({"people": draw}, rels, seed=5, releases={"people": release})
    assert not res_old[0].detail["support"]["exchanged"]
    assert ks(old["people"]) > 0.2
