"""`replisynth` command line: the pipeline without Snakemake, for enclaves that cannot install
it; same package functions and output layout. Commands and exit status: docs/usage.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from replisynth.config.manifest import Manifest, load_manifest
from replisynth.core.errors import EXIT_BAD_INPUT, EXIT_OK
from replisynth.workflow.runner import configure_logging, report_failure


def _paths(results: Path, manifest: Manifest) -> dict[str, Path]:
    return {
        "extract": results / "extract",
        "bundle": results / "bundle",
        "synthesize": results / "synthesize",
        "synthetic": results / "synthetic",
        "verify": results / "verify",
        "audit": results / "audit",
        "review": results / "review",
    }


def cmd_extract(manifest: Manifest, out_root: Path) -> Path:
    """Secure side: releases, checkpoints and the bundle."""
    from replisynth.workflow.pipeline import (
        stage_extract_checkpoints,
        stage_extract_source,
        stage_write_bundle,
    )

    p = _paths(out_root / manifest.name, manifest)
    releases = {}
    sdc = []
    for s in manifest.sources:
        rel, log = p["extract"] / f"{s.name}.release.json", p["extract"] / f"{s.name}.sdc.json"
        stage_extract_source(manifest, s.name, rel, log)
        releases[s.name] = rel
        sdc.append(log)
    cps, cps_log = p["extract"] / "checkpoints.json", p["extract"] / "checkpoints.sdc.json"
    stage_extract_checkpoints(manifest, cps, cps_log)
    stage_write_bundle(manifest, releases, cps, [*sdc, cps_log], p["bundle"])
    from replisynth.disclosure.review import stage_review
    from replisynth.workflow.progress import progress

    progress("review: every disclosure check again, from the bundle alone")
    stage_review(
        p["bundle"], p["review"] / "disclosure_review.json", p["review"] / "disclosure_review.txt"
    )
    return p["bundle"]


def cmd_synthesize(bundle_dir: Path, out_root: Path) -> dict[str, Path]:
    """Outside side: synthetic files of every source."""
    from replisynth.disclosure.bundle import load_bundle
    from replisynth.workflow.pipeline import (
        stage_export_spss,
        stage_export_stata,
        stage_pin,
        stage_synthesize,
        stage_synthetic_readme,
    )

    b = load_bundle(bundle_dir)
    p = _paths(out_root / b.manifest.name, b.manifest)
    out = {}
    for s in b.manifest.sources:
        unpinned = p["synthesize"] / f"{s.name}.parquet"
        stage_synthesize(bundle_dir, s.name, unpinned)
        files = {
            "parquet": p["synthetic"] / f"{s.name}.parquet",
            "csv": p["synthetic"] / f"{s.name}.csv",
        }
        stage_pin(bundle_dir, s.name, unpinned, files, p["synthesize"] / f"{s.name}.pin.json")
        if s.format == "dta":
            stage_export_stata(
                bundle_dir, s.name, files["parquet"], p["synthetic"] / f"{s.name}.dta"
            )
        if s.format == "sav":
            stage_export_spss(
                bundle_dir, s.name, files["parquet"], p["synthetic"] / f"{s.name}.sav"
            )
        out[s.name] = files["parquet"]
    stage_synthetic_readme(bundle_dir, p["synthetic"] / "README.txt")
    return out


def cmd_verify(bundle_dir: Path, out_root: Path) -> None:
    """Outside side: tiers.json, report.html, certificate.txt; TierNotMet if short."""
    from replisynth.disclosure.bundle import load_bundle
    from replisynth.workflow.pipeline import check_tier, stage_report, stage_verify

    b = load_bundle(bundle_dir)
    p = _paths(out_root / b.manifest.name, b.manifest)
    synthetic = {s.name: p["synthetic"] / f"{s.name}.parquet" for s in b.manifest.sources}
    for f in synthetic.values():
        if not f.exists():
            from replisynth.core.errors import DataError

            raise DataError(
                f"verify: {f} is missing; run `replisynth synthesize` (same MANIFEST or --bundle, same --results) first"
            )
    tiers = p["verify"] / "tiers.json"
    stage_verify(bundle_dir, synthetic, tiers)
    stage_report(
        bundle_dir, synthetic, tiers, p["verify"] / "report.html", p["verify"] / "certificate.txt"
    )
    print((p["verify"] / "certificate.txt").read_text().strip())
    check_tier(tiers)


def cmd_audit(manifest: Manifest, out_root: Path) -> Path:
    """Secure side: audit the synthetic data of a finished run against the original data.
    Needs the bundle and the synthetic parquet files; does not make them."""
    from replisynth.core.errors import BundleError, DataError
    from replisynth.workflow.pipeline import stage_audit

    p = _paths(out_root / manifest.name, manifest)
    if not (p["bundle"] / "manifest.json").exists():
        raise BundleError(
            f"audit: {p['bundle'] / 'manifest.json'} is missing; run `replisynth run MANIFEST` (same --results) first"
        )
    synthetic = {s.name: p["synthetic"] / f"{s.name}.parquet" for s in manifest.sources}
    for f in synthetic.values():
        if not f.exists():
            raise DataError(
                f"audit: {f} is missing; run `replisynth synthesize MANIFEST` (same --results) first"
            )
    result = stage_audit(
        manifest, p["bundle"], synthetic, p["audit"] / "audit.json", p["audit"] / "audit.txt"
    )
    print(result["summary"])
    return p["audit"]


def cmd_review(bundle_dir: Path, out_dir: Path | None) -> int:
    """The output checker's review (replisynth.disclosure.review): writes the packet, prints the
    verdict; EXIT_FINDINGS when there are findings, else 0."""
    from replisynth.disclosure.review import EXIT_FINDINGS, review_bundle, write_review

    review = review_bundle(bundle_dir)
    out = out_dir if out_dir is not None else bundle_dir.resolve().parent / "review"
    write_review(review, out)
    print(f"{review['verdict']} ({out / 'disclosure_review.txt'})")
    return EXIT_FINDINGS if review["findings"] else 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is bad input (exit 1), not argparse's 2 (tier missed)."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"replisynth: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


_COMMANDS: dict[str, tuple[str, str]] = {
    "extract": (
        "secure side: from the manifest's data files to the disclosure-safe bundle.",
        "reads: MANIFEST and its data files\n"
        "writes: RESULTS/<name>/extract/, bundle/ (what may leave) and review/\n"
        "example: replisynth extract manifest.yaml --results results",
    ),
    "synthesize": (
        "rebuild synthetic data from the bundle alone, checkpoint coefficients pinned.",
        "reads: the bundle (RESULTS/<name>/bundle/ of MANIFEST, or --bundle DIR)\n"
        "writes: RESULTS/<name>/synthesize/ and synthetic/ (parquet, csv, dta/sav for .dta/.sav sources)\n"
        "example: replisynth synthesize --bundle bundle/ --results out",
    ),
    "verify": (
        "check the fidelity tiers of the synthetic data against the bundle (exit 2 when the "
        "manifest's verify.tier is missed).",
        "reads: the bundle (of MANIFEST, or --bundle DIR) and RESULTS/<name>/synthetic/\n"
        "writes: RESULTS/<name>/verify/ tiers.json, report.html, certificate.txt\n"
        "example: replisynth verify --bundle bundle/ --results out",
    ),
    "run": (
        "extract, synthesize and verify in one go, on the secure side.",
        "reads: MANIFEST and its data files (not --bundle: use synthesize and verify for that)\n"
        "writes: everything extract, synthesize and verify write under RESULTS/<name>/\n"
        "example: replisynth run manifest.yaml --results results",
    ),
    "audit": (
        "secure side, after run: does the synthetic data reproduce original records?",
        "reads: MANIFEST, its data files, RESULTS/<name>/bundle/ and synthetic/\n"
        "writes: RESULTS/<name>/audit/ audit.json, audit.txt\n"
        "example: replisynth audit manifest.yaml --results results",
    ),
    "review": (
        "the output checker's review of a bundle, from the bundle alone (exit 3 on findings).",
        "reads: BUNDLE (a bundle directory, given in place of MANIFEST)\n"
        "writes: disclosure_review.json, disclosure_review.txt in --out DIR "
        "(default: review/ beside the bundle)\n"
        "example: replisynth review results/card1995/bundle --out packet",
    ),
}

_INIT_EPILOG = (
    "reads: DATA_FILE (.csv .parquet .dta .sav)\n"
    "writes: a commented manifest draft (--out, default manifest.yaml; an existing file only\n"
    "  with --force); its comments name columns, types and counts, never a data value\n"
    "example: replisynth init data/survey.dta --out survey.yaml"
)


def _common_options(positional: str) -> argparse.ArgumentParser:
    """The options every pipeline command accepts (the command line before subcommands)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "manifest",
        nargs="?",
        metavar=positional,
        help="the YAML manifest (secure side, or to name the run); review: the bundle directory",
    )
    common.add_argument("--bundle", help="outside side: a bundle directory (synthesize, verify)")
    common.add_argument("--results", default="results", help="output root (default: results)")
    common.add_argument(
        "--out", help="review: directory of the packet (default: review/ beside the bundle)"
    )
    common.add_argument("--quiet", action="store_true", help="only warnings and errors")
    common.add_argument(
        "--threads",
        type=int,
        default=1,
        help="worker threads per stage (default 1; the output does not depend on it)",
    )
    return common


