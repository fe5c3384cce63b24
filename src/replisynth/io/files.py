"""Reading source files and writing outputs atomically.

Readers return the data and its file-level metadata (labels, storage types); writers go to a
temporary file beside the target and rename it, so an interrupted run never leaves a
half-written output.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from replisynth.core.errors import DataError
from replisynth.core.options import SOURCE_EXTENSIONS
from replisynth.core.parallel import thread_map
from replisynth.io.atomic import atomic_path, write_text  # noqa: F401  (standard library only; write_text re-exported)

# Stata's .dta header carries a time stamp; a fixed one keeps reruns byte-identical.
DTA_TIME_STAMP = dt.datetime(2000, 1, 1, 0, 0)


@dataclass(frozen=True)
class FileMeta:
    """What a statistical file format knows beyond the values: labels and storage types."""

    variable_labels: dict[str, str] = field(default_factory=dict)
    value_labels: dict[str, dict[Any, str]] = field(default_factory=dict)
    storage_types: dict[str, str] = field(default_factory=dict)
    # date columns' storage and display: Stata %td/%tc/%tm/%tq/%th/%tw/%ty, SPSS DATE11,
    # DATETIME20..., parquet date32[day] / timestamp[unit, tz=...], csv a strftime format
    display_formats: dict[str, str] = field(default_factory=dict)
    # column -> missing-value code (Stata ".a".."z", SPSS user-missing value as text) -> rows
    missing_codes: dict[str, dict[str, int]] = field(default_factory=dict)
    # column -> code -> its value label (kept apart from the labels of valid values)
    missing_labels: dict[str, dict[str, str]] = field(default_factory=dict)


def _clean_json(obj: Any) -> Any:
    """Make numpy scalars and non-finite floats JSON-safe (NaN/inf become null)."""
    if isinstance(obj, dict):
        return {str(k): _clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_json(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def dumps_json(obj: Any) -> str:
    """Deterministic JSON text (stable key order as built, shortest round-trip floats)."""
    return json.dumps(_clean_json(obj), indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as deterministic JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(dumps_json(obj), encoding="utf-8")


def read_json(path: str | Path) -> Any:
    """Read a JSON file written by `write_json`."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# reading


def source_format(path: str | Path) -> str:
    """csv, parquet, dta or sav from the file extension (DataError otherwise)."""
    ext = Path(path).suffix.lower()
    if ext not in SOURCE_EXTENSIONS:
        raise DataError(
            f"{path}: unknown extension {ext or '(none)'!r}; use one of {', '.join(sorted(SOURCE_EXTENSIONS))}"
        )
    return SOURCE_EXTENSIONS[ext]


def _check_duplicates(path: Path, names: list[str]) -> None:
    seen: set[str] = set()
    dups = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if dups:
        raise DataError(
            f"{path}: duplicate column names {dups}; rename them so each column is unique"
        )


def read_parquet(path: str | Path) -> pd.DataFrame:
    """`pd.read_parquet`, then the pages Arrow's allocator kept from the read handed back to the
    system (about the frame's size again at register scale, otherwise held to the job's end)."""
    import pyarrow as pa

    df = pd.read_parquet(path)
    pa.default_memory_pool().release_unused()
    return df


def read_columns(path: str | Path) -> list[str]:
    """Column names of a data file, reading as little of it as the format allows."""
    path = Path(path)
    fmt = source_format(path)
    _check_readable(path)
    try:
        if fmt == "csv":
            with open(path, newline="", encoding="utf-8-sig") as fh:
                names = next(csv.reader(fh), [])
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            names = list(pq.read_schema(path).names)
        else:
            import pyreadstat

            reader = pyreadstat.read_dta if fmt == "dta" else pyreadstat.read_sav
            _, meta = reader(str(path), metadataonly=True)
            names = list(meta.column_names)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read the column names as {fmt} ({exc}); check the file"
        ) from None
    if not names:
        raise DataError(f"{path}: the file has no columns; check the path and the export")
    _check_duplicates(path, names)
    return names


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise DataError(
            f"{path}: data file not found; check sources.<name>.path (relative paths resolve against the working directory)"
        )
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; re-export the data")


