"""Stage orchestrators: read inputs, call the pure functions, write outputs atomically.

Snakemake scripts and the `replisynth` CLI call these and nothing else, so both run the same
code. Each stage takes explicit paths; none reads a path it was not given.
"""

from __future__ import annotations

# Each stage imports its heavy modules itself, so a Snakemake job loads only what it runs.
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from replisynth.config.manifest import Manifest, check_columns
from replisynth.core.parallel import thread_map, threads
from replisynth.core.seeds import rng as make_rng
from replisynth.disclosure.bundle import Bundle, load_bundle, write_bundle
from replisynth.disclosure.bundle_types import untyped
from replisynth.disclosure.sdc import SdcLog
from replisynth.io.files import (
    FileMeta,
    parquet_meta,
    read_columns,
    read_json,
    read_parquet,
    read_source,
    synthetic_label,
    write_csv,
    write_dta,
    write_json,
    write_parquet,
    write_text,
)
from replisynth.verify.verdict import check_tier  # noqa: F401  (re-exported: the CLI and tests call pipeline.check_tier)
from replisynth.workflow.progress import progress

log = logging.getLogger("replisynth")


def _read_checked(manifest: Manifest, source: str) -> tuple[pd.DataFrame, FileMeta]:
    src = manifest.source(source)
    check_columns(manifest, source, read_columns(src.path))
    progress(f"read: {source} ({src.path})")
    df, meta = read_source(src.path, dict(src.dates))
    log.info("read %s: %d rows, %d columns", src.path, len(df), df.shape[1])
    from replisynth.io.input_checks import check_formulas, check_source_frame, coerce_numeric

    df = coerce_numeric(src, df)

    check_formulas(manifest)
    check_source_frame(manifest, src, df)
    return df, meta


def review_relations(manifest: Manifest, source: str, df: pd.DataFrame) -> None:
    """Secure side: declared derived columns must hold in the data; undeclared exact relations
    are pointed out, one line each (names only), in the log and on the console."""
    from replisynth.extract.joint_codings import check_joint_codings
    from replisynth.extract.relations import (
        check_declared,
        check_pooled_codings,
        detect_relations,
    )

    src = manifest.source(source)
    check_declared(df, src)
    check_pooled_codings(df, src, manifest.sdc.min_cell_size)
    check_joint_codings(df, src, manifest.sdc.min_cell_size)
    for rel in detect_relations(df, src):
        log.warning("%s", rel.advice(source))


def stage_extract_source(
    manifest: Manifest, source: str, release_out: str | Path, sdc_out: str | Path
) -> None:
    """Secure side: the release of one source and its SDC decisions (staging files)."""
    from replisynth.extract.extract import extract_source

    df, meta = _read_checked(manifest, source)
    progress(f"extract: {source} ({len(df):,} rows, {df.shape[1]} columns)")
    review_relations(manifest, source, df)
    release, sdc = extract_source(df, meta, manifest, manifest.source(source), progress=progress)
    warn_emptied_columns(untyped(release), df, manifest.sdc.min_cell_size)
    warn_free_text(untyped(release))
    log.info(
        "%s: %d columns released, %d copula dims, %d strata, %d SDC decisions",
        source,
        len(release["columns"]),
        len(release["dims"]),
        len(release["strata"]["cells"]),
        len(sdc.entries),
    )
    write_json(release_out, release)
    write_json(sdc_out, sdc.entries)


def warn_emptied_columns(release: dict[str, Any], df: pd.DataFrame, min_cell_size: int) -> None:
    """A visible warning for every column that has values in the original but releases
    nothing (all of it below the cell size): it is entirely missing in the synthetic data."""
    for c in release["columns"]:
        name = c["name"]
        if (
            c.get("role") in ("continuous", "categorical")
            and c.get("missing", 0) >= c.get("rows", 0)
            and name in df.columns
            and df[name].notna().any()
            and name not in release.get("free_text", [])
        ):
            log.warning(
                "%s: column %r has values but releases nothing under min_cell_size=%d (every category below the "
                "cell size): it is entirely missing in the synthetic data; pool its categories, list it under "
                "continuous, or exclude it",
                release.get("source"),
                name,
                min_cell_size,
            )


