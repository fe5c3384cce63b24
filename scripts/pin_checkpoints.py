"""Rule pin_checkpoints: Layer 4 for one source; writes the synthetic parquet file."""

from pathlib import Path

from replisynth.workflow.pipeline import stage_pin
from replisynth.workflow.runner import run

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_pin(
        bundle_dir=Path(sm.input.bundle).parent,
        source=sm.wildcards.source,
        unpinned=sm.input.unpinned,
        outputs={"parquet": sm.output.synthetic},
        report_out=sm.output.report,
    ),
)
