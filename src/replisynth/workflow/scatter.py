"""Scatter a source's strata over several jobs and gather them, byte for byte the same
release and synthetic data as the unscattered stages. Design: docs/hpc.md.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.manifest import Manifest
from replisynth.disclosure.bundle_types import untyped
from replisynth.disclosure.linked_tables import protect_release
from replisynth.disclosure.sdc import SdcLog, check_release
from replisynth.disclosure.stratum_codings import stratum_codings, withhold_coding_tables
from replisynth.disclosure.three_way import withhold_pins
from replisynth.extract.extract import (
    _level_order_of,
    _strata_keys,
    column_codes,
    extract_source,
    linked_correlation_gate,
    pooled_level_values,
    source_classes,
    stratum_block,
    stratum_counts,
)
from replisynth.extract.orderings import gate_orderings
from replisynth.io.files import atomic_path, read_json, synthetic_label, write_json, write_parquet
from replisynth.io.schema import ColumnSpec
from replisynth.stats.copula_dims import category_values, dim_matrix
from replisynth.stats.marginals import FrequencyTable, level_order
from replisynth.workflow.progress import progress

log = logging.getLogger("replisynth")


def shard_of(items: list[Any], shard: int, shards: int) -> list[Any]:
    """Items shard, shard+shards, ... (shard is 0-based)."""
    if shards < 1 or not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards}: need 0 <= shard < shards")
    return items[shard::shards]


# ------------------------------------------------------------------ extraction (secure side)


def stage_extract_base(
    manifest: Manifest, source: str, base_out: str | Path, sdc_out: str | Path
) -> None:
    """The source-level half of a scattered extraction: the release without strata blocks."""
    from replisynth.workflow.pipeline import _read_checked, review_relations

    df, meta = _read_checked(manifest, source)
    progress(f"extract: {source} source level ({len(df):,} rows; strata in their own jobs)")
    review_relations(manifest, source, df)
    release, sdc = extract_source(df, meta, manifest, manifest.source(source), strata_blocks=False)
    log.info(
        "%s: source-level release; %d strata cells to scatter",
        source,
        len(release["strata"]["cells"]),
    )
    write_json(base_out, release)
    write_json(sdc_out, sdc.entries)


def stratum_blocks(
    df: pd.DataFrame, manifest: Manifest, source: str, base: dict[str, Any], shard: int, shards: int
) -> list[dict[str, Any]]:
    """Blocks of this shard's strata cells, each with its SDC decisions: rebuilds the context
    `extract_source` had when it reached the strata (see its body) from the data and `base`."""
    src = manifest.source(source)
    sdc = manifest.sdc
    specs = [ColumnSpec.from_dict(c) for c in base["columns"]]
    spec_by = {s.name: s for s in specs}
    work = df[[s.name for s in specs]].copy()
    cells = base["strata"]["cells"]
    key_idx, key_list = _strata_keys(work, src.strata)
    key_pos = {k: i for i, k in enumerate(key_list)}
    released_idx = np.zeros(len(key_list) + 1, dtype=bool)  # last slot: a missing stratum value
    released_idx[[key_pos[tuple(c["key"])] for c in cells if tuple(c["key"]) in key_pos]] = True
    residual = pd.Series(~released_idx[key_idx] if src.strata else False, index=work.index)
    if src.strata and residual.any():
        work.loc[residual, list(src.strata)] = np.nan
    # Only role and type of these specs matter to the block marginals (not their missing counts).
    released_cols = [s for s in specs if s.role in ("continuous", "categorical")]
    marginals = base["blocks"]["all"]["marginals"]
    tables = {
        c: FrequencyTable.from_dict(m["table"])
        for c, m in marginals.items()
        if m["kind"] == "categorical"
    }
    all_levels = {
        c: (
            _level_order_of(work[c], spec_by[c])
            or level_order(list(category_values(work[c]).dropna().unique()))
        )
        for c in tables
    }
    X = dim_matrix(work, spec_by, base["dims"], tables, all_levels)
    pooled_values = pooled_level_values(work, tables, spec_by, all_levels)
    classes = source_classes(
        tables,
        {c: column_codes(work[c]) for c in tables if c not in src.strata},
        all_levels,
        src.strata,
    )
    out = []
    for cell in shard_of(cells, shard, shards):
        key = tuple(cell["key"])
        mask = key_idx == key_pos.get(key, -2)
        if int(mask.sum()) != cell["rows"]:
            raise RuntimeError(
                f"{source}: stratum {cell['id']} has {int(mask.sum())} rows, the source-level release says {cell['rows']}; "
                "the data changed between the extraction jobs"
            )
        lg = SdcLog()
        block = stratum_block(
            work, mask, cell["id"], key, released_cols, src, sdc, X, pooled_values, lg, classes
        )
        # "counts": the stratum's true class counts, for secondary suppression at the gather
        # (a staging file of the secure side; never part of the release)
        out.append(
            {
                "id": cell["id"],
                "block": block,
                "sdc": lg.entries,
                "counts": stratum_counts(classes, mask),
                "codings": stratum_codings(classes, mask, sdc.min_cell_size),
            }
        )
    return out


def stage_extract_stratum(
    manifest: Manifest, source: str, base: str | Path, shard: int, shards: int, out: str | Path
) -> None:
    """One stratum job: the blocks of cells shard, shard+shards, ... of a source."""
    from replisynth.workflow.pipeline import _read_checked

    df, _ = _read_checked(manifest, source)
    progress(f"extract: {source} strata, job {shard + 1} of {shards}")
    parts = stratum_blocks(df, manifest, source, read_json(base), shard, shards)
    log.info(
        "%s: shard %d of %d: strata %s",
        source,
        shard + 1,
        shards,
        ", ".join(p["id"] for p in parts) or "(none)",
    )
    write_json(out, parts)


def gather_release(
    base: dict[str, Any],
    base_sdc: list[dict[str, Any]],
    parts: list[list[dict[str, Any]]],
    min_cell_size: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The complete release and SDC decisions from the source-level half and the shards."""
    release = {**base, "strata": dict(base["strata"]), "blocks": dict(base["blocks"])}
    at = release["strata"].pop("log_at")
    got = {p["id"]: p for part in parts for p in part}
    ids = [c["id"] for c in release["strata"]["cells"]]
    if set(got) != set(ids):
        raise RuntimeError(
            f"{base['source']}: the stratum jobs returned {sorted(got)}, the release lists {ids}"
        )
    strata_sdc = []
    for bid in ids:
        release["blocks"][bid] = got[bid]["block"]
        strata_sdc.extend(got[bid]["sdc"])
    release, linked = protect_release(
        release, {bid: got[bid]["counts"] for bid in ids}, min_cell_size
    )
    release, withheld = withhold_coding_tables(
        release, {bid: got[bid].get("codings", []) for bid in ids}
    )
    linked = [*linked, *withheld]
    correlations = withhold_pins(release, min_cell_size, None, 200, ids)
    correlations += linked_correlation_gate(release, min_cell_size).entries
    correlations += gate_orderings(release).entries
    check_release(release, min_cell_size)
    return release, [*base_sdc[:at], *strata_sdc, *linked, *base_sdc[at:], *correlations]


