"""Secure-side output checking: does the synthetic data reproduce original records? Counts,
shares and distances only. Method: docs/method.md, "Output checking: the audit".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from replisynth.core.errors import DataError, ManifestError
from replisynth.core.seeds import rng
from replisynth.stats.utility_measures import (
    MAX_LEAVES,
    MAX_ROWS,
    MIN_LEAF,
    PERMUTATIONS,
    as_float,
    pmse_ratios,
)

FORMAT = "replisynth-audit/1"
SIG_DIGITS = 7  # numbers are compared after rounding to this many significant digits
DCR_SAMPLE = 5000  # synthetic rows (and holdout rows, for the baseline) measured at most
BASELINE_PERCENTILE = 5.0
ZERO = 1e-9  # distances at or below this count as 0 (identical on the audit's coordinates)
AUDITED_ROLES = ("continuous", "categorical")  # ids and re-keyed group ids carry no values

METRICS = {
    "identical_rows": (
        "Synthetic rows equal to at least one original row on every compared column. Numbers "
        f"are compared after rounding to {SIG_DIGITS} significant digits (so a copy that was "
        "stored with less precision, or moved by a rounding error, still counts), text as text, "
        "and a missing value equals a missing value. Ids, re-keyed group ids and columns the "
        "synthetic data holds only as missing (released as all-missing) are not compared."
    ),
    "replicated_uniques": (
        "Synthetic rows whose combination of key values occurs exactly once in the synthetic "
        "data and exactly once in the original data (synthpop's replicated.uniques); a missing "
        "value is a key value of its own. Share = count / synthetic rows."
    ),
    "dcr": (
        "Euclidean distance on the released columns: a continuous column becomes its mid-rank "
        "in the original data (empirical CDF, 0..1), centred and scaled by sqrt(12) to unit "
        "variance, with a missing value at 0 plus a 0/1 missingness coordinate; a categorical "
        "column becomes one 0/1 coordinate per level (missing is a level), scaled by 1/sqrt(2), "
        "so two rows that differ in it are 1 apart, as two values one standard deviation apart "
        "are. The original rows are split at random (seeded from the manifest seed) into a "
        "training and a holdout half; for up to 5,000 sampled synthetic rows the distance to "
        "the nearest training row and to the nearest holdout row is found (scipy cKDTree). "
        "Baseline: the distance of up to 5,000 holdout rows to their nearest training row, i.e. "
        "what a record that is not a copy achieves. share_closer_than_p5: synthetic rows whose "
        "nearest training row is closer than the baseline's 5th percentile (the same reference "
        "set as the baseline, so 5% is expected for records that are not copies); "
        "share_nearest_original_closer_than_p5: the same with the nearest row of either half "
        "(about 9.75% = 1 - 0.95^2 expected, the reference being twice as large). The "
        "training/holdout ratio of medians is the standard test for a synthesizer fitted to the "
        "training half only; replisynth's bundle is built from all rows, so a copy of every "
        "original row also gives a ratio near 1 (each copied row is at distance 0 from the half "
        "it came from): read it with the identical-row counts and share_at_zero, the share of "
        "synthetic rows at distance 0 from an original row. ratio_to_baseline: median distance "
        "to training over the baseline median (near 1 when synthetic rows are as far from the "
        "training rows as unseen records are)."
    ),
    "pmse": (
        "Propensity-score mean squared error (Snyder/Woo; synthpop's utility.gen): the original "
        "and synthetic rows on the compared columns are stacked, a classifier estimates each "
        "row's probability p of being synthetic, and pMSE = mean (p - c)^2 with c the synthetic "
        "share. The ratio divides it by its expectation when the two files are independent "
        "samples of one distribution (about 1 then; larger = easier to tell apart). logit: a "
        "main-effects logistic model (categorical columns one-hot, a missing value its own "
        "level; a numeric column's missing values filled and flagged), expectation "
        "(k-1)c(1-c)/N for k parameters and N rows; ratio_synthpop is synthpop's S_pMSE, whose "
        "expectation (k-1)(1-c)^2 c/N holds the original fixed (a correct synthesizer of this "
        "sample scores 1, two independent samples 1/(1-c)). cart: a classification tree "
        f"(scikit-learn, Gini, leaves of at least {MIN_LEAF} rows, at most {MAX_LEAVES} leaves, "
        "categorical columns as codes), expectation the mean pMSE of the same tree refitted on "
        f"{PERMUTATIONS} label permutations. Each side is subsampled to {MAX_ROWS:,} rows at most "
        "(stream (seed, source, 'audit', 'pmse')). Utility, not disclosure: a ratio near 1 says "
        "the file is hard to tell apart from the original, not that it is safe."
    ),
}


# ---------------------------------------------------------------------------------------------
# columns and keys


def audit_columns(release: dict[str, Any]) -> list[dict[str, Any]]:
    """The released columns whose values the synthetic data carries (not ids or group ids),
    in release order."""
    return [c for c in release["columns"] if c["role"] in AUDITED_ROLES]


def resolve_keys(
    release: dict[str, Any], source: str, keys: tuple[str, ...], strata: tuple[str, ...]
) -> tuple[list[str], bool]:
    """The key columns of a source and whether they are the default (strata + categorical
    columns). Declared keys must be released columns (ManifestError naming the key)."""
    cols = audit_columns(release)
    names = [c["name"] for c in cols]
    if keys:
        for k in keys:
            if k not in names:
                raise ManifestError(
                    f"sources.{source}.keys: column {k!r} is not released (it is an id, a group id "
                    "or excluded), so the synthetic data cannot reproduce it; drop it from keys"
                )
        return list(keys), False
    default = [s for s in strata if s in names]
    default += [c["name"] for c in cols if c["role"] == "categorical" and c["name"] not in default]
    return default, True


def _check_columns(frame: pd.DataFrame, columns: list[str], what: str, source: str) -> None:
    lacking = [c for c in columns if c not in frame.columns]
    if lacking:
        raise DataError(
            f"{what} of source {source!r} lacks released column(s) {lacking}; "
            "the bundle and the data do not belong together: rerun extract and synthesize"
        )


# ---------------------------------------------------------------------------------------------
# exact comparison


def _numeric_like(s: pd.Series) -> bool:
    dt = s.dtype
    return bool(
        pd.api.types.is_bool_dtype(dt)
        or pd.api.types.is_datetime64_any_dtype(dt)
        or (pd.api.types.is_numeric_dtype(dt) and not isinstance(dt, pd.CategoricalDtype))
    )


def round_significant(v: np.ndarray, digits: int = SIG_DIGITS) -> np.ndarray:
    """Round to `digits` significant digits (NaN and 0 unchanged)."""
    v = np.asarray(v, dtype="float64")
    out = v.copy()
    nz = np.isfinite(v) & (v != 0)
    if nz.any():
        mag = np.floor(np.log10(np.abs(v[nz])))
        scale = 10.0 ** (digits - 1 - mag)
        out[nz] = np.round(v[nz] * scale) / scale
    return out


def _as_text(s: pd.Series) -> np.ndarray:
    """Object array of text values (numbers formatted to SIG_DIGITS), missing as NaN."""
    if _numeric_like(s):
        f = round_significant(as_float(s))
        return np.array(
            [np.nan if math.isnan(x) else format(x, f".{SIG_DIGITS}g") for x in f], dtype=object
        )
    a = s.astype(object).to_numpy()
    miss = pd.isna(a)
    out = np.empty(len(a), dtype=object)
    out[miss] = np.nan
    out[~miss] = [str(x) for x in a[~miss]]
    return out


def column_codes(original: pd.Series, synthetic: pd.Series) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes of one column on both sides, equal exactly when the values compare equal
    (see METRICS['identical_rows']); missing is a value of its own. Returns the two code
    arrays and the number of distinct values."""
    if _numeric_like(original) and _numeric_like(synthetic):
        both = np.concatenate(
            [round_significant(as_float(original)), round_significant(as_float(synthetic))]
        )
    else:
        both = np.concatenate([_as_text(original), _as_text(synthetic)])
    codes, uniques = pd.factorize(both, use_na_sentinel=False)
    n = len(original)
    return codes[:n].astype("int64"), codes[n:].astype("int64"), len(uniques)


