# Outside side: the human-readable report, the certificate, and the verdict that sets the
# exit status (a run that misses verify.tier fails here, after its reports are written).


rule render_report:
    input:
        bundle=f"{P.bundle_dir}/manifest.json",
        tiers=f"{P.results}/verify/tiers.json",
        parquet=expand(f"{P.results}/synthetic/{{source}}.parquet", source=P.sources),
    output:
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
        benchmarks=P.benchmarks(),
    threads: P.threads("render_report")
    resources:
        mem_mb=P.mem_mb("render_report"),
        runtime=P.runtime("render_report"),
    log:
        f"{P.results}/logs/render_report/all.log",
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/render_report.py"


rule check_tier:
    input:
        tiers=f"{P.results}/verify/tiers.json",
        certificate=f"{P.results}/verify/certificate.txt",
        html=f"{P.results}/verify/report.html",
    output:
        done=f"{P.results}/verify/verdict.txt",
    threads: P.threads("check_tier")
    resources:
        mem_mb=P.mem_mb("check_tier"),
        runtime=P.runtime("check_tier"),
    log:
        f"{P.results}/logs/check_tier/all.log",
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/check_tier.py"
