"""Rule check_tier: exit non-zero (after the reports exist) when verify.tier is not met.
Standard library only (no numpy or pandas): the last job of the run starts at once."""

from pathlib import Path

from replisynth.io.atomic import write_text
from replisynth.verify.verdict import check_tier
from replisynth.workflow.runner import run

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: (
        check_tier(sm.input.tiers),
        write_text(sm.output.done, Path(sm.input.certificate).read_text()),
    ),
)
