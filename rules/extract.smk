# Secure side: data -> staging releases -> bundle. Nothing row-level leaves these rules.


rule extract:
    input:
        P.bundle_files(),


rule extract_source:
    input:
        data=lambda wc: P.paths[wc.source],
    output:
        release=f"{P.results}/extract/{{source}}.release.json",
        sdc=f"{P.results}/extract/{{source}}.sdc.json",
    threads: P.threads("extract_source")
    resources:
        mem_mb=P.mem_mb("extract_source"),
        runtime=P.runtime("extract_source"),
    log:
        f"{P.results}/logs/extract_source/{{source}}.log",
    benchmark:
        f"{P.results}/benchmarks/extract_source/{{source}}.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/extract_source.py"


rule extract_checkpoints:
    input:
        data=sorted({P.paths[c.source] for c in P.manifest.checkpoints}),
    output:
        checkpoints=f"{P.results}/extract/checkpoints.json",
        sdc=f"{P.results}/extract/checkpoints.sdc.json",
    threads: P.threads("extract_checkpoints")
    resources:
        mem_mb=P.mem_mb("extract_checkpoints"),
        runtime=P.runtime("extract_checkpoints"),
    log:
        f"{P.results}/logs/extract_checkpoints/all.log",
    benchmark:
        f"{P.results}/benchmarks/extract_checkpoints/all.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/extract_checkpoints.py"


rule write_bundle:
    input:
        releases=expand(f"{P.results}/extract/{{source}}.release.json", source=P.sources),
        checkpoints=f"{P.results}/extract/checkpoints.json",
        sdc=expand(f"{P.results}/extract/{{part}}.sdc.json", part=[*P.sources, "checkpoints"]),
    output:
        P.bundle_files(),
    params:
        sources=list(P.sources),
    threads: P.threads("write_bundle")
    resources:
        mem_mb=P.mem_mb("write_bundle"),
        runtime=P.runtime("write_bundle"),
    log:
        f"{P.results}/logs/write_bundle/all.log",
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/write_bundle.py"
