"""Rule gather_release: a scattered source's release and SDC decisions (secure side)."""

from replisynth.config.manifest import load_manifest
from replisynth.workflow.runner import run
from replisynth.workflow.scatter import stage_gather_release

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_gather_release(
        manifest=load_manifest(sm.config, parse_formulas=False),
        base=sm.input.base,
        base_sdc=sm.input.sdc,
        parts=list(sm.input.parts),
        release_out=sm.output.release,
        sdc_out=sm.output.sdc,
    ),
)
