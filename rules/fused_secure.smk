# Secure side of a small local run (`fuse`, replisynth.workflow.workflow.fuse_plan): the
# sources' extraction, the checkpoint fits (beside it, in a forked child process, when the
# job holds two cores) and the bundle in one job, so the interpreter and its imports start
# once. Same files as the per-stage rules (extract.smk), which it takes precedence over: each
# stage writes its rule's log and its rule's benchmark file. The review stays a job of its
# own, beside the outside stages. Never under a cluster executor or with scattered sources.


ruleorder: secure_fused > extract_source
ruleorder: secure_fused > extract_checkpoints
ruleorder: secure_fused > write_bundle


rule secure_fused:
    input:
        data=sorted(set(P.paths.values())),
    output:
        releases=expand(f"{P.results}/extract/{{source}}.release.json", source=P.sources),
        sdc=expand(f"{P.results}/extract/{{source}}.sdc.json", source=P.sources),
        checkpoints=f"{P.results}/extract/checkpoints.json",
        checkpoints_sdc=f"{P.results}/extract/checkpoints.sdc.json",
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
        # the whole manifest, as write_bundle's (every secure-side stage reads a part of it)
        manifest=P.manifest_section("write_bundle"),
        sources=list(P.sources),
    threads: P.threads("secure_fused")
    resources:
        mem_mb=P.mem_mb("secure_fused"),
        runtime=P.runtime("secure_fused"),
    log:
        P.secure_fused_logs(),
    conda:
        "../envs/replisynth.yaml"
    script:
        "../scripts/secure_fused.py"
