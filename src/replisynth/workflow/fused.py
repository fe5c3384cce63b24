"""The stages of each side in one process for small local runs (`fuse`, docs/performance.md):
each stage keeps its own log file and writes its own benchmark file, in the layout and the
columns of the stage's rule, so reports, provenance and benchmarks read them unchanged."""

from __future__ import annotations

import ctypes
import datetime
import gc
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from replisynth.core.errors import EXIT_INTERNAL
from replisynth.io.atomic import write_text

# Snakemake's benchmark columns; what one process cannot tell per stage is NA, as Snakemake
# writes it when it collected nothing.
BENCHMARK_HEADER = (
    "s",
    "h:m:s",
    "max_rss",
    "max_vms",
    "max_uss",
    "max_pss",
    "io_in",
    "io_out",
    "mean_load",
    "cpu_time",
)


@dataclass(frozen=True)
class Stage:
    """One stage of a fused job: its rule's log and benchmark paths and the call."""

    log: str
    benchmark: str | None
    call: Callable[[], Any]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def benchmark_row(seconds: float, cpu: float, max_rss_mb: float) -> str:
    """A benchmark file's text: header and one row (wall and CPU seconds of the stage, the
    stage's peak resident set in MB: the process's since the stage started where Linux lets
    it be reset, else the process's peak so far)."""
    hms = str(datetime.timedelta(seconds=int(seconds)))
    values = [f"{seconds:.4f}", hms, f"{max_rss_mb:.2f}"] + ["NA"] * 6 + [f"{cpu:.2f}"]
    return "\t".join(BENCHMARK_HEADER) + "\n" + "\t".join(values) + "\n"


def run_stages(stages: list[Stage], threads: int = 1) -> None:
    """Run the stages in order, each through `runner.run` (its log file, one line and the exit
    status on failure: the job stops at the first failing stage) and timed into its
    benchmark file. Between stages the memory the last one freed goes back to the system
    (`release_memory`), so each stage starts from little more than the job's imports."""
    from replisynth.workflow.runner import run

    for stage in stages:
        start, cpu = time.perf_counter(), _cpu_seconds()
        per_stage = _reset_peak()
        run(stage.log, threads=threads, stage=stage.call)
        if stage.benchmark is not None:
            Path(stage.benchmark).parent.mkdir(parents=True, exist_ok=True)
            write_text(
                stage.benchmark,
                benchmark_row(
                    time.perf_counter() - start, _cpu_seconds() - cpu, _peak_mb(per_stage)
                ),
            )
        release_memory()


RELEASE_FROM_MB = 256  # below this resident set a fused job keeps what it freed (it is small)


def release_memory() -> None:
    """Return what the last stage freed to the system once the process holds more than
    RELEASE_FROM_MB: garbage collected, pyarrow's pool released and glibc's heap trimmed
    (`malloc_trim`; skipped where it does not exist). Without it a 1M-row job's pin stage
    started from 0.6–0.8 GB of the synthesis' freed memory (0.35 GB with it) and each
    stage's peak grew by the leftovers of the ones before."""
    if (_status_mb("VmRSS") or 0.0) < RELEASE_FROM_MB:
        return
    gc.collect()
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _status_mb(field: str) -> float | None:
    """A size line of /proc/self/status (VmRSS: resident now, VmHWM: its peak) in MB; None
    where it cannot be read (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak() -> bool:
    """Reset the process's peak resident set (Linux: VmHWM, by writing 5 to
    /proc/self/clear_refs); False where that cannot be done."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb(since_reset: bool) -> float:
    """The peak resident set in MB: since the last `_reset_peak` when it worked (VmHWM),
    else the process's whole-life peak (ru_maxrss)."""
    peak = _status_mb("VmHWM") if since_reset else None
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_status(stages: list[Stage], threads: int) -> int:
    """Run `stages` in a forked child; its exit status (the stage's own, as `runner.run` sets
    it)."""
    try:
        run_stages(stages, threads)
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_INTERNAL
    except BaseException:  # runner.run reports a stage's failure; anything else is internal
        return EXIT_INTERNAL
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def run_beside(main: list[Stage], side: list[Stage], threads: int, parallel: bool) -> None:
    """Run `side` in a forked child (it shares this process's imports and start-up) while
    `main` runs here, then wait for it; one after the other (main first) when not `parallel`.
    The first failure exits with its stage's status; a failing `main` stops the child."""
    if not (parallel and main and side and hasattr(os, "fork")):
        run_stages(main + side, threads)
        return
    pid = os.fork()
    if pid == 0:  # the child never returns into the caller
        os._exit(_child_status(side, threads))
    try:
        run_stages(main, threads)
    except BaseException:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        raise
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 0:
        raise SystemExit(code if code > 0 else EXIT_INTERNAL)


