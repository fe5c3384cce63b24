"""Rule sample_stratum: Layers 1-2 for one shard of a source's blocks, from the bundle alone."""

from pathlib import Path

from replisynth.workflow.runner import run
from replisynth.workflow.scatter import stage_sample_stratum

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_sample_stratum(
        bundle_dir=Path(sm.input.bundle).parent,
        source=sm.wildcards.source,
        shard=int(sm.wildcards.shard),
        shards=int(sm.params.shards),
        out=sm.output.blocks,
    ),
)