def row_ids(
    original: pd.DataFrame, synthetic: pd.DataFrame, columns: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """One integer per row, equal across the two frames exactly when the rows are equal on
    `columns`."""
    n, m = len(original), len(synthetic)
    if not columns:
        return np.zeros(n, dtype="int64"), np.zeros(m, dtype="int64")
    mat = np.empty((n + m, len(columns)), dtype="int64")
    for j, c in enumerate(columns):
        a, b, _ = column_codes(original[c], synthetic[c])
        mat[:n, j], mat[n:, j] = a, b
    _, inv = np.unique(mat, axis=0, return_inverse=True)
    inv = np.asarray(inv).reshape(-1)
    return inv[:n], inv[n:]


def identical_rows(
    original: pd.DataFrame, synthetic: pd.DataFrame, columns: list[str]
) -> dict[str, Any]:
    """Synthetic rows equal to an original row on `columns` (counts and shares only)."""
    o, s = row_ids(original, synthetic, columns)
    hit = np.isin(s, o)
    return {
        "columns": len(columns),
        "count": int(hit.sum()),
        "share": float(hit.mean()) if len(s) else 0.0,
        "original_rows_reproduced": int(np.isin(o, s).sum()),
    }


def replicated_uniques(
    original: pd.DataFrame, synthetic: pd.DataFrame, keys: list[str]
) -> dict[str, Any]:
    """synthpop's replicated uniques on `keys`: synthetic rows whose key combination is unique
    in the synthetic data and unique in the original data."""
    o, s = row_ids(original, synthetic, keys)
    size = int(max(o.max(initial=-1), s.max(initial=-1))) + 1
    n_o = np.bincount(o, minlength=size)
    n_s = np.bincount(s, minlength=size)
    rep = (n_s[s] == 1) & (n_o[s] == 1)
    return {
        "keys": len(keys),
        "count": int(rep.sum()),
        "share": float(rep.mean()) if len(s) else 0.0,
        "unique_in_original": int((n_o[o] == 1).sum()),
        "unique_in_synthetic": int((n_s[s] == 1).sum()),
    }


# ---------------------------------------------------------------------------------------------
# distance to closest record


def split_halves(n: int, seed: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the training half (ceil(n/2) rows) and the holdout half, drawn from
    the stream `seeds.rng(seed, source, "audit")`; both sorted."""
    perm = rng(seed, source, "audit").permutation(n)
    k = n - n // 2
    return np.sort(perm[:k]), np.sort(perm[k:])


def embed(
    original: pd.DataFrame, synthetic: pd.DataFrame, columns: list[dict[str, Any]]
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of both frames for the DCR (see METRICS['dcr']); the scaling comes from the
    original data only."""
    n, m = len(original), len(synthetic)
    parts_o: list[np.ndarray] = []
    parts_s: list[np.ndarray] = []
    for spec in columns:
        c = spec["name"]
        if (
            spec["role"] == "continuous"
            and _numeric_like(original[c])
            and _numeric_like(synthetic[c])
        ):
            xo, xs = as_float(original[c]), as_float(synthetic[c])
            ref = np.sort(xo[~np.isnan(xo)])
            if len(ref) == 0:
                continue

            def z(x: np.ndarray, ref: np.ndarray = ref) -> np.ndarray:
                ok = ~np.isnan(x)
                u = np.zeros(len(x))
                xv = x[ok]
                u[ok] = (np.searchsorted(ref, xv, "left") + np.searchsorted(ref, xv, "right")) / (
                    2.0 * len(ref)
                )
                out = (u - 0.5) * math.sqrt(12.0)
                out[~ok] = 0.0
                return out

            parts_o.append(z(xo)[:, None])
            parts_s.append(z(xs)[:, None])
            mo, ms = np.isnan(xo), np.isnan(xs)
            if mo.any() or ms.any():
                parts_o.append(mo.astype("float64")[:, None])
                parts_s.append(ms.astype("float64")[:, None])
        else:
            a, b, k = column_codes(original[c], synthetic[c])
            if k < 2:
                continue
            w = 1.0 / math.sqrt(2.0)
            oh_o = np.zeros((n, k))
            oh_o[np.arange(n), a] = w
            oh_s = np.zeros((m, k))
            oh_s[np.arange(m), b] = w
            parts_o.append(oh_o)
            parts_s.append(oh_s)
    if not parts_o:
        return np.zeros((n, 0)), np.zeros((m, 0))
    return np.hstack(parts_o), np.hstack(parts_s)


def _median(x: np.ndarray) -> float:
    return float(np.median(x)) if len(x) else float("nan")


def dcr(
    original: pd.DataFrame,
    synthetic: pd.DataFrame,
    columns: list[dict[str, Any]],
    seed: int,
    source: str,
    sample: int = DCR_SAMPLE,
) -> dict[str, Any]:
    """Distance to closest record of sampled synthetic rows to the training and the holdout
    half of the original, with the holdout-to-training baseline (aggregates only)."""
    from scipy.spatial import cKDTree

    n, m = len(original), len(synthetic)
    if n < 4 or m == 0:
        return {"skipped": f"too few rows ({n} original, {m} synthetic)"}
    xo, xs = embed(original, synthetic, columns)
    if xo.shape[1] == 0:
        return {"skipped": "no column with more than one value"}
    train, hold = split_halves(n, seed, source)
    pick = rng(seed, source, "audit", "sample")
    s_idx = (
        np.sort(pick.choice(m, size=min(m, sample), replace=False)) if m > sample else np.arange(m)
    )
    h_idx = (
        np.sort(pick.choice(hold, size=min(len(hold), sample), replace=False))
        if len(hold) > sample
        else hold
    )
    tree_t, tree_h = cKDTree(xo[train]), cKDTree(xo[hold])
    d_t = tree_t.query(xs[s_idx], k=1)[0]
    d_h = tree_h.query(xs[s_idx], k=1)[0]
    base = tree_t.query(xo[h_idx], k=1)[0]
    med_t, med_h, med_b = _median(d_t), _median(d_h), _median(base)
    p5 = float(np.percentile(base, BASELINE_PERCENTILE))
    nearest = np.minimum(d_t, d_h)
    return {
        "dimensions": int(xo.shape[1]),
        "training_rows": len(train),
        "holdout_rows": len(hold),
        "synthetic_rows_sampled": len(s_idx),
        "holdout_rows_sampled": len(h_idx),
        "median_to_training": med_t,
        "median_to_holdout": med_h,
        "ratio": med_t / med_h if med_h > 0 else None,
        "median_holdout_to_training": med_b,
        "ratio_to_baseline": med_t / med_b if med_b > 0 else None,
        "p5_holdout_to_training": p5,
        "share_closer_than_p5": float(np.mean(d_t < p5)),
        "share_closer_than_p5_expected": BASELINE_PERCENTILE / 100.0,
        "share_nearest_original_closer_than_p5": float(np.mean(nearest < p5)),
        "share_nearest_original_closer_than_p5_expected": 1.0
        - (1.0 - BASELINE_PERCENTILE / 100.0) ** 2,
        "share_at_zero": float(np.mean(nearest <= ZERO)),
        "holdout_share_at_zero": float(np.mean(base <= ZERO)),
    }


# ---------------------------------------------------------------------------------------------
# one source, one run


def utility(
    original: pd.DataFrame,
    synthetic: pd.DataFrame,
    columns: list[dict[str, Any]],
    seed: int,
    source: str,
) -> dict[str, Any]:
    """The logistic and CART pMSE ratios of the synthetic data against the original on the
    compared columns (see METRICS['pmse']): the ratios and their parts, no row-level value."""
    names = [c["name"] for c in columns]
    if not names:
        return {"skipped": "no column to compare"}
    categorical = {c["name"] for c in columns if c["role"] == "categorical"}
    return pmse_ratios(original, synthetic, rng(seed, source, "audit", "pmse"), names, categorical)


def audit_source(
    original: pd.DataFrame,
    synthetic: pd.DataFrame,
    release: dict[str, Any],
    source: str,
    seed: int,
    keys: tuple[str, ...] = (),
    strata: tuple[str, ...] = (),
    sample: int = DCR_SAMPLE,
) -> dict[str, Any]:
    """All four measures for one source (a plain dict of counts, shares, distances and the
    pMSE ratios)."""
    released = audit_columns(release)
    _check_columns(original, [c["name"] for c in released], "the original data", source)
    _check_columns(synthetic, [c["name"] for c in released], "the synthetic data", source)
    # A column released as all-missing (too few values to release) carries nothing to copy;
    # comparing on it would hide rows copied on every other column.
    empty = [c["name"] for c in released if not synthetic[c["name"]].notna().any()]
    cols = [c for c in released if c["name"] not in empty]
    names = [c["name"] for c in cols]
    key_cols, default = resolve_keys(release, source, keys, strata)
    key_cols = [k for k in key_cols if k not in empty]
    return {
        "original_rows": len(original),
        "synthetic_rows": len(synthetic),
        "columns": names,
        "columns_empty_in_synthetic": empty,
        "keys": key_cols,
        "keys_default": default,
        "identical_all_columns": identical_rows(original, synthetic, names),
        "identical_keys": identical_rows(original, synthetic, key_cols),
        "replicated_uniques": replicated_uniques(original, synthetic, key_cols),
        "dcr": dcr(original, synthetic, cols, seed, source, sample),
        "pmse": utility(original, synthetic, cols, seed, source),
    }


ATTENTION_SHARE = 2 * BASELINE_PERCENTILE / 100.0  # flag DCR shares above twice the expectation


def attention(result: dict[str, Any]) -> list[str]:
    """Plain statements of what an output checker should look at (empty = nothing)."""
    out = []
    for name, s in result["sources"].items():
        k = s["identical_all_columns"]["count"]
        if k:
            out.append(
                f"{name}: {k:,} synthetic row(s) reproduce an original record on all {len(s['columns'])} released columns"
            )
        d = s["dcr"]
        if "skipped" not in d and d["share_closer_than_p5"] > ATTENTION_SHARE:
            out.append(
                f"{name}: {_pct(d['share_closer_than_p5'])} of sampled synthetic rows are closer to a training "
                f"record than 95% of holdout records are ({_pct(d['share_closer_than_p5_expected'])} expected)"
            )
    return out


def audit_run(
    name: str, seed: int, per_source: dict[str, dict[str, Any]], bundle_sha256: str | None = None
) -> dict[str, Any]:
    """Assemble the audit of a run from its per-source results; adds the verdict and the
    summary paragraph."""
    result: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "seed": seed,
        "bundle_sha256": bundle_sha256,
        "sources": per_source,
        "metrics": METRICS,
    }
    identical = sum(s["identical_all_columns"]["count"] for s in per_source.values())
    result["identical_rows_total"] = identical
    result["attention"] = attention(result)
    result["verdict"] = (
        "no synthetic row reproduces an original record"
        if identical == 0
        else f"{identical:,} synthetic row(s) reproduce an original record on all released columns"
    )
    result["summary"] = summary_text(result)
    return result


# ---------------------------------------------------------------------------------------------
# rendering


def _pct(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.1f}%" if x == 0 or x >= 0.001 else f"{100 * x:.2g}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:#.3g}"


def _source_sentences(name: str, s: dict[str, Any]) -> str:
    ia, ik, ru, d = (
        s["identical_all_columns"],
        s["identical_keys"],
        s["replicated_uniques"],
        s["dcr"],
    )
    keys = "the strata and categorical columns" if s["keys_default"] else "the declared key columns"
    parts = [
        f"Source '{name}' ({s['original_rows']:,} original rows, {s['synthetic_rows']:,} synthetic rows, "
        f"{len(s['columns'])} released columns compared): {ia['count']:,} synthetic rows ({_pct(ia['share'])}) are "
        f"identical to an original row on all released columns; {ik['count']:,} ({_pct(ik['share'])}) match an "
        f"original row on the {len(s['keys'])} key columns ({keys}); {ru['count']:,} ({_pct(ru['share'])}) are "
        f"replicated uniques on those keys ({ru['unique_in_original']:,} original and "
        f"{ru['unique_in_synthetic']:,} synthetic rows are unique on them)."
    ]
    if "skipped" in d:
        parts.append(f"The distance to closest record was not computed ({d['skipped']}).")
    else:
        parts.append(
            f"Distance to closest record ({d['synthetic_rows_sampled']:,} synthetic rows against a training half of "
            f"{d['training_rows']:,} and a holdout half of {d['holdout_rows']:,} original rows): median "
            f"{_num(d['median_to_training'])} to training and {_num(d['median_to_holdout'])} to holdout "
            f"(ratio {_num(d['ratio'])}; holdout records lie at a median {_num(d['median_holdout_to_training'])} "
            f"from the training half); {_pct(d['share_closer_than_p5'])} of the synthetic rows are closer to a "
            f"training record than 95% of holdout records are ({_pct(d['share_closer_than_p5_expected'])} expected "
            f"for records that are not copies), and {_pct(d['share_at_zero'])} lie at distance 0 from an original "
            f"record (holdout records at distance 0 from a training record: {_pct(d['holdout_share_at_zero'])})."
        )
    parts.append(_pmse_sentence(s.get("pmse", {})))
    return " ".join(p for p in parts if p)


def _ratio(u: dict[str, Any], method: str) -> float | None:
    r = u.get(method, {}).get("ratio")
    return None if r is None else float(r)


def _pmse_sentence(u: dict[str, Any]) -> str:
    if not u:
        return ""
    if "skipped" in u:
        return f"The pMSE ratios were not computed ({u['skipped']})."
    used = f"{u['original_rows_used']:,} original and {u['synthetic_rows_used']:,} synthetic rows"
    if u["subsampled"]:
        used += f" (subsampled to at most {u['max_rows']:,} per side)"
    return (
        f"Propensity-score utility on {used}: pMSE ratio {_num(_ratio(u, 'logit'))} for a logistic "
        f"model and {_num(_ratio(u, 'cart'))} for a classification tree (about 1 when a "
        "classifier cannot tell the synthetic rows from the original ones better than it can two "
        "independent samples of one distribution)."
    )


def _pmse_rows(u: dict[str, Any]) -> list[tuple[str, str]]:
    """audit.txt's lines for the pMSE measures (ratios and their parts)."""
    if not u:
        return []
    if "skipped" in u:
        return [("pMSE", f"not computed: {u['skipped']}")]
    lg, ct = u.get("logit", {}), u.get("cart", {})
    sub = " (subsampled)" if u["subsampled"] else ""
    return [
        (
            "pMSE rows used, original / synthetic",
            f"{u['original_rows_used']:,} / {u['synthetic_rows_used']:,}{sub}",
        ),
        ("pMSE ratio, logistic / CART", f"{_num(_ratio(u, 'logit'))} / {_num(_ratio(u, 'cart'))}"),
        (
            "logistic pMSE / expected (parameters)",
            f"{_num(lg.get('pmse'))} / {_num(lg.get('expected'))} ({lg.get('parameters')})",
        ),
        ("logistic ratio, synthpop's S_pMSE", _num(lg.get("ratio_synthpop"))),
        (
            "CART pMSE / permutation mean (sd, perms)",
            f"{_num(ct.get('pmse'))} / {_num(ct.get('expected'))} "
            f"({_num(ct.get('null_sd'))}, {ct.get('permutations')})",
        ),
    ]


def summary_text(result: dict[str, Any]) -> str:
    """The paragraph an output checker signs: what was checked, the numbers, the verdict."""
    head = (
        f"Output-checking audit of run '{result['name']}' (seed {result['seed']}), carried out inside the "
        "secure environment on the original data and the synthetic data made from its bundle. It checked "
        "whether synthetic rows reproduce original records exactly, whether records unique on the key "
        "columns are replicated, how close synthetic rows lie to original records compared with "
        "original records held out from the comparison, and how well a classifier tells the "
        "synthetic rows from the original ones (pMSE ratios)."
    )
    body = " ".join(_source_sentences(n, s) for n, s in result["sources"].items())
    tail = (
        "This report holds counts, shares, distances and pMSE ratios only; no original value or "
        "record."
    )
    verdict = f"Verdict: {result['verdict']}."
    if result["attention"]:
        verdict += " For attention: " + "; ".join(result["attention"]) + "."
    return " ".join([head, body, tail, verdict])


def _wrap(text: str, width: int = 92) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width, break_on_hyphens=False))