def read_source(
    path: str | Path, date_formats: dict[str, str] | None = None
) -> tuple[pd.DataFrame, FileMeta]:
    """Read a .csv, .parquet, .dta or .sav file with its labels and storage types.

    Stata and SPSS value labels are kept aside (the data holds the codes); Stata's empty
    string is its missing string and becomes missing. Extended (Stata) and user (SPSS)
    missing values are missing in the data, their codes counted in the FileMeta; dates come
    back as datetime64 with their storage in `FileMeta.display_formats` (csv: the columns of
    `date_formats`, and text columns that all read as one ISO date format).
    """
    path = Path(path)
    fmt = source_format(path)
    names = read_columns(path)
    try:
        if fmt == "csv":
            df = pd.read_csv(path, encoding="utf-8-sig")
            meta = FileMeta(display_formats=csv_dates(df, date_formats or {}, path))
        elif fmt == "parquet":
            df = read_parquet(path)
            meta = parquet_meta(path)
            meta = FileMeta(**{**meta.__dict__, "display_formats": parquet_dates(df, path)})
        elif fmt == "dta":
            df, meta = _read_dta(path)
        else:
            df, meta = _read_sav(path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read as {fmt} ({type(exc).__name__}: {exc}); check the file"
        ) from None
    if list(map(str, df.columns)) != names:
        _check_duplicates(path, list(map(str, df.columns)))
    df.columns = [str(c) for c in df.columns]
    if len(df) == 0:
        raise DataError(f"{path}: the file has a header but no rows; re-export the data")
    return df, meta


def _read_dta(path: Path) -> tuple[pd.DataFrame, FileMeta]:
    import pyreadstat

    _, m = pyreadstat.read_dta(str(path), metadataonly=True)
    df = pd.read_stata(
        path, convert_categoricals=False, convert_missing=False, preserve_dtypes=True
    )
    for col in df.columns:
        if pd.api.types.is_string_dtype(df[col]) or df[col].dtype == object:
            df[col] = df[col].replace("", np.nan)
    formats = {
        c: str(f)
        for c, f in (m.original_variable_types or {}).items()
        if c in df.columns and pd.api.types.is_datetime64_any_dtype(df[c])
    }
    codes, code_labels = _dta_missing_codes(path, df, formats)
    labels = {k: dict(v) for k, v in (m.variable_value_labels or {}).items()}
    for col, labs in labels.items():  # extended-missing labels (keys "a".."z") go aside
        for k in [k for k in labs if isinstance(k, str)]:
            code_labels.setdefault(col, {})[f".{k}"] = str(labs.pop(k))
    meta = FileMeta(
        variable_labels={k: v for k, v in (m.column_names_to_labels or {}).items() if v},
        value_labels={k: v for k, v in labels.items() if v},
        storage_types=dict(m.readstat_variable_types or {}),
        display_formats=formats,
        missing_codes=codes,
        missing_labels={c: v for c, v in code_labels.items() if c in codes},
    )
    return df, meta


def _dta_missing_codes(
    path: Path, df: pd.DataFrame, formats: dict[str, str]
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, str]]]:
    """Rows per extended missing code (.a-.z) of each numeric column that has missing
    values: from the cells' bit patterns for Stata 117-119 files (`dta_code_counts`), else
    read again by pyreadstat, which keeps the codes as letters."""
    cols = [
        c
        for c in df.columns
        if c not in formats and pd.api.types.is_numeric_dtype(df[c]) and df[c].isna().any()
    ]
    if not cols:
        return {}, {}
    fast = dta_code_counts(path, list(map(str, df.columns)), cols)
    if fast is not None:
        return fast, {}
    import pyreadstat

    raw, _ = pyreadstat.read_dta(str(path), user_missing=True, usecols=cols)
    out: dict[str, dict[str, int]] = {}
    for c in cols:
        s = raw[c]
        if s.dtype != object:
            continue
        letters = s[s.map(lambda v: isinstance(v, str))]
        if len(letters):
            out[c] = {"." + k: int(n) for k, n in sorted(letters.value_counts().items())}
    return out, {}


# Stata's "." per storage type (type code: numpy type, "." as an unsigned view, step to .a)
_DTA_MISSING = {
    65526: ("u8", 0x7FE0000000000000, 1 << 40),  # double
    65527: ("u4", 0x7F000000, 0x800),  # float
    65528: ("i4", 2147483621, 1),  # long
    65529: ("i2", 32741, 1),  # int
    65530: ("i1", 101, 1),  # byte
}


