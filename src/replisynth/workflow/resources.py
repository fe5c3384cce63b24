"""What each rule asks the scheduler for (threads, memory, wall time), from the number of
cells its data hold; grows with each retry. Rule: docs/hpc.md, "Resources".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

# Per rule kind: (base MB, bytes per cell, base seconds, seconds per million cells).
# "data" rules hold the frame and its copula matrices; "light" ones read small JSON only.
_COST: dict[str, tuple[float, float, float, float]] = {
    "data": (300.0, 90.0, 5.0, 2.0),
    "light": (200.0, 0.0, 5.0, 0.0),
}
RULE_KIND: dict[str, str] = {
    "extract_source": "data",
    "extract_stratum": "data",
    "extract_checkpoints": "data",
    "gather_release": "light",
    "write_bundle": "light",
    "extract_base": "data",
    "sample_copula": "data",
    "sample_stratum": "data",
    "gather_blocks": "data",
    "pin_checkpoints": "data",
    "outside_fused": "data",
    "secure_fused": "data",
    "export_stata": "data",
    "export_spss": "data",
    "export_csv": "data",
    "verify_tiers": "data",
    "render_report": "data",
    "check_tier": "light",
    "audit_disclosure": "data",
    "synthetic_readme": "light",
    "review": "light",
}
MEM_FACTOR = 1.5
TIME_FACTOR = 3.0
MIN_RUNTIME = 10  # minutes
MEM_STEP = 256  # MB
# Above these many cells a data job asks for more cores: its stage maps independent columns,
# strata blocks and checkpoints over that many threads (`replisynth.core.parallel`).
THREAD_STEPS = ((100_000_000, 4), (10_000_000, 2))
# Jobs that have a sibling to run beside keep one core, so on a small machine the two share
# it instead of one waiting for a second core: the csv export beside verification and the
# report. The checkpoint fits follow extraction rather than run beside it (beside a one-core
# extract_source they would save little time but hold both jobs' data at once), so each takes the cores: extraction its strata, the fits one checkpoint
# per thread.
SINGLE_THREADED = frozenset(
    {"export_csv", "export_stata", "export_spss", "render_report", "verify_tiers"}
)
# Jobs that run two stages side by side, in two processes (the secure fused job: the
# checkpoint fits beside the sources' extraction), ask for two cores at least.
SIDE_BY_SIDE = frozenset({"secure_fused"})
CSV_BYTES_PER_CELL = 8.0
# fuse: auto (replisynth.workflow.workflow.fuse_plan): a local run fuses its outside stages
# into one job up to these many cells per source (and synthetic rows, when `rows` is set).
FUSE_CELLS = 2_000_000
FUSE_ROWS = 100_000
# scatter: auto (replisynth.workflow.workflow.scatter_plan): sources with strata this large get 4 jobs.
AUTO_SCATTER_CELLS = 20_000_000
AUTO_SCATTER_JOBS = 4  # a typical register csv: short numbers and codes plus separators


@dataclass(frozen=True)
class JobResources:
    """A job's request: `threads` cores, `mem_mb` MB, `runtime` minutes."""

    threads: int
    mem_mb: int
    runtime: int


def job_resources(rule: str, cells: int, attempt: int = 1) -> JobResources:
    """The request of `rule` on `cells` cells; attempt k (1-based) gets k times the memory and
    time of the first. Unknown rules are costed like a data rule."""
    base_mb, per_cell, base_s, per_mcell = _COST[RULE_KIND.get(rule, "data")]
    cells = max(int(cells), 0)
    attempt = max(int(attempt), 1)
    mem = (base_mb + per_cell * cells / 1e6) * MEM_FACTOR * attempt
    mem_mb = int(math.ceil(mem / MEM_STEP) * MEM_STEP)
    seconds = (base_s + per_mcell * cells / 1e6) * TIME_FACTOR * attempt
    runtime = max(MIN_RUNTIME * attempt, int(math.ceil(seconds / 60)))
    threads = 1
    if RULE_KIND.get(rule, "data") == "data" and rule not in SINGLE_THREADED:
        threads = next((t for limit, t in THREAD_STEPS if cells >= limit), 1)
    if rule in SIDE_BY_SIDE:
        threads = max(threads, 2)
    return JobResources(threads=threads, mem_mb=mem_mb, runtime=runtime)


def file_cells(path: str | Path) -> int:
    """Cells of a data file or a release: exact for parquet, .dta, .sav and release JSON
    (`source_<name>.json`, or a staging `<name>.release.json`), estimated from the size for
    csv; 0 when the file does not exist yet (a dry run) or cannot be read."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return 0
    if not p.is_file():
        return 0
    return _file_cells(str(p), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=256)
def _file_cells(path: str, size: int, mtime_ns: int) -> int:
    """`file_cells` of one version of a file (Snakemake asks per job and per resource)."""
    p = Path(path)
    try:
        suffix = p.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            md = pq.ParquetFile(p).metadata
            return int(md.num_rows) * int(md.num_columns)
        if suffix in (".dta", ".sav"):
            import pyreadstat

            reader = pyreadstat.read_dta if suffix == ".dta" else pyreadstat.read_sav
            _, meta = reader(str(p), metadataonly=True)
            return int(meta.number_rows or 0) * int(meta.number_columns or 0)
        if suffix == ".json":
            return release_cells(json.loads(p.read_text()))
        return int(p.stat().st_size / CSV_BYTES_PER_CELL)
    except Exception:  # sizing must never stop a run: fall back to the smallest request
        return 0


def release_cells(release: Any, rows: int | None = None) -> int:
    """Cells of the synthetic data a release describes (rows × released columns)."""
    if not isinstance(release, dict) or "columns" not in release:
        return 0
    return int(rows or release.get("rows", 0)) * len(release["columns"])


def cells_of(paths: list[str | Path] | tuple[str | Path, ...]) -> int:
    """Total cells over several files (see `file_cells`)."""
    return sum(file_cells(p) for p in paths)
