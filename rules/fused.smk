# Outside side of a small local run (`fuse: auto`, replisynth.workflow.workflow.fuse_plan):
# synthesis, pinning, the labelled exports, verification and the report in one job, so the
# interpreter and its imports start once instead of once per stage. Same files as the
# per-stage rules (synthesize.smk, verify.smk, report.smk), which it takes precedence over:
# each stage writes its rule's log and its rule's benchmark file. The csv exports and
# README.txt follow the report in the same job; the verdict (check_tier) stays a job of its
# own, so that a missed tier fails the run after the reports are written.


ruleorder: outside_fused > sample_copula
ruleorder: outside_fused > pin_checkpoints
ruleorder: outside_fused > export_stata
ruleorder: outside_fused > export_spss
ruleorder: outside_fused > verify_tiers
ruleorder: outside_fused > render_report
ruleorder: outside_fused > export_csv
ruleorder: outside_fused > synthetic_readme


rule outside_fused:
    input:
        bundle=f"{P.bundle_dir}/manifest.json",
    output:
        unpinned=expand(f"{P.results}/synthesize/{{source}}.parquet", source=P.sources),
        synthetic=expand(f"{P.results}/synthetic/{{source}}.parquet", source=P.sources),
        labelled=P.fused_labelled(),
        csv=expand(f"{P.results}/synthetic/{{source}}.csv", source=P.sources),
        readme=f"{P.results}/synthetic/README.txt",
        pin=[
            report(
                f"{P.results}/synthesize/{s}.pin.json",
                caption="../docs/captions/pin_fused.rst",
                category="Synthetic data",
                labels={"source": s, "file": "pin.json"},
            )
            for s in P.sources
        ],
        tiers=report(
            f"{P.results}/verify/tiers.json",
            caption="../docs/captions/tiers.rst",
            category="Verification",
            labels={"file": "tiers.json"},
        ),
        html=report(
            f"{P.results}/verify/report.html",
            caption="../docs/report_caption.rst",
            category="Verification",
            labels={"file": "report.html"},
        ),
        certificate=report(
            f"{P.results}/verify/certificate.txt",
            caption="../docs/certificate_caption.rst",
            category="Verification",
            labels={"file": "certificate.txt"},
        ),
    params:
        bundle=P.bundle_sha256,
        sources=list(P.sources),
        formats=P.formats,
        benchmarks=P.benchmarks(),
    threads: P.threads("outside_fused")
    resources:
        mem_mb=P.mem_mb("outside_fused"),
        runtime=P.runtime("outside_fused"),
    log:
        P.fused_logs(),
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/outside_fused.py"