def dta_code_counts(
    path: Path, columns: list[str], wanted: list[str]
) -> dict[str, dict[str, int]] | None:
    """Extended missing codes per column of `wanted`, counted on the raw cells of a Stata
    117-119 file (None for older formats): a cell above its type's "." by k steps is the
    k-th letter's code."""
    import struct

    raw = path.read_bytes()
    if not raw.startswith(b"<stata_dta>"):
        return None
    release = int(raw[raw.index(b"<release>") + 9 : raw.index(b"</release>")])
    order = "<" if b"<byteorder>LSF" in raw[:200] else ">"
    k_at = raw.index(b"<K>") + 3
    k = struct.unpack_from(order + ("I" if release >= 119 else "H"), raw, k_at)[0]
    n_at = raw.index(b"<N>") + 3
    n = struct.unpack_from(order + ("I" if release == 117 else "Q"), raw, n_at)[0]
    offsets = struct.unpack_from(order + "14Q", raw, raw.index(b"<map>") + 5)
    types = struct.unpack_from(f"{order}{k}H", raw, offsets[2] + len(b"<variable_types>"))
    if len(columns) != k:
        return None
    fields = [
        (
            f"c{i}",
            f"{order}{_DTA_MISSING[t][0]}" if t in _DTA_MISSING else f"V{_DTA_WIDTHS.get(t, t)}",
        )
        for i, t in enumerate(types)
    ]
    cells = np.frombuffer(raw, dtype=np.dtype(fields), count=n, offset=offsets[9] + len(b"<data>"))
    out: dict[str, dict[str, int]] = {}
    for c in wanted:
        i = columns.index(c)
        if types[i] not in _DTA_MISSING:
            continue
        _, dot, step = _DTA_MISSING[types[i]]
        v = cells[f"c{i}"].astype("int64") if types[i] != 65526 else cells[f"c{i}"]
        above = v[(v > dot) & (v <= dot + 26 * step)]  # negative doubles are larger as u8
        if len(above):
            letters, counts = np.unique((above - dot) // step, return_counts=True)
            out[c] = {
                "." + chr(ord("a") + int(x) - 1): int(m)
                for x, m in zip(letters, counts, strict=True)
                if 1 <= x <= 26
            }
    return {c: v for c, v in out.items() if v}


def code_text(v: float) -> str:
    """An SPSS user-missing value as the text that names its code (-9.0 -> "-9")."""
    f = float(v)
    return str(int(f)) if f.is_integer() else repr(f)


def _read_sav(path: Path) -> tuple[pd.DataFrame, FileMeta]:
    import pyreadstat

    df, m = pyreadstat.read_sav(
        str(path), apply_value_formats=False, user_missing=True, dates_as_pandas_datetime=True
    )
    labels = {k: dict(v) for k, v in (m.variable_value_labels or {}).items()}
    codes: dict[str, dict[str, int]] = {}
    code_labels: dict[str, dict[str, str]] = {}
    for col, declared in (m.missing_ranges or {}).items():
        ranges: list[dict[str, Any]] = [dict(r) for r in declared if isinstance(r, dict)]
        if col not in df.columns or not pd.api.types.is_numeric_dtype(df[col]):
            continue
        v = df[col].to_numpy(dtype="float64", na_value=np.nan)
        hit = np.zeros(len(v), dtype=bool)
        for r in ranges:
            hit |= (v >= float(r["lo"])) & (v <= float(r["hi"]))
        if hit.any():
            vals, counts = np.unique(v[hit], return_counts=True)
            codes[col] = {code_text(x): int(n) for x, n in zip(vals, counts, strict=True)}
            df[col] = df[col].astype("float64").where(~hit, np.nan)
        labs = labels.get(col, {})
        for k in [k for k in labs if _in_ranges(k, ranges)]:
            code_labels.setdefault(col, {})[code_text(k)] = str(labs.pop(k))
    formats = {
        c: str(f)
        for c, f in (m.original_variable_types or {}).items()
        if c in df.columns and pd.api.types.is_datetime64_any_dtype(df[c])
    }
    meta = FileMeta(
        variable_labels={k: v for k, v in (m.column_names_to_labels or {}).items() if v},
        value_labels={k: v for k, v in labels.items() if v},
        storage_types=dict(m.readstat_variable_types or {}),
        display_formats=formats,
        missing_codes=codes,
        missing_labels={c: v for c, v in code_labels.items() if c in codes},
    )
    return df, meta


def _in_ranges(k: Any, ranges: list[dict[str, Any]]) -> bool:
    try:
        f = float(k)
    except (TypeError, ValueError):
        return False
    return any(float(r["lo"]) <= f <= float(r["hi"]) for r in ranges)


# csv dates: the ISO forms recognised without a declaration (regex, strftime format)
CSV_DATE_FORMATS = (
    (r"\d{4}-\d{2}-\d{2}", "%Y-%m-%d"),
    (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", "%Y-%m-%d %H:%M:%S"),
    (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", "%Y-%m-%dT%H:%M:%S"),
    (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", "%Y-%m-%d %H:%M"),
)


def csv_dates(df: pd.DataFrame, declared: dict[str, str], path: Path) -> dict[str, str]:
    """Parse the csv's date columns in place: those declared (column -> strftime format;
    a value that does not parse is an error naming the column) and text columns whose every
    value has one ISO form of CSV_DATE_FORMATS. Returns column -> format."""
    out: dict[str, str] = {}
    for col in df.columns:
        s = df[col]
        fmt = declared.get(col) or _iso_form(s)
        if fmt is None:
            continue
        parsed = pd.to_datetime(s, format=fmt, errors="coerce")
        bad = int((parsed.isna() & s.notna()).sum())
        if bad:
            raise DataError(
                f"{path}: column {col!r}: {bad} value(s) do not read as dates in the format {fmt!r}; "
                f"fix them, or the format under sources.<name>.dates"
            )
        df[col] = parsed
        out[col] = fmt
    return out


def _iso_form(s: pd.Series) -> str | None:
    if not (s.dtype == object or pd.api.types.is_string_dtype(s)) or pd.api.types.is_numeric_dtype(
        s
    ):
        return None
    v = s.dropna()
    if not len(v) or not all(isinstance(x, str) for x in v.head(50)):
        return None
    text = v.astype(str).str.strip()
    for pattern, fmt in CSV_DATE_FORMATS:
        if bool(text.str.fullmatch(pattern).all()):
            return fmt
    return None


def parquet_dates(df: pd.DataFrame, path: Path) -> dict[str, str]:
    """Bring a parquet file's date and timestamp columns to datetime64 (time zones to naive
    UTC) in place; returns column -> Arrow type (date32[day], timestamp[us, tz=...])."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict[str, str] = {}
    for f in pq.read_schema(path):
        if f.name not in df.columns or not (
            pa.types.is_date(f.type) or pa.types.is_timestamp(f.type)
        ):
            continue
        s = df[f.name]
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        df[f.name] = pd.to_datetime(s)
        out[f.name] = str(f.type)
    return out


PARQUET_META_KEY = b"replisynth"


def parquet_meta(path: Path) -> FileMeta:
    import pyarrow.parquet as pq

    md = pq.read_schema(path).metadata or {}
    if PARQUET_META_KEY not in md:
        return FileMeta()
    d = json.loads(md[PARQUET_META_KEY])
    vl = {
        c: {_label_key(k): v for k, v in labs.items()}
        for c, labs in d.get("value_labels", {}).items()
    }
    return FileMeta(
        d.get("variable_labels", {}),
        vl,
        d.get("storage_types", {}),
        display_formats=d.get("display_formats", {}),
        missing_labels=d.get("missing_labels", {}),
    )


def _label_key(k: str) -> Any:
    """JSON turns value-label codes into strings; restore numeric codes."""
    try:
        f = float(k)
    except ValueError:
        return k
    return int(f) if f.is_integer() else f


# ---------------------------------------------------------------------------------------------
# writing synthetic data


SYNTHETIC_META_KEY = b"replisynth.synthetic"


SYNTHETIC_LABEL = "SYNTHETIC data made by replisynth: not real observations (see README.txt)"


def synthetic_label(bundle_sha256: str = "") -> str:
    """The note every synthetic file carries (parquet metadata, .dta data label: at most 80
    characters), so that a copy separated from its folder still says what it is. The same
    for every bundle (`bundle_sha256` is not used): a source's synthetic bytes do not depend
    on the other sources of its bundle; README.txt and the certificate name the bundle."""
    return SYNTHETIC_LABEL


def write_parquet(
    df: pd.DataFrame, path: str | Path, meta: FileMeta | None = None, synthetic: str | None = None
) -> None:
    """Parquet with the labels in the file metadata (and, for synthetic data, the
    `synthetic_label` under SYNTHETIC_META_KEY); deterministic bytes for equal frames."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if meta is not None:
        table = _arrow_dates(table, meta.display_formats)
    if synthetic is not None:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), SYNTHETIC_META_KEY: synthetic.encode()}
        )
    if meta is not None:
        extra = {
            "variable_labels": meta.variable_labels,
            "value_labels": {
                c: {str(k): v for k, v in labs.items()} for c, labs in meta.value_labels.items()
            },
            "storage_types": meta.storage_types,
        }
        if meta.display_formats:
            extra["display_formats"] = meta.display_formats
        if meta.missing_labels:
            extra["missing_labels"] = meta.missing_labels
        md = dict(table.schema.metadata or {})
        md[PARQUET_META_KEY] = json.dumps(extra, sort_keys=True).encode()
        table = table.replace_schema_metadata(md)
    # Dictionary pages only for non-float columns: a float column of distinct values fills a
    # dictionary only to fall back to plain pages (wasted write time and a larger file); codes, counts and text compress well in a dictionary.
    dictionary = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            row_group_size=PARQUET_ROW_GROUP,
            use_dictionary=dictionary,
        )