def stage_gather_release(
    manifest: Manifest,
    base: str | Path,
    base_sdc: str | Path,
    parts: list[str | Path],
    release_out: str | Path,
    sdc_out: str | Path,
) -> None:
    """The gather job of a scattered extraction: the same staging files as extract_source."""
    release, sdc = gather_release(
        read_json(base),
        read_json(base_sdc),
        [read_json(p) for p in parts],
        manifest.sdc.min_cell_size,
    )
    log.info("%s: gathered %d strata blocks", release["source"], len(release["strata"]["cells"]))
    write_json(release_out, release)
    write_json(sdc_out, sdc)


# ------------------------------------------------------------------ synthesis (outside side)


def sample_blocks(
    release: dict[str, Any], seed: int, rows: int | None, shard: int, shards: int
) -> dict[str, dict[str, np.ndarray]]:
    """Layers 1-2 for blocks shard, shard+shards, ... of the source's plan (block id -> column
    values), exactly as `synthesize_source` samples them."""
    from replisynth.synthesize.plan import source_plan
    from replisynth.synthesize.synthesize import synthesize_block

    rows = int(rows or release["rows"])
    specs = {s.name: s for s in (ColumnSpec.from_dict(c) for c in release["columns"])}
    plan = source_plan(release, rows)
    return {
        bp.id: synthesize_block(bp, release, specs, seed, release["source"])
        for bp in shard_of(plan, shard, shards)
    }


def stage_sample_stratum(
    bundle_dir: str | Path, source: str, shard: int, shards: int, out: str | Path
) -> None:
    """One copula-sampling job of a scattered source (a pickle of block id -> column arrays:
    object arrays keep every value's type exactly)."""
    from replisynth.disclosure.bundle import load_bundle

    b = load_bundle(bundle_dir)
    progress(f"synthesize: {source} blocks, job {shard + 1} of {shards}")
    blocks = sample_blocks(
        untyped(b.releases[source]), b.manifest.seed, b.manifest.source(source).rows, shard, shards
    )
    log.info(
        "%s: shard %d of %d: sampled blocks %s",
        source,
        shard + 1,
        shards,
        ", ".join(blocks) or "(none)",
    )
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        pickle.dump(blocks, fh, protocol=pickle.HIGHEST_PROTOCOL)


def stage_gather_blocks(
    bundle_dir: str | Path, source: str, parts: list[str | Path], out: str | Path
) -> None:
    """The gather job of a scattered synthesis: the same unpinned parquet as sample_copula."""
    from replisynth.disclosure.bundle import load_bundle
    from replisynth.synthesize.synthesize import synthesize_source

    b = load_bundle(bundle_dir)
    blocks: dict[str, dict[str, np.ndarray]] = {}
    for p in parts:
        with open(p, "rb") as fh:  # written by stage_sample_stratum of this run
            blocks.update(pickle.load(fh))
    df = synthesize_source(
        untyped(b.releases[source]),
        b.manifest.seed,
        b.manifest.source(source).rows,
        blocks=blocks,
        progress=progress,
    )
    log.info(
        "%s: gathered %d blocks: %d rows × %d columns", source, len(blocks), len(df), df.shape[1]
    )
    write_parquet(df, out, synthetic=synthetic_label(b.sha256))
