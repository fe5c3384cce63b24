"""What `replisynth init`'s draft proposes for columns that need a manifest key: `derive`
entries for exact relations between columns (commented out, to confirm), `numeric` for
numbers stored as text, `dates` for dates stored as text in a csv. The proposals name columns
and formats only: a threshold's cut-off or a sum's constant is left for the user to fill in.
Method: docs/method.md, "The manifest draft".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from replisynth.config.formula_grammar import derive_breaks, parse_derive
from replisynth.config.manifest import Source
from replisynth.core.errors import ReplisynthError
from replisynth.io.input_checks import looks_numeric

PLACEHOLDER = "..."  # in a proposed expression: the value the user fills in (never data)
# Text read as missing in a numeric column when it is one of these (compared stripped, lower)
MISSING_TOKENS: tuple[str, ...] = ("", ".", "..", "-", "--", "?", "*", "na", "n/a", "n.a.")
MISSING_TOKENS += ("nan", "null", "none", "missing", "#n/a")
# Text date formats tried on csv columns that are not ISO (read as dates without a key)
TEXT_DATE_FORMATS = ("%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%Y/%m/%d", "%d-%m-%Y", "%m-%d-%Y")
SAMPLE_ROWS = 1000
# A number written with a decimal point (commas group thousands), or with a decimal comma
POINT_FORM = r"[-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?"
COMMA_FORM = r"[-+]?(\d{1,3}(\.\d{3})+|\d+)(,\d+)?"


class Found(Protocol):
    """An exact relation as extraction's detector reports it (names, a kind, a direction)."""

    @property
    def column(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def inputs(self) -> tuple[str, ...]: ...
    @property
    def offset(self) -> bool: ...
    @property
    def sign(self) -> str: ...


Detector = Callable[[pd.DataFrame, Source], Sequence[Found]]


@dataclass(frozen=True)
class Proposal:
    """A derive entry to confirm: `column: expression`, why (names only) and what the user
    fills in for PLACEHOLDER ("" when the expression is complete)."""

    column: str
    expression: str
    inputs: tuple[str, ...]
    why: str
    fill: str = ""


def _ref(c: str) -> str:
    """A column as the derive grammar names it (backticks around a name that is not a plain
    identifier)."""
    return c if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", c) else f"`{c}`"


def from_detector(df: pd.DataFrame, found: Sequence[Found]) -> list[Proposal]:
    """Proposals from extraction's detected relations; a threshold only when the column's two
    values are 0 and 1 (a comparison gives 0/1)."""
    out = []
    for r in found:
        a = _ref(r.inputs[0])
        if r.kind == "threshold":
            levels = set(pd.to_numeric(df[r.column], errors="coerce").dropna().unique())
            if levels == {0, 1}:
                out.append(
                    Proposal(
                        r.column,
                        f"{a} {r.sign} {PLACEHOLDER}",
                        r.inputs,
                        f"1 exactly where {r.inputs[0]} is {'below' if r.sign == '<' else 'above'}"
                        " a cut-off",
                        "cut-off",
                    )
                )
            continue
        expr = {"log": f"log({a})", "square": f"{a}**2"}.get(r.kind)
        if expr is None:
            expr = f"{a} {'+' if r.kind == 'sum' else '-'} {_ref(r.inputs[1])}"
        why = f"equals {expr.replace('`', '')} on every row"
        if r.offset:
            out.append(
                Proposal(
                    r.column,
                    f"{expr} + {PLACEHOLDER}",
                    r.inputs,
                    why + " plus a constant",
                    "constant",
                )
            )
        else:
            out.append(Proposal(r.column, expr, r.inputs, why))
    return out


def from_transforms(
    pairs: dict[str, tuple[str, str]], two_valued: Collection[str] = ()
) -> list[Proposal]:
    """Proposals from the draft's own checks (column -> (why, input)): a level beside its log
    proposes the log (lwage: log(wage)), which models use; a square proposes the square
    (not of a two-valued column, which is its own square)."""
    out = []
    for col, (why, a) in pairs.items():
        if why == "the exponential":
            out.append(Proposal(a, f"log({_ref(col)})", (col,), f"equals log({col}) on every row"))
        elif why == "exp(x) - 1":
            out.append(
                Proposal(a, f"log1p({_ref(col)})", (col,), f"equals log1p({col}) on every row")
            )
        elif why == "the square" and a not in two_valued:
            out.append(Proposal(col, f"{_ref(a)}**2", (a,), f"equals {a}**2 on every row"))
    return out


def holds(df: pd.DataFrame, p: Proposal) -> bool:
    """A complete proposal holds in every row, as extraction checks a declared one."""
    if p.fill:
        return True  # checked by the detector; the user's value is not known here
    key = f"derive.{p.column}"
    try:
        return derive_breaks(df, p.column, parse_derive(p.expression, key), key) == 0
    except ReplisynthError:
        return False


def choose(df: pd.DataFrame, candidates: list[Proposal], skip: set[str]) -> list[Proposal]:
    """One proposal per column, those that hold, no chains (an input that is itself derived,
    or a derived column that is another's input, is refused by the manifest) and none on a
    column in `skip` (ids, exclusions)."""
    out: list[Proposal] = []
    for p in candidates:
        derived = {q.column for q in out}
        used = {c for q in out for c in q.inputs}
        if (
            p.column in derived | used | skip
            or set(p.inputs) & (derived | skip)
            or not holds(df, p)
        ):
            continue
        out.append(p)
    return out


def derive_lines(proposals: list[Proposal]) -> list[str]:
    """The commented `derive:` block of the draft (empty without proposals)."""
    if not proposals:
        return []
    lines = [
        "    # Derived columns: exact relations found in your data. A declared one is recomputed",
        "    # from its inputs after pinning, so it holds in every synthetic row. Uncomment the",
        "    # entries you confirm. A '...' is a value you fill in (a cut-off, a constant): it",
        "    # is not printed here, and whatever you write is released with the manifest.",
        "    # derive:",
    ]
    for p in proposals:
        line = f"    #   {json.dumps(p.column)}: {json.dumps(p.expression)}"
        note = f"{p.why}; fill in your {p.fill}" if p.fill else p.why
        lines.append(f"{line}   # {note}")
    return lines


def numeric_text(df: pd.DataFrame, skip: set[str]) -> tuple[list[str], list[str], bool]:
    """Text columns that hold numbers: (columns, the missing tokens among their values that are
    in MISSING_TOKENS, decimal comma). A token proposed is one of the fixed list, never another
    value of the data."""
    cols = [str(c) for c in df.columns if str(c) not in skip and looks_numeric(_untokened(df[c]))]
    tokens: set[str] = set()
    comma_votes = 0
    for c in cols:
        text = df[c].dropna().astype("string").str.strip()
        point = pd.to_numeric(text.str.replace(r"[,\s']", "", regex=True), errors="coerce")
        comma = pd.to_numeric(
            text.str.replace(r"[.\s']", "", regex=True).str.replace(",", ".", regex=False),
            errors="coerce",
        )
        as_point = int(text.str.fullmatch(POINT_FORM).sum())
        comma_votes += 1 if int(text.str.fullmatch(COMMA_FORM).sum()) > as_point else -1
        rest = set(text[point.isna() & comma.isna()].str.lower())
        tokens |= {t for t in MISSING_TOKENS if t and t in rest}
    return cols, sorted(tokens), comma_votes > 0


def _untokened(s: pd.Series) -> pd.Series:
    """A text column with the values of MISSING_TOKENS as missing (so a column with many "-"
    still reads as numbers)."""
    if not (s.dtype == object or pd.api.types.is_string_dtype(s)):
        return s
    low = s.astype("string").str.strip().str.lower()
    return s.where(~low.isin(MISSING_TOKENS).fillna(False).astype(bool))


def read_numeric(df: pd.DataFrame, cols: list[str], decimal_comma: bool) -> pd.DataFrame:
    """The columns as numbers for the draft's own analysis (a value that does not read is
    missing here; extraction stops on it with the column's name)."""
    out = df.copy()
    for c in cols:
        text = out[c].astype("string").str.strip()
        if decimal_comma:
            text = text.str.replace(r"[.\s']", "", regex=True).str.replace(",", ".", regex=False)
        else:
            text = text.str.replace(r"[,\s']", "", regex=True)
        out[c] = pd.to_numeric(text, errors="coerce").astype("float64")
    return out


def text_date_formats(df: pd.DataFrame, skip: set[str]) -> tuple[dict[str, str], list[str]]:
    """Text columns whose every value (a sample) reads in one of TEXT_DATE_FORMATS: column ->
    format; and the ambiguous ones (several formats read, e.g. days and months all <= 12)."""
    found: dict[str, str] = {}
    ambiguous: list[str] = []
    for c in df.columns:
        s = df[c]
        if str(c) in skip or not (s.dtype == object or pd.api.types.is_string_dtype(s)):
            continue
        sample = s.dropna().head(SAMPLE_ROWS).astype(str).str.strip()
        if not len(sample):
            continue
        fits = [
            f
            for f in TEXT_DATE_FORMATS
            if bool(pd.to_datetime(sample, format=f, errors="coerce").notna().all())
        ]
        if len(fits) == 1:
            found[str(c)] = fits[0]
        elif fits:
            ambiguous.append(str(c))
    return found, ambiguous


def read_dates(df: pd.DataFrame, formats: dict[str, str]) -> pd.DataFrame:
    """The text date columns as dates for the draft's analysis."""
    out = df.copy()
    for c, f in formats.items():
        out[c] = pd.to_datetime(out[c].astype("string").str.strip(), format=f, errors="coerce")
    return out
