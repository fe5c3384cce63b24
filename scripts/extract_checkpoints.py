"""Rule extract_checkpoints: fit and gate the checkpoints (secure side)."""

from replisynth.config.manifest import load_manifest
from replisynth.workflow.pipeline import stage_extract_checkpoints
from replisynth.workflow.runner import run

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_extract_checkpoints(
        manifest=load_manifest(sm.config, parse_formulas=False),
        out=sm.output.checkpoints,
        sdc_out=sm.output.sdc,
    ),
)