def warn_free_text(release: dict[str, Any]) -> None:
    """A visible line naming the free-text columns: never released, entirely missing in the
    synthetic data (said at extraction and at synthesis)."""
    free = release.get("free_text") or []
    if free:
        log.warning(
            "%s: free-text column(s) %s are never released (every value below the cell size): "
            "they are entirely missing in the synthetic data",
            release.get("source"),
            ", ".join(free),
        )


def stage_extract_checkpoints(manifest: Manifest, out: str | Path, sdc_out: str | Path) -> None:
    """Secure side: fit and gate every checkpoint on the original data (staging files)."""
    from replisynth.extract.checkpoints import (
        FEW_CLUSTERS,
        budget_warnings,
        capture_checkpoint_sample,
        few_clusters,
    )
    from replisynth.extract.ledger import apply_differencing
    from replisynth.extract.release_guards import unchanged_frames

    frames: dict[str, pd.DataFrame] = {}
    metas: dict[str, FileMeta] = {}
    for cp in manifest.checkpoints:
        if cp.source not in frames:
            frames[cp.source], metas[cp.source] = _read_checked(manifest, cp.source)

    # The fits are independent (each builds its own design from the shared, unchanged
    # frames): on threads, released and logged in manifest order. At most two at a time: each
    # holds its design and formulaic's intermediates (several times the frame), and
    # the job's memory request (replisynth.workflow.resources) does not grow with its threads.
    def fit(item: tuple[int, Any]) -> Any:
        i, cp = item
        progress(
            f"extract: checkpoint {cp.tag} ({cp.model}, {i + 1} of {len(manifest.checkpoints)})"
        )
        return capture_checkpoint_sample(frames[cp.source], cp, manifest, i)

    with unchanged_frames():  # the fits only read the frames
        fits = thread_map(fit, list(enumerate(manifest.checkpoints)), n=min(threads(), 2))
    # The disclosure ledger: samples against each other, the source totals and the strata
    # (differencing rule); its public summary travels with the SDC decisions to sdc_log.json.
    progress("extract: checkpoint samples against each other (differencing)")
    released, sdc, ledger = apply_differencing(frames, manifest, fits, metas)
    for cp, rel, (_, _, sample) in zip(manifest.checkpoints, released, fits, strict=True):
        log.info("checkpoint %s: %s (n=%s)", cp.tag, rel["status"], rel.get("n"))
        if rel["status"] == "released" and few_clusters(frames[cp.source], sample, cp):
            log.warning(
                "checkpoint %s: clustered on %s with fewer than %d clusters in its sample: "
                "cluster-robust SEs are unreliable with so few, and the synthetic data may not "
                "reproduce them (the certificate shows the SE ratios); consider HC1",
                cp.tag,
                cp.cluster,
                FEW_CLUSTERS,
            )
    sdc.extend(
        budget_warnings(released, {k: len(v) for k, v in frames.items()}, manifest.sdc.budget)
    )
    write_json(out, released)
    write_json(sdc_out, {"decisions": sdc.entries, "ledger": ledger})


