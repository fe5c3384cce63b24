"""The human-readable verification report (report.html, self-contained) and the certificate
text; pure functions, byte-identical for the same inputs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from html import escape
from typing import Any

import numpy as np
import pandas as pd

import replisynth.verify.svg as svg
from replisynth.io.schema import EPOCH
from replisynth.stats.copula_dims import dim_label, norm_key
from replisynth.verify.report_notes import certifies_html, disclosure_section
from replisynth.verify.utility import utility_sentence

MAX_VARIABLES = 60  # plots per source
MAX_LEVELS = 30  # bars per categorical plot
MAX_DIMS = 120  # rows/columns of a correlation heatmap
MAX_CHART_TERMS = 80  # bars per checkpoint chart
CLAMP = 0.1  # colour saturation of the correlation-difference heatmap
SE_BOUND = 3.0  # |Δβ|/SE bound of tier 4 (drawn in red when reached)
ALL = "all"
TIER_NAMES = ("schema", "marginals", "correlations", "strata", "checkpoints")
KEY_PACKAGES = ("replisynth", "python", "numpy", "pandas", "scipy", "statsmodels")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:16px 24px;color:#222;line-height:1.4}
h1{font-size:1.6em;margin:.2em 0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
h3{margin:1.4em 0 .4em}h4{margin:0;font-size:.95em;word-break:break-all}
.banner{padding:10px 16px;border-radius:6px;font-size:1.2em;font-weight:600;color:#fff}
.banner.pass{background:#2e7d32}.banner.fail{background:#c62828}
.cert{background:#fff8e1;border-left:5px solid #f9a825;padding:10px 16px;margin:12px 0;font-family:Georgia,serif}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#2e7d32;font-weight:600}.bad{color:#c62828;font-weight:600}.na{color:#888}
tr.bad td{background:#fdecea}.muted{color:#777}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px}
.lab{color:#555;font-size:.85em;word-break:break-word}.stat{font-size:.85em;margin:2px 0 4px}
svg.chart{width:100%;height:auto;display:block}
ul.problems{color:#c62828}
""".strip()


# ---------------------------------------------------------------- formatting


def _e(x: Any) -> str:
    """HTML-escape any value taken from data."""
    return escape("" if x is None else str(x))


