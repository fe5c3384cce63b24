# Secure side: data -> staging releases -> bundle. Nothing row-level leaves these rules.


rule extract:
    input:
        P.bundle_files(),
        P.review_files(),


rule extract_source:
    input:
        data=lambda wc: P.paths[wc.source],
    output:
        release=f"{P.results}/extract/{{source}}.release.json",
        sdc=f"{P.results}/extract/{{source}}.sdc.json",
    wildcard_constraints:
        source=P.sources_regex(scattered=False),
    params:
        manifest=P.manifest_section("extract_source"),
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


# A source scattered by stratum (`scatter`, see docs/hpc.md): the source-level release, one
# job per shard of strata cells (block marginals and correlations), and a gather job that
# writes the same staging files as extract_source.


rule extract_base:
    input:
        data=lambda wc: P.paths[wc.source],
    output:
        base=f"{P.results}/extract/{{source}}.base.json",
        sdc=f"{P.results}/extract/{{source}}.base.sdc.json",
    wildcard_constraints:
        source=P.sources_regex(scattered=True),
    params:
        manifest=P.manifest_section("extract_base"),
    threads: P.threads("extract_base")
    resources:
        mem_mb=P.mem_mb("extract_base"),
        runtime=P.runtime("extract_base"),
    log:
        f"{P.results}/logs/extract_base/{{source}}.log",
    benchmark:
        f"{P.results}/benchmarks/extract_base/{{source}}.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/extract_base.py"


rule extract_stratum:
    input:
        data=lambda wc: P.paths[wc.source],
        base=f"{P.results}/extract/{{source}}.base.json",
    output:
        blocks=f"{P.results}/extract/{{source}}.strata/{{shard}}.json",
    wildcard_constraints:
        source=P.sources_regex(scattered=True),
        shard=r"\d+",
    params:
        manifest=P.manifest_section("extract_stratum"),
        shards=lambda wc: P.scatter[wc.source],
    threads: P.threads("extract_stratum")
    resources:
        mem_mb=P.mem_mb("extract_stratum"),
        runtime=P.runtime("extract_stratum"),
    log:
        f"{P.results}/logs/extract_stratum/{{source}}.{{shard}}.log",
    benchmark:
        f"{P.results}/benchmarks/extract_stratum/{{source}}.{{shard}}.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/extract_stratum.py"


rule gather_release:
    input:
        base=f"{P.results}/extract/{{source}}.base.json",
        sdc=f"{P.results}/extract/{{source}}.base.sdc.json",
        parts=P.shards("release"),
    output:
        release=f"{P.results}/extract/{{source}}.release.json",
        sdc=f"{P.results}/extract/{{source}}.sdc.json",
    wildcard_constraints:
        source=P.sources_regex(scattered=True),
    params:
        manifest=P.manifest_section("gather_release"),
    threads: P.threads("gather_release")
    resources:
        mem_mb=P.mem_mb("gather_release"),
        runtime=P.runtime("gather_release"),
    log:
        f"{P.results}/logs/gather_release/{{source}}.log",
    benchmark:
        f"{P.results}/benchmarks/gather_release/{{source}}.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/gather_release.py"


rule extract_checkpoints:
    input:
        data=sorted({P.paths[c.source] for c in P.manifest.checkpoints}),
    output:
        checkpoints=f"{P.results}/extract/checkpoints.json",
        sdc=f"{P.results}/extract/checkpoints.sdc.json",
    params:
        manifest=P.manifest_section("extract_checkpoints"),
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
        data=P.bundle_files()[:-2],
        sdc_log=report(
            f"{P.bundle_dir}/sdc_log.json",
            caption="../docs/captions/sdc_log.rst",
            category="Disclosure control",
            labels={"file": "bundle/sdc_log.json"},
        ),
        manifest=report(
            f"{P.bundle_dir}/manifest.json",
            caption="../docs/captions/bundle_manifest.rst",
            category="Disclosure control",
            labels={"file": "bundle/manifest.json"},
        ),
    params:
        manifest=P.manifest_section("write_bundle"),
        sources=list(P.sources),
    threads: P.threads("write_bundle")
    resources:
        mem_mb=P.mem_mb("write_bundle"),
        runtime=P.runtime("write_bundle"),
    log:
        f"{P.results}/logs/write_bundle/all.log",
    benchmark:
        f"{P.results}/benchmarks/write_bundle/all.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/write_bundle.py"


# The output checker's packet: every disclosure check rerun from the bundle alone (findings are
# reported in the packet and the log; they do not stop the run).


rule review:
    input:
        bundle=P.bundle_files(),
    output:
        json=f"{P.results}/review/disclosure_review.json",
        txt=report(
            f"{P.results}/review/disclosure_review.txt",
            caption="../docs/captions/disclosure_review.rst",
            category="Disclosure control",
            labels={"file": "review/disclosure_review.txt"},
        ),
    threads: P.threads("review")
    resources:
        mem_mb=P.mem_mb("review"),
        runtime=P.runtime("review"),
    log:
        f"{P.results}/logs/review/all.log",
    benchmark:
        f"{P.results}/benchmarks/review/all.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/review_bundle.py"
