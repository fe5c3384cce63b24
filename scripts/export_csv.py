"""Rule export_csv: the synthetic data of one source as csv, from its parquet file."""

from replisynth.workflow.pipeline import stage_export_csv
from replisynth.workflow.runner import run

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_export_csv(parquet=sm.input.parquet, out=sm.output.csv),
)