def _arrow_type(text: str) -> Any:
    """The Arrow date or timestamp type named by its text (date32[day], timestamp[ms, tz=UTC]),
    or None for any other text."""
    import re

    import pyarrow as pa

    if text.startswith("date32"):
        return pa.date32()
    if text.startswith("date64"):
        return pa.date64()
    m = re.fullmatch(r"timestamp\[(s|ms|us|ns)(?:, tz=(.+))?\]", text)
    return pa.timestamp(m.group(1), tz=m.group(2)) if m else None


def _arrow_dates(table: Any, formats: dict[str, str]) -> Any:
    """Date and timestamp columns cast to the Arrow type of their source (naive values are UTC)."""
    import pyarrow.compute as pc

    for name, text in formats.items():
        t = _arrow_type(text)
        if t is None or name not in table.column_names:
            continue
        i = table.column_names.index(name)
        col = table.column(i)
        table = table.set_column(i, name, pc.cast(col, t, safe=False))
    return table


def csv_date_format(display: str | None) -> str | None:
    """A strftime format for writing a date column to csv, or None when the display format
    is not one (Stata %t formats, SPSS and Arrow type names)."""
    if not display or "%" not in display or stata_date_format(display) is not None:
        return None
    return display


def write_csv(
    df: pd.DataFrame, path: str | Path, date_formats: dict[str, str] | None = None
) -> None:
    """CSV with full float precision (repr), missing as empty, quoted where needed; date
    columns named in `date_formats` are written in their strftime format.

    The bytes are pandas' `to_csv(index=False, lineterminator="\\n")`; an all-numeric frame
    (the usual synthetic file) is formatted column-wise by Arrow instead, which is faster,
    with the float text brought onto Python's repr footing (`_arrow_text`)."""
    fmts = {c: f for c, f in (date_formats or {}).items() if c in df.columns and csv_date_format(f)}
    if fmts:
        df = df.assign(**{c: df[c].dt.strftime(f) for c, f in fmts.items()})
    zoned = [c for c, t in df.dtypes.items() if isinstance(t, pd.DatetimeTZDtype)]
    if zoned:  # as UTC without a zone, as the frame held it before the parquet's cast
        df = df.assign(**{c: df[c].dt.tz_convert("UTC").dt.tz_localize(None) for c in zoned})
    kinds = _csv_kinds(df) if len(df.columns) and len(df) else None
    with atomic_path(path) as tmp:
        if kinds is None:
            df.to_csv(tmp, index=False, lineterminator="\n")
            return
        with open(tmp, "wb") as fh:
            fh.write(df.iloc[:0].to_csv(index=False, lineterminator="\n").encode("utf-8"))
            _write_csv_rows(fh, df, kinds)


