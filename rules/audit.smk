# Secure side: the output-checking audit. With the original data at hand, count synthetic rows
# that reproduce original records (identical rows, replicated uniques) and measure the distance
# to closest record. Not part of `all`: run `snakemake --cores 2 audit` before the synthetic
# files leave. Its outputs hold counts, shares and distances only.


rule audit:
    input:
        f"{P.results}/audit/audit.json",
        f"{P.results}/audit/audit.txt",


rule audit_disclosure:
    input:
        data=sorted(set(P.paths.values())),
        bundle=f"{P.bundle_dir}/manifest.json",
        parquet=expand(f"{P.results}/synthetic/{{source}}.parquet", source=P.sources),
    output:
        json=f"{P.results}/audit/audit.json",
        txt=f"{P.results}/audit/audit.txt",
    params:
        manifest=P.manifest_section("audit_disclosure"),
        sources=list(P.sources),
    threads: P.threads("audit_disclosure")
    resources:
        mem_mb=P.mem_mb("audit_disclosure"),
        runtime=P.runtime("audit_disclosure"),
    log:
        f"{P.results}/logs/audit_disclosure/all.log",
    benchmark:
        f"{P.results}/benchmarks/audit_disclosure/all.tsv"
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/audit_disclosure.py"
