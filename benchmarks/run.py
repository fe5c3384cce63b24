"""Time each stage of the pipeline (extract, synthesize, pin, verify) on generated register
data, over several runs, with peak memory; print medians and a markdown table row per size.

  python benchmarks/run.py 10000 100000 [--repeat 3] [--sdv-python /path/to/venv/bin/python]
  python benchmarks/run.py matrix [--kinds glm register ...] [--sizes 10000 1000000] \
      [--repeat 3] [--markdown table.md] [--json cells.json]

The matrix (issue 17) runs the whole workflow (`snakemake --cores 2`) on each kind of manifest
of `generate.KINDS` at each size, and reports per cell the median wall seconds, the CPU seconds
of the process tree (user + sys of every job), the peak resident set of the process tree, the
tier met, and each step's median seconds from the rules' Snakemake `benchmark:` files.

Each stage runs in a fresh process, as the workflow runs it (one Snakemake job per stage);
its seconds are timed inside that process (start-up and imports excluded, reported apart as
`startup s`), its peak memory is the largest resident set of its process tree, sampled
every 20 ms from /proc, and at least the process's own `ru_maxrss`.

SDV's GaussianCopulaSynthesizer (default_distribution="norm", fit + sample of the same
number of rows) is measured the same way when a Python with `sdv` is given
(`--sdv-python`, or `--sdv` for this interpreter). SDV is a benchmark-only optional
dependency (its licence rules it out at runtime); without it the output says
"SDV not installed" instead of a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("extract", "synthesize", "pin", "verify")

STAGE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from pathlib import Path
stage, manifest, results = sys.argv[1], sys.argv[2], Path(sys.argv[3])
from replisynth.core.parallel import set_threads
set_threads(int(sys.argv[4]))  # what the stage's Snakemake job gets (replisynth.workflow.resources)
from replisynth.config.manifest import load_manifest
from replisynth.workflow.runner import configure_logging
import logging
configure_logging(None); logging.getLogger("replisynth").setLevel(logging.WARNING)
m = load_manifest(manifest)
root = results / m.name
if stage == "extract":
    from replisynth.workflow.cli import cmd_extract
elif stage == "synthesize":
    from replisynth.workflow.pipeline import stage_synthesize
elif stage == "pin":
    from replisynth.workflow.pipeline import stage_pin
else:
    from replisynth.workflow.pipeline import stage_verify
startup = time.perf_counter() - t0
t, c = time.perf_counter(), time.process_time()
parts = {}
if stage == "extract":  # the checkpoint fits timed apart: SDV has no counterpart to them
    import replisynth.workflow.pipeline as P
    fits = P.stage_extract_checkpoints
    def timed_fits(*a, **k):
        t1 = time.perf_counter(); fits(*a, **k); parts["checkpoints"] = time.perf_counter() - t1
    P.stage_extract_checkpoints = timed_fits
    cmd_extract(m, results)
elif stage == "synthesize":
    for s in m.sources:
        stage_synthesize(root / "bundle", s.name, root / "synthesize" / f"{s.name}.parquet")
elif stage == "pin":
    for s in m.sources:
        files = {"parquet": root / "synthetic" / f"{s.name}.parquet", "csv": root / "synthetic" / f"{s.name}.csv"}
        stage_pin(root / "bundle", s.name, root / "synthesize" / f"{s.name}.parquet", files, root / "synthesize" / f"{s.name}.pin.json")
else:
    stage_verify(root / "bundle", {s.name: root / "synthetic" / f"{s.name}.parquet" for s in m.sources}, root / "verify" / "tiers.json")
secs, cpu = time.perf_counter() - t, time.process_time() - c
print(json.dumps({"stage": stage, "seconds": secs, "cpu": cpu, "startup": startup, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **parts}))
"""

SDV = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import pandas as pd
import sdv.metadata
from sdv.single_table import GaussianCopulaSynthesizer
startup = time.perf_counter() - t0
df = pd.read_parquet(sys.argv[1])
t, c = time.perf_counter(), time.process_time()
if hasattr(sdv.metadata, "Metadata"):  # SDV >= 1.15 (2.x: only this)
    md = sdv.metadata.Metadata.detect_from_dataframes({"register": df})
else:
    md = sdv.metadata.SingleTableMetadata()
    md.detect_from_dataframe(df)
