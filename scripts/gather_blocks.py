"""Rule gather_blocks: a scattered source's synthetic data before Layer 4, from its blocks."""

from pathlib import Path

from replisynth.workflow.runner import run
from replisynth.workflow.scatter import stage_gather_blocks

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_gather_blocks(
        bundle_dir=Path(sm.input.bundle).parent,
        source=sm.wildcards.source,
        parts=list(sm.input.parts),
        out=sm.output.parquet,
    ),
)
