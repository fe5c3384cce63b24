"""Layer 4 for maximum-likelihood checkpoints: how close the pin lands, per family, over seeds.

For each family a checkpoint is captured on seeded data with known parameters (true values in
`glm_people`) and pinned on *other* data of the same size (another seed). Printed per family:
the largest |b - b*|/SE over the released terms and seeds, with the released SE (target) and
the synthetic refit's SE, before the correction ("draw": the other data's outcome as it is,
the pin's starting point) and after it ("pinned"), plus the largest drift of the outcome's
mean/shares in sampling SEs and seconds.

  python benchmarks/glm_pin.py [--rows 1000] [--seeds 10] [--families logit,poisson]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pandas as pd

import replisynth.pin.pin_discrete as pin_discrete
from replisynth.config.manifest import Checkpoint, checkpoint_from_release, load_manifest
from replisynth.extract.checkpoints import capture_checkpoint
from replisynth.fit.estimators import fit_checkpoint
from replisynth.pin.pin import pin_checkpoints
from replisynth.stats.design import build_design

LEVELS = ("low", "mid", "high", "top")


def glm_people(n: int, seed: int) -> pd.DataFrame:
    """x1 ~ N(0,1); x2 = 0.6 x1 + N(0, 0.8); female ~ B(0.5); region a..d (.4/.3/.2/.1);
    w ~ U(0.5, 2); cluster 1..40. Outcomes: b ~ B(logistic(0.3 + 0.8 x1 - 0.5 female));
    c ~ Poisson(exp(0.2 + 0.4 x1 - 0.2 female)); nb ~ NB2(exp(0.5 + 0.4 x1 - 0.3 x2), alpha 0.5);
    o = ordered logit on x1 - 0.3 female with cuts (-1, 0, 1.2), also as strings `os`."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = 0.6 * x1 + rng.normal(scale=0.8, size=n)
    female = rng.binomial(1, 0.5, size=n)
    o = np.digitize(x1 - 0.3 * female + rng.logistic(size=n), [-1.0, 0.0, 1.2])
    return pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "female": female,
            "region": rng.choice(list("abcd"), p=[0.4, 0.3, 0.2, 0.1], size=n),
            "w": rng.uniform(0.5, 2.0, size=n),
            "cluster": rng.integers(1, 41, size=n),
            "b": (rng.random(n) < 1 / (1 + np.exp(-(0.3 + 0.8 * x1 - 0.5 * female)))).astype(int),
            "c": rng.poisson(np.exp(0.2 + 0.4 * x1 - 0.2 * female)),
            "nb": rng.poisson(rng.gamma(2.0, np.exp(0.5 + 0.4 * x1 - 0.3 * x2) / 2.0)),
            "o": o + 1,
            "os": np.asarray(LEVELS)[o],
        }
    )


FAMILIES: dict[str, dict[str, Any]] = {
    "logit": {"formula": "b ~ x1 + x2 + female + C(region)"},
    "probit": {"formula": "b ~ x1 + x2 + female", "weights": "w"},
    "poisson": {"formula": "c ~ x1 + x2 + female", "vcov": "HC1"},
    "nbreg": {"formula": "nb ~ x1 + x2 + female"},
    "ologit": {"formula": "o ~ x1 + x2 + female"},
    "oprobit": {"formula": "os ~ x1 + x2 + female", "levels": LEVELS, "vcov": "cluster:cluster"},
}


def gaps(df: pd.DataFrame, rel: dict[str, Any]) -> tuple[float, float]:
    """Largest |b - b*| / SE_target and / SE_synthetic over the released terms."""
    cp = checkpoint_from_release(rel)
    fit = fit_checkpoint(build_design(df, cp), cp)
    pos = {t: j for j, t in enumerate(fit.terms)}
    d = [
        (abs(fit.beta[pos[t["term"]]] - t["beta"]), t["se"], fit.se[pos[t["term"]]])
        for t in rel["terms"]
        if not t.get("suppressed")
    ]
    return max(a / s for a, s, _ in d), max(a / s for a, _, s in d)


def run(rows: int, seeds: int, families: list[str]) -> dict[str, dict[str, float]]:
    """Per family: worst gaps after the draw and after the correction, worst drift, seconds."""
    manifest = load_manifest({"name": "b", "seed": 1, "sources": {"people": {"path": "x.csv"}}})
    out = {}
    for fam in families:
        cp = Checkpoint(tag=fam, source="people", model=fam, **FAMILIES[fam])
        res = {
            "draw_target": 0.0,
            "draw_synthetic": 0.0,
            "pinned_target": 0.0,
            "pinned_synthetic": 0.0,
            "drift_se": 0.0,
            "seconds": 0.0,
        }
        for s in range(seeds):
            rel, _ = capture_checkpoint(glm_people(rows, 2 * s), cp, manifest, 0)
            syn = glm_people(rows, 2 * s + 1)
            saved = pin_discrete.MAX_BATCHES
            pin_discrete.MAX_BATCHES = 0
            try:
                drawn = pin_checkpoints({"people": syn}, [rel], seed=s)[0]["people"]
            finally:
                pin_discrete.MAX_BATCHES = saved
            t = time.perf_counter()
            frames, pins = pin_checkpoints({"people": syn}, [rel], seed=s)
            res["seconds"] = max(res["seconds"], time.perf_counter() - t)
            dt, ds = gaps(drawn, rel)
            pt, ps = gaps(frames["people"], rel)
            d = pins[0].detail["outcome_drift"]
            res["draw_target"] = max(res["draw_target"], dt)
            res["draw_synthetic"] = max(res["draw_synthetic"], ds)
            res["pinned_target"] = max(res["pinned_target"], pt)
            res["pinned_synthetic"] = max(res["pinned_synthetic"], ps)
            res["drift_se"] = max(res["drift_se"], d.get("drift_se", d.get("max_drift_se", 0.0)))
        out[fam] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--families", default=",".join(FAMILIES))
    a = ap.parse_args()
    r = run(a.rows, a.seeds, a.families.split(","))
    print(f"N = {a.rows}, {a.seeds} seeds; max |b - b*| / SE over terms and seeds")
    print(
        "| family | draw (SE target) | draw (SE synthetic) | pinned (SE target) | pinned (SE synthetic) | max outcome drift (SE) | max seconds |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for fam, v in r.items():
        print(
            f"| {fam} | {v['draw_target']:.3f} | {v['draw_synthetic']:.3f} | {v['pinned_target']:.3f} | {v['pinned_synthetic']:.3f} | {v['drift_se']:.2f} | {v['seconds']:.2f} |"
        )


if __name__ == "__main__":
    main()
