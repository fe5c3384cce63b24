"""The output checker's review: every disclosure check, from the bundle alone, as findings
(`disclosure_review.{json,txt}`). Method: docs/method.md, "Output checker's review".
"""

from __future__ import annotations

import ast
import io
import logging
import math
import re
import tokenize
from collections.abc import Callable
from pathlib import Path
from typing import Any

from replisynth import __version__
from replisynth.config.formula_grammar import parse_derive, parse_subset
from replisynth.config.manifest import Manifest
from replisynth.disclosure.bundle_types import (
    CheckpointRecord,
    SdcLogFile,
    SourceRelease,
    untyped,
)
from replisynth.disclosure.cell_audit import check_empty_cells
from replisynth.disclosure.linked_correlations import check_correlations
from replisynth.disclosure.pooled_codings import check_pooled_codings
from replisynth.disclosure.pooled_totals import check_pooled_totals
from replisynth.disclosure.sdc import (
    DisclosureError,
    check_atoms,
    check_release,
    ordering_backed,
)
from replisynth.disclosure.subset_levels import check_group_counts, check_subset_levels
from replisynth.disclosure.three_way import check_three_way
from replisynth.io.atomic import write_text
from replisynth.io.files import write_json

Finding = dict[str, Any]
log = logging.getLogger(__name__)
EXIT_FINDINGS = 3  # `replisynth review` exit status when the review has findings


# --- counts, grids, checkpoints, groups -----------------------------------------------------


def check_counts(release: SourceRelease, min_cell: int) -> list[Finding]:
    """Stratum sizes, table counts and grid sample sizes of at least min_cell (sdc.check_release)."""
    try:
        check_release(release, min_cell)
    except DisclosureError as exc:
        return [{"check": "counts", "source": release["source"], "finding": str(exc)}]
    return []


def check_column_atoms(release: SourceRelease, min_cell: int) -> list[Finding]:
    """Every continuous column's atoms (sdc.check_atoms): source level only, atoms and the
    rest 0 or at least min_cell rows, counts adding up, `grid` derived from them alone."""
    found: list[Finding] = []
    for bid, block in release["blocks"].items():
        for col, m in block["marginals"].items():
            if not m.get("atoms"):
                continue
            try:
                check_atoms(m, min_cell, f"{release['source']}/{bid}/{col}", bid)
            except DisclosureError as exc:
                found.append({"check": "atoms", "source": release["source"], "finding": str(exc)})
    return found


def interval_audit(release: SourceRelease, min_cell: int) -> tuple[str, list[Finding]]:
    """The linked frequency tables' interval audit (replisynth.disclosure.linked_tables): ("run", findings),
    or ("not available", []) in a version without it."""
    try:
        from replisynth.disclosure.linked_tables import audit_release_tables  # type: ignore[import-not-found]
    except ImportError:
        return "not available", []
    found = audit_release_tables(release, min_cell)
    return "run", [_table_finding(release["source"], f) for f in found]


def _table_finding(source: str, f: dict[str, Any]) -> Finding:
    """An interval-audit finding as the packet states it: where (block, column, table) only;
    its bounds and any level label stay out, since they describe the protected cell."""
    where = {k: f[k] for k in ("block", "column", "table") if isinstance(f.get(k), str)}
    return {
        "check": "tables",
        "source": source,
        **where,
        "finding": "a suppressed cell's feasible interval, from the linked tables' released counts, is narrower than the protection",
    }


def _logged_gates(sdc_log: SdcLogFile) -> set[str]:
    return {
        e.get("checkpoint") for e in sdc_log.get("decisions", []) if e.get("stage") == "checkpoints"
    }


def _binary_small(mean: float, sd: float, n: int, min_cell: int) -> bool:
    """A released 0/1 term (its SD is that of a 0/1 column with this mean) whose ones or zeros
    number 1..min_cell-1."""
    if not (0.0 < mean < 1.0) or n < 2:
        return False
    if abs(sd - math.sqrt(mean * (1 - mean) * n / (n - 1))) > 1e-6 * max(sd, 1e-12):
        return False
    ones = round(mean * n)
    return 0 < ones < min_cell or 0 < n - ones < min_cell


