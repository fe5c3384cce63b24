"""A commented manifest draft from a data file (`replisynth init`): each column's role and type
as extraction will see them, with suggested ids, strata and exclusions, and the keys some
columns need (derive proposals, numeric, dates: io/draft_columns.py). Pure functions returning
text; the comments name columns, types and counts only, never a data value (a threshold's
cut-off is left for the user to fill in). Method: docs/method.md, "The manifest draft"."""

from __future__ import annotations

import json
import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from replisynth.config.manifest import SDC_PROFILE_DEFAULTS, Source
from replisynth.io.draft_columns import (
    Detector,
    Proposal,
    choose,
    derive_lines,
    from_detector,
    from_transforms,
    numeric_text,
    read_dates,
    read_numeric,
    text_date_formats,
)
from replisynth.io.files import FileMeta
from replisynth.io.schema import ColumnSpec, date_period, infer_schema, logical_type

STRATA_LEVELS = (2, 6)  # a stratum column has this many levels (inclusive)
MAX_STRATA_CELLS = 6  # suggested strata: their cross product has at most this many cells ...
STRATUM_CELLS = 4  # ... each of at least this many times the minimum cell size (a stratum is
# synthesized on its own: near the cell size its correlations are noisy)
TEXT_SHARE = 0.5  # a string column with more distinct values than this share of rows is text
SAMPLE_ROWS = 1000  # rows checked for derived columns
PROFILE = "standard"

# y = f(x) checked for derived-looking columns: name and the function. Only one direction of
# each pair, so the column flagged is the level of a log (wage beside lwage, which models use)
# and the square of a column (expersq beside exper).
TRANSFORMS: tuple[tuple[str, object], ...] = (
    ("the exponential", np.exp),
    ("exp(x) - 1", np.expm1),
    ("the square", np.square),
)
PROPOSED = ("the exponential", "exp(x) - 1", "the square")  # found here, proposed under derive


@dataclass
class Draft:
    """What the draft says about the columns (names only) and why."""

    ids: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    text_dates: list[str] = field(default_factory=list)
    dates: list[str] = field(default_factory=list)
    derived: dict[str, str] = field(default_factory=dict)  # column -> why (names only)
    derive: list[Proposal] = field(default_factory=list)  # derive entries to confirm
    numeric: list[str] = field(default_factory=list)  # numbers stored as text
    missing_tokens: list[str] = field(default_factory=list)
    decimal_comma: bool = False
    date_formats: dict[str, str] = field(default_factory=dict)  # csv text dates -> format
    strata: list[str] = field(default_factory=list)
    strata_candidates: list[str] = field(default_factory=list)
    empty_pairs: list[tuple[str, str, int, int]] = field(default_factory=list)  # a, b, held, cells
    spread: dict[str, tuple[int, float, float]] = field(default_factory=dict)  # see infer_column

    @property
    def excluded(self) -> list[str]:
        """Columns the draft leaves out: free text, dates stored as text it cannot read, columns
        derived in a way no derive entry can state without the user's constants."""
        return [*self.text, *self.text_dates, *self.derived]


def manifest_name(path: str | Path) -> str:
    """The run name from the file stem, under the manifest's rule (letters, digits, - and _)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem).strip("_")
    return name or "mydata"


def source_name(path: str | Path) -> str:
    """The source key from the file stem: a letter, then letters, digits and _."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", Path(path).stem).strip("_")
    return name if name[:1].isalpha() else f"data_{name}".rstrip("_")


def _name(c: object) -> str:
    """A column name for YAML (flow lists) and comments: JSON-quoted, one line."""
    return json.dumps(str(c), ensure_ascii=False)


def id_columns(df: pd.DataFrame) -> list[str]:
    """Integer columns, and string columns without spaces (codes, not text), whose values are
    unique on every row (none missing)."""
    out = []
    for c in df.columns:
        s = df[c]
        lt = logical_type(s)
        whole = lt == "integer" or (lt == "float" and _whole(s))
        code = lt == "string" and not s.astype(str).str.contains(r"\s").any()
        if (whole or code) and len(s) > 1 and s.notna().all() and s.is_unique:
            out.append(str(c))
    return out


