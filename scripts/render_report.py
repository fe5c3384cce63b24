"""Rule render_report: report.html and the certificate paragraph."""

from pathlib import Path

from replisynth.workflow.pipeline import stage_report
from replisynth.workflow.runner import run

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_report(
        bundle_dir=Path(sm.input.bundle).parent,
        synthetic=dict(zip(sm.params.sources, sm.input.parquet, strict=True)),
        tiers_path=sm.input.tiers,
        html_out=sm.output.html,
        certificate_out=sm.output.certificate,
        benchmarks=list(sm.params.benchmarks),
    ),
)
