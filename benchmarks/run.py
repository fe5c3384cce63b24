"""Time each stage of the pipeline (extract, synthesize+pin, verify) on generated register
data, over several runs, with peak memory; print medians and a markdown table row per size.

  python benchmarks/run.py 10000 100000 [--repeat 3] [--sdv]

Peak RSS is measured per stage in a fresh subprocess (resource.getrusage of the child).
SDV (GaussianCopulaSynthesizer, norm) is measured the same way when installed (`--sdv`);
it is a benchmark-only optional dependency and is skipped, saying so, when absent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

STAGE = r"""
import json, resource, sys, time
from pathlib import Path
stage, manifest, results = sys.argv[1], sys.argv[2], Path(sys.argv[3])
from replisynth.manifest import load_manifest
from replisynth.runner import configure_logging
import logging
configure_logging(None); logging.getLogger("replisynth").setLevel(logging.WARNING)
m = load_manifest(manifest)
t = time.perf_counter()
if stage == "extract":
    from replisynth.cli import cmd_extract
    cmd_extract(m, results)
elif stage == "synthesize":
    from replisynth.cli import cmd_synthesize
    cmd_synthesize(results / m.name / "bundle", results)
elif stage == "verify":
    from replisynth.pipeline import stage_verify
    b = results / m.name / "bundle"
    stage_verify(b, {s.name: results / m.name / "synthetic" / f"{s.name}.parquet" for s in m.sources}, results / m.name / "verify" / "tiers.json")
elif stage == "sdv":
    import pandas as pd
    from sdv.metadata import SingleTableMetadata
    from sdv.single_table import GaussianCopulaSynthesizer
    df = pd.read_parquet(m.sources[0].path)
    md = SingleTableMetadata(); md.detect_from_dataframe(df)
    s = GaussianCopulaSynthesizer(md, default_distribution="norm"); s.fit(df); s.sample(len(df))
secs = time.perf_counter() - t
print(json.dumps({"stage": stage, "seconds": secs, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_stage(stage: str, manifest: Path, results: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", STAGE, stage, str(manifest), str(results)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{stage} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench(rows: int, repeat: int, sdv: bool) -> dict:
    sys.path.insert(0, str(HERE))
    from generate import main as generate

    out: dict = {"rows": rows}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        generate(rows, str(d / "data"))
        man = d / "data" / "manifest.yaml"
        stages = ["extract", "synthesize", "verify"] + (["sdv"] if sdv else [])
        rec: dict[str, list] = {s: [] for s in stages}
        for _ in range(repeat):
            for s in stages:
                if s == "sdv":
                    try:
                        import sdv  # noqa: F401
                    except ImportError:
                        out["sdv"] = "not installed (pip install sdv to compare)"
                        continue
                rec[s].append(run_stage(s, man, d / "res"))
        for s, v in rec.items():
            if v:
                out[s] = {"seconds": statistics.median(x["seconds"] for x in v), "peak_mb": max(x["peak_mb"] for x in v)}
        tiers = json.loads((d / "res" / f"register_{rows}" / "verify" / "tiers.json").read_text())
        out["tier_met"] = tiers["tier_met"]
        out["total_seconds"] = sum(out[s]["seconds"] for s in ("extract", "synthesize", "verify"))
        if isinstance(out.get("sdv"), dict):
            out["ratio_vs_sdv"] = out["sdv"]["seconds"] / (out["extract"]["seconds"] + out["synthesize"]["seconds"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="+", type=int)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sdv", action="store_true")
    a = ap.parse_args()
    print("| rows | extract s | synthesize+pin s | verify s | total s | peak MB | tier |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in a.sizes:
        r = bench(n, a.repeat, a.sdv)
        peak = max(r[s]["peak_mb"] for s in ("extract", "synthesize", "verify"))
        print(f"| {n:,} | {r['extract']['seconds']:.2f} | {r['synthesize']['seconds']:.2f} | {r['verify']['seconds']:.2f} | "
              f"{r['total_seconds']:.2f} | {peak:.0f} | {r['tier_met']} |", flush=True)
        if "sdv" in r:
            print(f"  SDV: {r['sdv']}", flush=True)


if __name__ == "__main__":
    main()