def _parser() -> _Parser:
    """The command line: `replisynth COMMAND MANIFEST [options]`, one subparser per command."""
    from replisynth import __version__

    ap = _Parser(
        prog="replisynth",
        description="Synthetic mirrors of confidential microdata with certified fidelity.",
        epilog="Exit status: 0 success, 1 bad input, 2 tier missed, 3 review findings, "
        "4 internal error. `replisynth COMMAND --help` says what each command reads and writes.",
    )
    ap.add_argument("--version", action="version", version=f"replisynth {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    for name, (what, epilog) in _COMMANDS.items():
        sub.add_parser(
            name,
            parents=[_common_options("BUNDLE" if name == "review" else "MANIFEST")],
            help=what,
            description=what,
            epilog=epilog,
            formatter_class=fmt,
        )
    init = sub.add_parser(
        "init",
        help="write a commented manifest draft from a data file.",
        description="write a commented manifest draft from a data file: each column's role and\n"
        "type with the reason, suggested ids and strata, free-text, date and derived-looking\n"
        "columns flagged, and a checkpoint template to fill in.",
        epilog=_INIT_EPILOG,
        formatter_class=fmt,
    )
    init.add_argument(
        "data_file", metavar="DATA_FILE", help="the data file (.csv .parquet .dta .sav)"
    )
    init.add_argument("--out", default="manifest.yaml", help="the draft (default: manifest.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    init.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return ap


def cmd_init(data_file: Path, out: Path, force: bool) -> None:
    """Write the manifest draft of `data_file` to `out` (refused when `out` exists, unless
    `force`)."""
    import secrets

    from replisynth.core.errors import ManifestError
    from replisynth.extract.relations import detect_relations
    from replisynth.io.atomic import write_text
    from replisynth.io.draft import draft_manifest
    from replisynth.io.files import read_source

    if out.exists() and not force:
        raise ManifestError(
            f"init: {out} exists; choose another --out or add --force to replace it"
        )
    df, meta = read_source(data_file)
    seed = secrets.randbelow(2**31)
    write_text(out, draft_manifest(df, meta, str(data_file), seed, detect=detect_relations))
    print(
        f"wrote {out}: check each column's line, fill in a checkpoint, then `replisynth run {out}`"
    )


def _apply_output_settings(manifest_path: str) -> None:
    """`output: {private: true}` in the manifest: this run's files are readable by their owner
    only; otherwise they follow the umask."""
    from replisynth.config.manifest import private_outputs
    from replisynth.io.atomic import set_private_outputs

    set_private_outputs(private_outputs(manifest_path))


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    from replisynth.workflow.progress import start_clock

    start_clock()
    configure_logging(None)
    if args.quiet:
        import logging

        logging.getLogger("replisynth").setLevel(logging.WARNING)
    if args.command == "init":
        try:
            cmd_init(Path(args.data_file), Path(args.out), args.force)
        except (Exception, KeyboardInterrupt) as exc:
            return report_failure(exc)
        return EXIT_OK
    from replisynth.core.parallel import set_threads

    set_threads(args.threads)
    out_root = Path(args.results)
    try:
        if args.command == "review":
            if not args.manifest:
                ap.error("review needs a BUNDLE directory")
            return cmd_review(Path(args.manifest), Path(args.out) if args.out else None)
        if args.command == "run" and args.bundle:
            from replisynth.core.errors import UnsupportedError

            raise UnsupportedError(
                "run --bundle: run reads the manifest's data files, not a bundle; for a bundle "
                "use `replisynth synthesize --bundle DIR` then `replisynth verify --bundle DIR`"
            )
        if args.command in ("extract", "run", "audit") or not args.bundle:
            if not args.manifest:
                ap.error(f"{args.command} needs a MANIFEST (or --bundle DIR for synthesize/verify)")
            manifest = load_manifest(args.manifest)
            _apply_output_settings(args.manifest)
            bundle_dir = out_root / manifest.name / "bundle"
        else:
            bundle_dir = Path(args.bundle)
        if args.command in ("extract", "run"):
            cmd_extract(manifest, out_root)
        if args.command in ("synthesize", "run"):
            cmd_synthesize(bundle_dir, out_root)
        if args.command in ("verify", "run"):
            cmd_verify(bundle_dir, out_root)
        if args.command == "audit":
            cmd_audit(manifest, out_root)
    except (Exception, KeyboardInterrupt) as exc:
        return report_failure(exc)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