def check_checkpoints(
    checkpoints: list[CheckpointRecord],
    releases: dict[str, SourceRelease],
    sdc_log: SdcLogFile,
    min_cell: int,
) -> tuple[list[Finding], list[str]]:
    """Released checkpoints: a gate decision logged for each; no released 0/1 term with a small
    group; estimation samples that differ from each other, the source total or a stratum by
    1..k-1 rows only when the secure side compared their row sets (sdc_log ledger)."""
    findings: list[Finding] = []
    notes: list[str] = []
    released = [c for c in checkpoints if c.get("status") == "released"]
    logged = _logged_gates(sdc_log)
    diff = (
        (sdc_log.get("ledger") or {}).get("differencing")
        if isinstance(sdc_log.get("ledger"), dict)
        else None
    )
    refused = set((diff or {}).get("refused", []))
    for c in released:
        if c["tag"] not in logged:
            findings.append(
                {
                    "check": "checkpoints",
                    "checkpoint": c["tag"],
                    "finding": "released without a logged gate decision",
                }
            )
        if c["tag"] in refused:
            findings.append(
                {
                    "check": "checkpoints",
                    "checkpoint": c["tag"],
                    "finding": "released although the differencing rule refused it",
                }
            )
        mom = c.get("moments") or {}
        for t, mu, sd in zip(
            mom.get("terms", []), mom.get("mean", []), mom.get("sd", []), strict=False
        ):
            if (
                mu is not None
                and sd is not None
                and not mom.get("weighted")
                and _binary_small(float(mu), float(sd), int(c["n"]), min_cell)
            ):
                findings.append(
                    {
                        "check": "checkpoints",
                        "checkpoint": c["tag"],
                        "term": t,
                        "finding": f"a 0/1 design column with 1..{min_cell - 1} rows in one group is released",
                    }
                )
        if int(c.get("n", 0)) < min_cell:
            findings.append(
                {
                    "check": "checkpoints",
                    "checkpoint": c["tag"],
                    "finding": f"estimation sample below min_cell_size={min_cell}",
                }
            )
    for src, rel in releases.items():
        samples = [(c["tag"], int(c["n"])) for c in released if c["source"] == src]
        others = [("source total", int(rel["rows"]))] + [
            (f"stratum {s['id']}", int(s["rows"])) for s in rel["strata"]["cells"]
        ]
        pairs = [(a, b) for x, a in enumerate(samples) for b in samples[x + 1 :]] + [
            (a, b) for a in samples for b in others
        ]
        for (ta, na), (tb, nb) in pairs:
            if 0 < abs(na - nb) < min_cell:
                if diff is not None:
                    notes.append(
                        f"{ta} and {tb}: samples differ by 1..{min_cell - 1} rows in size; the secure side compared their row sets ({diff.get('rule', 'differencing rule')})"
                    )
                else:
                    findings.append(
                        {
                            "check": "differencing",
                            "source": src,
                            "samples": [ta, tb],
                            "finding": f"estimation samples differ by 1..{min_cell - 1} rows and no record that their row sets were compared",
                        }
                    )
    return findings, notes


def check_groups(release: SourceRelease) -> tuple[list[Finding], list[str]]:
    """Group sizes: the released form of each grouping column; overlapping pseudo-percentile
    windows (a `size_grid`, older bundles) may telescope into single groups' sizes."""
    findings, notes = [], []
    for col, g in (release.get("groups") or {}).items():
        form = [k for k in g if k != "groups"]
        notes.append(
            f"{release['source']}.{col}: {g.get('groups')} groups; released: {', '.join(sorted(form))}"
        )
        if g.get("size_grid") is not None:
            findings.append(
                {
                    "check": "groups",
                    "source": release["source"],
                    "column": col,
                    "finding": "group sizes released as a grid of overlapping pseudo-percentile windows: may telescope into single groups' sizes",
                }
            )
    return findings, notes


def check_orderings(release: SourceRelease) -> tuple[list[Finding], list[str]]:
    """Ordering flags: an implication whose 2 x 2 table the released correlation and shares
    do not give states a zero cell on its own (sdc.ordering_backed)."""
    findings, notes = [], []
    for o in release.get("orderings") or []:
        pair = (o.get("lo"), o.get("hi")) if o["kind"] == "le" else (o.get("if"), o.get("then"))
        notes.append(f"{release['source']}: {o['kind']} {pair[0]} -> {pair[1]}")
        if not ordering_backed(untyped(release), untyped(o)):
            findings.append(
                {
                    "check": "orderings",
                    "source": release["source"],
                    "column": pair[0],
                    "finding": f"implication flag {pair[0]} -> {pair[1]} without the pair's released correlation: it states a zero cell the released numbers do not give",
                }
            )
    return findings, notes