def render_text(result: dict[str, Any]) -> str:
    """audit.txt: the summary paragraph, the numbers per source, the metric definitions and
    a signature block."""
    lines = [
        f"replisynth output-checking audit: {result['name']}",
        "=" * 60,
        "",
        _wrap(result["summary"]),
        "",
    ]
    for name, s in result["sources"].items():
        ia, ik, ru, d = (
            s["identical_all_columns"],
            s["identical_keys"],
            s["replicated_uniques"],
            s["dcr"],
        )
        rows = [
            ("original rows / synthetic rows", f"{s['original_rows']:,} / {s['synthetic_rows']:,}"),
            ("columns compared", f"{len(s['columns'])}"),
            (
                "key columns" + (" (default)" if s["keys_default"] else ""),
                ", ".join(s["keys"]) or "(none)",
            ),
            ("identical rows, all columns", f"{ia['count']:,} ({_pct(ia['share'])})"),
            ("identical rows, key columns", f"{ik['count']:,} ({_pct(ik['share'])})"),
            ("replicated uniques on keys", f"{ru['count']:,} ({_pct(ru['share'])})"),
            (
                "rows unique on keys, orig. / synth.",
                f"{ru['unique_in_original']:,} / {ru['unique_in_synthetic']:,}",
            ),
        ]
        if s.get("columns_empty_in_synthetic"):
            rows.append(
                (
                    "all-missing in synthetic (not compared)",
                    ", ".join(s["columns_empty_in_synthetic"]),
                )
            )
        if "skipped" in d:
            rows.append(("DCR", f"not computed: {d['skipped']}"))
        else:
            rows += [
                (
                    "DCR sample / training / holdout rows",
                    f"{d['synthetic_rows_sampled']:,} / {d['training_rows']:,} / {d['holdout_rows']:,}",
                ),
                (
                    "median DCR to training / holdout",
                    f"{_num(d['median_to_training'])} / {_num(d['median_to_holdout'])}",
                ),
                ("ratio training / holdout", _num(d["ratio"])),
                ("median holdout-to-training (baseline)", _num(d["median_holdout_to_training"])),
                ("5th percentile of the baseline", _num(d["p5_holdout_to_training"])),
                (
                    "closer than it (nearest training row)",
                    f"{_pct(d['share_closer_than_p5'])} ({_pct(d['share_closer_than_p5_expected'])} expected)",
                ),
                (
                    "closer than it (nearest original row)",
                    f"{_pct(d['share_nearest_original_closer_than_p5'])} "
                    f"({_pct(d['share_nearest_original_closer_than_p5_expected'])} expected)",
                ),
                ("median DCR to training / baseline median", _num(d["ratio_to_baseline"])),
                (
                    "synthetic rows at distance 0",
                    f"{_pct(d['share_at_zero'])} (holdout: {_pct(d['holdout_share_at_zero'])})",
                ),
            ]
        rows += _pmse_rows(s.get("pmse", {}))
        lines += [f"Source {name}", "-" * 60] + [f"  {label:<44}{value}" for label, value in rows]
        lines.append("")
    lines += ["Definitions", "-" * 60]
    for key, text in result["metrics"].items():
        lines += [_wrap(f"{key}: {text}"), ""]
    lines += [f"Verdict: {result['verdict']}"]
    lines += [f"For attention: {a}" for a in result["attention"]]
    lines += [
        "",
        "Checked by: ______________________    Date: ____________    Signature: ______________",
        "",
    ]
    return "\n".join(lines)