def _write_csv_rows(fh: Any, df: pd.DataFrame, kinds: list[str]) -> None:
    """Append `df`'s rows (no header) to the binary file `fh`, formatted by Arrow (`kinds` from
    `_csv_kinds`), a chunk of rows at a time: each value's text does not depend on its
    neighbours, so the bytes are those of one pass, and only a chunk's text is held."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    step = max(1024, CSV_CHUNK_CELLS // len(kinds))
    for a in range(0, len(df), step):
        cols = _arrow_csv_columns(df.iloc[a : a + step], kinds)
        table = pa.Table.from_arrays(cols, names=[f"c{i}" for i in range(len(cols))])
        pacsv.write_csv(
            table,
            fh,
            pacsv.WriteOptions(include_header=False, quoting_style="none", batch_size=1 << 16),
        )


CSV_CHUNK_CELLS = 4_000_000  # values formatted at a time by write_csv
PARQUET_ROW_GROUP = 1 << 18  # rows per parquet row group: the csv export reads one group at a time


def write_csv_from_parquet(parquet: str | Path, path: str | Path) -> None:
    """`write_csv(pd.read_parquet(parquet), path)`, the same bytes, reading the file one row
    group at a time when every column is formatted by Arrow (dtypes come from the file's
    schema and pandas metadata, the same for every batch), so the whole frame is never held
    (the csv job runs beside verification, so its memory peak matters)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(parquet)
    dates = parquet_meta(Path(parquet)).display_formats
    if any(csv_date_format(f) for f in dates.values()):
        write_csv(pd.read_parquet(parquet), path, dates)
        return
    empty = pf.schema_arrow.empty_table().to_pandas()
    kinds = _csv_kinds(empty) if len(empty.columns) else None
    if kinds is None or pf.metadata.num_rows == 0:
        write_csv(pd.read_parquet(parquet), path)
        return
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(empty.to_csv(index=False, lineterminator="\n").encode("utf-8"))
            for g in range(pf.num_row_groups):
                part = pf.read_row_group(g).to_pandas()
                if _csv_kinds(part) != kinds:  # never expected (types come from the schema)
                    raise _BatchTypes
                _write_csv_rows(fh, part, kinds)
                del part
    except _BatchTypes:  # the temporary file is gone (atomic_path); one pass over the whole frame
        write_csv(pd.read_parquet(parquet), path)


class _BatchTypes(Exception):
    """A parquet row group came back with other pandas dtypes than the file's schema gives."""


_INT_EXTENSION = ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64")


def _csv_kinds(df: pd.DataFrame) -> list[str] | None:
    """How each column is formatted by Arrow (int, float, bool), or None when a column is not
    plain numeric (strings, categories, dates, float32 go through pandas)."""
    out: list[str] = []
    for _, s in df.items():
        t = s.dtype
        if isinstance(t, np.dtype) and t.kind in "iu":
            out.append("int")
        elif isinstance(t, np.dtype) and t == np.float64:
            out.append("float")
        elif isinstance(t, np.dtype) and t.kind == "b":
            out.append("bool")
        elif isinstance(t, pd.api.extensions.ExtensionDtype) and str(t) in _INT_EXTENSION:
            out.append("int")
        else:
            return None
    return out


