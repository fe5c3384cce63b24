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

    # Scheduler requests (threads, mem_mb, runtime) from the size of the data a job touches;
    # see replisynth.resources. Each returns a function Snakemake calls with the job's
    # wildcards, input and attempt (a retry asks for more).
    def _cells(self, rule: str, wildcards: Any, input: Any) -> int:
        from .resources import cells_of, release_cells

        if rule in ("sample_copula", "sample_stratum"):
            from .bundle import source_file
            from .io import read_json

            p = Path(self.bundle_dir) / source_file(wildcards.source)
            try:
                return release_cells(read_json(p), self.manifest.source(wildcards.source).rows)
            except Exception:  # not written yet (dry run): the source data's size instead
                return cells_of([self.paths[wildcards.source]]) if wildcards.source in self.paths else 0
        return cells_of([str(f) for f in input])

    def threads(self, rule: str):
        from .resources import job_resources

        return lambda wildcards, input, attempt: job_resources(rule, self._cells(rule, wildcards, input), attempt).threads

    def mem_mb(self, rule: str):
        from .resources import job_resources

        return lambda wildcards, input, attempt: job_resources(rule, self._cells(rule, wildcards, input), attempt).mem_mb

    def runtime(self, rule: str):
        from .resources import job_resources

        return lambda wildcards, input, attempt: job_resources(rule, self._cells(rule, wildcards, input), attempt).runtime

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
