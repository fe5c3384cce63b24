"""Rule sample_copula: Layers 1-3 for one source, from the bundle alone."""

from pathlib import Path

from replisynth.workflow.pipeline import stage_synthesize
from replisynth.workflow.runner import run

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_synthesize(
        bundle_dir=Path(sm.input.bundle).parent, source=sm.wildcards.source, out=sm.output.parquet
    ),
)