def _f(x: Any, spec: str = ".3g") -> str:
    """A number for display: "—" when absent or NaN, "∞" when infinite."""
    if x is None or isinstance(x, bool):
        return "—" if x is None else str(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return _e(x)
    if math.isnan(v):
        return "—"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    s = format(v, spec)
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def _int(x: Any) -> str:
    """An integer with thousands separators ("—" when absent)."""
    return "—" if x is None else f"{int(x):,}"


def _pct(x: Any) -> str:
    """A share as a percentage; never rounds a share below one up to 100%."""
    if not svg.finite(x):
        return "—"
    s = f"{100 * float(x):.1f}%"
    return ">99.9%" if s == "100.0%" and float(x) < 1 else s


def _pill(ok: Any) -> str:
    """pass / FAIL / n/a marker."""
    if ok is None:
        return '<span class="na">n/a</span>'
    return '<span class="ok">pass</span>' if ok else '<span class="bad">FAIL</span>'


def _table(header: Iterable[str], rows: Iterable[str]) -> str:
    """A <table> from escaped header labels and pre-rendered <tr> rows."""
    head = "".join(f"<th>{h}</th>" for h in header)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


# ---------------------------------------------------------------- certificate


def _software(sw: dict[str, Any] | None) -> str:
    """Versions, the key packages first then the rest alphabetically."""
    sw = sw or {}
    order = [k for k in KEY_PACKAGES if k in sw] + sorted(k for k in sw if k not in KEY_PACKAGES)
    return ", ".join(f"{k} {sw[k]}" for k in order) or "not recorded"


def _status_counts(checkpoints: dict[str, Any]) -> str:
    """ "2 verified, 1 rejected" (fixed order, then other statuses alphabetically)."""
    c = Counter(str(cp.get("status")) for cp in checkpoints.values())
    order = [s for s in ("verified", "rejected", "failed") if s in c] + sorted(
        s for s in c if s not in ("verified", "rejected", "failed")
    )
    return ", ".join(f"{c[s]} {s}" for s in order)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def certificate_text(tiers: dict) -> str:
    """A short, deterministic plain-text paragraph summarising the verification for a paper."""
    sources = tiers.get("sources") or {}
    cps = tiers.get("checkpoints") or {}
    summ = tiers.get("checkpoint_summary") or {"terms": 0}
    verdict = "passed" if tiers.get("passed") else "FAILED"
    rows = sum(int(s.get("rows") or 0) for s in sources.values())
    per = "; ".join(f"{k}: {_int(s.get('rows'))} rows" for k, s in sources.items())
    out = [
        f'Synthetic data for "{tiers.get("name")}" were generated with replisynth and met fidelity tier '
        f"{tiers.get('tier_met')} (tier {tiers.get('tier_required')} required; verification {verdict}).",
        f"The run covers {_plural(len(sources), 'source')} ({per}), {rows:,} synthetic rows in total, and "
        f"{_plural(len(cps), 'checkpoint')}" + (f" ({_status_counts(cps)})." if cps else "."),
    ]
    n = int(summ.get("terms") or 0)
    if n:
        out.append(
            f"Over {_plural(n, 'verified coefficient term')}, |Δβ|/SE had median {_f(summ.get('median'))}, "
            f"95th percentile {_f(summ.get('p95'))} and maximum {_f(summ.get('max'))} "
            f"(maximum {_f(summ.get('max_target_se'))} relative to the target SE); "
            f"{_pct(summ.get('share_below_1'))} of terms were within 1 SE, {_pct(summ.get('share_below_2'))} "
            f"within 2 SE and {_pct(summ.get('share_below_3'))} within 3 SE."
        )
        if summ.get("se_ratio_min") is not None:
            out.append(
                f"The ratio of synthetic to target standard errors ranged from {_f(summ.get('se_ratio_min'))} "
                f"to {_f(summ.get('se_ratio_max'))} (median {_f(summ.get('se_ratio_median'))})."
            )
    else:
        out.append("No checkpoint coefficient terms were verified, so tier 4 is not claimed.")
    out.append(utility_sentence(tiers.get("utility")))  # beside the tier claim, never without it
    rejected = {t: c for t, c in cps.items() if c.get("status") == "rejected"}
    if rejected:
        out.append(
            "Rejected by disclosure control and not verified: "
            + "; ".join(
                f"{t} ({c.get('reason') or 'no reason recorded'})" for t, c in rejected.items()
            )
            + "."
        )
    costs = [
        c.get("rounding_cost_dbeta_se")
        for c in cps.values()
        if c.get("rounding_cost_dbeta_se") is not None
    ]
    if costs:
        out.append(
            f"Released coefficients were rounded for disclosure control; the rounding moves a coefficient by at most "
            f"{_f(max(costs))} of its standard error relative to the unrounded original."
        )
    free = free_text_sentence(tiers)
    if free:
        out.append(free)
    out.append(information_caveat(tiers))
    out.append(
        f"Seed {tiers.get('seed')}; bundle sha256 {tiers.get('bundle_sha256')}; "
        f"software: {_software(tiers.get('software'))}."
    )
    return " ".join(out)


def free_text_columns(tiers: dict) -> dict[str, list[str]]:
    """source -> its free-text columns (never released; all-missing in the synthetic data)."""
    out = {}
    for name, src in (tiers.get("sources") or {}).items():
        cols = (src.get("schema") or {}).get("free_text") or []
        if cols:
            out[name] = list(cols)
    return out


def free_text_sentence(tiers: dict) -> str:
    """The certificate's sentence naming the free-text columns, or "" when there are none."""
    free = free_text_columns(tiers)
    if not free:
        return ""
    listed = "; ".join(f"{s}: {', '.join(cols)}" for s, cols in free.items())
    return f"Free-text columns are never released and are entirely missing in the synthetic data ({listed})."


def free_text_section(tiers: dict) -> str:
    """A short section listing the free-text columns by source, or "" when there are none."""
    free = free_text_columns(tiers)
    if not free:
        return ""
    items = "".join(
        f"<li>{_e(s)}: {', '.join(_e(c) for c in cols)}</li>" for s, cols in free.items()
    )
    return (
        "<h2>Free text</h2><p>These text columns have a value on too few rows each to be released "
        "(as free text has): they are entirely missing in the synthetic data.</p>"
        f"<ul>{items}</ul>"
    )


def information_caveat(tiers: dict) -> str:
    """What synthetic data are and are not (docs/method.md, "Synthetic data carry no new
    information"): a masking of the original, never an augmentation."""
    text = (
        "The synthetic data are a masking of the original data, not new data: they carry no information "
        "about the population beyond what the original data hold. They are for running and checking code "
        "and for reproducing the checkpoints; standard errors, tests and confidence intervals computed on "
        "them do not measure uncertainty about the population, and any analysis beyond the checkpoints "
        "must be confirmed on the original data."
    )
    grown = [
        k
        for k, s in (tiers.get("sources") or {}).items()
        if s.get("original_rows") is not None and s.get("rows") != s.get("original_rows")
    ]
    if grown:
        per = "; ".join(
            f"{k}: {_int(tiers['sources'][k].get('rows'))} synthetic rows from "
            f"{_int(tiers['sources'][k].get('original_rows'))} original"
            for k in grown
        )
        text += (
            f" The row count differs from the original ({per}): more rows add no information; they "
            "only make standard errors computed on the synthetic data smaller."
        )
    return text


# ---------------------------------------------------------------- 1. banner


def _banner(tiers: dict, certificate: str) -> str:
    """Title, PASSED/FAILED banner and the certificate box."""
    ok = bool(tiers.get("passed"))
    met, req = tiers.get("tier_met"), tiers.get("tier_required")
    met_s = "none" if met is None or (isinstance(met, int) and met < 0) else _e(met)
    return (
        f"<h1>Verification report: {_e(tiers.get('name'))}</h1>"
        f'<div class="banner {"pass" if ok else "fail"}">{"PASSED" if ok else "FAILED"} — '
        f"fidelity tier met: {met_s} (required: {_e(req)})</div>"
        f'<div class="cert"><strong>Certificate.</strong> {_e(certificate)}</div>'
    )


# ---------------------------------------------------------------- 2. tiers


def weighted_line(weighted: dict | None) -> str:
    """Tier 1's words on a survey weight: the column the shares are weighted by, the largest
    gaps of the weighted shares (gated) and of the weighted decile shares (reported)."""
    if not weighted:
        return ""
    gaps = list((weighted.get("max_share_gap") or {}).values())
    deciles = list((weighted.get("max_decile_gap") or {}).values())
    out = (
        f"; shares weighted by {_e(weighted.get('column'))}: max gap "
        f"{_f(max(gaps, default=0.0))} (tolerance {_f(weighted.get('tolerance'))})"
    )
    if deciles:
        out += f", weighted decile shares max gap {_f(max(deciles))} (reported)"
    return out


def _tier_rows(src: dict) -> list[tuple[Any, str]]:
    """(passed, key figures) for tiers 0–4 of one source."""
    sch, mar = src.get("schema") or {}, src.get("marginals") or {}
    cor, stra, cps = (
        src.get("correlations") or {},
        src.get("strata") or {},
        src.get("checkpoints") or {},
    )
    n_prob = len(sch.get("problems") or [])
    t0 = (
        "columns, types and labels match the release"
        if sch.get("passed")
        else _plural(n_prob, "problem")
    )
    t1 = f"worst KS p = {_f(mar.get('worst_ks_p'))}"
    if mar.get("worst_variable") is not None:
        t1 += f" ({_e(mar.get('worst_variable'))})"
    t1 += f"; max percentile gap = {_f(mar.get('max_percentile_gap_iqr'))} IQR"
    drift = mar.get("outcome_drift") or {}
    if drift:
        t1 += f"; outcome drift (not gated): {_e(', '.join(drift))}"
    t1 += weighted_line(mar.get("weighted"))
    pair = cor.get("pair")
    t2 = f"max |Δρ| = {_f(cor.get('max_abs_delta'))}"
    if pair:
        t2 += f" ({_e(' × '.join(str(p) for p in pair))})"
    t2 += f"; {_int(cor.get('pairs_checked'))} pairs checked"
    st = stra.get("strata") or []
    if stra.get("note") and not st:
        t3 = _e(stra.get("note"))
    else:
        bad = sum(1 for s in st if not _stratum_ok(s))
        t3 = f"{_plural(len(st), 'stratum')}" if len(st) == 1 else f"{len(st):,} strata"
        t3 += f", {bad:,} with problems" if bad else ", all sizes exact and within tolerance"
    tags = cps.get("tags") or []
    t4 = (
        f"{_plural(len(tags), 'checkpoint')}: {_e(', '.join(str(t) for t in tags))}"
        if tags
        else "no checkpoints"
    )
    if cps.get("rejected"):
        t4 += f"; rejected by disclosure control: {_e(', '.join(str(t) for t in cps['rejected']))}"
    if cps.get("note"):
        t4 += f" — {_e(cps['note'])}"
    return [
        (sch.get("passed"), t0),
        (mar.get("passed"), t1),
        (cor.get("passed"), t2),
        (stra.get("passed"), t3),
        (cps.get("passed") if cps else None, t4),
    ]


def _stratum_ok(s: dict) -> bool:
    """A stratum passes when its size is exact and its marginals and correlations pass."""
    if s.get("rows_expected") is not None and s.get("rows") != s.get("rows_expected"):
        return False
    return all(
        (s.get(k) or {}).get("passed", True) is not False for k in ("marginals", "correlations")
    )


def _problems(src: dict) -> list[str]:
    """Every problem listed anywhere in one source's verdict."""
    out = [f"schema: {p}" for p in (src.get("schema") or {}).get("problems") or []]
    out += [f"marginals: {p}" for p in (src.get("marginals") or {}).get("problems") or []]
    stra = src.get("strata") or {}
    out += [f"strata: {p}" for p in stra.get("problems") or []]
    for s in stra.get("strata") or []:
        out += [
            f"stratum {s.get('stratum')}: {p}"
            for p in (s.get("marginals") or {}).get("problems") or []
        ]
    cor = src.get("correlations") or {}
    if cor.get("passed") is False:
        out.append(
            f"correlations: max |Δρ| = {_f(cor.get('max_abs_delta'))} for {' × '.join(map(str, cor.get('pair') or []))}"
        )
    return out


def _strata_table(src: dict) -> str:
    """Collapsible per-stratum table (sizes, worst KS p, max |Δρ|)."""
    st = (src.get("strata") or {}).get("strata") or []
    if not st:
        return ""
    rows = []
    for s in st:
        m, c = s.get("marginals") or {}, s.get("correlations") or {}
        key = "—" if s.get("key") is None else ", ".join(norm_key(k) for k in s["key"])
        pair = " × ".join(map(str, c.get("pair") or []))
        cls = "" if _stratum_ok(s) else ' class="bad"'
        rows.append(
            f"<tr{cls}><td>{_e(s.get('stratum'))}</td><td>{_e(key)}</td>"
            f'<td class="n">{_int(s.get("rows"))}</td><td class="n">{_int(s.get("rows_expected"))}</td>'
            f'<td class="n">{_f(m.get("worst_ks_p"))}</td><td>{_e(m.get("worst_variable"))}</td>'
            f'<td class="n">{_f(c.get("max_abs_delta"))}</td><td>{_e(pair)}</td><td>{_pill(_stratum_ok(s))}</td></tr>'
        )
    table = _table(
        ["stratum", "key", "rows", "expected", "worst KS p", "variable", "max |Δρ|", "pair", ""],
        rows,
    )
    return f"<details><summary>{_plural(len(st), 'stratum') if len(st) == 1 else f'{len(st):,} strata'}</summary>{table}</details>"


def _tier_section(tiers: dict) -> str:
    """Section 2: one tier table per source, its problems and strata."""
    parts = ["<h2>Fidelity tiers</h2>"]
    for name, src in (tiers.get("sources") or {}).items():
        rows = [
            f"<tr><td>{i}</td><td>{TIER_NAMES[i]}</td><td>{_pill(ok)}</td><td>{fig}</td></tr>"
            for i, (ok, fig) in enumerate(_tier_rows(src))
        ]
        parts.append(
            f"<h3>Source {_e(name)} — tier met: {_e(src.get('tier_met'))}, {_int(src.get('rows'))} rows</h3>"
        )
        parts.append(_table(["tier", "check", "result", "key figures"], rows))
        probs = _problems(src)
        if probs:
            parts.append(
                '<ul class="problems">' + "".join(f"<li>{_e(p)}</li>" for p in probs) + "</ul>"
            )
        parts.append(_strata_table(src))
    return "".join(parts)


# ---------------------------------------------------------------- 3. marginals


def _numeric(s: pd.Series, logical_type: str | None) -> np.ndarray:
    """Float view of a continuous column (dates as days since 1970-01-01)."""
    if logical_type in ("date", "datetime"):
        d = pd.to_datetime(s, errors="coerce")
        return ((d - EPOCH) / pd.Timedelta(days=1)).to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _date_tick(v: float) -> str:
    """Axis label for a day count since 1970-01-01."""
    try:
        return (EPOCH + pd.Timedelta(days=float(v))).strftime("%Y-%m-%d")
    except (OverflowError, ValueError):
        return svg.tick_label(v)


def _synthetic_percentiles(values: np.ndarray) -> list[float] | None:
    """Percentiles 0..100 of the non-missing values (averaged inverted CDF), None when empty."""
    v = values[~np.isnan(values)]
    if not len(v):
        return None
    return [float(x) for x in np.percentile(v, np.arange(101), method="averaged_inverted_cdf")]


def _level_label(level: Any, labels: dict[str, Any]) -> str:
    """ "code = label" when the level has a value label, else the level itself."""
    lab = labels.get(norm_key(level), labels.get(str(level)))
    return f"{norm_key(level)} = {lab}" if lab is not None else norm_key(level)


def _shares(
    table: dict, s: pd.Series | None, labels: dict[str, Any]
) -> tuple[list[str], list[float], list[float | None], str]:
    """Levels, released shares, synthetic shares (among non-missing) and a note on what was cut."""
    levels, counts = list(table.get("levels") or []), [float(c) for c in table.get("counts") or []]
    total = sum(counts) or 1.0
    got: Counter = Counter()
    n = 0
    if s is not None:
        # counted per distinct value, then keyed (a per-row norm_key is slow on large data)
        vc = s.value_counts(dropna=True, sort=False)
        n = int(vc.sum())
        for v, c in vc.items():
            got[norm_key(v)] += int(c)
    idx = list(range(len(levels)))
    note = ""
    if len(idx) > MAX_LEVELS:
        if not table.get("ordered"):
            idx = sorted(idx, key=lambda i: (-counts[i], i))
        idx = sorted(idx[:MAX_LEVELS])
        note = f"{len(levels) - MAX_LEVELS:,} more levels not shown"
    names = [_level_label(levels[i], labels) for i in idx]
    rel = [counts[i] / total for i in idx]
    syn: list[float | None] = [got.get(norm_key(levels[i]), 0) / n if n else None for i in idx]
    other = n - sum(got.get(norm_key(v), 0) for v in levels)
    if n and other > 0:
        names.append("(other)")
        rel.append(0.0)
        syn.append(other / n)
    return names, rel, syn, note


def _variable_status(col: str, m: dict, mar: dict, strata_cols: set[str]) -> str:
    """The tier-1 figure shown under a plot."""
    rec = (mar.get("variables") or {}).get(col)
    drift = (mar.get("outcome_drift") or {}).get(col)
    prefix = ""
    if rec is None and drift is not None:
        rec, prefix = drift, "outcome (not gated): "
    if rec is None:
        return (
            "stratum column (checked in tier 3)"
            if col in strata_cols
            else '<span class="na">not checked</span>'
        )
    if "exact_counts" in rec:
        return prefix + (
            'exact counts <span class="ok">✓</span>'
            if rec["exact_counts"]
            else 'counts differ <span class="bad">✗</span>'
        )
    p = rec.get("ks_p")
    cls = "bad" if svg.finite(p) and p <= 0.05 else "ok"
    return (
        f'{prefix}KS p = <span class="{cls}">{_f(p)}</span>, D = {_f(rec.get("ks_d"))}, '
        f"gap = {_f(rec.get('max_percentile_gap_iqr'))} IQR"
    )


def _variable_card(
    spec: dict,
    m: dict,
    df: pd.DataFrame | None,
    release: dict,
    mar: dict,
    strata_cols: set[str],
    percentiles: dict[str, list[float]] | None = None,
) -> str:
    """One plot with its variable name, label, tier-1 figure and missing counts.
    `percentiles`: synthetic percentiles verification computed (tiers.json), used for
    numeric columns (verification reads dates its own way)."""
    col = str(spec.get("name"))
    s = df[col] if df is not None and col in df.columns else None
    if m.get("kind") == "continuous":
        known = (
            (percentiles or {}).get(col)
            if spec.get("logical_type") not in ("date", "datetime")
            else None
        )
        if s is None:
            syn = None
        else:
            syn = (
                [float(x) for x in known]
                if known is not None
                else _synthetic_percentiles(_numeric(s, spec.get("logical_type")))
            )
        fmt = _date_tick if spec.get("logical_type") in ("date", "datetime") else svg.tick_label
        chart = svg.quantile_chart(m.get("grid") or [], syn, f"quantiles of {col}", fmt)
        note = ""
    else:
        labels = (release.get("value_labels") or {}).get(col) or {}
        names, rel, syn_sh, note = _shares(m.get("table") or {}, s, labels)
        chart = svg.share_bars(names, rel, syn_sh, f"shares of {col}")
    label = spec.get("variable_label")
    miss = f"missing: released {_int(m.get('missing'))}, synthetic {_int(int(s.isna().sum())) if s is not None else '—'}"
    return (
        f'<div class="card"><h4>{_e(col)}</h4>'
        + (f'<div class="lab">{_e(label)}</div>' if label else "")
        + f'<div class="stat">{_variable_status(col, m, mar, strata_cols)}</div>{chart}'
        + f'<div class="lab">{miss}{"; " + _e(note) if note else ""}'
        + ("" if s is not None else "; synthetic column absent")
        + "</div></div>"
    )


def _marginal_section(
    tiers: dict, releases: dict[str, dict], frames: dict[str, pd.DataFrame]
) -> str:
    """Section 3: released vs synthetic distribution of every released variable, per source."""
    parts = [
        "<h2>Marginal distributions</h2>",
        '<p class="muted">Continuous: released quantile function (line) and synthetic percentiles (dots). '
        "Categorical: released and synthetic shares per level.</p>",
    ]
    for name, release in releases.items():
        src = (tiers.get("sources") or {}).get(name) or {}
        mar = src.get("marginals") or {}
        all_m = ((release.get("blocks") or {}).get(ALL) or {}).get("marginals") or {}
        strata_cols = set((release.get("strata") or {}).get("columns") or [])
        df = frames.get(name)
        plotted, skipped = [], []
        for spec in release.get("columns") or []:
            m = all_m.get(spec.get("name"))
            if m is None or m.get("kind") not in ("continuous", "categorical"):
                skipped.append(str(spec.get("name")))
            else:
                plotted.append((spec, m))
        parts.append(f"<h3>Source {_e(name)}</h3>")
        weighted = mar.get("weighted")
        if weighted:
            parts.append(
                f"<p>The released marginals of this source are also weighted by the column "
                f"<strong>{_e(weighted.get('column'))}</strong> (survey weight): tier 1 checks the "
                f"synthetic weighted shares against the released ones{weighted_line(weighted)}."
                "</p>"
            )
        if len(plotted) > MAX_VARIABLES:
            parts.append(
                f'<p class="muted">Showing the first {MAX_VARIABLES} of {len(plotted):,} released variables.</p>'
            )
        if df is None:
            parts.append('<p class="bad">No synthetic frame for this source.</p>')
        known = (src.get("synthetic") or {}).get("percentiles")
        cards = [
            _variable_card(spec, m, df, release, mar, strata_cols, known)
            for spec, m in plotted[:MAX_VARIABLES]
        ]
        parts.append(f'<div class="grid">{"".join(cards)}</div>')
        if skipped:
            parts.append(
                f'<p class="muted">Not plotted (no released marginal, suppressed, or identifier): {_e(", ".join(skipped))}</p>'
            )
    return "".join(parts)


# ---------------------------------------------------------------- 4. correlations


def correlation_difference(
    release: dict, df: pd.DataFrame, exclude: set[str] | None = None, synthetic: dict | None = None
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """(dims kept, synthetic Spearman, released Spearman) over the released dims whose column is
    not in `exclude`; released None entries become NaN. Coding and Spearman are the ones
    verification uses (`dims.synthetic_dim_matrix`, `correlations.spearman_matrix`), and
    the synthetic matrix is verification's own when `synthetic` (tiers.json's
    `synthetic.spearman` of the source) covers the same dims."""
    dims = list(release.get("dims") or [])
    target = ((release.get("blocks") or {}).get(ALL) or {}).get("spearman") or []
    keep = [i for i, d in enumerate(dims) if d.get("column") not in (exclude or set())]
    if not keep:
        return [], np.zeros((0, 0)), np.zeros((0, 0))
    if synthetic and synthetic.get("dims") == keep and synthetic.get("matrix") is not None:
        S = np.asarray(
            [[np.nan if v is None else v for v in row] for row in synthetic["matrix"]],
            dtype="float64",
        )
    else:
        from replisynth.stats.copula_dims import synthetic_dim_matrix
        from replisynth.stats.correlations import (
            spearman_matrix,  # imported here: scipy, for this fallback only
        )

        S = spearman_matrix(synthetic_dim_matrix(df, release)[:, keep])
    T = np.asarray(
        [[np.nan if target[i][j] is None else float(target[i][j]) for j in keep] for i in keep],
        dtype="float64",
    ).reshape(len(keep), len(keep))
    return [dims[i] for i in keep], S, T


def _corr_block(
    name: str, release: dict, df: pd.DataFrame | None, exclude: set[str], src: dict
) -> str:
    """Heatmap and summary line for one source."""
    if df is None:
        return f'<h3>Source {_e(name)}</h3><p class="bad">No synthetic frame for this source.</p>'
    dims, S, T = correlation_difference(
        release, df, exclude, (src.get("synthetic") or {}).get("spearman")
    )
    head = f"<h3>Source {_e(name)}</h3>"
    if len(dims) < 2:
        return head + '<p class="muted">Fewer than two released dims: nothing to compare.</p>'
    note = ""
    if len(dims) > MAX_DIMS:
        note = f'<p class="muted">Showing the first {MAX_DIMS} of {len(dims):,} dims.</p>'
        dims, S, T = dims[:MAX_DIMS], S[:MAX_DIMS, :MAX_DIMS], T[:MAX_DIMS, :MAX_DIMS]
    D = S - T
    labels = [dim_label(d) for d in dims]
    tips = [
        [
            f"{labels[i]} × {labels[j]}: synthetic {_f(S[i, j], '+.3f')}, released {_f(T[i, j], '+.3f')}, "
            f"Δ {_f(D[i, j], '+.3f')}"
            for j in range(len(dims))
        ]
        for i in range(len(dims))
    ]
    iu = np.triu_indices(len(dims), 1)
    a = np.abs(D[iu])
    summary = "no comparable pairs"
    if np.isfinite(a).any():
        j = int(np.nanargmax(np.where(np.isfinite(a), a, -1)))
        summary = (
            f"largest |Δρ| shown: {_f(a[j])} ({_e(labels[iu[0][j]])} × {_e(labels[iu[1][j]])}); "
            f"{int(np.isfinite(a).sum()):,} comparable pairs"
        )
    cor = src.get("correlations") or {}
    if cor:
        summary += f"; tier 2 verdict: {_pill(cor.get('passed'))}"
    chart = svg.heatmap(labels, D.tolist(), tips, CLAMP, f"Spearman difference, {name}")
    excl = f"; excluded checkpoint outcomes: {_e(', '.join(sorted(exclude)))}" if exclude else ""
    return f"{head}{note}<p>{summary}{excl}</p>{chart}"


def _corr_section(
    tiers: dict,
    releases: dict[str, dict],
    frames: dict[str, pd.DataFrame],
    outcomes: dict[str, set[str]] | None,
) -> str:
    """Section 4: synthetic minus released Spearman correlation, per source."""
    parts = [
        "<h2>Correlation differences</h2>",
        f'<p class="muted">Synthetic minus released Spearman correlation over the released dims; colour '
        f"saturates at ±{CLAMP:g} (blue: synthetic lower, red: synthetic higher, grey: not released or undefined).</p>",
    ]
    for name, release in releases.items():
        src = (tiers.get("sources") or {}).get(name) or {}
        parts.append(
            _corr_block(name, release, frames.get(name), set((outcomes or {}).get(name) or ()), src)
        )
    return "".join(parts)


# ---------------------------------------------------------------- 5. checkpoints


def _term_name(t: dict) -> str:
    """The term's name, or its position when the name itself is suppressed."""
    return str(t["term"]) if t.get("term") is not None else f"term #{t.get('position')}"


def _term_row(t: dict) -> str:
    """One row of a checkpoint's term table."""
    name = _e(_term_name(t))
    if t.get("suppressed"):
        return f'<tr><td>{name}</td><td colspan="7" class="muted">suppressed ({_e(t.get("reason"))})</td></tr>'
    if t.get("missing"):
        return (
            f'<tr class="bad"><td>{name}</td><td class="n">{_f(t.get("beta_target"), ".4g")}</td><td>—</td>'
            f'<td class="n">{_f(t.get("se_target"))}</td><td colspan="4">missing from the synthetic fit</td></tr>'
        )
    worst = max(
        (v for v in (t.get("dbeta_se"), t.get("dbeta_se_target")) if v is not None), default=0.0
    )
    cls = ' class="bad"' if worst >= SE_BOUND else ""
    return (
        f"<tr{cls}><td>{name}</td>"
        + "".join(
            f'<td class="n">{_f(t.get(k), s)}</td>'
            for k, s in (
                ("beta_target", ".4g"),
                ("beta_synthetic", ".4g"),
                ("se_target", ".3g"),
                ("se_synthetic", ".3g"),
                ("dbeta_se", ".3g"),
                ("dbeta_se_target", ".3g"),
                ("se_ratio", ".3f"),
            )
        )
        + "</tr>"
    )


def _chart_terms(terms: list[dict]) -> tuple[list[dict], str]:
    """The terms drawn in the chart (the largest Δβ/SE when there are too many, in model order)."""
    est = [t for t in terms if "dbeta_se" in t]
    if len(est) <= MAX_CHART_TERMS:
        return est, ""
    score = lambda i: (  # noqa: E731
        -max(float(est[i].get("dbeta_se") or 0), float(est[i].get("dbeta_se_target") or 0))
    )
    keep = sorted(sorted(range(len(est)), key=lambda i: (score(i), i))[:MAX_CHART_TERMS])
    return [
        est[i] for i in keep
    ], f"showing the {MAX_CHART_TERMS} terms with the largest |Δβ|/SE of {len(est):,}"


def _checkpoint_block(tag: str, cp: dict) -> str:
    """Chart, term table or reason for one checkpoint."""
    status = str(cp.get("status"))
    head = (
        f'<h3>{_e(tag)} — {_pill(cp.get("passed"))} <span class="muted">({_e(status)})</span></h3>'
        f"<p>source {_e(cp.get('source'))}"
    )
    if cp.get("model") is not None:
        head += f" · model {_e(cp.get('model'))}"
    if cp.get("n_target") is not None:
        head += f" · n target {_int(cp.get('n_target'))}, n synthetic {_int(cp.get('n_synthetic'))}"
    if cp.get("max_dbeta_se") is not None:
        head += f" · max |Δβ|/SE {_f(cp.get('max_dbeta_se'))} (target SE: {_f(cp.get('max_dbeta_se_target'))})"
    head += "</p>"
    if cp.get("reason"):
        head += f'<p class="{"bad" if status == "failed" else "muted"}">{_e(status)}: {_e(cp.get("reason"))}</p>'
    terms = cp.get("terms") or []
    if not terms:
        return head
    shown, note = _chart_terms(terms)
    chart = ""
    if shown:
        chart = svg.dbeta_chart(
            [_term_name(t) for t in shown],
            [t.get("dbeta_se") for t in shown],
            [t.get("dbeta_se_target") for t in shown],
            f"Δβ/SE, checkpoint {tag}",
            bound=SE_BOUND,
        )
        chart = f'<div style="max-width:760px">{chart}</div>' + (
            f'<p class="muted">{_e(note)}</p>' if note else ""
        )
    table = _table(
        [
            "term",
            "β target",
            "β synthetic",
            "SE target",
            "SE synthetic",
            "|Δβ|/SE",
            "|Δβ|/SE target",
            "SE ratio",
        ],
        [_term_row(t) for t in terms],
    )
    return head + chart + table


def _summary_table(summ: dict) -> str:
    """The Δβ/SE distribution over all verified terms."""
    if not int(summ.get("terms") or 0):
        return '<p class="muted">No verified checkpoint terms.</p>'
    cells = [
        ("terms", _int(summ.get("terms"))),
        ("median |Δβ|/SE", _f(summ.get("median"))),
        ("p95", _f(summ.get("p95"))),
        ("max", _f(summ.get("max"))),
        ("max (target SE)", _f(summ.get("max_target_se"))),
        ("within 1 SE", _pct(summ.get("share_below_1"))),
        ("within 2 SE", _pct(summ.get("share_below_2"))),
        ("within 3 SE", _pct(summ.get("share_below_3"))),
        (
            "SE ratio min / median / max",
            f"{_f(summ.get('se_ratio_min'))} / {_f(summ.get('se_ratio_median'))} / {_f(summ.get('se_ratio_max'))}",
        ),
    ]
    return _table(
        [c for c, _ in cells],
        ["<tr>" + "".join(f'<td class="n">{v}</td>' for _, v in cells) + "</tr>"],
    )


def _checkpoint_section(tiers: dict) -> str:
    """Section 5: the Δβ/SE summary and one block per checkpoint."""
    cps = tiers.get("checkpoints") or {}
    parts = [
        "<h2>Checkpoints</h2>",
        _summary_table(tiers.get("checkpoint_summary") or {"terms": 0}),
    ]
    if not cps:
        parts.append('<p class="muted">No checkpoints configured.</p>')
    parts.extend(_checkpoint_block(tag, cp) for tag, cp in cps.items())
    return "".join(parts)


# ---------------------------------------------------------------- 5b. utility


def _utility_row(source: str, col: str, r: dict) -> str:
    def share(key: str) -> str:
        return "—" if r.get(key) is None else _pct(r.get(key))

    cells = [
        _e(source),
        _e(col) + (" (derived)" if r.get("role") == "derived column" else ""),
        _f(r.get("ks_d") if r.get("ks_d") is not None else r.get("tv_distance")),
        _f(r.get("mean_drift_se")),
        share("share_out_of_support"),
        share("share_negative"),
        share("share_non_integer"),
        f"{_pct(r.get('missing_share'))} / {_pct(r.get('released_missing_share'))}",
        '<span class="bad">breached</span>'
        if r.get("support_breached")
        else '<span class="ok">kept</span>',
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _utility_section(tiers: dict) -> str:
    """The pinned outcomes against their released marginals (tiers.json `utility`): beside
    the tier, never changing it (docs/method.md, "The utility section")."""
    u = tiers.get("utility") or {}
    rows = [
        _utility_row(src, col, r)
        for src, recs in (u.get("sources") or {}).items()
        for col, r in recs.items()
    ]
    if not rows:
        return ""
    head = [
        "source",
        "column",
        "KS (TV)",
        "mean drift (SE)",
        "out of support",
        "negative",
        "non-integer",
        "missing (synthetic / released)",
        "support",
    ]
    found = u.get("findings") or []
    notes = (
        "<ul>" + "".join(f"<li>{_e(f)}</li>" for f in found) + "</ul>"
        if found
        else '<p class="muted">No pinned outcome leaves its released support.</p>'
    )
    return (
        "<h2>Utility of the pinned outcomes</h2><p>Each pinned outcome, and each derived "
        "column recomputed from its inputs, against its released marginal: these findings do not change the tier; a share above "
        f"{_pct(u.get('support_threshold'))} outside the released support is flagged "
        "<em>support breached</em>.</p>" + _table(head, rows) + notes
    )


# ---------------------------------------------------------------- 6. provenance


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) pairs of a nested dict, in insertion order."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, key + " / "))
        else:
            out.append((key, v))
    return out


def _prov_value(key: str, v: Any) -> str:
    """A provenance value; numbers under a seconds-like key get an "s" unit."""
    if isinstance(v, (list, tuple)):
        return _e(", ".join(map(str, v)))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        unit = " s" if ("second" in key or key.startswith("benchmarks")) else ""
        return _f(v, ".4g") + unit
    return _e(v)


def _provenance_section(provenance: dict | None) -> str:
    """Section 6: a key/value table of the provenance record."""
    if not provenance:
        return ""
    rows = [
        f'<tr><td>{_e(k)}</td><td class="n">{_prov_value(k, v)}</td></tr>'
        for k, v in _flatten(provenance)
    ]
    return "<h2>Provenance</h2>" + _table(["item", "value"], rows)


# ---------------------------------------------------------------- page


def render_report(
    tiers: dict,
    releases: dict[str, dict],
    frames: dict[str, pd.DataFrame],
    certificate: str,
    provenance: dict | None = None,
    *,
    outcomes: dict[str, set[str]] | None = None,
    sdc_log: dict | None = None,
) -> str:
    """Return the full, self-contained HTML text of the verification report.

    `certificate` is shown in the highlighted box (computed by `certificate_text` when empty);
    `outcomes` maps a source to its checkpoint outcome columns, left out of the heatmap;
    `sdc_log` (the bundle's sdc_log.json) gives the disclosure-control section.
    """
    certificate = certificate or certificate_text(tiers)
    body = "".join(
        [
            _banner(tiers, certificate),
            certifies_html(tiers),
            _tier_section(tiers),
            free_text_section(tiers),
            _marginal_section(tiers, releases, frames),
            _corr_section(tiers, releases, frames, outcomes),
            _checkpoint_section(tiers),
            disclosure_section(tiers, sdc_log),
            _utility_section(tiers),
            _provenance_section(provenance),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>replisynth report: {_e(tiers.get('name'))}</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


__all__ = ["render_report", "certificate_text", "correlation_difference", "dim_label"]