def _arrow_csv_columns(df: pd.DataFrame, kinds: list[str]) -> list[Any]:
    """Each column as an Arrow string array holding pandas' CSV text (`kinds` from
    `_csv_kinds`). Columns are formatted on the stage's threads (Arrow's kernels release the
    GIL; results in column order, so the bytes do not depend on the thread count)."""

    jobs = [
        (s if isinstance(s.dtype, pd.api.extensions.ExtensionDtype) else s.to_numpy(), k)
        for (_, s), k in zip(df.items(), kinds, strict=True)
    ]
    return thread_map(lambda job: _arrow_text(*job), jobs)


def _arrow_text(values: Any, kind: str) -> Any:
    """Arrow string array of numbers written the way pandas writes them: integers plainly,
    booleans as True/False, float64 as Python's repr (shortest round trip, '.0' on whole
    numbers, exponent outside [1e-4, 1e16)), missing as null (empty in the file)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(values, from_pandas=True)
    if kind == "bool":
        return pc.if_else(arr, "True", "False")
    text = pc.cast(arr, pa.string())
    if kind == "int":
        return text
    x = np.asarray(values, dtype="float64")
    ax = np.abs(x)
    fin = np.isfinite(x)
    # Arrow picks exponent or positional notation by its own rule; the digits are the same
    # shortest round-trip digits as repr. Values repr writes with an exponent, and any that
    # Arrow wrote with one, are formatted by repr itself (rare in real data).
    exp = fin & ((ax >= 1e16) | ((ax < 1e-4) & (ax > 0)))

    def has(sub: str) -> np.ndarray:
        return pc.fill_null(pc.match_substring(text, sub), False).to_numpy(zero_copy_only=False)

    exp |= has("e") & fin
    whole = ~has(".") & fin & ~exp
    fixed = text
    if whole.any():  # '.0' appended to the whole numbers only (not a joined copy of every value)
        at = pa.array(np.flatnonzero(whole))
        fixed = pc.replace_with_mask(
            text, pa.array(whole), pc.binary_join_element_wise(text.take(at), ".0", "")
        )
    if exp.any():
        idx = np.flatnonzero(exp)
        py = np.asarray(fixed.to_numpy(zero_copy_only=False), dtype=object)
        py[idx] = [repr(float(v)) for v in x[idx]]
        fixed = pa.array(py, type=pa.string(), from_pandas=True)
    return fixed


_STATA_INT_TYPES = {"int8": "int8", "int16": "int16", "int32": "int32"}
# Stata's valid ranges (the top values are reserved for missing codes).
_STATA_INT_RANGE = {
    "int8": (-127, 100),
    "int16": (-32767, 32740),
    "int32": (-2147483647, 2147483620),
}


def _fits_stata_int(s: pd.Series, storage: str) -> bool:
    """True when a column can go back to its Stata integer type without loss: no missing
    value, every value whole and inside the type's range (a pinned outcome is not)."""
    if (
        s.isna().any()
        or not pd.api.types.is_numeric_dtype(s.dtype)
        or pd.api.types.is_bool_dtype(s.dtype)
    ):
        return False
    v = s.to_numpy(dtype="float64")
    lo, hi = _STATA_INT_RANGE[storage]
    return bool(np.all(v == np.round(v)) and v.min(initial=0) >= lo and v.max(initial=0) <= hi)


STATA_DATE_FORMATS = ("tc", "td", "tw", "tm", "tq", "th", "ty")


def stata_date_format(display: str | None) -> str | None:
    """The pandas `convert_dates` code of a Stata display format (%td -> td, %tdCCYY -> td,
    the old %d -> td), or None when it is not a Stata date format."""
    if not display or not display.startswith("%"):
        return None
    body = display[1:].lstrip("-")
    if body == "d":
        return "td"
    code = "tc" if body[:2] == "tC" else body[:2]
    return code if code in STATA_DATE_FORMATS else None


