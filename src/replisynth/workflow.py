"""What the Snakefile needs to lay out the DAG: the run name, sources, paths, and whether this
is a secure-side run (from the manifest) or an outside run (from a bundle: `bundle=DIR`).

Path grammar:
  results/<name>/extract/<source>.release.json, <source>.sdc.json   staging (secure side)
  results/<name>/bundle/                                            the bundle
  results/<name>/synthesize/<source>.parquet, <source>.pin.json     before Layer 4, pin report
  results/<name>/synthetic/<source>.{parquet,csv,dta}               the synthetic data
  results/<name>/verify/{tiers.json,report.html,certificate.txt}
  results/<name>/logs/<rule>/..., results/<name>/benchmarks/<rule>/...
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ReplisynthError
from .manifest import Manifest, load_manifest


@dataclass(frozen=True)
class WorkflowPlan:
    """Everything the rules interpolate; `manifest` is the validated manifest."""

    outside: bool
    manifest: Manifest
    bundle_dir: str
    results: str
    sources: tuple[str, ...]
    formats: dict[str, str] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.manifest.name

    def synthetic_outputs(self, source: str) -> list[str]:
        """The synthetic files of a source: parquet, csv, and dta for .dta sources."""
        exts = ["parquet", "csv"] + (["dta"] if self.formats[source] == "dta" else [])
        return [f"{self.results}/synthetic/{source}.{e}" for e in exts]

    def all_synthetic(self) -> list[str]:
        return [p for s in self.sources for p in self.synthetic_outputs(s)]

    def bundle_files(self) -> list[str]:
        from .bundle import bundle_files

        return [f"{self.bundle_dir}/{f}" for f in bundle_files(self.manifest)]

    def benchmarks(self) -> list[str]:
        """Benchmark files of the statistical rules, for the report's provenance table."""
        b = f"{self.results}/benchmarks"
        out = []
        if not self.outside:
            out += [f"{b}/extract_source/{s}.tsv" for s in self.sources]
            out += [f"{b}/extract_checkpoints/all.tsv"]
        out += [f"{b}/sample_copula/{s}.tsv" for s in self.sources]
        out += [f"{b}/pin_checkpoints/{s}.tsv" for s in self.sources]
        out += [f"{b}/verify_tiers/all.tsv"]
        return out


def workflow_plan(config: dict[str, Any]) -> WorkflowPlan:
    """Build the plan from Snakemake's config; a manifest error stops the run with its
    message (no traceback)."""
    try:
        if config.get("bundle"):
            from .bundle import load_bundle

            b = load_bundle(config["bundle"])
            m = b.manifest
            return WorkflowPlan(
                outside=True, manifest=m, bundle_dir=str(Path(config["bundle"])), results=f"results/{m.name}",
                sources=tuple(s.name for s in m.sources), formats={s.name: s.format for s in m.sources},
            )
        m = load_manifest(config)
        return WorkflowPlan(
            outside=False, manifest=m, bundle_dir=f"results/{m.name}/bundle", results=f"results/{m.name}",
            sources=tuple(s.name for s in m.sources), formats={s.name: s.format for s in m.sources},
            paths={s.name: s.path for s in m.sources},
        )
    except ReplisynthError as exc:
        sys.stderr.write(f"replisynth: {exc}\n")
        raise SystemExit(1) from None