def stage_write_bundle(
    manifest: Manifest,
    releases: dict[str, str | Path],
    checkpoints: str | Path,
    sdc_parts: list[str | Path],
    bundle_dir: str | Path,
) -> None:
    """Secure side: assemble the bundle from the staging files (manifest.json last)."""
    sdc = SdcLog()
    ledger = None
    for p in sdc_parts:
        part = read_json(p)
        if isinstance(part, dict):  # the checkpoint stage's: decisions and the disclosure ledger
            ledger = part.get("ledger", ledger)
            part = part["decisions"]
        sdc.extend(part)
    progress("bundle: assembling and checking the release")
    rel = {name: read_json(p) for name, p in releases.items()}
    cps = refuse_subset_levels(read_json(checkpoints), rel, manifest.sdc.min_cell_size, sdc)
    refused = {f"checkpoint/{c['tag']}" for c in cps if "subset on a table" in c.get("reason", "")}
    for e in (ledger or {}).get("entries", []) if refused else []:
        if e.get("id") in refused:  # the ledger's record follows the refusal
            e.pop("rows", None)
            e["released"] = "nothing (refused: subset levels)"
    for c in cps:
        if c.get("status") != "released":
            continue
        marg = rel[c["source"]]["blocks"]["all"]["marginals"]
        lost = [
            col
            for col in c["columns"]
            if marg.get(col, {}).get("kind") == "suppressed" and marg[col].get("n", 0) > 0
        ]
        if lost:
            msg = (
                f"checkpoint {c['tag']}: column(s) {', '.join(lost)} release nothing under min_cell_size={manifest.sdc.min_cell_size} "
                "(every category below the cell size), so the synthetic data cannot rebuild this checkpoint; "
                "pool the categories, list the column under sources.<name>.continuous, or lower sdc.min_cell_size"
            )
            log.warning("%s", msg)
            sdc.add("checkpoints", "unbuildable", msg, checkpoint=c["tag"])
        strata = rel[c["source"]]["strata"]
        read = set(c["columns"]) | set(c.get("subset_columns") or [])
        on_strata = [col for col in strata["columns"] if col in read]
        if on_strata and strata["residual_rows"] > 0:
            msg = (
                f"checkpoint {c['tag']}: strata column(s) {', '.join(on_strata)} are set to missing in the rows of "
                f"strata cells below min_cell_size={manifest.sdc.min_cell_size} (the residual block), so the synthetic "
                "data lose those rows from this checkpoint's sample, and a term or subset on those cells cannot be "
                "rebuilt; pool the small cells in the data, or leave the column out of sources.<name>.strata"
            )
            log.warning("%s", msg)
            sdc.add("checkpoints", "unbuildable", msg, checkpoint=c["tag"])
    write_bundle(bundle_dir, manifest, rel, cps, sdc, ledger=ledger)
    log.info("bundle written to %s (%d files)", bundle_dir, len(rel) + 3)


def refuse_subset_levels(
    cps: list[dict[str, Any]], rel: dict[str, Any], min_cell: int, sdc: SdcLog
) -> list[dict[str, Any]]:
    """The checkpoints with those whose subset gives a suppressed or pooled count of its
    table column (`disclosure.subset_levels`) refused: request fields and reason only."""
    from replisynth.disclosure.subset_levels import subset_level_leak
    from replisynth.extract.ledger import REQUEST_KEYS

    out = []
    for c in cps:
        why = subset_level_leak(c, rel[c["source"]], min_cell) if c["source"] in rel else None
        if why is None:
            out.append(c)
            continue
        sdc.add("checkpoints", "rejected", why, checkpoint=c["tag"])
        out.append(
            {**{k: c[k] for k in REQUEST_KEYS if k in c}, "status": "rejected", "reason": why}
        )
    return out


def stage_synthesize(bundle_dir: str | Path, source: str, out: str | Path) -> None:
    """Outside side: Layers 1-3 for one source, from the bundle alone."""
    from replisynth.synthesize.synthesize import synthesize_source

    b = load_bundle(bundle_dir)
    src = b.manifest.source(source)
    progress(f"synthesize: {source}")
    df = synthesize_source(
        untyped(b.releases[source]), b.manifest.seed, src.rows, progress=progress
    )
    log.info("%s: synthesized %d rows × %d columns", source, len(df), df.shape[1])
    warn_free_text(untyped(b.releases[source]))
    write_parquet(df, out, synthetic=synthetic_label(b.sha256))


def _file_meta(release: dict[str, Any]) -> FileMeta:
    labels = {c["name"]: c["variable_label"] for c in release["columns"] if c.get("variable_label")}
    storage = {c["name"]: c["storage_type"] for c in release["columns"]}
    formats = {
        c["name"]: c["display_format"] for c in release["columns"] if c.get("display_format")
    }
    codes = release.get("missing_codes") or {}
    return FileMeta(
        variable_labels=labels,
        value_labels=release.get("value_labels", {}),
        storage_types=storage,
        display_formats=formats,
        missing_labels={c: e["labels"] for c, e in codes.items() if e.get("labels")},
    )


