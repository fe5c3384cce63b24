"""Rule sample_copula: Layers 1-3 for one source, from the bundle alone."""
from replisynth.pipeline import stage_synthesize
from replisynth.runner import run

sm = snakemake  # noqa: F821
run(sm.log[0], lambda: stage_synthesize(
    bundle_dir=sm.params.bundle_dir, source=sm.wildcards.source, out=sm.output.parquet))
