"""The discrete pin of a count keeps the draw's zero/positive split and released shares: the
score correction steps mostly among the positive values, so a logit of `y > 0` stays as far
from the original's as the draw's and the shares of the levels move less, while the
checkpoints still refit within 0.5 target SE. Without the soft terms (weights 0) the same
correction crosses zero freely and takes the logit of `y > 0` far off."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from conftest import capture_released, manifest_for, refit_terms

from replisynth.config.manifest import Checkpoint, load_manifest
from replisynth.pin import pin_discrete
from replisynth.pin.pin import pin_checkpoints

MANIFEST = load_manifest(manifest_for("people.csv"))


def hurdle_world(n: int, seed: int, p_zero: float, att: float, y: str) -> pd.DataFrame:
    """x, w ~ N(0,1), g ~ B(0.4); y is 0 with probability about `p_zero` (less at high x),
    else 1 + negative binomial with mean rising in x and g. `att` < 1 weakens every relation
    to the regressors (a copula-like draw)."""
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=n), rng.normal(size=n)
    g = rng.binomial(1, 0.4, size=n)
    a0 = np.log(p_zero / (1 - p_zero))
    pos = rng.random(n) > 1 / (1 + np.exp(-(a0 - att * (0.6 * x + 0.3 * g))))
    mu = np.exp(0.6 + att * (0.4 * x + 0.3 * g - 0.2 * w))
    k = rng.negative_binomial(1.5, 1.5 / (1.5 + mu))
    return pd.DataFrame({"x": x, "w": w, "g": g, y: np.where(pos, 1 + k, 0)})


def _logit_z(df: pd.DataFrame, ref: pd.DataFrame, y: str) -> np.ndarray:
    """|b - b_ref| / SE_ref of a logit of y > 0 on x, w, g (the ref fitted on `ref`)."""

    def fit(d: pd.DataFrame) -> sm.regression.linear_model.RegressionResultsWrapper:
        X = sm.add_constant(d[["x", "w", "g"]].to_numpy(dtype=float))
        return sm.Logit((d[y] > 0).astype(int).to_numpy(), X).fit(disp=0)

    r = fit(ref)
    return np.abs(fit(df).params - r.params) / r.bse


def _shares_tv(a: pd.Series, b: pd.Series) -> float:
    pa, pb = a.value_counts(normalize=True), b.value_counts(normalize=True)
    return 0.5 * float(pa.sub(pb, fill_value=0).abs().sum())


CASES = [
    (4000, 1, 0.3, ["poisson"], "mdvis"),
    (9000, 2, 0.6, ["poisson", "nbreg"], "visits"),
    (2500, 3, 0.45, ["nbreg"], "n_claims"),
]


@pytest.mark.parametrize(("n", "seed", "p_zero", "models", "y"), CASES)
def test_zero_split_and_shares_kept(
    n: int, seed: int, p_zero: float, models: list[str], y: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    orig = hurdle_world(n, 10 * seed, p_zero, 1.0, y)
    syn = hurdle_world(n, 10 * seed + 1, p_zero, 0.5, y)
    cps = [
        Checkpoint(
            tag=f"cp_{m}",
            source="people",
            model=m,
            formula=f"{y} ~ x + w + g",
            vcov="HC0" if m == "poisson" else "nonrobust",
        )
        for m in models
    ]
    rels = capture_released(orig, MANIFEST, *cps)
    out = pin_checkpoints({"people": syn}, rels, seed=seed)[0]["people"]
    monkeypatch.setattr(pin_discrete, "HURDLE_WEIGHT", 0.0)
    monkeypatch.setattr(pin_discrete, "SHARES_WEIGHT", 0.0)
    monkeypatch.setattr(pin_discrete, "KEEP_WEIGHT", 0.0)
    bare = pin_checkpoints({"people": syn}, rels, seed=seed)[0]["people"]
    for rel in rels:
        assert max(t[1] for t in refit_terms(out, rel)) <= 0.5, rel["tag"]
    crossed = int(((syn[y] == 0) != (out[y] == 0)).sum())
    bare_crossed = int(((syn[y] == 0) != (bare[y] == 0)).sum())
    assert crossed <= 0.6 * bare_crossed, (crossed, bare_crossed)
    # a logit of y > 0: no further from the original's than the draw's (the bare pin is)
    z_draw, z_out, z_bare = (_logit_z(d, orig, y).max() for d in (syn, out, bare))
    assert z_out <= z_draw + 0.5, (z_out, z_draw)
    assert z_bare > z_draw + 2.0, (z_bare, z_draw)
    assert _shares_tv(out[y], syn[y]) < _shares_tv(bare[y], syn[y])
