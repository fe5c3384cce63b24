"""What the Snakefile needs to lay out the DAG: run name, sources, paths, and whether this
is a secure-side or an outside (`bundle=DIR`) run. Layout: docs/method.md, "Workflow reruns".
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from replisynth.config.manifest import Manifest, load_manifest
from replisynth.core.errors import EXIT_BAD_INPUT, ManifestError, ReplisynthError


@dataclass(frozen=True)
class WorkflowPlan:
    """Everything the rules interpolate; `manifest` is the validated manifest."""

    outside: bool
    manifest: Manifest
    bundle_dir: str
    results: str
    sources: tuple[str, ...]
    formats: dict[str, str] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    scatter: dict[str, int] = field(default_factory=dict)  # source -> stratum jobs (>= 2 only)
    bundle_sha256: str = ""  # outside runs: the bundle's fingerprint (a rule parameter)
    fused: bool = False  # the outside stages in one job (`fuse_plan`, rules/fused.smk)
    fused_secure: bool = False  # the secure stages in one job (rules/fused_secure.smk)

    @property
    def name(self) -> str:
        return self.manifest.name

    def sources_regex(self, scattered: bool) -> str:
        """Wildcard constraint for the rules of scattered (or of unscattered) sources; a
        pattern that matches nothing when there are none."""
        names = [s for s in self.sources if (s in self.scatter) == scattered]
        return "|".join(names) if names else "(?!)"

    def shards(self, kind: str):
        """Input function of a gather rule: the shard files of the source's stratum jobs."""
        pattern = {
            "release": f"{self.results}/extract/{{source}}.strata/{{shard}}.json",
            "blocks": f"{self.results}/synthesize/{{source}}.strata/{{shard}}.pkl",
        }[kind]
        return lambda wc: [
            pattern.format(source=wc.source, shard=k) for k in range(self.scatter[wc.source])
        ]

    def synthetic_outputs(self, source: str) -> list[str]:
        """The synthetic files of a source: parquet, csv, and dta or sav for .dta and .sav sources."""
        fmt = self.formats[source]
        exts = ["parquet", "csv"] + ([fmt] if fmt in ("dta", "sav") else [])
        return [f"{self.results}/synthetic/{source}.{e}" for e in exts]

    def all_synthetic(self) -> list[str]:
        return [p for s in self.sources for p in self.synthetic_outputs(s)]

    def verified_synthetic(self) -> list[str]:
        """The synthetic files verification reads: parquet, and dta or sav (labels, formats,
        missing codes) for .dta and .sav sources."""
        return [p for p in self.all_synthetic() if not p.endswith(".csv")]

    def manifest_section(self, rule: str):
        """A rule parameter: the hash of exactly the manifest section the rule reads (see
        `manifest_sections`), so that Snakemake's params trigger reruns a job when, and only
        when, an edit of the manifest changes what the job computes."""
        m = self.manifest
        if rule in PER_SOURCE_RULES:
            return lambda wc: section_hash(manifest_sections(m, rule, wc.source))
        return section_hash(manifest_sections(m, rule))

    def bundle_files(self) -> list[str]:
        from replisynth.disclosure.bundle import bundle_files

        return [f"{self.bundle_dir}/{f}" for f in bundle_files(self.manifest)]

    def review_files(self) -> list[str]:
        """The output checker's packet (secure side only; none for a run from a bundle)."""
        if self.outside:
            return []
        return [
            f"{self.results}/review/disclosure_review.json",
            f"{self.results}/review/disclosure_review.txt",
        ]

    # Scheduler requests (threads, mem_mb, runtime) from the size of the data a job touches;
    # see replisynth.workflow.resources. Each returns a function Snakemake calls with the job's
    # wildcards, input and attempt (a retry asks for more).
    def _cells(self, rule: str, wildcards: Any, input: Any) -> int:
        from replisynth.workflow.resources import cells_of, release_cells

        if rule == "secure_fused":  # every source's data, one stage at a time
            return max((cells_of([p]) for p in self.paths.values()), default=0)
        if rule == "outside_fused":  # every source's synthetic data, one stage at a time
            from types import SimpleNamespace

            return max(
                (
                    self._cells("sample_copula", SimpleNamespace(source=s), input)
                    for s in self.sources
                ),
                default=0,
            )
        if rule in ("sample_copula", "sample_stratum"):
            from replisynth.disclosure.bundle import source_file
            from replisynth.io.files import read_json

            p = Path(self.bundle_dir) / source_file(wildcards.source)
            try:
                return release_cells(read_json(p), self.manifest.source(wildcards.source).rows)
            except Exception:  # not written yet (dry run): the source data's size instead
                return (
                    cells_of([self.paths[wildcards.source]])
                    if wildcards.source in self.paths
                    else 0
                )
        return cells_of([str(f) for f in input])

    def threads(self, rule: str):
        from replisynth.workflow.resources import job_resources

        return lambda wildcards, input, attempt: (
            job_resources(rule, self._cells(rule, wildcards, input), attempt).threads
        )

    def mem_mb(self, rule: str):
        from replisynth.workflow.resources import job_resources

        return lambda wildcards, input, attempt: (
            job_resources(rule, self._cells(rule, wildcards, input), attempt).mem_mb
        )

    def runtime(self, rule: str):
        from replisynth.workflow.resources import job_resources

        return lambda wildcards, input, attempt: (
            job_resources(rule, self._cells(rule, wildcards, input), attempt).runtime
        )

    def secure_fused_logs(self) -> list[str]:
        """The log files of the stages the secure fused job runs, at their rules' paths."""
        logs = f"{self.results}/logs"
        return [
            *(f"{logs}/extract_source/{s}.log" for s in self.sources),
            f"{logs}/extract_checkpoints/all.log",
            f"{logs}/write_bundle/all.log",
        ]

    def fused_labelled(self) -> list[str]:
        """The .dta and .sav exports the fused outside job writes (verification reads them)."""
        return [p for p in self.verified_synthetic() if not p.endswith(".parquet")]

    def fused_logs(self) -> list[str]:
        """The log files of the stages the fused outside job runs, at their rules' paths."""
        logs = f"{self.results}/logs"
        out = [
            f"{logs}/{r}/{s}.log"
            for s in self.sources
            for r in ("sample_copula", "pin_checkpoints")
        ]
        rule = {"dta": "export_stata", "sav": "export_spss"}
        out += [
            f"{logs}/{rule[self.formats[s]]}/{s}.log"
            for s in self.sources
            if self.formats[s] in rule
        ]
        out += [f"{logs}/verify_tiers/all.log", f"{logs}/render_report/all.log"]
        return (
            out
            + [f"{logs}/export_csv/{s}.log" for s in self.sources]
            + [f"{logs}/synthetic_readme/all.log"]
        )

    def benchmarks(self) -> list[str]:
        """Benchmark files of every rule that runs before the report, for the provenance table
        of the report and the certificate. The csv export (`export_csv`) is not among them: it
        writes the verified parquet data as text beside the report, so its time is not part of
        the certified run."""
        b = f"{self.results}/benchmarks"

        def per_source(rule: str, scattered: list[str]) -> list[str]:
            """`rule`'s file per source; for a scattered source the files of its jobs instead
            (`scattered`: rules, the one with "{k}" once per shard)."""
            res = []
            for s in self.sources:
                if s not in self.scatter:
                    res.append(f"{b}/{rule}/{s}.tsv")
                    continue
                for r in scattered:
                    if r.endswith("{k}"):
                        res += [f"{b}/{r[:-3]}/{s}.{k}.tsv" for k in range(self.scatter[s])]
                    else:
                        res.append(f"{b}/{r}/{s}.tsv")
            return res

        out = []
        if not self.outside:
            out += per_source(
                "extract_source", ["extract_base", "extract_stratum{k}", "gather_release"]
            )
            out += [
                f"{b}/extract_checkpoints/all.tsv",
                f"{b}/write_bundle/all.tsv",
                f"{b}/review/all.tsv",
            ]
        out += per_source("sample_copula", ["sample_stratum{k}", "gather_blocks"])
        out += [f"{b}/pin_checkpoints/{s}.tsv" for s in self.sources]
        out += [f"{b}/export_stata/{s}.tsv" for s in self.sources if self.formats[s] == "dta"]
        out += [f"{b}/export_spss/{s}.tsv" for s in self.sources if self.formats[s] == "sav"]
        out += [f"{b}/verify_tiers/all.tsv"]
        return out