def _recompute_derived(
    df: pd.DataFrame, derive: tuple[tuple[str, str], ...], pinned: frozenset[str], when: str
) -> pd.DataFrame:
    """Derived columns recomputed from their inputs (docs/method.md, "Derived columns"):
    before pinning, so derived regressors are consistent; after, so every identity holds."""
    if not derive:
        return df
    from replisynth.pin.derived import recompute_derived

    out, notes = recompute_derived(df, derive, pinned)
    for n in notes:
        log.info("%s: %s", when, n.text())
    return out


def integer_storage(df: pd.DataFrame, release: dict[str, Any]) -> pd.DataFrame:
    """Columns the released schema calls integer whose values are all whole (a pinned outcome
    may be) back in integer storage: int64, or Int64 when some are missing."""
    import numpy as np

    out = df
    for c in release["columns"]:
        name = c["name"]
        if c["logical_type"] != "integer" or not c.get("integer") or name not in df.columns:
            continue
        s = df[name]
        if not pd.api.types.is_float_dtype(s.dtype):
            continue
        v = s.to_numpy(dtype="float64", na_value=np.nan)
        fin = v[~np.isnan(v)]
        if len(fin) and np.all(fin == np.round(fin)) and np.all(np.abs(fin) < 2**53):
            out = out.assign(**{name: s.round().astype("Int64" if len(fin) < len(v) else "int64")})
    return out


def recalibrate_weights(df: pd.DataFrame, b: Bundle, source: str) -> pd.DataFrame:
    """After pinning (which may move categorical outcomes and swap regressors), the survey
    weights calibrated again, unless a checkpoint reads them: its pinned coefficients would
    move (docs/method.md, "Survey weights")."""
    from replisynth.stats.weights import calibrate_frame, checkpoints_reading

    release = untyped(b.releases[source])
    weights = release.get("weights")
    if not weights:
        return df
    readers = checkpoints_reading(list(b.checkpoints), source, weights["column"])
    if readers:
        log.info(
            "survey weight %s read by checkpoint(s) %s: kept as calibrated before pinning",
            weights["column"],
            ", ".join(readers),
        )
        return df
    out, cal = calibrate_frame(df, release)
    if cal is not None:
        log.info(
            "survey weight %s calibrated after pinning: largest weighted share gap %.3g",
            weights["column"],
            cal.max_gap,
        )
    return out


def stage_pin(
    bundle_dir: str | Path,
    source: str,
    unpinned: str | Path,
    outputs: dict[str, str | Path],
    report_out: str | Path,
) -> None:
    """Outside side: Layer 4 for one source; writes the parquet file (and the csv when
    `outputs` names one)."""
    from replisynth.pin.design_moments import align_moments
    from replisynth.pin.pin import pin_checkpoints

    b = load_bundle(bundle_dir)
    df = read_parquet(unpinned)
    progress(f"pin: {source} design moments")
    df, aligned = align_moments(
        df, b.checkpoints, b.releases[source], make_rng(b.manifest.seed, source, "xmom")
    )
    for tag, g in aligned["checkpoints"].items():
        log.info(
            "design moments of %s: largest correlation gap %.3g -> %.3g, SD ratio gap %.3g -> %.3g",
            tag,
            g["before"]["max_corr_gap"],
            g["after"]["max_corr_gap"],
            g["before"]["max_sd_ratio_gap"],
            g["after"]["max_sd_ratio_gap"],
        )
        if (
            "max_iv_log_se_gap" in g["after"]
        ):  # iv with instrument moments: the first stage's part of log(SE ratio)
            log.info(
                "design moments of %s: largest |log 2SLS SE factor gap| %.3g -> %.3g",
                tag,
                g["before"]["max_iv_log_se_gap"],
                g["after"]["max_iv_log_se_gap"],
            )
    for note in aligned["notes"]:
        log.info("design moments: %s", note)
    derive = b.manifest.source(source).derive
    df = _recompute_derived(df, derive, frozenset(), "before pinning")
    frames, results = pin_checkpoints(
        {source: df},
        b.checkpoints,
        seed=b.manifest.seed,
        progress=progress,
        releases=untyped(b.releases),
    )
    out = _recompute_derived(
        frames[source], derive, frozenset(b.released_outcomes(source)), "after pinning"
    )
    out = recalibrate_weights(out, b, source)
    out = integer_storage(out, untyped(b.releases[source]))
    meta = _file_meta(untyped(b.releases[source]))
    for r in results:
        log.info("pinned %s (%s): %s %s", r.outcome, ",".join(r.tags), r.status, r.note)
    write_parquet(out, outputs["parquet"], meta, synthetic=synthetic_label(b.sha256))
    if (
        "csv" in outputs
    ):  # the workflow writes the csv in its own job (`stage_export_csv`), beside verification
        write_csv(out, outputs["csv"], meta.display_formats)
    write_json(report_out, [r.__dict__ | {"tags": list(r.tags)} for r in results])