def _whole(s: pd.Series) -> bool:
    v = s.dropna().to_numpy(dtype="float64")
    return bool(len(v) and np.all(np.isfinite(v)) and np.all(v == np.round(v)))


def text_dates(df: pd.DataFrame, skip: list[str]) -> list[str]:
    """String columns whose values (a sample) all read as ISO dates: dates stored as text (csv)."""
    out = []
    for c in df.columns:
        s = df[c]
        if str(c) in skip or logical_type(s) != "string":
            continue
        sample = s.dropna().head(SAMPLE_ROWS).astype(str)
        parsed = pd.to_datetime(sample, errors="coerce", format="ISO8601")
        if len(sample) and bool(parsed.notna().all()):
            out.append(str(c))
    return out


def text_columns(df: pd.DataFrame, ids: list[str]) -> list[str]:
    """String columns with more distinct values than TEXT_SHARE of their rows: free text."""
    out = []
    for c in df.columns:
        s = df[c]
        if str(c) in ids or logical_type(s) != "string":
            continue
        nonmiss = s.dropna()
        if len(nonmiss) and nonmiss.nunique() > TEXT_SHARE * len(nonmiss):
            out.append(str(c))
    return out


def derived_columns(df: pd.DataFrame, skip: set[str], seed: int = 0) -> dict[str, str]:
    """Numeric columns that look like a function of another on a row sample: the level of a
    log, a square, a linear function, or constant within each value of a column
    that repeats. Column -> why (names only)."""
    return {b: f"{why} of {_name(a)}" for b, (why, a) in derived_pairs(df, skip, seed).items()}


def derived_pairs(df: pd.DataFrame, skip: set[str], seed: int = 0) -> dict[str, tuple[str, str]]:
    """As `derived_columns`: column -> (why, the column it is a function of)."""
    num = [
        str(c)
        for c in df.columns
        if str(c) not in skip and logical_type(df[c]) in ("integer", "float")
    ]
    rows = df.sample(min(len(df), SAMPLE_ROWS), random_state=seed) if len(df) else df
    x = {c: pd.to_numeric(rows[c], errors="coerce").to_numpy(dtype="float64") for c in num}
    out: dict[str, tuple[str, str]] = {}
    for check in (_transform_of, _linear_of, _function_of):  # each on every pair, in turn
        for b in num:
            for a in num:
                if a == b or a in out or b in out:
                    continue
                why = check(x[a], x[b], num.index(a) < num.index(b))
                if why:
                    out[b] = (why, a)
    return out


def _pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 10 or np.ptp(b) == 0 or np.ptp(a) == 0:
        return None
    return a, b


def _transform_of(a: np.ndarray, b: np.ndarray, _a_first: bool) -> str | None:
    """Why b looks like a named transform of a, else None."""
    pair = _pairs(a, b)
    if pair is None:
        return None
    a, b = pair
    with np.errstate(all="ignore"):
        for why, f in TRANSFORMS:
            fa = f(a)  # type: ignore[operator]
            if np.all(np.isfinite(fa)) and np.allclose(b, fa, rtol=1e-6, atol=1e-9):
                return why
    return None


def _linear_of(a: np.ndarray, b: np.ndarray, a_first: bool) -> str | None:
    """ "a linear function" when b is one of a (the later column of the pair is flagged)."""
    pair = _pairs(a, b)
    if pair is None or not a_first:
        return None
    return "a linear function" if abs(np.corrcoef(*pair)[0, 1]) > 1 - 1e-9 else None


