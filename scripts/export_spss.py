"""Rule export_spss: the synthetic data as SPSS .sav with labels, date formats and missing codes."""

from pathlib import Path

from replisynth.workflow.pipeline import stage_export_spss
from replisynth.workflow.runner import run

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_export_spss(
        bundle_dir=Path(sm.input.bundle).parent,
        source=sm.wildcards.source,
        parquet=sm.input.parquet,
        out=sm.output.sav,
    ),
)
