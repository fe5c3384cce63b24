"""`replisynth init` drafts a manifest that loads, runs to tier 4 once a checkpoint is filled in,
and quotes no data value; `--version`, every command's `--help`, and `run --bundle` refused."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from replisynth import __version__
from replisynth.config.manifest import load_manifest
from replisynth.io.draft import analyse, derived_columns, draft_manifest, manifest_name, source_name
from replisynth.io.files import FileMeta, read_source
from replisynth.workflow.cli import _COMMANDS, main

SECTORS = ("Qzvx-Farming", "Wrpl-Foundry", "Kjhb-Harbour")  # distinctive level labels
ID_BASE = 48_213_000


def _frame(rows: int, seed: int) -> pd.DataFrame:
    """Ids, free text, a date, a log-derived pair, a 3-level categorical, continuous columns."""
    rng = np.random.default_rng(seed)
    sector = rng.choice(len(SECTORS), size=rows, p=[0.3, 0.3, 0.4])
    hours = np.round(rng.gamma(9.0, 4.3, rows) + rng.random(rows), 4)
    age = rng.integers(18, 66, rows)
    log_pay = 1.7 + 0.021 * hours + 0.013 * age + np.array([0.0, 0.25, 0.4])[sector]
    log_pay = log_pay + rng.normal(0, 0.45, rows)
    return pd.DataFrame(
        {
            "person_no": ID_BASE + rng.permutation(rows),
            "Remarks Text": [f"Xylo{rng.integers(10**8)} wrote note {i}" for i in range(rows)],
            "interview_day": pd.Timestamp("2019-03-01")
            + pd.to_timedelta(rng.integers(0, 700, rows), unit="D"),
            "pay": np.exp(log_pay),
            "log_pay": log_pay,
            "sector": np.array(SECTORS)[sector],
            "hours_wk": hours,
            "age": age,
        }
    )


def _planted(df: pd.DataFrame) -> list[str]:
    """Values that must not appear in a draft: every text value and level label, id digits,
    and the printed forms of the continuous values."""
    out = [str(v) for v in df["Remarks Text"]] + list(SECTORS) + [str(ID_BASE)[:5]]
    for c in ("pay", "log_pay", "hours_wk"):
        for v in df[c].to_numpy()[:200]:
            out += [repr(float(v)), f"{v:.4f}", f"{v:g}"]
    return out


def _fill_checkpoint(text: str, formula: str) -> str:
    """Uncomment the checkpoint template with `formula`, and ask for tier 4."""
    lines = text.splitlines()
    start = lines.index("# checkpoints:")
    out = lines[:start]
    i = start
    while i < len(lines) and lines[i].startswith("#"):
        out.append(lines[i][2:])
        i += 1
    out += lines[i:]
    text = "\n".join(out) + "\n"
    text = re.sub(r'formula: ".*"', f'formula: "{formula}"', text)
    return re.sub(r"\n  tier: 3\b", "\n  tier: 4", text)


@pytest.fixture
def parquet_file(tmp_path: Path) -> Path:
    p = tmp_path / "my survey-2024.parquet"
    _frame(2000, 7).to_parquet(p)
    return p


def test_draft_flags_columns_and_quotes_no_value(parquet_file: Path) -> None:
    df, meta = read_source(parquet_file)
    text = draft_manifest(df, meta, str(parquet_file), seed=11)
    for value in _planted(df):
        assert value not in text, "the draft quotes a data value"
    raw = yaml.safe_load(text)
    src = raw["sources"][source_name(parquet_file)]
    assert raw["name"] == manifest_name(parquet_file) == "my_survey-2024"
    assert src["ids"] == ["person_no"]
    assert set(src["exclude"]) == {"Remarks Text"}  # free text; log_pay = log(pay) is proposed
    assert src["strata"] == ["sector"] and "derive" not in src  # proposals are commented out
    assert raw["sdc"] == {"profile": "standard"} and raw["verify"] == {"tier": 3}
    assert '"Remarks Text": free text: excluded below; never released' in text
    assert '"log_pay": derived (equals log(pay) on every row): proposed under derive' in text
    assert '    #   "log_pay": "log(pay)"' in text
    assert '"interview_day": a date column' in text
    assert '"sector": categorical (nominal), string' in text
    assert '"hours_wk": continuous, float' in text
    m = load_manifest(_write(parquet_file.parent / "as_is.yaml", text))
    assert m.verify_tier == 3 and not m.checkpoints


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_draft_runs_to_tier_4(parquet_file: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "draft.yaml"
    assert main(["init", parquet_file.name, "--out", str(out), "--quiet"]) == 0
    filled = _fill_checkpoint(out.read_text(), "log_pay ~ hours_wk + age + C(sector)")
    m = load_manifest(_write(tmp_path / "filled.yaml", filled))
    assert m.verify_tier == 4 and [c.tag for c in m.checkpoints] == ["main_result"]
    rc = main(["run", str(tmp_path / "filled.yaml"), "--results", str(tmp_path / "res"), "--quiet"])
    assert rc == 0
    tiers = json.loads((tmp_path / "res" / m.name / "verify" / "tiers.json").read_text())
    assert tiers["tier_met"] == 4 and tiers["passed"]
    assert list(tiers["checkpoints"]) == ["main_result"]
    assert tiers["checkpoint_summary"]["terms"] == 5  # intercept, hours_wk, age, two sectors


@pytest.mark.parametrize("fmt", ["csv", "dta"])
def test_init_on_csv_and_labelled_dta(fmt: str, tmp_path: Path, monkeypatch, capsys) -> None:
    df = _frame(1000, 23 if fmt == "csv" else 5)
    path = tmp_path / f"wave 3.{fmt}"
    labels = {"sector": {1: "Qzvx-Farming", 2: "Wrpl-Foundry", 3: "Kjhb-Harbour"}}
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        import pyreadstat

        coded = df.assign(
            sector=df["sector"].map({v: k for k, v in labels["sector"].items()}),
            interview_day=df["interview_day"].dt.date,
        ).rename(columns={"Remarks Text": "remarks"})
        pyreadstat.write_dta(
            coded,
            str(path),
            column_labels={"hours_wk": "Zebrafish hours per week"},
            variable_value_labels=labels,
        )
    monkeypatch.chdir(tmp_path)
    assert main(["init", path.name, "--out", "m.yaml"]) == 0
    text = (tmp_path / "m.yaml").read_text()
    for value in [*_planted(df), "Zebrafish"]:  # nor a variable label
        assert value not in text
    m = load_manifest(tmp_path / "m.yaml")
    src = m.sources[0]
    assert m.name == "wave_3" and src.ids == ("person_no",) and src.strata == ("sector",)
    if fmt == "csv":  # ISO dates in a csv are read as dates
        assert set(src.exclude) == {"Remarks Text"}
        assert '"interview_day": a date column' in text
    else:
        assert set(src.exclude) == {"remarks"}
        assert '"sector": categorical (nominal)' in text and "value labels" in text
    filled = _fill_checkpoint(text, "log_pay ~ hours_wk + C(sector)")
    assert load_manifest(_write(tmp_path / "filled.yaml", filled)).checkpoints[0].source == src.name


@pytest.mark.parametrize("seed", [1, 2])
def test_derived_columns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(10, 2, 400)
    grade = rng.integers(1, 9, 400).astype(float)
    df = pd.DataFrame(
        {
            "x": x,
            "x_sq": x**2,
            "x_scaled": 3.5 * x - 2,
            "noise": rng.normal(size=400),
            "grade": grade,
            "grade_pay": np.exp(grade / 3) * 1000 + np.sin(grade),  # a function, no named form
            "near_sq": x**2 + rng.normal(0, 0.01, 400),  # not exact: not flagged
        }
    )
    df.loc[df.index[:300], "grade"] = np.repeat(np.arange(1.0, 31.0), 10)  # 30+ grades
    df["grade_pay"] = np.exp(df["grade"] / 3) * 1000 + np.sin(df["grade"])
    found = derived_columns(df, set())
    assert found == {
        "x_sq": 'the square of "x"',
        "x_scaled": 'a linear function of "x"',
        "grade_pay": 'exactly a function of "grade"',
    }


def test_strata_rule() -> None:
    """Candidates have 2-6 levels, none below the cell size; the suggestion's cells are large."""
    rng = np.random.default_rng(3)
    n = 1500
    df = pd.DataFrame(
        {
            "rare_flag": np.r_[np.ones(40), np.zeros(n - 40)].astype(int),  # a level of 40 < 50
            "region": rng.choice(["a", "b", "c"], n),
            "half": np.r_[np.ones(n // 2), np.zeros(n - n // 2)].astype(int),
            "seven": rng.integers(0, 7, n),  # 7 levels: not a stratum
            "y": rng.normal(size=n),
        }
    )
    draft, _ = analyse(df, FileMeta(), "x.parquet")
    assert draft.strata_candidates == ["region", "half"]
    assert draft.strata == ["half", "region"]  # 6 cells of about 250 rows
    draft, _ = analyse(df.head(1000), FileMeta(), "x.parquet")
    assert draft.strata == ["half"]  # half x region would have cells below 200 rows


def test_overwrite_refused_unless_forced(parquet_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "keep.yaml"
    out.write_text("mine\n")
    assert main(["init", str(parquet_file), "--out", str(out)]) == 1
    assert out.read_text() == "mine\n"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keep.yaml exists" in err[0] and "--force" in err[0]
    assert main(["init", str(parquet_file), "--out", str(out), "--force"]) == 0
    assert out.read_text().startswith("# Manifest draft")
    assert not list(tmp_path.glob(".keep.yaml.*"))  # no temporary file left


def test_init_bad_file_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "data.xlsx"
    bad.write_text("x")
    assert main(["init", str(bad), "--out", str(tmp_path / "m.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.xlsx" in err[0]
    assert not (tmp_path / "m.yaml").exists()


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"replisynth {__version__}"


@pytest.mark.parametrize("command", [*_COMMANDS, "init"])
def test_every_command_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "reads:" in out and "writes:" in out and f"example: replisynth {command}" in out


def test_run_with_bundle_refused(tmp_path: Path, capsys) -> None:
    rc = main(["run", str(tmp_path / "m.yaml"), "--bundle", str(tmp_path), "--results", "x"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run --bundle" in err[0] and "synthesize --bundle" in err[0]
    assert not (tmp_path / "x").exists()


# --- derive proposals, numbers and dates stored as text -------------------------------------


def _confirm_derive(text: str, fills: dict[str, str] | None = None) -> str:
    """Uncomment the draft's derive block: entries with a '...' only when `fills` gives the
    value for that column (the others stay commented)."""
    fills = fills or {}
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i] != "    # derive:":
            out.append(lines[i])
            i += 1
            continue
        out.append("    derive:")
        i += 1
        while lines[i].startswith("    #   "):
            entry = lines[i][8:].split("   # ")[0]
            col = json.loads(entry.split(": ", 1)[0])
            if "..." not in entry or col in fills:
                out.append("      " + entry.replace("...", fills.get(col, "...")))
            i += 1
    return "\n".join(out) + "\n"


def _relations_frame(n: int, seed: int, cut: float, const: float) -> pd.DataFrame:
    """A log, a square, a 0/1 threshold at `cut` and a sum plus `const`, beside noise."""
    rng = np.random.default_rng(seed)
    earn = np.round(rng.lognormal(7.5, 0.6, n), 2)
    dose = rng.normal(3000.0, 400.0, n)
    a, b = rng.integers(1, 40, n), rng.integers(1, 9, n)
    return pd.DataFrame(
        {
            "earn": earn,
            "ln_earn": np.log(earn),
            "dose": dose,
            "low_dose": (dose < cut).astype(int),
            "grade": a,
            "grade_squared": a**2,
            "parts": b,
            "total": a + b + const,
            "noise": rng.normal(size=n),
        }
    )


@pytest.mark.parametrize("seed", [4, 9])
def test_derive_proposed_not_excluded_and_holds(seed: int, tmp_path: Path) -> None:
    from replisynth.extract.relations import check_declared, detect_relations

    cut, const = 3141.59 + seed, 7.25 + seed
    df = _relations_frame(900 + 37 * seed, seed, cut, const)
    path = tmp_path / "rel.parquet"
    df.to_parquet(path)
    text = draft_manifest(df, FileMeta(), str(path), seed=1, detect=detect_relations)
    dose = df["dose"].to_numpy()
    edges = [dose[df["low_dose"] == 1].max(), dose[df["low_dose"] == 0].min(), cut, const]
    for v in edges:  # the cut-off, the rows at its edge, the constant: never printed
        assert f"{v:g}" not in text and repr(float(v)) not in text and f"{v:.2f}" not in text
    src = yaml.safe_load(text)["sources"]["rel"]
    assert src["exclude"] == [] and "derive" not in src
    assert "low_dose" not in src["strata"]  # a derived column may not be a stratum
    assert '#   "ln_earn": "log(earn)"' in text
    assert '#   "grade_squared": "grade**2"' in text
    assert '#   "low_dose": "dose < ..."' in text and "fill in your cut-off" in text
    assert '#   "total": "grade + parts + ..."' in text and "fill in your constant" in text
    fills = {"low_dose": str(cut), "total": str(const)}
    m = load_manifest(_write(tmp_path / "m.yaml", _confirm_derive(text, fills)))
    assert dict(m.sources[0].derive) == {
        "ln_earn": "log(earn)",
        "low_dose": f"dose < {cut}",
        "grade_squared": "grade**2",
        "total": f"grade + parts + {const}",
    }
    check_declared(df, m.sources[0])  # every proposal holds on every row
    with pytest.raises(Exception, match=r"sources\.rel\.derive\.low_dose"):
        load_manifest(_write(tmp_path / "u.yaml", _confirm_derive(text, {"low_dose": "..."})))


@pytest.mark.parametrize("comma", [False, True])
def test_numbers_stored_as_text_declared(comma: bool, tmp_path: Path) -> None:
    """A csv column of "1,234"-style numbers with stray "-" and "n/a" is declared under numeric
    with the token; the draft's manifest reads it as numbers."""
    from replisynth.io.input_checks import check_source_frame, coerce_numeric

    rng = np.random.default_rng(12)
    n = 600
    pay = rng.gamma(3.0, 9000.0, n)
    text_pay = [f"{v:,.2f}" for v in pay]
    if comma:  # 12.345,67
        text_pay = [t.translate(str.maketrans(",.", ".,")) for t in text_pay]
    for k, i in enumerate(rng.choice(n, 40, replace=False)):
        text_pay[i] = "n/a" if k < 10 else " - "  # the csv reader reads n/a as missing itself
    df = pd.DataFrame({"pay_text": text_pay, "hours": rng.normal(38, 5, n)})
    path = tmp_path / "pay.csv"
    df.to_csv(path, index=False)
    data, meta = read_source(path)
    text = draft_manifest(data, meta, str(path), seed=2)
    assert '"pay_text": numbers stored as text: declared under numeric below' in text
    assert '"pay_text": continuous, float' in text  # classified as extraction will after coercion
    m = load_manifest(_write(tmp_path / "m.yaml", text))
    src = m.sources[0]
    assert src.numeric == ("pay_text",) and src.missing_tokens == ("-",)
    assert src.decimal_comma == comma and "pay_text" not in src.exclude
    read = coerce_numeric(src, data)
    check_source_frame(m, src, read)
    assert int(read["pay_text"].isna().sum()) == 40
    assert np.allclose(read["pay_text"].dropna(), np.round(pay, 2)[read["pay_text"].notna()])


def test_text_dates_in_csv_declared(tmp_path: Path) -> None:
    """Day-first text dates are declared with their format; an ambiguous column (every day
    and month <= 12) stays excluded with the reason."""
    rng = np.random.default_rng(5)
    n = 400
    days = pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 900, n), unit="D")
    small = pd.to_datetime(
        {"year": 2020, "month": rng.integers(1, 13, n), "day": rng.integers(1, 13, n)}
    )
    df = pd.DataFrame(
        {
            "visit": days.strftime("%d/%m/%Y"),
            "odd_day": small.dt.strftime("%d/%m/%Y"),
            "score": rng.normal(size=n),
        }
    )
    path = tmp_path / "visits.csv"
    df.to_csv(path, index=False)
    data, meta = read_source(path)
    text = draft_manifest(data, meta, str(path), seed=3)
    m = load_manifest(_write(tmp_path / "m.yaml", text))
    src = m.sources[0]
    assert dict(src.dates) == {"visit": "%d/%m/%Y"} and src.exclude == ("odd_day",)
    assert '"visit": continuous, date' in text
    assert '"odd_day": dates stored as text: excluded below' in text
    back, _ = read_source(path, dict(src.dates))
    assert (back["visit"] == days).all()


def test_weekly_date_note() -> None:
    """A %tw date's role line says its synthetic dates go to week starts."""
    from replisynth.io.draft import Draft, _role_line
    from replisynth.io.schema import ColumnSpec

    spec = ColumnSpec("wk", "date", "float64", "continuous", True, False, 0, 10, None)
    spec = dataclasses.replace(spec, display_format="%tw")
    line = _role_line(spec, Draft(), FileMeta())
    assert "weekly format" in line and "start of its week" in line
    plain = _role_line(dataclasses.replace(spec, display_format="%td"), Draft(), FileMeta())
    assert "format" not in plain


# --- issue 16's done-when: published data sets, drafted, one checkpoint filled in, tier 4 -----

PUBLISHED = {  # data set, file format, the checkpoint filled in
    "mroz": ("dta", "lwage ~ educ + exper + expersq"),
    "wage": ("csv", "lwage ~ educ + exper + tenure + IQ"),
    "fair": ("parquet", "affairs ~ rate_marriage + age + yrs_married + religious + educ"),
}
ROLE_LINE = re.compile(
    r"^    #   (\"[^\"]+\"): (continuous|categorical \((?:ordered|nominal)\)|id), "
    r"(integer|float|string|boolean|categorical|date): \S"
)


def _published(name: str) -> pd.DataFrame:
    if name == "fair":
        import statsmodels.api as sm

        return sm.datasets.fair.load_pandas().data
    import importlib

    return importlib.import_module(f"linearmodels.datasets.{name}").load()


def _fill_threshold_cutoffs(text: str, df: pd.DataFrame) -> dict[str, str]:
    """The test knows the data: the cut-off of each proposed threshold, from the data."""
    fills = {}
    for col, x, sign in re.findall(r'#   "(\w+)": "(\w+) ([<>]) \.\.\."', text):
        off = df.loc[df[col] == 0, x]
        fills[col] = repr(float(off.max() if sign == ">" else off.min()))
    return fills


@pytest.mark.parametrize(
    "name", ["mroz", *(pytest.param(n, marks=pytest.mark.slow) for n in ("fair", "wage"))]
)
def test_published_data_drafted_and_run_to_tier_4(name: str, tmp_path: Path, monkeypatch) -> None:
    fmt, formula = PUBLISHED[name]
    df = _published(name)
    path = tmp_path / f"{name}.{fmt}"
    {
        "dta": lambda: df.to_stata(path, write_index=False),
        "csv": lambda: df.to_csv(path, index=False),
        "parquet": lambda: df.to_parquet(path),
    }[fmt]()
    monkeypatch.chdir(tmp_path)
    assert main(["init", path.name, "--out", "draft.yaml", "--quiet"]) == 0
    text = (tmp_path / "draft.yaml").read_text()
    named = {m.group(1) for line in text.splitlines() if (m := ROLE_LINE.match(line))}
    assert named == {json.dumps(c) for c in df.columns}  # every column: role, type and reason
    if name == "mroz":  # the relations the published file holds, proposed
        assert {'"lwage": "log(wage)"', '"expersq": "exper**2"', '"inlf": "hours > ..."'} <= {
            line[8:].split("   # ")[0] for line in text.splitlines() if line.startswith("    #   ")
        }
    raw = yaml.safe_load(_confirm_derive(text, _fill_threshold_cutoffs(text, df)))
    src = next(iter(raw["sources"]))
    raw["checkpoints"] = [
        {"tag": "paper", "source": src, "model": "ols", "formula": formula, "vcov": "HC1"}
    ]
    raw["verify"]["tier"] = 4
    filled = _write(tmp_path / "filled.yaml", yaml.safe_dump(raw, sort_keys=False))
    assert main(["run", str(filled), "--results", "res", "--quiet"]) == 0
    tiers = json.loads((tmp_path / "res" / raw["name"] / "verify" / "tiers.json").read_text())
    assert tiers["tier_met"] == 4 and tiers["passed"] and list(tiers["checkpoints"]) == ["paper"]


def test_dotted_dates_named_as_dates_not_numbers(tmp_path: Path) -> None:
    """A csv column of 31.12.2020-style dates would read as numbers with dots grouping
    thousands: extraction's check names the dates key instead (one line, no value), and the
    draft declares the column under dates."""
    from replisynth.core.errors import DataError
    from replisynth.io.input_checks import check_source_frame

    rng = np.random.default_rng(31)
    n = 300
    days = pd.Timestamp("2018-06-01") + pd.to_timedelta(rng.integers(0, 1500, n), unit="D")
    df = pd.DataFrame({"signed_on": days.strftime("%d.%m.%Y"), "amount": rng.normal(size=n)})
    path = tmp_path / "contracts.csv"
    df.to_csv(path, index=False)
    data, meta = read_source(path)
    bare = load_manifest(
        {"name": "c", "seed": 1, "sources": {"contracts": {"path": str(path)}}, "checkpoints": []}
    )
    with pytest.raises(DataError) as exc:
        check_source_frame(bare, bare.sources[0], data)
    msg = str(exc.value)
    assert "'signed_on' holds dates stored as text" in msg and "sources.contracts.dates" in msg
    assert "\n" not in msg and not any(v in msg for v in df["signed_on"])
    text = draft_manifest(data, meta, str(path), seed=4)
    m = load_manifest(_write(tmp_path / "m.yaml", text))
    assert dict(m.sources[0].dates) == {"signed_on": "%d.%m.%Y"}
    back, _ = read_source(path, dict(m.sources[0].dates))
    check_source_frame(m, m.sources[0], back)
    assert (back["signed_on"] == days).all()