def _function_of(a: np.ndarray, b: np.ndarray, a_first: bool) -> str | None:
    """ "exactly a function" when b (many values) is constant within each repeated value of a;
    of a one-to-one pair, the later column is flagged."""
    pair = _pairs(a, b)
    if pair is None:
        return None
    a, b = pair
    if len(np.unique(a)) >= len(a) / 2 or len(np.unique(b)) <= 20:
        return None
    if not bool((pd.Series(b).groupby(a).nunique() == 1).all()):
        return None
    one_to_one = bool((pd.Series(a).groupby(b).nunique() == 1).all())
    return "exactly a function" if a_first or not one_to_one else None


def strata_columns(
    df: pd.DataFrame, specs: list[ColumnSpec], min_cell: int
) -> tuple[list[str], list[str]]:
    """(suggested strata, candidates): categorical columns with 2-6 levels, none missing and
    none below `min_cell` rows; the suggestion adds candidates (fewest levels, then the most
    balanced, first) while their cross product has at most MAX_STRATA_CELLS cells, none below
    STRATUM_CELLS x `min_cell`."""
    cands = []
    for spec in specs:
        s = df[spec.name]
        if spec.role != "categorical" or s.isna().any():
            continue
        counts = s.value_counts()
        if STRATA_LEVELS[0] <= len(counts) <= STRATA_LEVELS[1] and counts.min() >= min_cell:
            cands.append((len(counts), -int(counts.min()), spec.name))
    chosen: list[str] = []
    for *_, c in sorted(cands):
        cells = df.groupby([*chosen, c], observed=True).size()
        if len(cells) <= MAX_STRATA_CELLS and cells.min() >= STRATUM_CELLS * min_cell:
            chosen.append(c)
    return chosen, [c for *_, c in cands]


MAX_PAIR_CELLS = 24  # pairs of categorical columns looked at for empty cells: cross product
MAX_EMPTY_PAIRS = 3  # pairs named in the draft's strata comment


def empty_cell_pairs(
    df: pd.DataFrame, specs: list[ColumnSpec], min_cell: int, skip: set[str], strata: list[str]
) -> list[tuple[str, str, int, int]]:
    """Pairs of categorical columns (none missing) whose cross product has empty cells while
    every combination that occurs holds at least STRATUM_CELLS x `min_cell` rows: strata on
    the pair keep the empty ones empty (a Gaussian copula fills them). (a, b, combinations
    held, combinations), most empty first; pairs inside the suggested `strata` and pairs of
    two-valued columns are left out."""
    cats = [
        s.name
        for s in specs
        if s.role == "categorical" and s.name not in skip and not df[s.name].isna().any()
    ]
    levels = {c: df[c].nunique() for c in cats}
    out = []
    for i, a in enumerate(cats):
        for b in cats[i + 1 :]:
            cells = levels[a] * levels[b]
            # two 0/1 columns (a one-hot group): the empty-cell flags keep them, no strata needed
            if not 6 <= cells <= MAX_PAIR_CELLS or min(levels[a], levels[b]) < 2:
                continue
            if a in strata and b in strata:  # the suggested strata keep them empty already
                continue
            held = df.groupby([a, b], observed=True).size()
            if len(held) < cells and held.min() >= STRATUM_CELLS * min_cell:
                out.append((a, b, len(held), cells))
    out.sort(key=lambda t: (t[2] / t[3], t[3]))
    return out[:MAX_EMPTY_PAIRS]


