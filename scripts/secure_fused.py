"""Rule secure_fused: the secure side of a small local run in one process."""

from functools import cache
from pathlib import Path

from replisynth.config.manifest import load_manifest
from replisynth.workflow.fused import run_secure

sm = snakemake  # noqa: F821
run_secure(
    manifest=cache(lambda: load_manifest(sm.config, parse_formulas=False)),
    results=str(Path(sm.output.checkpoints).parent.parent),  # results/<name>
    bundle_dir=str(Path(sm.output.manifest).parent),
    sources=list(sm.params.sources),
    threads=sm.threads,
)