def write_dta(
    df: pd.DataFrame,
    path: str | Path,
    meta: FileMeta,
    synthetic: str | None = None,
    codes: dict[str, np.ndarray] | None = None,
) -> None:
    """Stata 118 file with variable and value labels, integer storage types restored where
    the values allow it (Stata integers hold missing; pandas needs float for that), dates
    in their display format (`meta.display_formats`; a datetime without one is %tc) and the
    extended missing codes of `codes` (column -> per-row ".a".."z" or None) in place of
    plain missing; a synthetic file's data label is its `synthetic_label`."""
    out = _dta_storage(df, meta)
    codes = {c: v for c, v in (codes or {}).items() if c in out.columns}
    for c in codes:  # a code is patched into a double cell
        out[c] = out[c].astype("float64")
    labels = {c: meta.variable_labels[c][:80] for c in out.columns if c in meta.variable_labels}
    dates = {
        c: stata_date_format(meta.display_formats.get(c)) or "tc"
        for c in out.columns
        if pd.api.types.is_datetime64_any_dtype(out[c])
    }
    # display formats pandas cannot write (%tdCCYY-NN-DD) are patched in after it
    custom = {
        c: f
        for c, f in meta.display_formats.items()
        if c in dates and stata_date_format(f) == dates[c] and f != "%" + dates[c]
    }
    with atomic_path(path) as tmp:
        out.to_stata(
            tmp,
            write_index=False,
            version=118,
            byteorder="little",
            time_stamp=DTA_TIME_STAMP,
            data_label=synthetic[:80] if synthetic else None,
            variable_labels=labels or None,
            value_labels=_dta_value_labels(out, meta) or None,
            convert_dates=dates or None,
        )
        if codes or custom:
            _patch_dta(tmp, list(out.columns), codes, custom)


def _dta_storage(df: pd.DataFrame, meta: FileMeta) -> pd.DataFrame:
    """The frame as pandas writes it to Stata: integer storage restored where the values
    allow it, nullable integers and booleans as numbers, text and categories as str."""
    out = df.copy()
    for col in out.columns:
        s = out[col]
        st = meta.storage_types.get(col)
        if st in _STATA_INT_TYPES and _fits_stata_int(s, st):
            out[col] = s.astype(_STATA_INT_TYPES[st])
        elif str(s.dtype) in ("Int8", "Int16", "Int32", "Int64", "boolean"):
            out[col] = s.astype("float64")
        elif s.dtype == bool:
            out[col] = s.astype("int8")
        elif isinstance(s.dtype, pd.CategoricalDtype):
            out[col] = s.astype(object).where(s.notna(), "")
        elif pd.api.types.is_string_dtype(s) and not pd.api.types.is_numeric_dtype(s):
            out[col] = s.astype(object).where(s.notna(), "")
    return out


def _dta_value_labels(out: pd.DataFrame, meta: FileMeta) -> dict[str, dict[int, str]]:
    """Value labels of numeric columns, with the labels of extended missing codes under
    Stata's keys for .a-.z."""
    value_labels = {
        c: {int(k): str(v)[:32000] for k, v in labs.items() if _isint(k)}
        for c, labs in meta.value_labels.items()
        if c in out.columns and pd.api.types.is_numeric_dtype(out[c])
    }
    for c, labs in meta.missing_labels.items():
        if c not in out.columns or not pd.api.types.is_numeric_dtype(out[c]):
            continue
        for code, text in labs.items():
            off = _stata_code(code)
            if off is not None:
                value_labels.setdefault(c, {})[STATA_LABEL_A + off] = text
    return {c: v for c, v in value_labels.items() if v}


def _isint(k: Any) -> bool:
    try:
        return float(k).is_integer()
    except (TypeError, ValueError):
        return False


STATA_LABEL_A = 2147483622  # the value-label key of .a (. is one less, .b one more)
_DTA_WIDTHS = {65530: 1, 65529: 2, 65528: 4, 65527: 4, 65526: 8, 32768: 8}
_DTA_DOUBLE_MISSING = 0x7FE0000000000000  # Stata's "." as a double; .a adds 2**40, .b 2*2**40, ...


def _stata_code(code: str) -> int | None:
    """Offset of an extended missing code from .a (".a" -> 0), None for anything else."""
    if len(code) == 2 and code[0] == "." and "a" <= code[1] <= "z":
        return ord(code[1]) - ord("a")
    return None


def _patch_dta(
    path: Path, columns: list[str], codes: dict[str, np.ndarray], formats: dict[str, str]
) -> None:
    """Write extended missing codes into the double cells of a little-endian Stata 118 file
    (pandas writes every missing value as ".") and display formats into its formats table
    (57 bytes per variable): the offsets come from the file's map and variable types."""
    import struct

    raw = bytearray(path.read_bytes())
    at = raw.index(b"<map>") + len(b"<map>")
    offsets = struct.unpack_from("<14Q", raw, at)
    for c, f in formats.items():
        pos = offsets[5] + len(b"<formats>") + 57 * columns.index(c)
        raw[pos : pos + 57] = f.encode("ascii", "replace")[:56].ljust(57, b"\0")
    k = len(columns)
    types = struct.unpack_from(f"<{k}H", raw, offsets[2] + len(b"<variable_types>"))
    widths = [_DTA_WIDTHS.get(t, t) for t in types]
    row_len = sum(widths)
    start = offsets[9] + len(b"<data>")
    col_at = np.cumsum([0, *widths[:-1]])
    cells = np.frombuffer(raw, dtype=np.uint8)  # a writable view of `raw`
    for c, per_row in codes.items():
        j = columns.index(c)
        if types[j] != 65526:
            raise DataError(
                f"{path}: column {c!r} is not stored as double; cannot write its missing codes"
            )
        arr = np.asarray(per_row, dtype=object)
        for code in sorted({x for x in pd.unique(arr) if isinstance(x, str)}):
            off = _stata_code(code)
            if off is None:
                continue
            bits = np.frombuffer(
                struct.pack("<Q", _DTA_DOUBLE_MISSING + (off + 1) * (1 << 40)), dtype=np.uint8
            )
            rows = np.flatnonzero(arr == code)
            pos = start + rows * row_len + int(col_at[j])
            cells[pos[:, None] + np.arange(8)] = bits
    path.write_bytes(bytes(raw))