def stage_export_csv(parquet: str | Path, out: str | Path) -> None:
    """Outside side: the synthetic data of a source as csv (the same bytes `stage_pin` writes
    when asked for both), from its parquet file."""
    from replisynth.io.files import write_csv_from_parquet

    progress(f"export: {Path(out).name}")
    write_csv_from_parquet(parquet, out)


def _export_labelled(
    bundle_dir: str | Path,
    source: str,
    parquet: str | Path,
    out: str | Path,
    writer: Callable[..., None],
) -> None:
    """The synthetic data of a source written by `writer` (write_dta, write_sav) with its
    labels, date formats and missing-value codes, and the bundle's fingerprint."""
    from replisynth.stats.missing_codes import synthetic_codes

    b = load_bundle(bundle_dir)
    progress(f"export: {Path(out).name}")
    release = untyped(b.releases[source])
    df = read_parquet_frame(parquet)
    writer(
        df,
        out,
        _file_meta(release),
        synthetic=synthetic_label(b.sha256),
        codes=synthetic_codes(df, release, b.manifest.seed),
    )


def stage_export_stata(
    bundle_dir: str | Path, source: str, parquet: str | Path, out: str | Path
) -> None:
    """Outside side: the synthetic data of a .dta source as a Stata file with its labels,
    date formats and extended missing codes."""
    _export_labelled(bundle_dir, source, parquet, out, write_dta)


def stage_export_spss(
    bundle_dir: str | Path, source: str, parquet: str | Path, out: str | Path
) -> None:
    """Outside side: the synthetic data of a .sav source as an SPSS file with its labels,
    date formats and user-missing codes."""
    from replisynth.io.files import write_sav

    _export_labelled(bundle_dir, source, parquet, out, write_sav)


def export_format(fmt: str) -> str | None:
    """The extension of the labelled synthetic file a source of format `fmt` gets (dta, sav)."""
    return fmt if fmt in ("dta", "sav") else None


def synthetic_readme_text(b: Bundle) -> str:
    """README.txt beside the synthetic files: what they are, and what they are not."""
    lines = [
        f"SYNTHETIC DATA - {b.manifest.name}",
        "",
        "The files in this folder are synthetic: every row was drawn by replisynth from the",
        f"disclosure-safe bundle {b.sha256} (seed {b.manifest.seed}). No row is a real observation.",
        "",
        "They are a masking of the original data, never an augmentation: they carry no information",
        "about the population beyond what the original data hold. Use them to run and check code",
        "and to reproduce the checkpoints listed in ../verify/certificate.txt. Standard errors, tests",
        "and confidence intervals computed on them do not measure uncertainty about the population;",
        "any analysis beyond the checkpoints must be confirmed on the original data.",
        "",
    ]
    for s in b.manifest.sources:
        n = int(b.releases[s.name]["rows"])
        rows = n if s.rows is None else int(s.rows)
        files = ", ".join(
            f"{s.name}.{e}"
            for e in ("parquet", "csv", *((s.format,) if export_format(s.format) else ()))
        )
        note = "" if rows == n else f" (the original has {n:,}: more rows add no information)"
        lines.append(f"{files}: {rows:,} synthetic rows{note}")
    return "\n".join(lines) + "\n"


