# Outside side: bundle -> synthetic data (Layers 1-3), then Layer 4 pins the checkpoints.


rule sample_copula:
    input:
        bundle=f"{P.bundle_dir}/manifest.json",
    output:
        parquet=f"{P.results}/synthesize/{{source}}.parquet",
    wildcard_constraints:
        source=P.sources_regex(scattered=False),
    params:
        bundle=P.bundle_sha256,
    threads: P.threads("sample_copula")
    resources:
        mem_mb=P.mem_mb("sample_copula"),
        runtime=P.runtime("sample_copula"),
    log:
        f"{P.results}/logs/sample_copula/{{source}}.log",
    benchmark:
        f"{P.results}/benchmarks/sample_copula/{{source}}.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/sample_copula.py"


# A source scattered by stratum: one job per shard of the plan's blocks (Layers 1-2), and a
# gather job (refinement across blocks, shuffle, dtypes) writing what sample_copula writes.


rule sample_stratum:
    input:
        bundle=f"{P.bundle_dir}/manifest.json",
    output:
        blocks=f"{P.results}/synthesize/{{source}}.strata/{{shard}}.pkl",
    wildcard_constraints:
        source=P.sources_regex(scattered=True),
        shard=r"\d+",
    params:
        bundle=P.bundle_sha256,
        shards=lambda wc: P.scatter[wc.source],
    threads: P.threads("sample_stratum")
    resources:
        mem_mb=P.mem_mb("sample_stratum"),
        runtime=P.runtime("sample_stratum"),
    log:
        f"{P.results}/logs/sample_stratum/{{source}}.{{shard}}.log",
    benchmark:
        f"{P.results}/benchmarks/sample_stratum/{{source}}.{{shard}}.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/sample_stratum.py"


rule gather_blocks:
    input:
        bundle=f"{P.bundle_dir}/manifest.json",
        parts=P.shards("blocks"),
    output:
        parquet=f"{P.results}/synthesize/{{source}}.parquet",
    wildcard_constraints:
        source=P.sources_regex(scattered=True),
    params:
        bundle=P.bundle_sha256,
    threads: P.threads("gather_blocks")
    resources:
        mem_mb=P.mem_mb("gather_blocks"),
        runtime=P.runtime("gather_blocks"),
    log:
        f"{P.results}/logs/gather_blocks/{{source}}.log",
    benchmark:
        f"{P.results}/benchmarks/gather_blocks/{{source}}.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/gather_blocks.py"


rule pin_checkpoints:
    input:
        bundle=f"{P.bundle_dir}/manifest.json",
        unpinned=f"{P.results}/synthesize/{{source}}.parquet",
    output:
        synthetic=f"{P.results}/synthetic/{{source}}.parquet",
        report=report(
            f"{P.results}/synthesize/{{source}}.pin.json",
            caption="../docs/captions/pin.rst",
            category="Synthetic data",
            labels={"source": "{source}", "file": "pin.json"},
        ),
    params:
        bundle=P.bundle_sha256,
    threads: P.threads("pin_checkpoints")
    resources:
        mem_mb=P.mem_mb("pin_checkpoints"),
        runtime=P.runtime("pin_checkpoints"),
    log:
        f"{P.results}/logs/pin_checkpoints/{{source}}.log",
    benchmark:
        f"{P.results}/benchmarks/pin_checkpoints/{{source}}.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/pin_checkpoints.py"


# The csv in its own job: it runs beside verification (which reads the parquet file) instead
# of adding its writing time to the pinning job.
rule export_csv:
    input:
        parquet=f"{P.results}/synthetic/{{source}}.parquet",
    output:
        csv=f"{P.results}/synthetic/{{source}}.csv",
    threads: P.threads("export_csv")
    resources:
        mem_mb=P.mem_mb("export_csv"),
        runtime=P.runtime("export_csv"),
    log:
        f"{P.results}/logs/export_csv/{{source}}.log",
    benchmark:
        f"{P.results}/benchmarks/export_csv/{{source}}.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/export_csv.py"


rule export_stata:
    input:
        bundle=f"{P.bundle_dir}/manifest.json",
        parquet=f"{P.results}/synthetic/{{source}}.parquet",
    output:
        dta=f"{P.results}/synthetic/{{source}}.dta",
    params:
        bundle=P.bundle_sha256,
    threads: P.threads("export_stata")
    resources:
        mem_mb=P.mem_mb("export_stata"),
        runtime=P.runtime("export_stata"),
    log:
        f"{P.results}/logs/export_stata/{{source}}.log",
    benchmark:
        f"{P.results}/benchmarks/export_stata/{{source}}.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/export_stata.py"


# README.txt beside the synthetic files: they are synthetic, and what they are (not) for.
rule synthetic_readme:
    input:
        bundle=f"{P.bundle_dir}/manifest.json",
    output:
        readme=f"{P.results}/synthetic/README.txt",
    params:
        bundle=P.bundle_sha256,
    threads: P.threads("synthetic_readme")
    resources:
        mem_mb=P.mem_mb("synthetic_readme"),
        runtime=P.runtime("synthetic_readme"),
    log:
        f"{P.results}/logs/synthetic_readme/all.log",
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/synthetic_readme.py"


rule export_spss:
    input:
        bundle=f"{P.bundle_dir}/manifest.json",
        parquet=f"{P.results}/synthetic/{{source}}.parquet",
    output:
        sav=f"{P.results}/synthetic/{{source}}.sav",
    params:
        bundle=P.bundle_sha256,
    threads: P.threads("export_spss")
    resources:
        mem_mb=P.mem_mb("export_spss"),
        runtime=P.runtime("export_spss"),
    log:
        f"{P.results}/logs/export_spss/{{source}}.log",
    benchmark:
        f"{P.results}/benchmarks/export_spss/{{source}}.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/export_spss.py"
