"""Rule check_tier: exit non-zero (after the reports exist) when verify.tier is not met."""
from pathlib import Path

from replisynth.io import write_text
from replisynth.pipeline import check_tier
from replisynth.runner import run

sm = snakemake  # noqa: F821
run(sm.log[0], threads=sm.threads, stage=lambda: (check_tier(sm.input.tiers), write_text(sm.output.done, Path(sm.input.certificate).read_text())))