# Secure-side rules of one source: they read its section, the SDC settings and the
# checkpoints on it (which columns stay categorical), never the seed or the row count.
PER_SOURCE_RULES = ("extract_source", "extract_base", "extract_stratum", "gather_release")


def manifest_sections(m: Manifest, rule: str, source: str | None = None) -> dict[str, Any]:
    """The part of the manifest a secure-side rule's output depends on. The bundle records
    the whole manifest (write_bundle, audit_disclosure: all of it); the outside rules read the
    bundle, so a changed bundle reruns them (its file is their input)."""
    sdc = {k: v for k, v in asdict(m.sdc).items() if k != "overridden"}  # the values in force
    if rule in PER_SOURCE_RULES:
        src = {k: v for k, v in m.raw["sources"][source].items() if k != "rows"}
        cps = [c for c in m.raw.get("checkpoints", []) if c.get("source") == source]
        return {"source": src, "sdc": sdc, "checkpoints": cps}
    if rule == "extract_checkpoints":  # the fits, and the ledger's strata of their sources
        cps = m.raw.get("checkpoints", [])
        used = sorted({c.get("source") for c in cps if c.get("source") in m.raw["sources"]})
        srcs = {s: {k: v for k, v in m.raw["sources"][s].items() if k != "rows"} for s in used}
        return {"sdc": sdc, "checkpoints": cps, "sources": srcs}
    return {"manifest": m.raw, "sdc": sdc}


