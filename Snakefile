# replisynth: confidential microdata -> disclosure-safe bundle -> synthetic mirror -> certificate.
#
#   snakemake --cores 2                          whole pipeline on config/config.yaml (demo)
#   snakemake --cores 2 --configfile my.yaml     another manifest (it replaces the demo's keys)
#   snakemake --cores 2 extract                  secure side only: the bundle and its review
#   snakemake --cores 2 --config bundle=DIR      outside side: from a bundle alone
#
# Path grammar (see src/replisynth/workflow/workflow.py):
#   results/<name>/{extract,bundle,synthesize,synthetic,verify,logs,benchmarks}/...
from snakemake.utils import min_version

min_version("8.0")


report: "docs/workflow_report.rst"


# The demo manifest is the default; a --configfile replaces it instead of being merged into it.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


from replisynth.workflow.workflow import drop_local_rate_limit, under_cluster, workflow_plan

# the manifest files, re-read by replisynth: a key given twice is an error, not the last value
# scatter: auto splits strata over jobs only under a cluster executor (docs/hpc.md)
P = workflow_plan(
    config,
    [str(f) for f in workflow.config_settings.configfiles] or ["config/config.yaml"],
    cluster=under_cluster(workflow),
)


wildcard_constraints:
    source="|".join(P.sources),


# no job rate limit on one machine: its last timer delays the exit by a second
onstart:
    drop_local_rate_limit(workflow)


rule all:
    input:
        f"{P.results}/verify/verdict.txt",
        P.all_synthetic(),
        f"{P.results}/synthetic/README.txt",
        P.review_files(),
    default_target: True


if not P.outside:

    include: "rules/extract.smk"
    include: "rules/audit.smk"


include: "rules/synthesize.smk"
include: "rules/verify.smk"
include: "rules/report.smk"


# a small local run: the outside stages in one job (`fuse`, docs/performance.md)
if P.fused:

    include: "rules/fused.smk"


# ... and its secure side too (never under a cluster executor)
if P.fused_secure:

    include: "rules/fused_secure.smk"
