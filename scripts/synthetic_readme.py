"""Rule synthetic_readme: README.txt beside the synthetic files."""

from pathlib import Path

from replisynth.workflow.pipeline import stage_synthetic_readme
from replisynth.workflow.runner import run

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_synthetic_readme(
        bundle_dir=Path(sm.input.bundle).parent, out=sm.output.readme
    ),
)
