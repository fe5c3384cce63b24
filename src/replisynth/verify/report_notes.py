"""Report and certificate sections for a reader who did not run the pipeline: what the
verification certifies and what it does not, and the disclosure control listed decision by
decision (suppressed checkpoint terms by name, rejected checkpoints, every SDC decision of the
bundle's sdc_log.json, whose entries hold counts and reasons, never a data value)."""

from __future__ import annotations

from collections import defaultdict
from html import escape
from typing import Any

SE_TOLERANCE = 3.0  # tier 4: |Δβ|/SE below this, by the synthetic and by the original SE
TIER_MEANING = (
    "the schema floor (the same columns, types, categories, labels and missing counts)",
    "the marginals (every column's distribution matches its released one)",
    "the correlations (every released rank correlation within 0.05)",
    "the strata (marginals and correlations inside every released stratum)",
    f"the checkpoints (every released coefficient within {SE_TOLERANCE:g} SE of the original)",
)
WHERE_KEYS = ("source", "block", "column", "checkpoint", "term")


def _e(x: Any) -> str:
    return escape(str(x), quote=True)


def _tier_clause(tiers: dict[str, Any]) -> str:
    """Which tier was met, what it means, and whether the required one was."""
    met, req = tiers.get("tier_met"), tiers.get("tier_required")
    if not isinstance(met, int) or met < 0:
        out = "These synthetic data meet no fidelity tier, not even the schema floor."
    else:
        out = f"These synthetic data meet fidelity tier {met} of 4: {TIER_MEANING[min(met, 4)]}" + (
            ", and every tier below it." if met > 0 else "."
        )
    if isinstance(req, int) and (not isinstance(met, int) or met < req):
        out += f" The manifest required tier {req}, which was missed."
    return out


def _checkpoints(tags: list[str]) -> str:
    return ("The checkpoint " if len(tags) == 1 else "The checkpoints ") + ", ".join(tags)


def _checkpoint_clause(tiers: dict[str, Any]) -> str:
    """Which checkpoints are reproduced within the tolerance, and which were not verified."""
    cps = tiers.get("checkpoints") or {}
    ok = [t for t, c in cps.items() if c.get("passed") is True]
    missed = [t for t, c in cps.items() if c.get("passed") is False]
    withheld = [t for t, c in cps.items() if c.get("passed") is None]
    out = []
    if ok:
        out.append(
            f"{_checkpoints(ok)} reproduce{'s' if len(ok) == 1 else ''} every released"
            f" coefficient within {SE_TOLERANCE:g} standard errors of the original."
        )
    if missed:
        out.append(f"{_checkpoints(missed)} missed that tolerance.")
    if withheld:
        out.append(
            f"{_checkpoints(withheld)} {'was' if len(withheld) == 1 else 'were'} withheld by"
            " disclosure control and not verified."
        )
    if not cps:
        out.append("No checkpoint regression was declared, so no coefficient is certified.")
    return " ".join(out)


def _weighted_clause(tiers: dict[str, Any]) -> str:
    """Sources with a survey weight: tier 1 checked their shares weighted by it too."""
    out = []
    for name, src in (tiers.get("sources") or {}).items():
        w = (src.get("marginals") or {}).get("weighted")
        if w:
            verdict = "within" if w.get("passed") else "not all within"
            out.append(
                f"Source {name}'s marginals are weighted by its survey weight {w.get('column')}:"
                f" the synthetic weighted shares are {verdict} {w.get('tolerance'):g} of the"
                " released ones."
            )
    return " ".join(out)


def certifies_text(tiers: dict[str, Any]) -> str:
    """One plain-text paragraph: what this verification certifies and what it does not."""
    return " ".join(
        [
            "What this certifies and what it does not.",
            _tier_clause(tiers),
            *([_weighted_clause(tiers)] if _weighted_clause(tiers) else []),
            _checkpoint_clause(tiers),
            "Nothing else is certified: other analyses (other models, subgroups, transformations)"
            " are not guaranteed to give the original's results; confirm them on the original"
            " data.",
            "The synthetic data are a masking of the original data: they add no information"
            " about the population.",
        ]
    )


def certifies_html(tiers: dict[str, Any]) -> str:
    """The paragraph of `certifies_text` as the report's first box."""
    head, _, rest = certifies_text(tiers).partition(". ")
    return f'<div class="cert"><strong>{_e(head)}.</strong> {_e(rest)}</div>'


def suppressed_terms(tiers: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(checkpoint, term, reason) of every coefficient SDC withheld; a term whose name cannot
    be read from released information is named by its position."""
    out = []
    for tag, cp in (tiers.get("checkpoints") or {}).items():
        for t in cp.get("terms") or []:
            if t.get("suppressed"):
                name = t.get("term")
                shown = str(name) if name is not None else f"term #{t.get('position')}"
                out.append((tag, shown, str(t.get("reason") or "no reason recorded")))
    return out


def _where(entry: dict[str, Any]) -> str:
    """Where an SDC decision applies: source, block, column, checkpoint, term (those given)."""
    return ", ".join(f"{k} {entry[k]}" for k in WHERE_KEYS if entry.get(k) is not None) or "-"


def _rows_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _decisions_by_stage(decisions: list[dict[str, Any]]) -> str:
    """Every SDC decision, one collapsible list per stage (in the log's order)."""
    by_stage: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in decisions:
        by_stage[str(d.get("stage", "other"))].append(d)
    parts = []
    for stage, entries in by_stage.items():
        rows = [[str(d.get("action", "")), _where(d), str(d.get("reason", ""))] for d in entries]
        parts.append(
            f"<details><summary>{_e(stage)}: {len(entries):,} decision(s)</summary>"
            + _rows_table(["action", "where", "reason"], rows)
            + "</details>"
        )
    return "".join(parts)


def disclosure_section(tiers: dict[str, Any], sdc_log: dict[str, Any] | None) -> str:
    """The report's disclosure-control section: settings, rejected checkpoints, suppressed
    terms by name with the reason, and every SDC decision."""
    parts = ["<h2>Disclosure control</h2>"]
    settings = (sdc_log or {}).get("settings") or {}
    if settings:
        shown = ", ".join(f"{k} {v}" for k, v in settings.items() if v not in (None, []))
        parts.append(f"<p>Settings: {_e(shown)}.</p>")
    rejected = [
        [t, str(c.get("reason") or "no reason recorded")]
        for t, c in (tiers.get("checkpoints") or {}).items()
        if c.get("status") == "rejected"
    ]
    if rejected:
        parts.append(
            "<h3>Checkpoints withheld</h3>" + _rows_table(["checkpoint", "reason"], rejected)
        )
    sup = suppressed_terms(tiers)
    parts.append("<h3>Suppressed checkpoint terms</h3>")
    parts.append(
        _rows_table(["checkpoint", "term", "reason"], [list(r) for r in sup])
        if sup
        else '<p class="muted">None: every coefficient of the verified checkpoints was released.</p>'
    )
    decisions = (sdc_log or {}).get("decisions") or []
    parts.append(f"<h3>SDC decisions ({len(decisions):,})</h3>")
    parts.append(
        _decisions_by_stage(decisions)
        if decisions
        else '<p class="muted">No SDC decision was recorded.</p>'
    )
    return "".join(parts)
