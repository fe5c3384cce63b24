"""The fe pin moves the outcome within the absorbed effects (y + M_D X Delta): the fe
coefficients pin exactly, the group means stay where the synthesis put them, and relations
between groups (pooled OLS) keep what the synthetic data had instead of absorbing the whole
correction."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import capture_released, manifest_for

from replisynth.config.manifest import Checkpoint, checkpoint_from_release, load_manifest
from replisynth.fit.estimators import fit_checkpoint
from replisynth.pin import pin as pin_module
from replisynth.pin.pin import pin_checkpoints
from replisynth.stats.design import build_design

MANIFEST = load_manifest(manifest_for("people.csv"))  # standard SDC profile


def make_panel(
    units: int, periods: int, within: float, between: float, seed: int, names: dict[str, str]
) -> pd.DataFrame:
    """A balanced panel where x varies mostly between units: x = 2 c_i + N(0, 1), and
    y = within (x - xbar_i) + between xbar_i + a_i + N(0, 1), so the within slope and the
    slope across units differ. `names` renames y, x, the unit and the period columns."""
    rng = np.random.default_rng(seed)
    unit = np.repeat(np.arange(units), periods)
    x = 2.0 * rng.normal(size=units)[unit] + rng.normal(size=units * periods)
    z = rng.normal(size=units * periods)
    xbar = pd.Series(x).groupby(unit).transform("mean").to_numpy()
    a = 0.5 * rng.normal(size=units)[unit]
    y = within * (x - xbar) + between * xbar + 0.3 * z + a + rng.normal(size=units * periods)
    return pd.DataFrame(
        {
            names["y"]: y,
            names["x"]: x,
            "z": z,
            names["unit"]: unit,
            names["period"]: np.tile(np.arange(periods), units),
            "w": rng.uniform(0.5, 2.0, units * periods),
        }
    )


NAMES = [
    {"y": "y", "x": "x", "unit": "ent", "period": "yr"},
    {"y": "earn", "x": "tenure", "unit": "firm", "period": "wave"},
]


def _fe(names: dict[str, str], formula_rhs: str, **kw: Any) -> Checkpoint:
    return Checkpoint(
        tag="fe",
        source="people",
        model="fe",
        formula=f"{names['y']} ~ {formula_rhs.format(x=names['x'])}",
        **kw,
    )


def _fit(df: pd.DataFrame, rel: dict[str, Any]):
    cp = checkpoint_from_release(rel)
    return fit_checkpoint(build_design(df, cp), cp)


def _panelols(df: pd.DataFrame, names: dict[str, str], time_effects: bool) -> pd.Series:
    """linearmodels PanelOLS with entity (and time) effects, no constant: the reference fit."""
    from linearmodels.panel import PanelOLS

    p = df.set_index([names["unit"], names["period"]])
    return (
        PanelOLS(
            p[names["y"]], p[[names["x"], "z"]], entity_effects=True, time_effects=time_effects
        )
        .fit()
        .params
    )


CASES = [
    # (rhs, checkpoint keywords, PanelOLS time effects or None when the reference is ours only)
    ("0 + {x} + z", {"entity": "UNIT"}, False),
    ("0 + {x} + z", {"absorb": ("UNIT", "PERIOD")}, True),
    ("{x} + z", {"absorb": ("UNIT",), "vcov": "cluster:UNIT"}, None),
    ("0 + {x} + z", {"absorb": ("UNIT",), "weights": "w"}, None),
]  # nonrobust or clustered by unit: HC shaping tilts single rows, which moves unit means


def _keywords(kw: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    swap = {"UNIT": names["unit"], "PERIOD": names["period"]}
    out: dict[str, Any] = {}
    for k, v in kw.items():
        if isinstance(v, tuple):
            out[k] = tuple(swap.get(c, c) for c in v)
        elif isinstance(v, str):
            out[k] = v.replace("UNIT", names["unit"]) if k == "vcov" else swap.get(v, v)
        else:
            out[k] = v
    return out


def _group_means(df: pd.DataFrame, y: str, by: str, w: str | None) -> np.ndarray:
    if w is None:
        return df.groupby(by)[y].mean().to_numpy()
    s = (df[y] * df[w]).groupby(df[by]).sum() / df[w].groupby(df[by]).sum()
    return s.to_numpy()


@pytest.mark.parametrize("names", NAMES, ids=["plain", "renamed"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_fe_pin_is_exact_and_keeps_the_group_means(names: dict[str, str], case: int) -> None:
    rhs, kw, time_effects = CASES[case]
    kw = _keywords(kw, names)
    cp = _fe(names, rhs, **kw)
    original = make_panel(150, 5, within=0.6, between=-0.8, seed=3 + case, names=names)
    synthetic = make_panel(140, 5, within=0.0, between=-0.8, seed=40 + case, names=names)
    (rel,) = capture_released(original, MANIFEST, cp)
    frames, results = pin_checkpoints({"people": synthetic}, [rel])
    assert results[0].status == "pinned", results[0].note
    pinned = frames["people"]

    # (1) the released coefficients are their targets, by our fit and by PanelOLS
    fit = _fit(pinned, rel)
    pos = {t: j for j, t in enumerate(fit.terms)}
    for t in rel["terms"]:
        assert abs(fit.beta[pos[t["term"]]] - t["beta"]) < 1e-8 * max(1.0, t["se"]), t["term"]
    if time_effects is not None:
        ref = _panelols(pinned, names, time_effects)
        for t in rel["terms"]:
            assert abs(ref[t["term"]] - t["beta"]) < 1e-8, t["term"]

    # (2) the group means of the outcome over every absorbed column stay as synthesized;
    # with a constant they all move by one common shift (fe's constant is ybar - xbar'beta)
    y, w = names["y"], kw.get("weights")
    for by in kw.get("absorb", (kw.get("entity"),)):
        before = _group_means(synthetic, y, by, w)
        after = _group_means(pinned, y, by, w)
        shift = after - before
        assert np.ptp(shift) < 1e-8, by
        if "0 +" in rhs:
            assert np.abs(shift).max() < 1e-8, by
    # the pin did move the outcome within the units
    assert np.abs(pinned[y] - synthetic[y]).max() > 0.1


def _pooled_slope(df: pd.DataFrame, y: str, x: str) -> tuple[float, float]:
    """Pooled OLS of y on x and z with a constant: (slope of x, its nonrobust SE)."""
    X = np.column_stack([np.ones(len(df)), df[x], df["z"]])
    beta, *_ = np.linalg.lstsq(X, df[y].to_numpy(), rcond=None)
    e = df[y].to_numpy() - X @ beta
    s2 = e @ e / (len(df) - X.shape[1])
    return float(beta[1]), float(np.sqrt(s2 * np.linalg.inv(X.T @ X)[1, 1]))


@pytest.mark.parametrize("seed", [0, 7])
def test_pooled_relation_moves_far_less_than_with_the_levels_pin(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The synthetic draw lost the within slope (0 instead of 0.6) but kept the slope across
    units (-0.8). The levels pin y + X Delta adds Delta to every slope, the pooled one
    included; the within pin leaves the pooled slope where the original has it."""
    names = NAMES[seed % 2]
    x, y = names["x"], names["y"]
    cp = _fe(names, "0 + {x} + z", entity=names["unit"])
    original = make_panel(300, 6, within=0.6, between=-0.8, seed=100 + seed, names=names)
    synthetic = make_panel(300, 6, within=0.0, between=-0.8, seed=200 + seed, names=names)
    (rel,) = capture_released(original, MANIFEST, cp)
    b_orig, se_orig = _pooled_slope(original, y, x)

    within, _ = pin_checkpoints({"people": synthetic}, [rel])
    with monkeypatch.context() as m:  # the previous pin: the correction in levels
        m.setattr(pin_module.Operator, "step", lambda self, X, full, pinned: X @ full)
        levels, res = pin_checkpoints({"people": synthetic}, [rel])
    assert res[0].status == "pinned"
    for df in (within["people"], levels["people"]):  # both pin the fe slope exactly
        fit = _fit(df, rel)
        assert abs(fit.beta[fit.terms.index(x)] - rel["terms"][0]["beta"]) < 1e-8

    z_within = abs(_pooled_slope(within["people"], y, x)[0] - b_orig) / se_orig
    z_levels = abs(_pooled_slope(levels["people"], y, x)[0] - b_orig) / se_orig
    assert z_levels > 8.0, z_levels
    assert z_within < 3.0, z_within
    assert z_within < z_levels / 4


