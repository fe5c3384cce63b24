"""Rule verify_tiers: every fidelity tier, from the bundle and the synthetic data."""

from pathlib import Path

from replisynth.workflow.pipeline import stage_verify
from replisynth.workflow.runner import run

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_verify(
        bundle_dir=Path(sm.input.bundle).parent,
        synthetic=dict(zip(sm.params.sources, sm.input.parquet, strict=True)),
        tiers_out=sm.output.tiers,
    ),
)
