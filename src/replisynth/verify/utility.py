"""The utility section of verification: how far each pinned outcome drifts from its released
marginal, and which shares of its rows leave the released support (sign, range, integer
storage, missingness). Printed beside the tier, never changing it. Method: docs/method.md,
"The utility section"; what it protects: docs/limits.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from replisynth.stats.atoms import mixture_components
from replisynth.stats.copula_dims import norm_key

SUPPORT_BREACH = 0.005  # a share of rows above this outside the released support is a breach
KS_FLAG = 0.10  # a KS distance to the released marginal above this is reported
DRIFT_FLAG_SE = 3.0  # a mean drift beyond this many sampling SEs is reported
MISSING_FLAG = 0.005  # a missingness share differing by more than this is reported
ZERO_FLAG = 0.02  # a share of exact zeros this far from the released mass at zero is reported


def _pct(x: float) -> str:
    return f"{100 * x:.2g}%" if x < 0.1 else f"{100 * x:.0f}%"


def _grid_moments(g: np.ndarray) -> tuple[float, float]:
    """Mean and SD of a 101-point percentile grid (trapezoid weights): the top/bottom-coded
    moments the release allows."""
    w = np.full(len(g), 1.0)
    w[[0, -1]] = 0.5
    w /= w.sum()
    mean = float(np.sum(w * g))
    return mean, float(np.sqrt(np.sum(w * (g - mean) ** 2)))


def _atom_moments(atoms: dict[str, Any]) -> tuple[float, float] | None:
    """Mean and SD of a marginal released as atoms and a rest (`atoms.mixture_components`:
    each atom a point mass with its exact count, the rest its grid's coded moments). None
    when the release holds no rows."""
    parts = [(w, *_grid_moments(g)) for w, g in mixture_components(atoms)]
    total = sum(w for w, _, _ in parts)
    if not total > 0:
        return None
    mean = sum(w * m for w, m, _ in parts) / total
    second = sum(w * (sd * sd + m * m) for w, m, sd in parts) / total
    return mean, float(np.sqrt(max(second - mean * mean, 0.0)))


def _atom_mean(v: np.ndarray, atoms: dict[str, Any], trim: float) -> float:
    """Mean of `v` coded like a release of atoms and a rest: the rows on an atom as they are,
    the others by their coded percentiles' mean (as `_atom_moments` reads the rest)."""
    on = np.isin(v, np.asarray(atoms.get("values", []), dtype="float64"))
    rest = v[~on]
    total = float(v[on].sum())
    if len(rest):
        total += len(rest) * _grid_moments(_coded_percentiles(rest, trim))[0]
    return total / len(v)


def released_zero_mass(g: np.ndarray) -> float:
    """Share of rows at exactly zero that a 101-point percentile grid shows: its points at
    zero over 100 (within a percentile step of the true share)."""
    return float(min(1.0, np.sum(g == 0) / 100.0))


def _coded_percentiles(v: np.ndarray, trim: float) -> np.ndarray:
    """Percentiles 0..100 of `v`, top/bottom coded at `trim` percent like a released grid."""
    q = np.percentile(v, np.arange(101), method="averaged_inverted_cdf")
    t = int(round(trim))
    if t > 0:
        q[: t + 1] = q[t]
        q[100 - t :] = q[100 - t]
    return q


def continuous_utility(
    v: np.ndarray,
    grid: list[float],
    integer: bool,
    trim: float,
    ks_d: float | None,
    atoms: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Drift and support shares of a pinned continuous outcome's non-missing values `v`. With
    released `atoms` the mean drift reads both sides as the release does (atoms exact, the
    rest's coded grid): the mixed grid of a count moves by a whole step when a share crosses
    a percentile, so its mean drifted by sampling SEs between the original and its own
    release. Otherwise both sides are the grid's coded means."""
    g = np.asarray(grid, dtype="float64")
    v = v[~np.isnan(v)]
    rec: dict[str, Any] = {"kind": "continuous", "ks_d": ks_d, "rows_observed": int(len(v))}
    if not len(v) or np.isnan(g).any():
        return rec
    tail = trim / 100.0
    below, above = float(np.mean(v < g[0])), float(np.mean(v > g[-1]))
    exact = _atom_moments(atoms) if atoms else None
    if exact is not None and atoms is not None:
        (mean_r, sd_r), mean_s = exact, _atom_mean(v, atoms, trim)
    else:
        mean_r, sd_r = _grid_moments(g)
        mean_s, _ = _grid_moments(_coded_percentiles(v, trim))
    se = sd_r / np.sqrt(len(v)) if sd_r > 0 else float("nan")
    rec |= {
        "share_outside_range": below + above,
        "share_out_of_support": max(0.0, below - tail) + max(0.0, above - tail),
        "share_negative": float(np.mean(v < 0)) if g[0] >= 0 else None,
        "share_non_integer": float(np.mean(v != np.round(v))) if integer else None,
        "mean_drift_se": float((mean_s - mean_r) / se) if np.isfinite(se) else None,
        "share_zero": float(np.mean(v == 0)),
        "released_share_zero": released_zero_mass(g),
    }
    return rec


# Values of one kind (no bool beside numbers), whose distinct values pandas counts apart
# exactly when `norm_key` tells them apart.
_ONE_KIND = frozenset({"string", "integer", "floating", "mixed-integer-float", "boolean", "empty"})


def _key_shares(v: pd.Series) -> pd.Series:
    """Shares of the non-missing values `v` by `norm_key` (1, 1.0 and True on one footing),
    largest first: `norm_key` computed once per distinct value, not once per row."""
    values = v.cat.categories if isinstance(v.dtype, pd.CategoricalDtype) else v
    if pd.api.types.infer_dtype(values, skipna=True) not in _ONE_KIND:
        return v.map(norm_key).value_counts(normalize=True)  # pandas would count True with 1
    counts = v.value_counts(sort=False, dropna=True)
    keys = pd.Series(counts.to_numpy(), index=[norm_key(x) for x in counts.index])
    got = keys.groupby(level=0, sort=True).sum()
    got = got[got > 0]
    return (got / len(v)).sort_values(ascending=False, kind="stable")


def categorical_utility(s: pd.Series, levels: list[Any], counts: list[int]) -> dict[str, Any]:
    """Share outside the released levels and total-variation distance to the released shares."""
    v = s.dropna()
    rec: dict[str, Any] = {"kind": "categorical", "rows_observed": int(len(v))}
    if not len(v) or not sum(counts):
        return rec
    want = {norm_key(k): c / sum(counts) for k, c in zip(levels, counts, strict=True)}
    got = _key_shares(v)
    keys = sorted(set(want) | set(got.index))
    rec["tv_distance"] = 0.5 * sum(abs(want.get(k, 0.0) - float(got.get(k, 0.0))) for k in keys)
    rec["share_out_of_support"] = float(got[[k for k in got.index if k not in want]].sum())
    return rec


def _findings(name: str, rec: dict[str, Any]) -> tuple[list[str], bool]:
    """Sentences for what crosses a threshold (`name`: "pinned outcome y", "derived column
    z"), and whether the support is breached."""
    out, breached = [], False
    for key, text in (
        ("share_negative", "of rows negative where the released marginal has none"),
        ("share_non_integer", "of values non-integer where the released column is integer"),
        ("share_out_of_support", "of rows outside the released support"),
    ):
        x = rec.get(key)
        if x is not None and x > SUPPORT_BREACH:
            out.append(f"{name}: {_pct(x)} {text} (support breached)")
            breached = True
    if (rec.get("ks_d") or 0.0) > KS_FLAG:
        out.append(f"{name}: KS distance {rec['ks_d']:.2f} to its released marginal")
    if rec.get("mean_drift_se") is not None and abs(rec["mean_drift_se"]) > DRIFT_FLAG_SE:
        out.append(f"{name}: mean drifted {rec['mean_drift_se']:+.1f} sampling SE")
    if (rec.get("tv_distance") or 0.0) > KS_FLAG:
        out.append(f"{name}: category shares {rec['tv_distance']:.2f} (total variation) off")
    zero, released_zero = rec.get("share_zero"), rec.get("released_share_zero")
    if zero is not None and released_zero and abs(zero - released_zero) > ZERO_FLAG:
        out.append(
            f"{name}: exact zeros in {_pct(zero)} of rows where the release has about "
            f"{_pct(released_zero)}"
        )
    gap = rec.get("missing_share", 0.0) - rec.get("released_missing_share", 0.0)
    if abs(gap) > MISSING_FLAG:
        out.append(
            f"{name}: missing in {_pct(rec['missing_share'])} of rows where the release has "
            f"{_pct(rec['released_missing_share'])}"
        )
    return out, breached


def outcome_utility(
    s: pd.Series,
    marginal: dict[str, Any],
    integer: bool,
    trim: float,
    released_missing_share: float,
    ks_d: float | None = None,
    role: str = "pinned outcome",
) -> dict[str, Any]:
    """One pinned outcome (or derived column: `role`) against its released source-level
    marginal, with its findings."""
    if marginal.get("kind") in ("continuous", "ordinal_grid") and marginal.get("grid"):
        v = pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        rec = continuous_utility(
            v, marginal["grid"], integer, trim, ks_d, marginal.get("atoms") or None
        )
    elif marginal.get("kind") == "categorical" and marginal.get("table", {}).get("levels"):
        table = marginal["table"]
        rec = categorical_utility(s, table["levels"], table.get("counts", []))
    else:
        rec = {"kind": marginal.get("kind", "none")}
    rec["missing_share"] = float(s.isna().mean()) if len(s) else 0.0
    rec["released_missing_share"] = released_missing_share
    rec["role"] = role
    rec["findings"], rec["support_breached"] = _findings(f"{role} {s.name}", rec)
    return rec


def utility_section(
    frames: dict[str, pd.DataFrame],
    releases: dict[str, Any],
    outcomes: dict[str, set[str]],
    drift: dict[str, dict[str, Any]],
    trim: float,
    derived: dict[str, set[str]] | None = None,
) -> dict[str, Any]:
    """tiers.json's `utility`: per source, each pinned outcome and derived column (recomputed
    from its inputs) with its record; all findings as "source: sentence"; whether any support
    is breached. `drift`: tier 1's KS of the columns it exempts."""
    per: dict[str, Any] = {}
    findings: list[str] = []
    for name, df in frames.items():
        release = releases[name]
        marg = release["blocks"]["all"]["marginals"]
        specs = {c["name"]: c for c in release["columns"]}
        roles = {c: "derived column" for c in (derived or {}).get(name, set())}
        roles |= {c: "pinned outcome" for c in outcomes.get(name, set())}
        per[name] = {}
        for col in sorted(c for c in roles if c in df.columns and c in marg):
            spec = specs.get(col, {})
            released_missing = spec.get("missing", 0) / max(int(spec.get("rows") or 1), 1)
            ks = (drift.get(name, {}).get(col) or {}).get("ks_d")
            rec = outcome_utility(
                df[col],
                dict(marg[col]),
                bool(spec.get("integer")),
                trim,
                released_missing,
                ks,
                roles[col],
            )
            per[name][col] = rec
            findings += [f"{name}: {f}" for f in rec["findings"]]
    breached = any(r["support_breached"] for s in per.values() for r in s.values())
    return {
        "support_threshold": SUPPORT_BREACH,
        "sources": per,
        "findings": findings,
        "support_breached": breached,
    }


def utility_sentence(utility: dict[str, Any] | None) -> str:
    """The certificate's sentence on the pinned outcomes ("" when verification had none)."""
    if not utility or not any(utility.get("sources", {}).values()):
        return ""
    findings = utility.get("findings") or []
    if not findings:
        return (
            "Utility (beside the tier): every pinned outcome and derived column stays inside its "
            "released support (sign, range, integer storage, missingness) and close to its "
            "released marginal."
        )
    head = "support breached" if utility.get("support_breached") else "findings"
    return f"Utility (beside the tier; {head}): " + "; ".join(findings) + "."
