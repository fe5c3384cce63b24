"""Rule extract_stratum: the blocks of one shard of a source's strata (secure side)."""

from replisynth.config.manifest import load_manifest
from replisynth.workflow.runner import run
from replisynth.workflow.scatter import stage_extract_stratum

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_extract_stratum(
        manifest=load_manifest(sm.config, parse_formulas=False),
        source=sm.wildcards.source,
        base=sm.input.base,
        shard=int(sm.wildcards.shard),
        shards=int(sm.params.shards),
        out=sm.output.blocks,
    ),
)