def analyse(
    df: pd.DataFrame, meta: FileMeta, path: str, detect: Detector | None = None
) -> tuple[Draft, list[ColumnSpec]]:
    """The draft's findings and the schema extraction will infer under them; `detect` is
    extraction's relation detector (the workflow passes it: io does not import extract)."""
    d = Draft()
    df = _read_text_columns(df, d, path)
    d.text = text_columns(df, [*d.ids, *d.text_dates])
    d.dates = [str(c) for c in df.columns if logical_type(df[c]) == "date"]
    skip = set(d.ids) | set(d.text) | set(d.dates) | set(d.text_dates)
    pairs = derived_pairs(df, skip)
    two_valued = {a for _, a in pairs.values() if df[a].nunique() <= 2}  # its own square
    d.derived = {
        b: f"{why} of {_name(a)}"
        for b, (why, a) in pairs.items()
        if why not in PROPOSED or a in two_valued
    }
    src = Source(
        name=source_name(path),
        path=path,
        ids=tuple(d.ids),
        exclude=tuple(d.excluded),
        numeric=tuple(d.numeric),
        missing_tokens=tuple(d.missing_tokens),
        decimal_comma=d.decimal_comma,
        dates=tuple(d.date_formats.items()),
    )
    found = from_detector(df, detect(df, src)) if detect is not None else []
    d.derive = choose(df, [*found, *from_transforms(pairs, two_valued)], skip | set(d.derived))
    sdc = SDC_PROFILE_DEFAULTS[PROFILE]
    min_cell = int(sdc["min_cell_size"])
    specs = infer_schema(
        df, src, meta, min_cell, trim=float(sdc["quantile_trim"]) / 100.0, spread=d.spread
    )
    derived = {p.column for p in d.derive}  # a derived column may not be a stratum
    d.strata, d.strata_candidates = strata_columns(
        df, [s for s in specs if s.name not in derived], min_cell
    )
    d.empty_pairs = empty_cell_pairs(df, specs, min_cell, derived, d.strata)
    return d, specs


def _read_text_columns(df: pd.DataFrame, d: Draft, path: str) -> pd.DataFrame:
    """Numbers and (in a csv) dates stored as text read as the draft proposes to declare them;
    ids found on the result; dates stored as text that cannot be declared are listed."""
    formats, ambiguous = text_date_formats(df, set())  # before numbers: 31.12.2020 reads as one
    d.numeric, d.missing_tokens, d.decimal_comma = numeric_text(df, {*formats, *ambiguous})
    df = read_numeric(df, d.numeric, d.decimal_comma)
    if Path(path).suffix.lower() == ".csv":
        d.date_formats = formats
        df = read_dates(df, formats)
    d.ids = id_columns(df)
    d.text_dates = text_dates(df, [*d.ids, *d.numeric, *d.date_formats, *formats, *ambiguous])
    d.text_dates += [c for c in [*formats, *ambiguous] if c not in d.date_formats]
    return df


def _role_line(spec: ColumnSpec, d: Draft, meta: FileMeta) -> str:
    """One comment line: a column's role, type and the reason (no value)."""
    n = _name(spec.name)
    if spec.role == "id":
        return f"{n}: id, {spec.logical_type}: unique on every row; never released"
    reason = {
        "string": "text values",
        "boolean": "true/false",
        "categorical": "a categorical type in the file",
        "date": "a date: synthesized on its numeric scale (days), like a continuous column"
        + _period_note(spec.display_format),
    }.get(spec.logical_type)
    if reason is None:
        if spec.role == "categorical":
            reason = "whole numbers with few distinct values"
            if meta.value_labels.get(spec.name):
                reason += ", value labels"
        elif spec.name in d.spread:
            reason = (
                f"whole numbers with {d.spread[spec.name][0]} distinct values, too spread to pool "
                "the rare ones into cells"
            )
        elif spec.integer:
            reason = "whole numbers with more than 20 distinct values"
        else:
            reason = "numbers with fractions"
    kind = spec.role
    if spec.role == "categorical":
        kind = "categorical (ordered)" if spec.ordered else "categorical (nominal)"
    missing = f"; {spec.missing} of {spec.rows} missing" if spec.missing else ""
    return f"{n}: {kind}, {spec.logical_type}: {reason}{missing}"


def _period_note(display: str | None) -> str:
    """For a date counted in weeks, months, quarters, half years or years: where its synthetic
    values go."""
    period = date_period(display)
    if period is None:
        return ""
    unit = {"W": "week", "M": "month", "Q": "quarter", "H": "half year", "Y": "year"}[period]
    return f" (a {unit}ly format: each synthetic date is moved to the start of its {unit})"


