"""The bundle's files as typed records: one TypedDict per file and nested object.

They mirror `disclosure/bundle_schema.yaml` (tests/test_bundle_types.py checks that they agree):
a key the schema requires is required here, every other key is NotRequired, so readers may
index exactly what load_bundle guarantees. docs/bundle.md, "Typed records", maps them to files.
"""

from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict, cast

Scalar = str | int | float | bool | None
Matrix = list[list[float | None]]


# manifest.json


class BundleFileEntry(TypedDict):
    path: str
    sha256: str
    bytes: int


class SdcSettings(TypedDict):
    profile: str
    min_cell_size: int
    quantile_trim: float
    min_resid_df: float
    grid: NotRequired[str]
    round_significant: NotRequired[int | None]
    budget: NotRequired[float | None]
    dominance: NotRequired[float]
    overridden_by_manifest: NotRequired[list[str]]


class BundleInfo(TypedDict):
    """manifest.json."""

    format: str
    name: str
    seed: int
    software: dict[str, str]
    sdc: SdcSettings
    manifest: dict[str, Any]
    files: list[BundleFileEntry]


# sdc_log.json


class SdcDecision(TypedDict):
    """One decision; writers add context keys (source, column, block, checkpoint, ...)."""

    stage: str
    action: str
    reason: NotRequired[str]


class LedgerEntry(TypedDict):
    id: str
    kind: str
    source: str
    rows: NotRequired[int]
    released: NotRequired[Any]


class LedgerDifferencing(TypedDict):
    rule: str
    min_cell_size: int
    pairs_checked: int
    refused: list[Any]


class Ledger(TypedDict):
    """The checkpoint stage's disclosure ledger (extract/ledger.py)."""

    entries: list[LedgerEntry]
    differencing: LedgerDifferencing


class SdcLogFile(TypedDict):
    """sdc_log.json."""

    settings: SdcSettings
    decisions: list[SdcDecision]
    ledger: NotRequired[Ledger]


# checkpoints.json


class ReleasedTerm(TypedDict):
    term: str
    beta: float
    se: float
    position: NotRequired[int]


class SuppressedTerm(TypedDict):
    suppressed: bool
    term: NotRequired[None]
    position: NotRequired[int]
    reason: NotRequired[str]


CheckpointTerm = ReleasedTerm | SuppressedTerm


class CheckpointMoments(TypedDict):
    """Design moments of the regressors (docs/method.md, "Cross-moments")."""

    terms: list[str]
    mean: list[float | None]
    sd: list[float | None]
    corr: Matrix
    weighted: NotRequired[bool]
    instruments: NotRequired[list[str] | None]


class CheckpointRecord(TypedDict):
    """One checkpoint: its definition and, when released, its coefficients."""

    tag: str
    source: str
    model: str
    formula: str
    outcome: str
    vcov: str
    status: str
    weights: NotRequired[str | None]
    subset: NotRequired[str | None]
    absorb: NotRequired[list[str]]
    entity: NotRequired[str | None]
    time: NotRequired[str | None]
    levels: NotRequired[list[Scalar] | None]
    outcome_levels: NotRequired[list[Scalar] | None]
    columns: NotRequired[list[str]]
    subset_columns: NotRequired[list[str]]
    reason: NotRequired[str | None]
    n: NotRequired[int]
    resid_df: NotRequired[float]
    scale: NotRequired[float | None]
    k: NotRequired[int]
    outcome_mean: NotRequired[float | None]
    terms: NotRequired[list[CheckpointTerm]]
    moments: NotRequired[CheckpointMoments]
    outcome_shares: NotRequired[Any]
    dispersion: NotRequired[Any]
    extra: NotRequired[Any]


class CheckpointsFile(TypedDict):
    """checkpoints.json."""

    checkpoints: list[CheckpointRecord]


# source_<name>.json


class ColumnRecord(TypedDict):
    """Exactly the fields of io.schema.ColumnSpec."""

    name: str
    logical_type: str
    storage_type: str
    role: str
    integer: bool
    ordered: bool
    missing: int
    rows: int
    variable_label: NotRequired[str | None]
    time_invariant: NotRequired[bool]
    display_format: NotRequired[str | None]


class Dim(TypedDict):
    """One copula dimension; an indicator also names its `level`."""

    column: str
    kind: str
    level: NotRequired[Scalar]


class StratumCell(TypedDict):
    id: str
    rows: int
    key: NotRequired[list[Scalar] | None]


class Strata(TypedDict):
    columns: list[str]
    cells: list[StratumCell]
    residual_rows: NotRequired[int]
    log_at: NotRequired[Any]  # a scattered extraction's partial release only, never in a bundle


class FrequencyTableRecord(TypedDict):
    """stats.marginals.FrequencyTable.to_dict; `classes` marks a stratum's table over the
    source-level classes."""

    levels: NotRequired[list[Scalar]]
    counts: NotRequired[list[int]]
    ordered: NotRequired[bool]
    suppressed: NotRequired[int]
    pooled_levels: NotRequired[int]
    suppressed_levels: NotRequired[int]
    classes: NotRequired[bool]


class CategoricalMarginal(TypedDict):
    kind: Literal["categorical"]
    missing: NotRequired[int]
    table: NotRequired[FrequencyTableRecord]


class AtomRest(TypedDict):
    """The grid of a continuous column's values other than its atoms (a grid record)."""

    n: NotRequired[int]
    grid: NotRequired[list[float]]
    method: NotRequired[str]
    released_levels: NotRequired[list[float]]
    window_sizes: NotRequired[list[int]]
    window_means: NotRequired[list[float]]


