"""Rule audit_disclosure: the output-checking audit of the synthetic data (secure side)."""

from pathlib import Path

from replisynth.config.manifest import load_manifest
from replisynth.workflow.pipeline import stage_audit
from replisynth.workflow.runner import run

sm = snakemake  # noqa: F821
run(
    sm.log[0],
    threads=sm.threads,
    stage=lambda: stage_audit(
        manifest=load_manifest(sm.config, parse_formulas=False),
        bundle_dir=Path(sm.input.bundle).parent,
        synthetic=dict(zip(sm.params.sources, sm.input.parquet, strict=True)),
        json_out=sm.output.json,
        txt_out=sm.output.txt,
    ),
)
