"""Rule extract_base: the source-level release of a source scattered by stratum (secure side)."""

from replisynth.config.manifest import load_manifest
from replisynth.workflow.runner import run
from replisynth.workflow.scatter import stage_extract_base

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_extract_base(
        manifest=load_manifest(sm.config, parse_formulas=False),
        source=sm.wildcards.source,
        base_out=sm.output.base,
        sdc_out=sm.output.sdc,
    ),
)