def check_log(sdc_log: SdcLogFile, findings: list[Finding]) -> list[Finding]:
    """sdc_log.json must not call something suppressed that the bundle still discloses: a
    finding in the same source/block/column as a 'suppressed' decision is reported again."""
    out = []
    for e in sdc_log.get("decisions", []):
        if e.get("action") != "suppressed":
            continue
        for f in findings:
            if (
                f.get("source") == e.get("source")
                and f.get("block", e.get("block")) == e.get("block")
                and (
                    e.get("column") is None
                    or e.get("column") == f.get("column")
                    or any(
                        str(d).split("=")[0].split(" ")[0] == e.get("column")
                        for d in f.get("dims", [])
                    )
                )
                and f["check"] in (e.get("stage"), {"marginals": "tables"}.get(e.get("stage", "")))
            ):
                out.append(
                    {
                        "check": "log",
                        "source": e.get("source"),
                        "block": e.get("block"),
                        "column": e.get("column"),
                        "stage": e.get("stage"),
                        "finding": "sdc_log.json calls this suppressed, but the bundle still discloses it (see the finding of the same place)",
                    }
                )
                break
    return out


# --- numbers the manifest releases ---------------------------------------------------------


def expression_constants(text: str, subset: bool = False) -> list[float | int]:
    """The numbers written in a derive expression or a subset (a unary minus kept), in order
    of position."""
    tree = parse_subset(text).tree if subset else parse_derive(text).tree
    negated = {
        id(n.operand)
        for n in ast.walk(tree)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub)
    }
    found = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, (int, float))
        and not isinstance(n.value, bool)
    ]
    found.sort(key=lambda n: (n.lineno, n.col_offset))
    return [-n.value if id(n) in negated else n.value for n in found]


