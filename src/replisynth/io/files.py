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


def read_source(path: str | Path) -> tuple[pd.DataFrame, FileMeta]:
    """Read a .csv, .parquet, .dta or .sav file with its labels and storage types.

    Stata and SPSS value labels are kept aside (the data holds the codes); Stata's empty
    string is its missing string and becomes missing.
    """
    path = Path(path)
    fmt = source_format(path)
    names = read_columns(path)
    try:
        if fmt == "csv":
            df = pd.read_csv(path, encoding="utf-8-sig")
            meta = FileMeta()
        elif fmt == "parquet":
            df = pd.read_parquet(path)
            meta = parquet_meta(path)
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
    meta = FileMeta(
        variable_labels={k: v for k, v in (m.column_names_to_labels or {}).items() if v},
        value_labels={k: dict(v) for k, v in (m.variable_value_labels or {}).items()},
        storage_types=dict(m.readstat_variable_types or {}),
    )
    return df, meta


def _read_sav(path: Path) -> tuple[pd.DataFrame, FileMeta]:
    import pyreadstat

    df, m = pyreadstat.read_sav(str(path), apply_value_formats=False, user_missing=False)
    meta = FileMeta(
        variable_labels={k: v for k, v in (m.column_names_to_labels or {}).items() if v},
        value_labels={k: dict(v) for k, v in (m.variable_value_labels or {}).items()},
        storage_types=dict(m.readstat_variable_types or {}),
    )
    return df, meta


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
    return FileMeta(d.get("variable_labels", {}), vl, d.get("storage_types", {}))


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


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """CSV with full float precision (repr), missing as empty, quoted where needed.

    The bytes are pandas' `to_csv(index=False, lineterminator="\\n")`; an all-numeric frame
    (the usual synthetic file) is formatted column-wise by Arrow instead, which is faster,
    with the float text brought onto Python's repr footing (`_arrow_text`)."""
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


def write_dta(
    df: pd.DataFrame, path: str | Path, meta: FileMeta, synthetic: str | None = None
) -> None:
    """Stata 118 file with variable and value labels, integer storage types restored where
    the values allow it (Stata integers hold missing; pandas needs float for that); a
    synthetic file's data label is its `synthetic_label`."""
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
    labels = {c: meta.variable_labels[c][:80] for c in out.columns if c in meta.variable_labels}
    value_labels = {
        c: {int(k): str(v)[:32000] for k, v in labs.items() if float(k).is_integer()}
        for c, labs in meta.value_labels.items()
        if c in out.columns and pd.api.types.is_numeric_dtype(out[c])
    }
    with atomic_path(path) as tmp:
        out.to_stata(
            tmp,
            write_index=False,
            version=118,
            time_stamp=DTA_TIME_STAMP,
            data_label=synthetic[:80] if synthetic else None,
            variable_labels=labels or None,
            value_labels=value_labels or None,
        )