def stage_synthetic_readme(bundle_dir: str | Path, out: str | Path) -> None:
    """Outside side: README.txt in the synthetic folder."""
    write_text(out, synthetic_readme_text(load_bundle(bundle_dir)))


def read_synthetic(
    paths: dict[str, str | Path],
) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, Any]]]:
    """Synthetic frames and the labels they carry (parquet metadata; the .dta or .sav file
    beside it when there is one), with the date storage and the missing-code counts of the
    file they come from (`file_shape`)."""
    frames, labels = {}, {}
    for name, p in paths.items():
        frames[name] = read_parquet_frame(p)
        m = parquet_meta(Path(p))
        m = FileMeta(**{**m.__dict__, "display_formats": parquet_date_types(Path(p))})
        for ext in ("dta", "sav"):
            if Path(p).with_suffix(f".{ext}").exists():
                _, m = read_source(Path(p).with_suffix(f".{ext}"))
        labels[name] = file_shape(m)
    return frames, labels


def file_shape(m: FileMeta) -> dict[str, Any]:
    """What tier 0 checks of a written file beyond its values: labels, date storage, codes."""
    return {
        "variable_labels": m.variable_labels,
        "value_labels": m.value_labels,
        "display_formats": m.display_formats,
        "missing_codes": m.missing_codes,
        "missing_labels": m.missing_labels,
    }


def read_parquet_frame(path: str | Path) -> pd.DataFrame:
    """A parquet file as pandas reads it, its date and timestamp columns as datetime64 (naive UTC)."""
    from replisynth.io.files import parquet_dates

    df = read_parquet(path)
    parquet_dates(df, Path(path))
    return df


def parquet_date_types(path: Path) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return {
        f.name: str(f.type)
        for f in pq.read_schema(path)
        if pa.types.is_date(f.type) or pa.types.is_timestamp(f.type)
    }


def stage_verify(
    bundle_dir: str | Path, synthetic: dict[str, str | Path], tiers_out: str | Path
) -> dict[str, Any]:
    """Outside side: compute every tier; write tiers.json (always, pass or fail)."""
    from replisynth.verify.verify import verify

    b = load_bundle(bundle_dir)
    frames, labels = read_synthetic(synthetic)
    tiers = verify(b, frames, labels, progress=progress)
    write_json(tiers_out, tiers)
    log.info("tier met %s (required %s)", tiers["tier_met"], tiers["tier_required"])
    return tiers


def stage_report(
    bundle_dir: str | Path,
    synthetic: dict[str, str | Path],
    tiers_path: str | Path,
    html_out: str | Path,
    certificate_out: str | Path,
    benchmarks: list[str | Path] | None = None,
) -> None:
    """Outside side: report.html and the certificate paragraph."""
    from replisynth.verify.report import certificate_text, render_report
    from replisynth.verify.report_notes import certifies_text

    progress("report: report.html and certificate.txt")
    b = load_bundle(bundle_dir)
    frames, _ = read_synthetic(synthetic)
    tiers = read_json(tiers_path)
    prov = provenance(benchmarks or []) or {}
    prov["sdc settings"] = b.sdc_log.get("settings", {})
    prov["sdc decisions"] = len(b.sdc_log.get("decisions", []))
    cert = certificate_text(tiers)
    outcomes = {s: b.released_outcomes(s) for s in b.releases}
    html = render_report(
        tiers,
        untyped(b.releases),
        frames,
        cert,
        provenance=prov,
        outcomes=outcomes,
        sdc_log=dict(b.sdc_log),
    )
    write_text(html_out, html)
    # Timings go to the certificate file only (the quotable paragraph above stays reproducible).
    timing = "\n\n" + provenance_text(prov) + "\n" if prov.get("benchmarks") else "\n"
    write_text(certificate_out, certifies_text(tiers) + "\n\n" + cert + timing)


