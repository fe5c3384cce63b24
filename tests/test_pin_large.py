"""The pin's large-data paths on small data: the discrete pin's batches on a fixed subsample
of rows (with Q still that of every row) and the support repair's spread steps."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import capture_released, refit_terms
from test_pin_discrete_minimal import MANIFEST, world

from replisynth.config.manifest import Checkpoint
from replisynth.pin import pin_discrete
from replisynth.pin.pin import pin_checkpoints
from replisynth.pin.support import repair_gap


@pytest.mark.parametrize(
    ("model", "y", "n", "seed", "sub"),
    [
        ("logit", "b", 6000, 11, 700),
        ("poisson", "c", 5000, 12, 1000),
        ("ologit", "o", 4000, 13, 512),
    ],
)
def test_subsample_batches_pin_and_move_few_rows_outside_it(
    model: str, y: str, n: int, seed: int, sub: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    orig = world(n, 10 * seed)
    syn = world(n, 10 * seed + 1, att=0.6, shift=0.2).rename(columns={y: "outcome_x"})
    cp = Checkpoint(
        tag="cp", source="people", model=model, formula="outcome_x ~ u + v + g", vcov="HC1"
    )
    (rel,) = capture_released(orig.rename(columns={y: "outcome_x"}), MANIFEST, cp)
    monkeypatch.setattr(pin_discrete, "SUBSAMPLE", sub)
    frames, res = pin_checkpoints({"people": syn}, [rel], seed=seed)
    out = frames["people"]
    assert res[0].status == "pinned", res[0].note
    assert max(t[1] for t in refit_terms(out, rel)) <= 0.5
    moved = np.flatnonzero(out["outcome_x"].to_numpy() != syn["outcome_x"].to_numpy())
    picked = np.unique(np.linspace(0, n - 1, sub).astype("int64"))
    # rows of the subsample move far more often than the others (the polish batches)
    inside = np.isin(moved, picked).mean()
    assert inside > 2 * len(picked) / n, inside
    again, _ = pin_checkpoints({"people": syn}, [rel], seed=seed)
    assert again["people"].equals(out)


def test_subsample_search_keeps_every_rows_score_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    """Q reported after the subsample's batches is the Q of the whole returned y."""
    rng = np.random.default_rng(5)
    n, k = 3000, 3
    X = np.column_stack([np.ones(n), rng.normal(size=(n, k - 1))])
    theta = np.array([0.3, 0.8, -0.5])
    yb = (rng.random(n) < 1 / (1 + np.exp(-(X @ (0.85 * theta) + 0.1)))).astype("int64")
    w = np.ones(n)
    fn = pin_discrete.score_function("logit", X, w, theta, None)
    s = fn(yb)
    sy = pin_discrete._System(
        "cp", np.arange(n), fn, np.linalg.pinv(s.T @ s), fn(np.ones(n)) - fn(np.zeros(n))
    )
    monkeypatch.setattr(pin_discrete, "SUBSAMPLE", 1000)
    monkeypatch.setattr(pin_discrete, "POLISH_BATCHES", 0)
    out, q0, q1, changed = pin_discrete.correct_scores(yb, [sy], 0, 1, q_stop=0.01)
    S = fn(out).sum(axis=0)
    assert q1 == pytest.approx(float(S @ sy.M @ S), rel=1e-9, abs=1e-12)
    assert q1 < 0.1 * q0
    picked = np.unique(np.linspace(0, n - 1, 1000).astype("int64"))
    moved = np.flatnonzero(out != yb)
    assert changed == len(moved) > 0 and np.isin(moved, picked).all()


@pytest.mark.parametrize(("n", "seed", "levels"), [(60000, 3, 9), (20000, 4, 2)])
def test_repair_spreads_moves_closes_the_gap_and_repeats(n: int, seed: int, levels: int) -> None:
    r = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), r.normal(size=n), r.integers(0, 3, n)])
    lattice = np.arange(levels, dtype="float64")
    se = max(1.0, levels / 4) / np.sqrt(n)
    V = X @ np.linalg.inv(X.T @ X) / se
    y = r.uniform(0, levels - 1, n)
    yr = np.floor(y + r.uniform(-0.3, 0.5, n)).clip(0, levels - 1)  # biased down
    gap = -V.T @ (yr - y)
    assert np.max(np.abs(gap)) > 1.0
    rows = np.flatnonzero(r.random(n) < 0.8)
    fixed, rest = repair_gap(yr, rows, V, gap, lattice)
    assert np.max(np.abs(rest)) <= 0.01
    np.testing.assert_allclose(V.T @ (fixed - y), -rest, atol=1e-9)
    step = np.abs(fixed - yr)
    assert set(np.unique(step)) <= {0.0, 1.0} and not step[np.setdiff1d(np.arange(n), rows)].any()
    again, rest2 = repair_gap(yr, rows, V, gap, lattice)
    assert np.array_equal(again, fixed) and np.array_equal(rest, rest2)


@pytest.mark.parametrize(("seed", "partner"), [(3, "ols"), (7, "probit")])
def test_checkpoints_sharing_a_discrete_outcome_settle_alone(seed: int, partner: str) -> None:
    """Two checkpoints on one 0/1 outcome with a logit among them are judged each by its own
    factors (the discrete pin holds them together whatever the auxiliary regressions); two
    OLS checkpoints on one outcome never settle (their joint pin needs them aligned)."""
    from pathlib import Path

    from conftest import make_people, manifest_for

    from replisynth.config.manifest import load_manifest
    from replisynth.extract.checkpoints import capture_checkpoint
    from replisynth.pin.design_moments import _settle_rule, _target

    df = make_people(1500, seed=seed)
    df["hit_z"] = (df["y"] > df["y"].median()).astype(int)
    m = load_manifest(manifest_for(Path("people.csv")))
    recs = []
    for tag, model, rhs in (("a", "logit", "x1 + x2 + age"), ("b", partner, "x1 + age")):
        cp = Checkpoint(tag=tag, source="people", model=model, formula=f"hit_z ~ {rhs}")
        rel, _ = capture_checkpoint(df, cp, m, 0)
        recs.append({**rel, "status": "released"})
    fine = _settle_rule(recs)
    for c in recs:
        t, _ = _target(df, c, compile_rows=False)
        assert t is not None and fine(t), c["tag"]  # the design as released: settled
    linear = [{**c, "model": "ols"} for c in recs]
    t, _ = _target(df, linear[0], compile_rows=False)
    assert t is not None and not _settle_rule(linear)(t)
