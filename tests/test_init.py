"""`replisynth init` drafts a manifest that loads, runs to tier 4 once a checkpoint is filled in,
and quotes no data value; `--version`, every command's `--help`, and `run --bundle` refused."""

from __future__ import annotations

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
    assert set(src["exclude"]) == {"Remarks Text", "pay"}  # free text; exp(log_pay)
    assert src["strata"] == ["sector"]
    assert raw["sdc"] == {"profile": "standard"} and raw["verify"] == {"tier": 3}
    assert '"Remarks Text": free text: excluded below; never released' in text
    assert '"pay": derived-looking (the exponential of "log_pay")' in text
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
        assert set(src.exclude) == {"Remarks Text", "pay"}
        assert '"interview_day": a date column' in text
    else:
        assert set(src.exclude) == {"remarks", "pay"}
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