def write_sav(
    df: pd.DataFrame,
    path: str | Path,
    meta: FileMeta,
    synthetic: str | None = None,
    codes: dict[str, np.ndarray] | None = None,
) -> None:
    """SPSS file with variable and value labels, dates in their display format
    (`meta.display_formats`: DATE11, DATETIME20, ...) and the user-missing codes of `codes`
    (column -> per-row code text or None) written as values declared missing."""
    import pyreadstat

    out = df.copy()
    for col in out.columns:
        s = out[col]
        if isinstance(s.dtype, pd.CategoricalDtype) or (
            pd.api.types.is_string_dtype(s) and not pd.api.types.is_numeric_dtype(s)
        ):
            out[col] = s.astype(object).where(s.notna(), "")
        elif str(s.dtype) in _INT_EXTENSION or str(s.dtype) == "boolean" or s.dtype == bool:
            out[col] = s.astype("float64")
        elif pd.api.types.is_datetime64_any_dtype(s) and not _spss_datetime(meta, col):
            out[col] = pd.Series([None if pd.isna(v) else v.date() for v in s], dtype=object)
    missing: dict[str, list[Any]] = {}
    for c, per_row in (codes or {}).items():
        arr = np.asarray(per_row, dtype=object)
        hit = np.asarray([isinstance(x, str) for x in arr], dtype=bool)
        vals = out[c].to_numpy(dtype="float64", na_value=np.nan, copy=True)
        declared = sorted({float(x) for x in [*meta.missing_labels.get(c, {}), *arr[hit]]})
        vals[hit] = [float(x) for x in arr[hit]]
        missing[c] = _sav_missing(declared, vals[~hit & ~np.isnan(vals)])
        if len(missing[c]) == 3 and len(declared) > 3:  # codes SPSS cannot declare: plain
            vals[hit & ~np.isin(vals, missing[c])] = np.nan
        out[c] = vals
    value_labels: dict[str, dict[Any, str]] = {}
    for c in out.columns:
        labs = {float(k): str(v) for k, v in meta.value_labels.get(c, {}).items() if _isnum(k)}
        labs |= {float(k): str(v) for k, v in meta.missing_labels.get(c, {}).items()}
        if labs and pd.api.types.is_numeric_dtype(out[c]):
            value_labels[c] = labs
    formats = {c: f for c, f in meta.display_formats.items() if c in out.columns and "%" not in f}
    with atomic_path(path) as tmp:
        pyreadstat.write_sav(
            out,
            str(tmp),
            file_label=(synthetic or "")[:64],
            column_labels={c: meta.variable_labels.get(c) for c in out.columns},
            variable_value_labels=value_labels or None,
            missing_ranges={c: v for c, v in missing.items() if v} or None,
            variable_format=formats or None,
        )
        _fix_sav_time_stamp(tmp)


# SPSS's header carries its creation date and time (bytes 92-108); fixed ones keep reruns
# byte-identical, as DTA_TIME_STAMP does for Stata.
SAV_TIME_STAMP = b"01 Jan 0000:00:00"


def _fix_sav_time_stamp(path: Path) -> None:
    with open(path, "r+b") as fh:
        head = fh.read(4)
        if head in (b"$FL2", b"$FL3"):
            fh.seek(92)
            fh.write(SAV_TIME_STAMP)


def _sav_missing(codes: list[float], valid: np.ndarray) -> list[Any]:
    """SPSS's declaration of a column's missing codes: up to three discrete values, else one
    range from the lowest to the highest code when no valid value lies inside it, else the
    three lowest codes (the others are written as plain missing)."""
    if len(codes) <= 3:
        return list(codes)
    lo, hi = float(codes[0]), float(codes[-1])
    if not bool(((valid >= lo) & (valid <= hi)).any()):
        return [{"lo": lo, "hi": hi}]
    return list(codes[:3])


def _spss_datetime(meta: FileMeta, col: str) -> bool:
    return meta.display_formats.get(col, "DATETIME").upper().startswith(("DATETIME", "YMDHMS"))


def _isnum(k: Any) -> bool:
    try:
        float(k)
    except (TypeError, ValueError):
        return False
    return True