def formula_constants(formula: str) -> list[float | int]:
    """The numbers written in a checkpoint formula (`I(age >= 95)`, `np.maximum(x - 90, 0)`),
    in order; a 0 or 1 standing as a term (`y ~ x - 1`, `+ 0`: the intercept) is not one."""
    try:
        toks = [
            t
            for t in tokenize.generate_tokens(io.StringIO(formula).readline)
            if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)
        ]
    except (tokenize.TokenError, SyntaxError):  # every number, as written
        return [float(x) for x in re.findall(r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?", formula)]
    out: list[float | int] = []
    depth = 0
    for i, t in enumerate(toks):
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(t.string, 0)
        if t.type != tokenize.NUMBER:
            continue
        before = toks[i - 1].string if i else ""
        after = toks[i + 1].string if i + 1 < len(toks) else ""
        value = ast.literal_eval(t.string)
        if not isinstance(value, (int, float)):
            continue
        if depth == 0 and value in (0, 1) and before in "~+-" and after in ("", "+", "-"):
            continue
        out.append(-value if before == "-" and depth > 0 and _unary(toks, i - 1) else value)
    return out


def _unary(toks: list[tokenize.TokenInfo], i: int) -> bool:
    """The minus at toks[i] is a sign (after an operator, a comma or an opening bracket)."""
    return i == 0 or toks[i - 1].type == tokenize.OP and toks[i - 1].string not in (")", "]")


def derive_constants(manifest: Manifest) -> tuple[list[dict[str, Any]], list[str]]:
    """Each derive expression, checkpoint subset and formula with a number in it (the manifest
    travels in the bundle) with the numbers written in it: a threshold such as `bwght < 88` is
    a released number. Records and note lines for the output checker (notes, not findings: the
    user declared them, and only the checker can judge whether a cut-off is confidential)."""
    found: list[tuple[str, str, Callable[[str], list[float | int]]]] = [
        (f"sources.{src.name}.derive.{col}", text, expression_constants)
        for src in manifest.sources
        for col, text in src.derive
    ]
    for cp in manifest.checkpoints:
        if cp.subset:
            found.append((f"checkpoints.{cp.tag}.subset", cp.subset, _subset_constants))
        if formula_constants(cp.formula):  # a formula without a number: nothing to say
            found.append((f"checkpoints.{cp.tag}.formula", cp.formula, formula_constants))
    records, notes = [], []
    for key, text, read in found:
        consts = read(text)
        records.append({"key": key, "expression": text, "constants": consts})
        notes.append(_constants_note(key, text, consts))
    return records, notes or [
        "the manifest declares no derive expression, no subset and no number in a formula"
    ]


def _subset_constants(text: str) -> list[float | int]:
    return expression_constants(text, subset=True)


def _constants_note(key: str, text: str, consts: list[float | int]) -> str:
    if not consts:
        return f"{key} = {text!r}: no constant"
    shown = ", ".join(repr(c) for c in consts)
    return (
        f"{key} = {text!r}: constant(s) {shown} released with the manifest: "
        "check it is not confidential"
    )


# --- the review -------------------------------------------------------------------------------


def _count_suppressed(sdc_log: SdcLogFile) -> dict[str, dict[str, int]]:
    """Per stage, per action: number of decisions (and the dims/pairs/levels they name)."""
    out: dict[str, dict[str, int]] = {}
    for e in sdc_log.get("decisions", []):
        s = out.setdefault(e.get("stage", "?"), {})
        s[e.get("action", "?")] = s.get(e.get("action", "?"), 0) + 1
        for unit in ("dims", "pairs", "cells", "terms"):
            if isinstance(e.get(unit), int):
                key = f"{e.get('action', '?')} {unit}"
                s[key] = s.get(key, 0) + int(e[unit])
    return out


def _released_classes(
    releases: dict[str, SourceRelease], checkpoints: list[CheckpointRecord]
) -> dict[str, int]:
    """How many statistics of each class the bundle releases."""
    n: dict[str, int] = {
        "schema columns": 0,
        "frequency tables": 0,
        "percentile grids": 0,
        "atoms of continuous columns": 0,
        "correlations": 0,
        "strata": 0,
        "grouping columns": 0,
        "entity/panel aggregates": 0,
        "checkpoints": 0,
        "checkpoint coefficients": 0,
        "checkpoint moments (terms)": 0,
        "outcome means/dispersion": 0,
    }
    for rel in releases.values():
        n["schema columns"] += len(rel["columns"])
        n["strata"] += len(rel["strata"]["cells"])
        n["grouping columns"] += len(rel.get("groups") or {})
        n["entity/panel aggregates"] += 1 if rel.get("entity_structure") else 0
        for block in rel["blocks"].values():
            for m in block["marginals"].values():
                if m["kind"] == "categorical":
                    n["frequency tables"] += 1
                elif m["kind"] in ("continuous", "ordinal_grid"):
                    n["percentile grids"] += 1
                    n["atoms of continuous columns"] += len(
                        (m.get("atoms") or {}).get("values", [])
                    )
            S = block["spearman"]
            n["correlations"] += sum(
                1 for a in range(len(S)) for b in range(a + 1, len(S)) if S[a][b] is not None
            )
    for c in checkpoints:
        if c.get("status") != "released":
            continue
        n["checkpoints"] += 1
        n["checkpoint coefficients"] += len(c.get("terms", []))
        n["checkpoint moments (terms)"] += len((c.get("moments") or {}).get("terms", []))
        n["outcome means/dispersion"] += sum(
            1 for k in ("outcome_mean", "scale", "dispersion") if c.get(k) is not None
        )
    return n


RULES: dict[str, Callable[[dict[str, Any]], str]] = {
    "frequency tables": lambda s: (
        f"cells below min_cell_size={s['min_cell_size']} suppressed (nominal) or pooled into a neighbour (ordered); "
        "linked tables audited for intervals narrower than the protection"
    ),
    "percentile grids": lambda s: (
        f"{s['grid']} grid, q0..q{s['quantile_trim']:g} and q{100 - s['quantile_trim']:g}..q100 top/bottom coded, "
        f"at least min_cell_size={s['min_cell_size']} values; sensitive columns: dominance {s['dominance']}"
    ),
    "atoms of continuous columns": lambda s: (
        f"source level only: values held by at least min_cell_size={s['min_cell_size']} rows with their exact counts; "
        f"the other values 0 or at least {s['min_cell_size']} rows, released as their own grid (the grid rules above), "
        "fewer joining the nearest atom; the column's grid is a function of these alone"
    ),
    "correlations": lambda s: (
        f"dims with fewer than {s['min_cell_size']} rows off their modal value withheld; pairs of two-valued dims "
        f"whose 2x2 table has a cell of 1..{s['min_cell_size'] - 1} withheld"
    ),
    "strata": lambda s: (
        f"strata cells below min_cell_size={s['min_cell_size']} locally suppressed into one residual block"
    ),
    "groups": lambda s: (
        f"group sizes only as the number of groups, their mean size and (with at least {s['min_cell_size']} groups) a coarsened size grid"
    ),
    "checkpoints": lambda s: (
        f"estimation samples of at least min_cell_size={s['min_cell_size']}, residual df at least {s['min_resid_df']}, "
        f"small-group design columns left out of the moments; significant figures: {s['round_significant']}"
    ),
}


def review_bundle(bundle_dir: str | Path) -> dict[str, Any]:
    """Run every check on the bundle at `bundle_dir` (integrity-checked by load_bundle)."""
    from replisynth.disclosure.bundle import load_bundle

    b = load_bundle(bundle_dir)
    settings = b.sdc_log.get("settings", {})
    k = int(settings.get("min_cell_size", b.manifest.sdc.min_cell_size))
    checks: list[dict[str, Any]] = []
    findings: list[Finding] = []

    def record(name: str, found: list[Finding], status: str = "run", **extra: Any) -> None:
        checks.append({"check": name, "status": status, "findings": len(found), **extra})
        findings.extend(found)

    table_status, table_found = "run", []
    count_found, corr_found, group_found, group_notes = [], [], [], []
    atom_found: list[Finding] = []
    order_found, order_notes = [], []
    cell_found: list[Finding] = []
    cell_notes: list[str] = []
    three_found: list[Finding] = []
    three_notes: list[str] = []
    corr_stats = {"pairs_checked": 0, "pairs_not_derivable": 0, "linked_checked": 0}
    for rel in b.releases.values():
        status, f = interval_audit(rel, k)
        table_status = status if status != "run" else table_status
        table_found += f
        count_found += check_counts(rel, k)
        atom_found += check_column_atoms(rel, k)
        cf, st = check_correlations(rel, k)
        corr_found += cf
        corr_stats = {key: corr_stats[key] + st[key] for key in corr_stats}
        gf, gn = check_groups(rel)
        group_found += gf
        group_notes += gn
        of, on = check_orderings(rel)
        order_found += of
        order_notes += on
        ef, en = check_empty_cells(rel, k)
        cell_found += ef
        cell_notes += en
        tf, tn = check_three_way(rel, k)
        three_found += tf
        three_notes += tn
    record("interval audit of the linked frequency tables", table_found, table_status)
    record("stratum sizes, table counts and grid sample sizes", count_found)
    record("atoms of continuous columns: counts, source level only, grid derived", atom_found)
    record("2x2 tables implied by correlations of two-valued dims", corr_found, **corr_stats)
    cp_found, cp_notes = check_checkpoints(b.checkpoints, b.releases, b.sdc_log, k)
    record(
        "checkpoints: gates logged, small groups, differencing of samples", cp_found, notes=cp_notes
    )
    record(
        "pooled totals: no checkpoint on all rows gives the exact total of a pooled column",
        check_pooled_totals(b.checkpoints, b.releases, b.manifest),
    )
    record(
        "checkpoint subsets on one table column: no suppressed or pooled count follows",
        check_subset_levels(b.checkpoints, b.releases, k),
    )
    record(
        "declared codings of a pooled column: no pooled count follows from their tables",
        check_pooled_codings(b.releases, b.manifest, k),
    )
    record(
        "indicator fits with model-based SEs: no protected group count follows",
        check_group_counts(b.checkpoints, b.releases),
    )
    record("group sizes", group_found, notes=group_notes)
    record("ordering flags backed by released correlations", order_found, notes=order_notes)
    record(
        "empty-cell flags: no cell of a flagged table forced into 1..k-1",
        cell_found,
        notes=cell_notes,
    )
    record(
        "3-way tables of categorical columns: no cell forced into 1..k-1 by LP",
        three_found,
        "partial" if three_notes else "run",
        notes=three_notes,
    )
    record("sdc_log.json statements against the bundle", check_log(b.sdc_log, findings))
    derive_records, derive_notes = derive_constants(b.manifest)
    record(
        "derive expressions, subsets and numbers in formulas released with the manifest",
        [],
        notes=derive_notes,
    )
    not_run = [c["check"] for c in checks if c["status"] != "run"]
    if findings:
        verdict = f"{len(findings)} finding(s): the bundle discloses what the rules protect; do not release it"
    elif not_run:
        verdict = f"no findings in the checks that ran; not run: {'; '.join(not_run)}"
    else:
        verdict = "clean: no check found a protected value the bundle discloses"
    return {
        "software": f"replisynth {__version__}",
        "bundle": {"name": b.manifest.name, "sha256": b.sha256, "sources": sorted(b.releases)},
        "settings": settings,
        "released": _released_classes(b.releases, b.checkpoints),
        "rules": {cls: rule(settings) for cls, rule in RULES.items()} if settings else {},
        "suppressed": _count_suppressed(b.sdc_log),
        "checks": checks,
        "findings": findings,
        "manifest_constants": derive_records,
        "verdict": verdict,
    }


def review_page(review: dict[str, Any]) -> str:
    """The page an output checker signs: what is released, under which rules, what was
    suppressed, each check's result, the verdict."""
    b, s = review["bundle"], review["settings"]
    lines = [
        f"Disclosure review of bundle {b['name']!r} (sha256 {b['sha256']}), {review['software']}",
        "",
        f"Profile {s.get('profile')}: min_cell_size={s.get('min_cell_size')}, quantile_trim={s.get('quantile_trim')}, "
        f"min_resid_df={s.get('min_resid_df')}, grid={s.get('grid')}, dominance={s.get('dominance')}, round_significant={s.get('round_significant')}",
        "",
        "Released statistics (counts):",
    ]
    lines += [f"  {cls}: {n}" for cls, n in review["released"].items()]
    lines += ["", "Rules applied:"] + [f"  {cls}: {r}" for cls, r in review["rules"].items()]
    lines += ["", "Suppressed, pooled, coarsened (decisions in sdc_log.json):"]
    for stage, acts in review["suppressed"].items():
        lines.append(f"  {stage}: " + ", ".join(f"{a} {n}" for a, n in acts.items()))
    lines += ["", "Checks:"]
    for c in review["checks"]:
        extra = ", ".join(
            f"{k} {v}" for k, v in c.items() if k not in ("check", "status", "findings", "notes")
        )
        lines.append(
            f"  [{'PASS' if c['status'] == 'run' and not c['findings'] else ('NOT RUN' if c['status'] != 'run' else 'FAIL')}] "
            f"{c['check']}: {c['findings']} finding(s)"
            + (f" ({extra})" if extra else "")
            + ("" if c["status"] == "run" else f"; {c['status']}")
        )
        lines += [f"      note: {n}" for n in c.get("notes", [])]
    if review["findings"]:
        lines += ["", "Findings:"]
        for f in review["findings"]:
            where = ", ".join(f"{k}={v}" for k, v in f.items() if k not in ("check", "finding"))
            lines.append(f"  - {f['check']} ({where}): {f['finding']}")
    lines += [
        "",
        f"Verdict: {review['verdict']}",
        "",
        "Checked by: ____________________   Date: __________   Signature: ____________________",
        "",
    ]
    return "\n".join(lines)


def write_review(review: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write disclosure_review.json and disclosure_review.txt into `out_dir` (atomically)."""
    out = Path(out_dir)
    paths = out / "disclosure_review.json", out / "disclosure_review.txt"
    write_review_files(review, *paths)
    return paths


def write_review_files(review: dict[str, Any], json_out: str | Path, txt_out: str | Path) -> None:
    """The packet's two files, each written to a temporary file and renamed."""
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    write_json(json_out, review)
    write_text(txt_out, review_page(review))


def stage_review(
    bundle_dir: str | Path, json_out: str | Path, txt_out: str | Path
) -> dict[str, Any]:
    """Workflow stage (secure side, after the bundle): the review written; findings are
    logged as a warning, not an error, so the packet reaches the output checker."""
    review = review_bundle(bundle_dir)
    write_review_files(review, json_out, txt_out)
    (log.warning if review["findings"] else log.info)("disclosure review: %s", review["verdict"])
    return review