def section_hash(section: Any) -> str:
    """sha256 of the canonical JSON of `section` (sorted keys), the first 16 hex digits."""
    text = json.dumps(section, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def under_cluster(workflow: Any) -> bool:
    """Whether Snakemake's `workflow` submits jobs through a cluster executor: the main
    process then has a job limit (`--jobs`, which a local run turns into cores), and each
    submitted job re-reads the Snakefile in remote mode (so it makes the same plan)."""
    nodes = getattr(getattr(workflow, "resource_settings", None), "nodes", None)
    return nodes is not None or bool(getattr(workflow, "remote_exec", False))


def drop_local_rate_limit(workflow: Any) -> None:
    """On one machine, drop Snakemake's default job rate limit (100 jobs a second; called
    from `onstart`, once the scheduler exists): each scheduling round starts a one-second
    timer, and the process waits for the last one when it exits, a second added to every
    local run while the cores already bound how many jobs start. A limit given explicitly,
    and any run under a cluster executor, keep theirs."""
    scheduler: Any = getattr(workflow, "scheduler", None)
    limiter = getattr(scheduler, "job_rate_limiter", None)
    if (
        scheduler is not None
        and limiter is not None
        and not under_cluster(workflow)
        and (getattr(limiter, "max_jobs", None), getattr(limiter, "timespan", None)) == (100, 1)
    ):
        scheduler.job_rate_limiter = None


def scatter_plan(
    setting: Any, strata: dict[str, bool], cells: dict[str, int], cluster: bool = True
) -> dict[str, int]:
    """Stratum jobs per source from the `scatter` setting: an integer N >= 2 scatters every
    source with strata over N jobs, 0 or 1 none, "auto" none on one machine (`cluster`
    false: the stratum jobs' start-up and reads of the source cost more than they save
    there) and, under a cluster executor, 4 jobs for sources with strata of at least
    AUTO_SCATTER_CELLS cells (the per-stratum work then outweighs a job's start-up and its
    read of the source)."""
    from replisynth.workflow.resources import AUTO_SCATTER_CELLS, AUTO_SCATTER_JOBS

    if setting is None or setting == "auto":
        if not cluster:
            return {}
        return {
            s: AUTO_SCATTER_JOBS
            for s, has in strata.items()
            if has and cells.get(s, 0) >= AUTO_SCATTER_CELLS
        }
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise ManifestError(
            f"scatter: must be auto or an integer >= 0 (stratum jobs per source), got {setting!r}"
        )
    return {s: setting for s, has in strata.items() if has} if setting >= 2 else {}


def fuse_plan(
    setting: Any,
    cells: dict[str, int],
    rows: dict[str, int | None],
    scattered: bool,
    cluster: bool,
) -> bool:
    """Whether the outside stages (synthesis, pinning, the labelled exports, verification,
    the report) run in one job (rules/fused.smk) instead of one job each: `fuse: auto` (the
    default) fuses a local run (no cluster executor, no scattered source) whose sources
    hold at most FUSE_CELLS cells each and ask for at most FUSE_ROWS synthetic rows, where
    each job's start-up (the interpreter and its imports, about a second) outweighs what
    running the stages' jobs side by side would save; true fuses any unscattered run, false
    never fuses (a YAML boolean, or the words from `--config fuse=false`)."""
    from replisynth.workflow.resources import FUSE_CELLS, FUSE_ROWS

    if setting is None or setting == "auto":
        return (
            not cluster
            and not scattered
            and all(0 < c <= FUSE_CELLS for c in cells.values())
            and all(r is None or r <= FUSE_ROWS for r in rows.values())
        )
    if isinstance(setting, str) and setting.lower() in ("true", "false"):
        setting = setting.lower() == "true"  # --config fuse=false gives the word
    if not isinstance(setting, bool):
        raise ManifestError(
            f"fuse: must be auto, true or false (the outside stages in one job), got {setting!r}"
        )
    return setting and not scattered


def apply_output_settings(config: dict[str, Any]) -> None:
    """`output: {private: true}`: every job this Snakemake starts (they inherit its
    environment, also through sbatch) writes files readable by their owner only."""
    from replisynth.config.manifest import private_outputs
    from replisynth.io.atomic import PRIVATE_ENV

    if private_outputs(config):
        os.environ[PRIVATE_ENV] = "1"


def workflow_plan(
    config: dict[str, Any], configfiles: list[str] | None = None, cluster: bool = True
) -> WorkflowPlan:
    """Build the plan from Snakemake's config; a manifest error stops the run with its
    message (no traceback). `configfiles` (the manifest files Snakemake read) are re-read
    with replisynth's loader, which Snakemake's does not replace: a duplicated key.
    `cluster`: jobs run under a cluster executor (`scatter: auto` scatters only then)."""
    try:
        from replisynth.config.manifest import read_manifest_yaml

        for f in configfiles or []:
            read_manifest_yaml(Path(f))
        apply_output_settings(config)
        if config.get("bundle"):
            from replisynth.disclosure.bundle import load_bundle
            from replisynth.workflow.resources import release_cells

            b = load_bundle(config["bundle"])
            m = b.manifest
            cells = {s.name: release_cells(b.releases[s.name], s.rows) for s in m.sources}
            scatter = scatter_plan(
                config.get("scatter"), {s.name: bool(s.strata) for s in m.sources}, cells, cluster
            )
            return WorkflowPlan(
                outside=True,
                manifest=m,
                bundle_dir=str(Path(config["bundle"])),
                results=f"results/{m.name}",
                sources=tuple(s.name for s in m.sources),
                formats={s.name: s.format for s in m.sources},
                scatter=scatter,
                bundle_sha256=b.sha256,
                fused=fuse_plan(config.get("fuse"), cells, {}, bool(scatter), cluster),
            )
        from replisynth.workflow.resources import file_cells

        m = load_manifest(config)
        from replisynth.io.input_checks import check_formulas

        check_formulas(m)  # before any job starts
        strata = {s.name: bool(s.strata) for s in m.sources}
        cells = {s.name: file_cells(s.path) for s in m.sources if s.strata} if cluster else {}
        scatter = scatter_plan(config.get("scatter"), strata, cells, cluster)
        fused = fuse_plan(
            config.get("fuse"),
            {s.name: file_cells(s.path) for s in m.sources} if not cluster else {},
            {s.name: s.rows for s in m.sources},
            bool(scatter),
            cluster,
        )
        return WorkflowPlan(
            outside=False,
            manifest=m,
            bundle_dir=f"results/{m.name}/bundle",
            results=f"results/{m.name}",
            sources=tuple(s.name for s in m.sources),
            formats={s.name: s.format for s in m.sources},
            paths={s.name: s.path for s in m.sources},
            scatter=scatter,
            fused=fused,
            fused_secure=fused and not cluster,  # its jobs' start-ups outweigh them here too
        )
    except ReplisynthError as exc:
        sys.stderr.write(f"replisynth: {exc}\n")
        raise SystemExit(EXIT_BAD_INPUT) from None
