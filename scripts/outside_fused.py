"""Rule outside_fused: the outside stages of a small local run in one process."""

from pathlib import Path

from replisynth.workflow.fused import outside_stages, run_stages

sm = snakemake  # noqa: F821
run_stages(
    outside_stages(
        results=str(Path(sm.output.tiers).parent.parent),  # results/<name>
        bundle_dir=str(Path(sm.input.bundle).parent),
        sources=list(sm.params.sources),
        formats=dict(sm.params.formats),
        benchmarks=list(sm.params.benchmarks),
    ),
    threads=sm.threads,
)
