"""Rule write_bundle: assemble the bundle, manifest.json last (secure side)."""

from pathlib import Path

from replisynth.config.manifest import load_manifest
from replisynth.workflow.pipeline import stage_write_bundle
from replisynth.workflow.runner import run

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_write_bundle(
        manifest=load_manifest(sm.config, parse_formulas=False),
        releases=dict(zip(sm.params.sources, sm.input.releases, strict=True)),
        checkpoints=sm.input.checkpoints,
        sdc_parts=list(sm.input.sdc),
        bundle_dir=Path(sm.output.manifest).parent,
    ),
)