def provenance(benchmarks: list[str | Path]) -> dict[str, Any] | None:
    """Seconds per step from Snakemake benchmark files (first data row, column 's'), keyed
    `<rule>/<wildcards>` (the file's directory and stem); their sum (`total_seconds`); and
    the run's wall time (`wall_seconds`): from the first benchmarked step's start (its file's
    modification time minus its seconds) to the last one's end. Files not written (yet) are
    skipped."""
    if not benchmarks:
        return None
    out: dict[str, float] = {}
    starts, ends = [], []
    for p in benchmarks:
        p = Path(p)
        if not p.exists():
            continue
        try:
            t = pd.read_csv(p, sep="\t")
            sec = float(t["s"].iloc[0])
            end = p.stat().st_mtime
        except Exception:  # a benchmark file is informational only
            continue
        out[f"{p.parent.name}/{p.stem}"] = sec
        starts.append(end - sec)
        ends.append(end)
    if not out:
        return None
    return {
        "benchmarks": out,
        "total_seconds": float(sum(out.values())),
        "wall_seconds": float(max(ends) - min(starts)),
    }


def provenance_text(prov: dict[str, Any]) -> str:
    """The certificate's provenance paragraph: every benchmarked step's time and the run's."""
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in prov["benchmarks"].items())
    return (
        f"Provenance: the run took {prov['wall_seconds']:.1f} s from the first step's start to the last step's end, "
        f"{prov['total_seconds']:.1f} s over {len(prov['benchmarks'])} benchmarked steps (Snakemake benchmark files): {steps}."
    )


def bundle_of(bundle_dir: str | Path) -> Bundle:
    """Load a bundle (for callers that only need its manifest)."""
    return load_bundle(bundle_dir)


def stage_audit(
    manifest: Manifest,
    bundle_dir: str | Path,
    synthetic: dict[str, str | Path],
    json_out: str | Path,
    txt_out: str | Path,
) -> dict[str, Any]:
    """Secure side: the output-checking audit of the synthetic data against the original
    (identical rows, replicated uniques, distance to closest record); writes audit.json and
    audit.txt, which hold counts, shares and distances only."""
    from replisynth.core.errors import BundleError
    from replisynth.disclosure.audit import audit_run, audit_source, render_text

    b = load_bundle(bundle_dir)
    per_source: dict[str, dict[str, Any]] = {}
    for s in manifest.sources:
        if s.name not in b.releases:
            raise BundleError(
                f"{bundle_dir}: the bundle has no source {s.name!r}; rerun extract with this manifest"
            )
        original = _read_checked(manifest, s.name)[0]
        progress(f"audit: {s.name}")
        syn = read_parquet_frame(synthetic[s.name])
        r = audit_source(
            original,
            syn,
            untyped(b.releases[s.name]),
            s.name,
            manifest.seed,
            keys=s.keys,
            strata=s.strata,
        )
        d = r["dcr"]
        log.info(
            "%s: audited %d synthetic rows against %d original rows: %d identical on all %d columns, "
            "%d on the %d key columns, %d replicated uniques",
            s.name,
            r["synthetic_rows"],
            r["original_rows"],
            r["identical_all_columns"]["count"],
            len(r["columns"]),
            r["identical_keys"]["count"],
            len(r["keys"]),
            r["replicated_uniques"]["count"],
        )
        if "skipped" not in d:
            log.info(
                "%s: DCR median %.3g to training, %.3g to holdout; %.1f%% closer than the holdout 5th percentile",
                s.name,
                d["median_to_training"],
                d["median_to_holdout"],
                100 * d["share_closer_than_p5"],
            )
        per_source[s.name] = r
    result = audit_run(manifest.name, manifest.seed, per_source, bundle_sha256=b.sha256)
    write_json(json_out, result)
    write_text(txt_out, render_text(result))
    log.info("audit verdict: %s", result["verdict"])
    return result