def _checkpoint_template(src: str, specs: list[ColumnSpec], strata: list[str]) -> list[str]:
    """A commented checkpoint: outcome and regressors from the draft's columns when their names
    fit the formula grammar (plain identifiers, not Python keywords such as `if`, which C()
    cannot read), else placeholders."""
    ident = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

    def plain(c: str) -> bool:
        return bool(ident.match(c)) and not keyword.iskeyword(c)

    cont = [s.name for s in specs if s.role == "continuous" and s.logical_type != "date"]
    cat = [s.name for s in specs if s.role == "categorical" and s.name not in strata]
    cont = [c for c in cont if plain(c)]
    cat = [c for c in cat if plain(c)]
    strata_ok = [c for c in strata if plain(c)]
    y = cont[0] if cont else "y"
    terms = [*cont[1:3], *(f"C({c})" for c in [*strata_ok, *cat][:2])] or ["x1", "x2"]
    formula = f"{y} ~ {' + '.join(terms)}"
    return [
        "# Checkpoints: the regressions of your paper that the synthetic data must reproduce",
        "# (tier 4). Fill in at least one: remove the '# ' in front of the lines below, put",
        "# your outcome and regressors in the formula (docs/grammar.md), then set verify.tier",
        "# to 4. Models: ols, logit, probit, poisson, nbreg, ologit, oprobit, iv, fe, re.",
        "# checkpoints:",
        "#   - tag: main_result",
        f"#     source: {src}",
        "#     model: ols",
        f"#     formula: {json.dumps(formula)}",
        "#     vcov: HC1",
    ]


def draft_manifest(
    df: pd.DataFrame, meta: FileMeta, path: str, seed: int, detect: Detector | None = None
) -> str:
    """The commented manifest draft for the data `df` read from `path` (as the manifest will
    name it). Loads with `load_manifest` as written (verify.tier 3) and after a checkpoint is
    filled in (tier 4); `detect` (extraction's relation detector) adds derive proposals."""
    d, specs = analyse(df, meta, path, detect)
    derived = {p.column for p in d.derive}  # not in the template: a proposal may be confirmed
    src = source_name(path)
    sdc = SDC_PROFILE_DEFAULTS[PROFILE]
    min_cell = int(sdc["min_cell_size"])
    lines = [
        f"# Manifest draft written by `replisynth init` for {len(df)} rows and "
        f"{df.shape[1]} columns.",
        "# Every column's role and type below is what extraction will infer. Check each line,",
        "# edit the lists, then run `replisynth run THIS_FILE`. These comments quote column",
        "# names, types and counts only.",
        "",
        f"name: {manifest_name(path)}",
        f"seed: {seed}",
        "",
        "sources:",
        f"  {src}:",
        f"    path: {json.dumps(path)}",
        "    rows: null          # synthetic rows; null = as many as the original",
        "    # Columns, as extraction will classify them:",
    ]
    lines += [f"    #   {_role_line(s, d, meta)}" for s in specs]
    lines += [f"    #   {line}" for line in _flag_lines(d)]
    lines.append(f"    ids: {_flow(d.ids)}")
    lines.append("    # ids: columns unique on every row; never released, renumbered 1..rows.")
    lines.append(f"    exclude: {_flow(d.excluded)}")
    lines += _key_lines(d)
    if d.text:
        lines.append(
            "    # Free text is never released: "
            f"{', '.join(_name(c) for c in d.text)} (each value is almost unique)."
        )
    if d.derived:
        lines.append(
            "    # Derived-looking columns are left out: recompute them from their source column"
        )
        lines.append("    # in your code (or keep them and exclude the other column instead).")
    lines += derive_lines(d.derive)
    lines.append("    categorical: []     # force categorical")
    lines.append("    continuous: []      # force continuous")
    lines.append(f"    strata: {_flow(d.strata)}")
    lines.append(
        f"    # strata: categorical columns with {STRATA_LEVELS[0]}-{STRATA_LEVELS[1]} levels, "
        f"none missing, every level at least {min_cell} rows"
    )
    lines.append(
        f"    # (the {PROFILE} profile's cell size); suggested while their cross product has at "
        f"most {MAX_STRATA_CELLS} cells"
    )
    lines.append(
        f"    # of at least {STRATUM_CELLS * min_cell} rows each (each stratum is synthesized on "
        "its own; small ones give noisy correlations)."
    )
    if d.strata_candidates:
        lines.append(f"    # Candidates: {', '.join(_name(c) for c in d.strata_candidates)}.")
    else:
        lines.append("    # No column qualifies.")
    lines += _empty_pair_lines(d, df)
    lines += [
        "    groups: []          # cluster identifiers (firms, schools), re-keyed 1..G",
        "    panel: null         # {entity: COLUMN, time: COLUMN} for a panel",
        "",
        "sdc:",
        f"  profile: {PROFILE}    # cells below {min_cell} rows are suppressed; see docs/disclosure.md",
        "",
        *_checkpoint_template(src, [s for s in specs if s.name not in derived], d.strata),
        "",
        "verify:",
        "  tier: 3   # tier 4 needs a checkpoint: set 4 once you have filled one in above",
        "",
    ]
    return "\n".join(lines)