def test_joint_fe_step_moves_no_group_mean() -> None:
    """Two fe checkpoints on one outcome over overlapping years (the stacked least-squares
    step): each fe block's share of the step is within its units, so no unit's mean moves."""
    names = NAMES[0]
    cps = [
        Checkpoint(
            tag="early", source="people", model="fe", formula="y ~ 0 + x + z", entity="ent",
            subset="yr <= 3",
        ),
        Checkpoint(
            tag="late", source="people", model="fe", formula="y ~ 0 + x", entity="ent",
            subset="yr >= 2",
        ),
    ]  # fmt: skip
    original = make_panel(200, 6, within=0.6, between=-0.8, seed=11, names=names)
    synthetic = make_panel(200, 6, within=0.1, between=-0.8, seed=12, names=names)
    rels = capture_released(original, MANIFEST, *cps)
    df = synthetic.copy()
    gap, consistent = pin_module._pin_pass(df, rels, "y", [])
    assert gap > 1.0 and consistent
    np.testing.assert_allclose(
        _group_means(df, "y", "ent", None), _group_means(synthetic, "y", "ent", None), atol=1e-9
    )
    for rel in rels:  # one step is exact: the constraints are linear in y
        fit = _fit(df, rel)
        for t in rel["terms"]:
            assert abs(fit.beta[fit.terms.index(t["term"])] - t["beta"]) < 1e-8
