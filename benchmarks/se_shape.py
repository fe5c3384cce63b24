"""Inference fidelity of a finished run: per checkpoint the range of SE_synthetic / SE_target
with the residual only scaled (as before residual shaping) and with it shaped to the released
SEs, under one or more caps on the variance weights, plus what the shaping cost the outcome's
distribution (its quantiles vs the scaled-only pin, in IQRs of the latter).

Re-runs the pin stage (`pipeline.stage_pin`: cross-moment alignment, then the pin) on the
run's unpinned synthetic data (results/<name>/synthesize/<source>.parquet) from its bundle;
nothing is written.

Usage: python benchmarks/se_shape.py RESULTS_DIR [CAP ...]      (CAP: weights in [1/CAP, CAP];
       default 25, the pipeline's)
e.g.   python benchmarks/se_shape.py results/wage_panel 4 9 25
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from replisynth.config.manifest import checkpoint_from_release
from replisynth.core.errors import CheckpointError
from replisynth.core.seeds import rng
from replisynth.fit.estimators import fit_checkpoint
from replisynth.pin.design_moments import align_moments
from replisynth.pin.pin import pin_checkpoints
from replisynth.stats.design import build_design
from replisynth.workflow.pipeline import bundle_of


def ratios(df: pd.DataFrame, c: dict) -> tuple[float, float, float] | None:
    """(min, max SE ratio, max |dbeta| / SE_target) of a checkpoint's refit on `df`."""
    cp = checkpoint_from_release(c)
    try:
        fit = fit_checkpoint(build_design(df, cp), cp)
    except CheckpointError:
        return None
    pos = {t: j for j, t in enumerate(fit.terms)}
    r, g = [], []
    for t in c["terms"]:
        if t.get("suppressed") or t["term"] not in pos:
            continue
        j = pos[t["term"]]
        r.append(fit.se[j] / t["se"])
        g.append(abs(fit.beta[j] - t["beta"]) / t["se"])
    return min(r), max(r), max(g)


def quantile_shift(a: pd.Series, b: pd.Series) -> float:
    """Largest gap between the 1st..99th percentiles of b and a, in IQRs of a."""
    q = np.linspace(0.01, 0.99, 99)
    qa, qb = a.dropna().quantile(q).to_numpy(), b.dropna().quantile(q).to_numpy()
    iqr = float(a.quantile(0.75) - a.quantile(0.25)) or 1.0
    return float(np.max(np.abs(qa - qb)) / iqr)


def main(argv: list[str]) -> None:
    res = Path(argv[0])
    caps = [float(x) for x in argv[1:]] or [25.0]
    b = bundle_of(res / "bundle")
    released = [c for c in b.checkpoints if c.get("status") == "released"]
    frames = {}
    for s in sorted({c["source"] for c in released}):  # as pipeline.stage_pin does before pinning
        df = pd.read_parquet(res / "synthesize" / f"{s}.parquet")
        frames[s] = align_moments(
            df, b.checkpoints, b.releases[s], rng(b.manifest.seed, s, "xmom")
        )[0]
    base, _ = pin_checkpoints(frames, released, shape_ses=False)
    runs = {cap: pin_checkpoints(frames, released, weight_bounds=(1.0 / cap, cap)) for cap in caps}
    print(
        f"{'checkpoint':14s} {'model':5s} {'vcov':11s} {'scaled only':>13s} "
        + " ".join(f"{'cap ' + format(c, 'g'):>36s}" for c in caps)
    )
    for c in released:
        r0 = ratios(base[c["source"]], c)
        if r0 is None:
            continue
        cells = []
        for fr, outs in runs.values():
            r = ratios(fr[c["source"]], c)
            assert r is not None
            rep = next(
                (o.detail.get("se_shape", {}).get(c["tag"]) for o in outs if c["tag"] in o.tags),
                None,
            )
            extra = ""
            if rep:
                shift = quantile_shift(
                    base[c["source"]][c["outcome"]], fr[c["source"]][c["outcome"]]
                )
                extra = f" ess {rep['weight_ess']:.2f} q{shift:.2f}{'' if rep['feasible'] else ' infeas.'}"
            cells.append(f"{r[0]:.3f}-{r[1]:.3f} (db {r[2]:.0e}){extra}")
        print(
            f"{c['tag']:14s} {c['model']:5s} {c['vcov']:11s} {r0[0]:.3f}-{r0[1]:.3f} "
            + " ".join(f"{x:>36s}" for x in cells)
        )
    print(
        "ess: Kish's effective share of the variance weights; q: largest outcome-percentile shift vs the scaled-only pin, in IQRs"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
