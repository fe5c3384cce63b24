"""Rule review: the output checker's packet, from the bundle alone (secure side)."""

from pathlib import Path

from replisynth.disclosure.review import stage_review
from replisynth.workflow.runner import run

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_review(
        bundle_dir=Path(sm.input.bundle[-1]).parent, json_out=sm.output.json, txt_out=sm.output.txt
    ),
)