s = GaussianCopulaSynthesizer(md, default_distribution="norm")
try:
    s.fit(df)
except Exception:  # SDV 2.x takes {table name: frame} and returns the same
    s.fit({"register": df})
out = s.sample(len(df))
if isinstance(out, dict):
    out = out["register"]
secs, cpu = time.perf_counter() - t, time.process_time() - c
import sdv
print(json.dumps({"stage": "sdv", "seconds": secs, "cpu": cpu, "startup": startup, "rows": len(out), "version": sdv.__version__,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _tree_rss_mb(pid: int) -> float:
    """Resident set of a process and all its descendants (MB), from /proc."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / 2**20


def _watch(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str, float, float]:
    """Run `cmd` to its end: (exit status, stdout, stderr, wall seconds, peak RSS MB of its
    process tree, sampled every 20 ms)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = [0.0]

    def poll() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            time.sleep(0.02)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    return proc.returncode, out, err, time.perf_counter() - t, peak[0]


def _run(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run a measuring child; its JSON line plus the tree's sampled peak RSS."""
    code, out, err, _, peak = _watch(cmd, env)
    if code != 0:
        raise RuntimeError(f"{cmd[-3:]} failed: {err[-2000:]}")
    rec = json.loads(out.strip().splitlines()[-1])
    rec["peak_mb"] = max(rec["peak_mb"], peak)
    return rec


RULE = {
    "extract": "extract_source",
    "synthesize": "sample_copula",
    "pin": "pin_checkpoints",
    "verify": "verify_tiers",
}


def stage_threads(stage: str, rows: int, columns: int, cores: int) -> int:
    """Threads the stage's Snakemake job runs with on `cores` cores (replisynth.workflow.resources)."""
    from replisynth.workflow.resources import job_resources

    return min(cores, job_resources(RULE[stage], rows * columns).threads)


def run_stage(stage: str, manifest: Path, results: Path, threads: int = 1) -> dict:
    return _run([sys.executable, "-c", STAGE, stage, str(manifest), str(results), str(threads)])


def run_snakemake(manifest: Path, workdir: Path, cores: int) -> dict:
    """The whole workflow (`snakemake --cores N` on the manifest, in its own directory): wall
    seconds from start to exit and the peak RSS of the process tree (every job included)."""
    cmd = [
        str(Path(sys.executable).with_name("snakemake")),
        "-s",
        str(HERE.parent / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        str(cores),
        "--quiet",
        "all",
        "--configfile",
        str(manifest),
    ]  # default target: all
    code, _, err, secs, peak = _watch(cmd)
    if code != 0:
        raise RuntimeError(f"snakemake failed: {err[-2000:]}")
    return {"seconds": secs, "peak_mb": peak}


def _bench_files(results: Path) -> dict[str, dict[str, float]]:
    """Seconds, CPU seconds and max RSS (MB) per rule from the Snakemake benchmark files under
    `results/benchmarks/<rule>/*.tsv` (summed over a rule's jobs; RSS the largest job's)."""
    import csv

    out: dict[str, dict[str, float]] = {}
    for f in sorted((results / "benchmarks").glob("*/*.tsv")):
        with f.open() as fh:
            row = next(csv.DictReader(fh, delimiter="\t"), None)
        if row is None:
            continue
        r = out.setdefault(f.parent.name, {"s": 0.0, "cpu": 0.0, "rss": 0.0})
        r["s"] += float(row["s"])
        r["cpu"] += _number(row.get("cpu_time"))
        r["rss"] = max(r["rss"], _number(row.get("max_rss")))
    return out


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "NA", "-") else 0.0
    except ValueError:
        return 0.0


# Rules whose work SDV's fit + sample also does: learn the schema and marginals, release
# them, draw. Checkpoint fits, pinning, verification, review and exports have no SDV
# counterpart.
LIKE_FOR_LIKE = (
    "extract_source",
    "extract_base",
    "extract_stratum",
    "gather_release",
    "write_bundle",
    "sample_copula",
    "sample_stratum",
    "gather_blocks",
)


def matrix_cell(
    kind: str, rows: int, repeat: int, cores: int = 2, sdv_py: str | None = None
) -> dict:
    """One cell of the matrix: `repeat` whole-workflow runs in fresh directories on one
    generated manifest; medians of wall, tree CPU and per-step seconds, the largest tree peak;
    with `sdv_py`, SDV's fit + sample of the same file in the same run."""
    import resource
    import shutil

    sys.path.insert(0, str(HERE))
    from generate import matrix_case

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        man = matrix_case(kind, rows, str(Path(tmp) / "data"))
        name = yaml_name(man)
        for _ in range(repeat):
            work = Path(tmp) / "smk"
            shutil.rmtree(work, ignore_errors=True)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            try:
                rec = run_snakemake(man, work, cores)
            except RuntimeError as exc:  # one failing cell does not stop the matrix
                lines = str(exc).strip().splitlines()
                return {"kind": kind, "rows": rows, "failed": lines[-1] if lines else "failed"}
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            res = work / "results" / name
            rec["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            rec["steps"] = _bench_files(res)
            rec["tier"] = json.loads((res / "verify" / "tiers.json").read_text())["tier_met"]
            runs.append(rec)
        sdv = [_sdv_run(sdv_py, man) for _ in range(repeat)] if sdv_py else []
    steps = sorted({r for x in runs for r in x["steps"]})
    cell = {
        "kind": kind,
        "rows": rows,
        "runs": len(runs),
        "seconds": statistics.median(x["seconds"] for x in runs),
        "cpu": statistics.median(x["cpu"] for x in runs),
        "peak_mb": max(x["peak_mb"] for x in runs),
        "tier": min(x["tier"] for x in runs),
        "steps": {
            r: statistics.median(x["steps"].get(r, {}).get("s", 0.0) for x in runs) for r in steps
        },
        "step_cpu": {
            r: statistics.median(x["steps"].get(r, {}).get("cpu", 0.0) for x in runs) for r in steps
        },
        "step_rss_mb": {r: max(x["steps"].get(r, {}).get("rss", 0.0) for x in runs) for r in steps},
    }
    if sdv:
        cell["sdv"] = {k: statistics.median(x[k] for x in sdv) for k in ("seconds", "cpu")}
        cell["sdv"]["version"] = sdv[0].get("version")
        like = sum(s for r, s in cell["steps"].items() if r in LIKE_FOR_LIKE)
        cell["like_for_like_seconds"] = like
        cell["sdv_ratio_like_for_like"] = cell["sdv"]["seconds"] / like if like else None
        cell["sdv_ratio_workflow"] = cell["sdv"]["seconds"] / cell["seconds"]
    return cell


def _sdv_run(py: str, manifest: Path) -> dict:
    """SDV GaussianCopula (norm) fit + sample of the manifest's one source file."""
    import yaml

    src = next(iter(yaml.safe_load(manifest.read_text())["sources"].values()))
    return _run([py, "-c", SDV, str(src["path"])])


def _sdv_columns(cell: dict) -> str:
    """SDV's seconds and the two ratios, when SDV was measured in this cell."""
    if "sdv" not in cell:
        return ""
    like = cell["sdv_ratio_like_for_like"]
    return (
        f" SDV {cell['sdv']['seconds']:.1f} s; SDV / (releases + synthesize) "
        f"{like:.1f}x; SDV / workflow {cell['sdv_ratio_workflow']:.2f}x |"
    )


def yaml_name(manifest: Path) -> str:
    import yaml

    return str(yaml.safe_load(manifest.read_text())["name"])


def matrix_table(cells: list[dict], top: int = 4) -> str:
    """Markdown: one row per cell, its `top` slowest steps with their seconds."""
    sdv = any("sdv" in c for c in cells)
    lines = [
        "| manifest | rows | wall s | CPU s (tree) | peak MB (tree) | tier | slowest steps (s) |"
        + (" SDV (GaussianCopula, norm) |" if sdv else ""),
        "| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if sdv else ""),
    ]
    for c in cells:
        if "failed" in c:
            lines.append(f"| {c['kind']} | {c['rows']:,} | failed: {c['failed'][:200]} | | | | |")
            continue
        slow = sorted(c["steps"].items(), key=lambda kv: -kv[1])[:top]
        lines.append(
            f"| {c['kind']} | {c['rows']:,} | {c['seconds']:.1f} | {c['cpu']:.1f} | "
            f"{c['peak_mb']:.0f} | {c['tier']} | "
            + ", ".join(f"{r} {s:.1f}" for r, s in slow)
            + " |"
            + _sdv_columns(c)
        )
    return "\n".join(lines) + "\n"


def matrix_main(argv: list[str]) -> None:
    sys.path.insert(0, str(HERE))
    from generate import KINDS

    ap = argparse.ArgumentParser(prog="run.py matrix")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--sizes", nargs="+", type=int, default=[10_000, 1_000_000, 10_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--json", help="also write every cell to this file")
    ap.add_argument("--sdv-python", help="a Python with sdv installed: SDV in the same run")
    a = ap.parse_args(argv)
    sdv_py = sdv_python(a.sdv_python, False) if a.sdv_python else None
    if a.sdv_python and not sdv_py:
        sys.exit(f"run.py matrix: no importable sdv in {a.sdv_python}")
    cells = []
    for rows in a.sizes:
        for kind in a.kinds:
            cells.append(matrix_cell(kind, rows, a.repeat, a.cores, sdv_py))
            print(matrix_table(cells[-1:]).splitlines()[-1], flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps(cells, indent=1))
    table = matrix_table(cells)
    print(table)
    if a.markdown:
        Path(a.markdown).write_text(table)


def sdv_python(explicit: str | None, here: bool) -> str | None:
    """The interpreter that has sdv (None when there is none)."""
    cands = [explicit] if explicit else ([sys.executable] if here else [])
    for py in cands:
        if py and subprocess.run([py, "-c", "import sdv"], capture_output=True).returncode == 0:
            return py
    return None


def bench(
    rows: int,
    repeat: int,
    sdv: bool = False,
    sdv_py: str | None = None,
    sdv_max_rows: int = 2_000_000,
    snakemake: bool = False,
    cores: int = 2,
) -> dict:
    sys.path.insert(0, str(HERE))
    from generate import main as generate

    out: dict = {"rows": rows}
    py = sdv_python(sdv_py, sdv) if (sdv or sdv_py) else None
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        generate(rows, str(d / "data"))
        man = d / "data" / "manifest.yaml"
        rec: dict[str, list] = {s: [] for s in (*STAGES, "sdv", "snakemake")}
        ncol = 20
        for _ in range(repeat):
            for s in STAGES:
                rec[s].append(run_stage(s, man, d / "res", stage_threads(s, rows, ncol, cores)))
            if snakemake:
                import shutil

                shutil.rmtree(d / "smk", ignore_errors=True)
                rec["snakemake"].append(run_snakemake(man, d / "smk", cores))
            if py and rows <= sdv_max_rows:
                rec["sdv"].append(_run([py, "-c", SDV, str(d / "data" / "register.parquet")]))
        if rec["snakemake"]:
            v = rec.pop("snakemake")
            out["snakemake"] = {
                "seconds": statistics.median(x["seconds"] for x in v),
                "peak_mb": max(x["peak_mb"] for x in v),
            }
        rec.pop("snakemake", None)
        for s, v in rec.items():
            if v:
                out[s] = {
                    "seconds": statistics.median(x["seconds"] for x in v),
                    "cpu": statistics.median(x["cpu"] for x in v),
                    "peak_mb": max(x["peak_mb"] for x in v),
                    "startup": statistics.median(x["startup"] for x in v),
                }
                if "checkpoints" in v[0]:
                    out[s]["checkpoints"] = statistics.median(x["checkpoints"] for x in v)
        if not (sdv or sdv_py):
            out["sdv"] = "not measured (give --sdv-python)"
        elif py is None:
            out["sdv"] = (
                "SDV not installed (no importable sdv in " + (sdv_py or sys.executable) + ")"
            )
        elif rows > sdv_max_rows:
            out["sdv"] = f"not run above {sdv_max_rows:,} rows (--sdv-max-rows)"
        else:
            out["sdv"]["version"] = rec["sdv"][0].get("version")
        tiers = json.loads((d / "res" / f"register_{rows}" / "verify" / "tiers.json").read_text())
        out["tier_met"] = tiers["tier_met"]
        out["total_seconds"] = sum(out[s]["seconds"] for s in STAGES)
        out["startup_seconds"] = sum(out[s]["startup"] for s in STAGES)
        out["total_cpu"] = sum(out[s]["cpu"] for s in STAGES)
        out["peak_mb"] = max(out[s]["peak_mb"] for s in STAGES)
        # like for like: SDV's fit + sample against our releases (schema, marginals, rank
        # correlations, the bundle) + synthesize; and with the checkpoint fits added
        out["fit_sample_seconds"] = (
            out["extract"]["seconds"]
            - out["extract"].get("checkpoints", 0.0)
            + out["synthesize"]["seconds"]
        )
        out["fit_sample_fits_seconds"] = out["extract"]["seconds"] + out["synthesize"]["seconds"]
        if isinstance(out.get("sdv"), dict):
            out["ratio_vs_sdv"] = out["sdv"]["seconds"] / out["total_seconds"]
            out["cpu_ratio_vs_sdv"] = out["sdv"]["cpu"] / out["total_cpu"]
            out["fit_sample_ratio_vs_sdv"] = out["sdv"]["seconds"] / out["fit_sample_seconds"]
            out["fit_sample_fits_ratio_vs_sdv"] = (
                out["sdv"]["seconds"] / out["fit_sample_fits_seconds"]
            )
            if "snakemake" in out:
                out["snakemake_ratio_vs_sdv"] = out["sdv"]["seconds"] / out["snakemake"]["seconds"]
    return out


def main() -> None:
    if sys.argv[1:2] == ["matrix"]:
        return matrix_main(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="+", type=int)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sdv", action="store_true", help="measure SDV with this interpreter")
    ap.add_argument("--sdv-python", help="a Python with sdv installed (its own venv)")
    ap.add_argument("--sdv-max-rows", type=int, default=2_000_000)
    ap.add_argument("--json", help="also write every result to this file")
    ap.add_argument(
        "--snakemake",
        action="store_true",
        help="also time the whole workflow (snakemake --cores N, every job)",
    )
    ap.add_argument(
        "--cores",
        type=int,
        default=2,
        help="cores for --snakemake and the stages' threads (default 2)",
    )
    a = ap.parse_args()
    print(
        "| rows | extract s | synthesize s | pin s | verify s | total s (CPU s) | startup s | peak MB | tier | SDV fit+sample s (CPU s) | SDV peak MB | SDV / total (CPU) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    results = []
    for n in a.sizes:
        r = bench(n, a.repeat, a.sdv, a.sdv_python, a.sdv_max_rows, a.snakemake, a.cores)
        results.append(r)
        sd = r.get("sdv")
        sdv_cols = (
            f"{sd['seconds']:.1f} ({sd['cpu']:.1f}) | {sd['peak_mb']:.0f} | {r['ratio_vs_sdv']:.1f}x ({r['cpu_ratio_vs_sdv']:.1f}x)"
            if isinstance(sd, dict)
            else f"{sd} | – | –"
        )
        print(
            f"| {n:,} | "
            + " | ".join(f"{r[s]['seconds']:.2f}" for s in STAGES)
            + f" | {r['total_seconds']:.2f} ({r['total_cpu']:.1f}) | {r['startup_seconds']:.1f} | {r['peak_mb']:.0f} | {r['tier_met']} | {sdv_cols} |",
            flush=True,
        )
        print(
            "  peak MB per stage: " + ", ".join(f"{s} {r[s]['peak_mb']:.0f}" for s in STAGES),
            flush=True,
        )
        print(
            f"  fit + sample: releases + synthesize {r['fit_sample_seconds']:.2f} s; with the checkpoint fits "
            f"{r['fit_sample_fits_seconds']:.2f} s",
            flush=True,
        )
        if "fit_sample_ratio_vs_sdv" in r:
            print(
                f"  SDV / ours, fit + sample like for like {r['fit_sample_ratio_vs_sdv']:.1f}x; with our checkpoint fits "
                f"{r['fit_sample_fits_ratio_vs_sdv']:.1f}x",
                flush=True,
            )
        if "snakemake" in r:
            sm = r["snakemake"]
            ratio = (
                f", SDV / workflow {r['snakemake_ratio_vs_sdv']:.1f}x"
                if "snakemake_ratio_vs_sdv" in r
                else ""
            )
            print(
                f"  whole workflow (snakemake --cores {a.cores}, every job incl. start-up, csv, report): {sm['seconds']:.2f} s wall, "
                f"peak {sm['peak_mb']:.0f} MB (process tree){ratio}",
                flush=True,
            )
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