def secure_stages(
    manifest: Callable[[], Any], results: str, bundle_dir: str, sources: list[str]
) -> tuple[list[Stage], list[Stage], list[Stage]]:
    """The secure side of a run in its rules' paths (rules/extract.smk): extract_source per
    source, extract_checkpoints (independent of them: it may run beside), write_bundle.
    `manifest` loads the manifest (in the stage, so a bad manifest is its stage's one line)."""
    from replisynth.workflow import pipeline

    logs, bench, ext = f"{results}/logs", f"{results}/benchmarks", f"{results}/extract"

    def extract(source: str) -> Callable[[], None]:
        release, sdc = f"{ext}/{source}.release.json", f"{ext}/{source}.sdc.json"
        return lambda: pipeline.stage_extract_source(manifest(), source, release, sdc)

    sources_ = [
        Stage(f"{logs}/extract_source/{s}.log", f"{bench}/extract_source/{s}.tsv", extract(s))
        for s in sources
    ]
    checkpoints = Stage(
        f"{logs}/extract_checkpoints/all.log",
        f"{bench}/extract_checkpoints/all.tsv",
        lambda: pipeline.stage_extract_checkpoints(
            manifest(), f"{ext}/checkpoints.json", f"{ext}/checkpoints.sdc.json"
        ),
    )
    bundle = Stage(
        f"{logs}/write_bundle/all.log",
        f"{bench}/write_bundle/all.tsv",
        lambda: pipeline.stage_write_bundle(
            manifest(),
            {s: f"{ext}/{s}.release.json" for s in sources},
            f"{ext}/checkpoints.json",
            [*(f"{ext}/{s}.sdc.json" for s in sources), f"{ext}/checkpoints.sdc.json"],
            Path(bundle_dir),
        ),
    )
    return sources_, [checkpoints], [bundle]


def run_secure(
    manifest: Callable[[], Any],
    results: str,
    bundle_dir: str,
    sources: list[str],
    threads: int,
) -> None:
    """The secure side in one job: the sources' extraction here and the checkpoints' beside
    it in a child process when the job holds two cores, then the bundle."""
    extract, checkpoints, bundle = secure_stages(manifest, results, bundle_dir, sources)
    parallel = threads >= 2
    run_beside(extract, checkpoints, max(1, threads // 2) if parallel else threads, parallel)
    run_stages(bundle, threads)


def outside_stages(
    results: str,
    bundle_dir: str,
    sources: list[str],
    formats: dict[str, str],
    benchmarks: list[str],
) -> list[Stage]:
    """The outside side of a run, in the order of its rules' DAG: per source sample_copula and
    pin_checkpoints, the .dta/.sav exports verification reads, verify_tiers, render_report,
    then the csv exports and README.txt. Paths follow the rules' (rules/synthesize.smk,
    verify.smk, report.smk)."""
    from replisynth.workflow import pipeline

    logs, bench = f"{results}/logs", f"{results}/benchmarks"
    synthetic = {s: f"{results}/synthetic/{s}.parquet" for s in sources}
    stages: list[Stage] = []
    for s in sources:
        unpinned = f"{results}/synthesize/{s}.parquet"
        stages.append(
            Stage(
                f"{logs}/sample_copula/{s}.log",
                f"{bench}/sample_copula/{s}.tsv",
                partial(pipeline.stage_synthesize, bundle_dir, s, unpinned),
            )
        )
        stages.append(
            Stage(
                f"{logs}/pin_checkpoints/{s}.log",
                f"{bench}/pin_checkpoints/{s}.tsv",
                partial(
                    pipeline.stage_pin,
                    bundle_dir,
                    s,
                    unpinned,
                    {"parquet": synthetic[s]},
                    f"{results}/synthesize/{s}.pin.json",
                ),
            )
        )
    for s in sources:
        export = {"dta": pipeline.stage_export_stata, "sav": pipeline.stage_export_spss}.get(
            formats[s]
        )
        if export is not None:
            rule = "export_stata" if formats[s] == "dta" else "export_spss"
            out = f"{results}/synthetic/{s}.{formats[s]}"
            stages.append(
                Stage(
                    f"{logs}/{rule}/{s}.log",
                    f"{bench}/{rule}/{s}.tsv",
                    partial(export, bundle_dir, s, synthetic[s], out),
                )
            )
    tiers = f"{results}/verify/tiers.json"
    stages.append(
        Stage(
            f"{logs}/verify_tiers/all.log",
            f"{bench}/verify_tiers/all.tsv",
            lambda: pipeline.stage_verify(bundle_dir, dict(synthetic), tiers),
        )
    )
    stages.append(
        Stage(
            f"{logs}/render_report/all.log",
            None,  # the report's rule has no benchmark file either
            lambda: pipeline.stage_report(
                bundle_dir,
                dict(synthetic),
                tiers,
                f"{results}/verify/report.html",
                f"{results}/verify/certificate.txt",
                benchmarks=list(benchmarks),
            ),
        )
    )
    # after the report, as beside it in one job per stage: not part of the certified run
    stages += [
        Stage(
            f"{logs}/export_csv/{s}.log",
            f"{bench}/export_csv/{s}.tsv",
            partial(pipeline.stage_export_csv, synthetic[s], f"{results}/synthetic/{s}.csv"),
        )
        for s in sources
    ]
    stages.append(
        Stage(
            f"{logs}/synthetic_readme/all.log",
            None,
            partial(pipeline.stage_synthetic_readme, bundle_dir, f"{results}/synthetic/README.txt"),
        )
    )
    return stages