def _empty_pair_lines(d: Draft, df: pd.DataFrame) -> list[str]:
    """The strata suggestion for pairs of categorical columns with empty combinations."""
    out = []
    for a, b, held, cells in d.empty_pairs:
        whole = all(not pd.api.types.is_float_dtype(df[c]) or _whole(df[c]) for c in (a, b))
        out.append(
            f"    # {_name(a)} x {_name(b)}: {held} of their {cells} combinations occur; the "
            "release keeps the others empty, and"
        )
        out.append(
            f"    #   strata: {_flow([a, b])} would also synthesize the other columns per "
            "combination" + ("." if whole else " (recode to whole numbers first).")
        )
    return out


def _flag_lines(d: Draft) -> list[str]:
    """Comment lines for the columns that need a key or are left out, with the reason."""
    out = [f"{_name(c)}: free text: excluded below; never released" for c in d.text]
    out += [f"{_name(c)}: derived-looking ({why}): excluded below" for c, why in d.derived.items()]
    out += [
        f"{_name(p.column)}: derived ({p.why}): proposed under derive below, to confirm"
        for p in d.derive
    ]
    out += [
        f"{_name(c)}: numbers stored as text: declared under numeric below (read as numbers)"
        for c in d.numeric
    ]
    out += [
        f"{_name(c)}: dates stored as text ({f}): declared under dates below (read as dates)"
        for c, f in d.date_formats.items()
    ]
    out += [
        f"{_name(c)}: dates stored as text: excluded below (text would be released as "
        'categories); to keep it, give its format under dates (e.g. {col: "%d/%m/%Y"}) and '
        "remove it from exclude"
        for c in d.text_dates
    ]
    out += [f"{_name(c)}: a date column: check its synthetic dates in the report" for c in d.dates]
    return out


def _key_lines(d: Draft) -> list[str]:
    """The numeric and dates keys for columns stored as text (absent when there are none)."""
    out = []
    if d.numeric:
        out.append(f"    numeric: {_flow(d.numeric)}")
        out.append(f"    missing_tokens: {_flow(d.missing_tokens)}")
        out.append(
            "    # numeric: text columns holding numbers; missing_tokens: their values read as "
            "missing"
        )
        out.append(
            "    # (only common tokens such as n/a are proposed: add any other your data use)."
        )
        if d.decimal_comma:
            out.append("    decimal_comma: true   # the numbers write decimals with a comma")
    if d.date_formats:
        pairs = ", ".join(f"{_name(c)}: {_name(f)}" for c, f in d.date_formats.items())
        out.append(f"    dates: {{{pairs}}}")
        out.append("    # dates: text date columns and their format (check day/month order).")
    return out


def _flow(names: list[str]) -> str:
    """A YAML flow list of column names (JSON-quoted, which YAML reads as is)."""
    return "[" + ", ".join(_name(c) for c in names) + "]"