class AtomsRecord(TypedDict):
    """A continuous column's atoms (source level only): the values held by at least
    min_cell_size rows, their counts, and the grid of the other values (None: none left)."""

    values: list[float]
    counts: list[int]
    rest: NotRequired[AtomRest | None]


class GridMarginal(TypedDict):
    """A percentile grid: a continuous column, or a many-level ordinal inside a stratum;
    window grids add the values behind each window and its mean; `atoms` (source level)
    the column's atoms, `grid` then being the mixture's grid."""

    kind: Literal["continuous", "ordinal_grid"]
    missing: NotRequired[int]
    n: NotRequired[int]
    grid: NotRequired[list[float | None]]
    method: NotRequired[str]
    dominance: NotRequired[float]
    released_levels: NotRequired[list[float]]
    window_sizes: NotRequired[list[int]]
    window_means: NotRequired[list[float]]
    atoms: NotRequired[AtomsRecord]


class SuppressedMarginal(TypedDict):
    kind: Literal["suppressed"]
    missing: NotRequired[int]
    n: NotRequired[int]


Marginal = CategoricalMarginal | GridMarginal | SuppressedMarginal


class Block(TypedDict):
    """`all` or one stratum cell: its rows, marginals and Spearman matrix over the dims."""

    rows: int
    marginals: dict[str, Marginal]
    key: NotRequired[list[Scalar] | None]
    spearman: NotRequired[Matrix | None]


class SizeWindow(TypedDict):
    groups: int
    mean: float


class GroupRelease(TypedDict):
    """A group column: number of groups, mean size, the size distribution as windows."""

    groups: NotRequired[int]
    mean_size: NotRequired[float]
    size_grid: NotRequired[list[float] | None]
    size_windows: NotRequired[list[SizeWindow]]


# A deterministic coding of column `from` (stats/codings.py): `map` holds [from value, value]
# pairs. Functional form: "from" is a keyword.
DerivedColumn = TypedDict(
    "DerivedColumn", {"from": NotRequired[str], "map": NotRequired[list[list[Scalar]]]}
)


# A logical ordering that holds in every row (extract/orderings.py): kind "le" with lo <= hi,
# kind "implies" with if = 1 => then = 1. Functional form: "if" is a keyword.
Ordering = TypedDict(
    "Ordering",
    {
        "kind": Literal["le", "implies"],
        "lo": NotRequired[str],
        "hi": NotRequired[str],
        "if": NotRequired[str],
        "then": NotRequired[str],
    },
)


class EmptyCells(TypedDict):
    """Empty cells of the table of two released categorical columns (extract/empty_cells.py):
    `cells` holds [level of columns[0], level of columns[1]] pairs no original row holds."""

    columns: list[str]
    cells: list[list[Scalar]]


class PeriodTrend(TypedDict):
    slope: NotRequired[float]
    share: NotRequired[float]


class EntityStructure(TypedDict):
    """Panels and clusters (synthesize/entities.py)."""

    column: NotRequired[str]
    entities: NotRequired[int]
    invariant: NotRequired[dict[str, bool]]
    between_share: NotRequired[list[float | None]]
    between_corr: NotRequired[Matrix]
    period_trend: NotRequired[dict[str, PeriodTrend]]
    within_lag1: NotRequired[list[float | None]]


class Panel(TypedDict):
    entity: NotRequired[str]
    time: NotRequired[str]


class MissingCodes(TypedDict):
    """A column's released missing-value codes (Stata .a-.z, SPSS user-missing values as
    text), their exact counts (each at least min_cell_size) and labels."""

    codes: list[str]
    counts: list[int]
    labels: dict[str, str]


class WeightedTable(TypedDict):
    """Weighted shares of a source-level table: its released levels, then its bucket."""

    levels: list[Any]
    shares: list[float]
    suppressed: float


class WeightedGrid(TypedDict):
    """Weighted shares of a continuous column's intervals between released grid points."""

    cuts: list[float]
    shares: list[float]


class Weights(TypedDict):
    """The survey weight's release: its column, its rounded total, the weighted tables and
    the weighted decile shares of continuous columns."""

    column: str
    total: float
    tables: dict[str, WeightedTable]
    grids: NotRequired[dict[str, WeightedGrid]]


class SourceRelease(TypedDict):
    """source_<name>.json."""

    source: str
    rows: int
    columns: list[ColumnRecord]
    dims: list[Dim]
    strata: Strata
    blocks: dict[str, Block]
    format: NotRequired[str]
    value_labels: NotRequired[dict[str, dict[str, Any]]]
    groups: NotRequired[dict[str, GroupRelease]]
    missing_groups: NotRequired[list[list[str]]]
    derived: NotRequired[dict[str, DerivedColumn]]
    orderings: NotRequired[list[Ordering]]
    empty_cells: NotRequired[list[EmptyCells]]
    panel: NotRequired[Panel | None]
    entity_structure: NotRequired[EntityStructure | None]
    missing_codes: NotRequired[dict[str, MissingCodes]]
    free_text: NotRequired[list[str]]
    weights: NotRequired[Weights]


def untyped(record: Mapping[str, Any]) -> dict[str, Any]:
    """`record` itself, for a reader still annotated `dict[str, Any]` (no copy, no check)."""
    return cast(dict[str, Any], record)
