"""Rule extract_source: the release of one source (secure side)."""

from replisynth.config.manifest import load_manifest
from replisynth.workflow.pipeline import stage_extract_source
from replisynth.workflow.runner import run

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_extract_source(
        manifest=load_manifest(sm.config, parse_formulas=False),
        source=sm.wildcards.source,
        release_out=sm.output.release,
        sdc_out=sm.output.sdc,
    ),
)
