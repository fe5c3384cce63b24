"""Rule export_stata: the synthetic data as Stata 118 with labels and storage types."""

from pathlib import Path

from replisynth.workflow.pipeline import stage_export_stata
from replisynth.workflow.runner import run

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_export_stata(
        bundle_dir=Path(sm.input.bundle).parent,
        source=sm.wildcards.source,
        parquet=sm.input.parquet,
        out=sm.output.dta,
    ),
)
