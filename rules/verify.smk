# Outside side: every fidelity tier from the bundle and the synthetic data alone.


rule verify_tiers:
    input:
        bundle=f"{P.bundle_dir}/manifest.json",
        parquet=expand(f"{P.results}/synthetic/{{source}}.parquet", source=P.sources),
        files=P.verified_synthetic(),
    output:
        tiers=report(
            f"{P.results}/verify/tiers.json",
            caption="../docs/captions/tiers.rst",
            category="Verification",
            labels={"file": "tiers.json"},
        ),
    params:
        bundle=P.bundle_sha256,
        sources=list(P.sources),
    # first when the pinned data are ready (one core, beside the csv export; see
    # replisynth.workflow.resources.SINGLE_THREADED)
    priority: 1
    threads: P.threads("verify_tiers")
    resources:
        mem_mb=P.mem_mb("verify_tiers"),
        runtime=P.runtime("verify_tiers"),
    log:
        f"{P.results}/logs/verify_tiers/all.log",
    benchmark:
        f"{P.results}/benchmarks/verify_tiers/all.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/verify_tiers.py"
