"""`replisynth` command line: the pipeline without Snakemake, for enclaves that cannot
install it. Same package functions, same output layout as the workflow.

  replisynth extract MANIFEST                 secure side: results/<name>/bundle/ and review/
  replisynth synthesize MANIFEST | --bundle DIR   synthetic data (Layers 1-4)
  replisynth verify MANIFEST | --bundle DIR       tiers.json, report.html, certificate.txt
  replisynth run MANIFEST                     all three
  replisynth audit MANIFEST                   secure side, after run: output-checking audit
                                              (results/<name>/audit/audit.{json,txt})
  replisynth review BUNDLE [--out DIR]        the output checker's review of a bundle, from the
                                              bundle alone: disclosure_review.{json,txt} in DIR
                                              (default: review/ beside the bundle)

Exit status (README "Exit status"): 0 success; 1 bad input (a manifest, data, bundle or
results folder to fix: one line, no traceback); 2 verification ran but verify.tier was not
met; 3 `review` found disclosure risks (the packet is written); 4 internal error (a bug);
130 interrupted (Ctrl-C).
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

    stage_review(
        p["bundle"], p["review"] / "disclosure_review.json", p["review"] / "disclosure_review.txt"
    )
    return p["bundle"]


def cmd_synthesize(bundle_dir: Path, out_root: Path) -> dict[str, Path]:
    """Outside side: synthetic files of every source."""
    from replisynth.disclosure.bundle import load_bundle
    from replisynth.workflow.pipeline import (
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


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(
        prog="replisynth",
        description="Synthetic mirrors of confidential microdata with certified fidelity.",
    )
    ap.add_argument(
        "command", choices=["extract", "synthesize", "verify", "run", "audit", "review"]
    )
    ap.add_argument(
        "manifest",
        nargs="?",
        help="the YAML manifest (secure side, or to name the run); review: the bundle directory",
    )
    ap.add_argument("--bundle", help="outside side: a bundle directory (synthesize, verify)")
    ap.add_argument("--results", default="results", help="output root (default: results)")
    ap.add_argument(
        "--out", help="review: directory of the packet (default: review/ beside the bundle)"
    )
    ap.add_argument("--quiet", action="store_true", help="only warnings and errors")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="worker threads per stage (default 1; the output does not depend on it)",
    )
    args = ap.parse_args(argv)
    from replisynth.core.parallel import set_threads

    set_threads(args.threads)
    configure_logging(None)
    if args.quiet:
        import logging

        logging.getLogger("replisynth").setLevel(logging.WARNING)
    out_root = Path(args.results)
    try:
        if args.command == "review":
            if not args.manifest:
                ap.error("review needs a BUNDLE directory")
            return cmd_review(Path(args.manifest), Path(args.out) if args.out else None)
        if args.command in ("extract", "run", "audit") or not args.bundle:
            if not args.manifest:
                ap.error(f"{args.command} needs a MANIFEST (or --bundle DIR for synthesize/verify)")
            manifest = load_manifest(args.manifest)
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
