"""No code runs from a manifest or a bundle. Every payload below tries to create a marker
file; on the secure side it sits in a manifest's formula, subset or column keys, on the
outside in a bundle whose checkpoints.json and manifest.json were edited with the sha256 list
recomputed (which anyone can do). Each must end in one clear error line naming the key and no
marker may appear. Malformed bundles (truncated, wrong types, missing keys, extra or
re-listed files) give one line through the CLI, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import make_people, manifest_for

from replisynth.config.manifest import load_manifest
from replisynth.core.errors import BundleError
from replisynth.disclosure.bundle import load_bundle
from replisynth.io.files import sha256_file
from replisynth.workflow.cli import cmd_extract, main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def formula_payloads(m: Path) -> list[str]:
    """Formulas that would create the file `m` if any part of them ran as Python."""
    sh = f"touch {m}"
    return [
        f"y ~ x1 + np.os.system('{sh}')",
        f"y ~ x1 + np.lib.npyio.os.system('{sh}')",
        f"y ~ I(__import__('os').system('{sh}'))",
        f"y ~ x1 + {{__import__('os').system('{sh}')}}",
        f"y ~ I((lambda: __import__('os').system('{sh}'))())",
        f"y ~ I([__import__('os').system('{sh}') for _ in [1]])",
        f"y ~ x1 + I(open('{m}', 'w'))",
        f"y ~ C(x1, Treatment(reference=__import__('os').system('{sh}')))",
        f"y ~ C(x1, levels=[__import__('os').system('{sh}')])",
        f"y ~ x1 + bs(x1, df=__import__('os').system('{sh}'))",
        f"y ~ x1 + Q('x1') + I(x1.to_csv('{m}'))",
        f"y ~ x1 + I(x1.__class__.__init__.__globals__['os'].system('{sh}'))",
        f"y ~ x1 + log(`x1`) + np.log(x1).__class__(open('{m}', 'w'))",
        f"y ~ x1 + log(x1)(open('{m}', 'w'))",
        f"y ~ x1 + log(x1)[open('{m}', 'w')]",
        f'y ~ x1 + exec(\'open("{m}", "w")\')',
        f"y ~ 1 + x1 + [x2 ~ I(open('{m}', 'w'))]",
        f"y ~ x1 + np.ctypeslib._ctypeslib.os.system('{sh}')",
        f"y ~ x1 + I(np.ctypeslib._ctypeslib.os.system('{sh}'))",
    ]


def subset_payloads(m: Path) -> list[str]:
    sh = f"touch {m}"
    return [
        f"x1.to_csv('{m}') != 1",
        f"`x1`.to_csv('{m}') != 1",
        f"__import__('os').system('{sh}') == 0",
        f"x1 > 0 and open('{m}', 'w')",
        f"@pd.io.common.os.system('{sh}') == 0",
        f"x1 > (lambda: __import__('os').system('{sh}'))()",
        f"x1.isin(__import__('os').system('{sh}'))",
        f"np.os.system('{sh}') == 0",
        f"x1 > np.ctypeslib._ctypeslib.os.system('{sh}')",
    ]


@pytest.fixture(scope="module")
def people_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("data") / "people.csv"
    make_people(300, seed=5).to_csv(p, index=False)
    return p


def _manifest_file(tmp: Path, data: Path, **cp: Any) -> Path:
    raw = manifest_for(data)
    raw["checkpoints"] = [
        {"tag": "c1", "source": "people", "model": "ols", "formula": "y ~ x1 + x2", **cp}
    ]
    f = tmp / "manifest.yaml"
    f.write_text(yaml.safe_dump(raw))
    return f


def _one_line(err: str, key: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert key in lines[0], lines[0]


@pytest.mark.parametrize("i", range(len(formula_payloads(Path("m")))))
def test_secure_side_formula_injection(
    tmp_path: Path, people_csv: Path, capsys: pytest.CaptureFixture[str], i: int
) -> None:
    marker = tmp_path / "pwned"
    formula = formula_payloads(marker)[i]
    mf = _manifest_file(
        tmp_path,
        people_csv,
        formula=formula,
        model="iv" if "[" in formula.split("~", 1)[1][:12] else "ols",
    )
    rc = main(["extract", str(mf), "--results", str(tmp_path / "res"), "--quiet"])
    assert rc == 1
    _one_line(capsys.readouterr().err, "checkpoints[0].formula")
    assert not marker.exists()
    assert not (tmp_path / "res" / "t" / "bundle").exists()


@pytest.mark.parametrize("i", range(len(subset_payloads(Path("m")))))
def test_secure_side_subset_injection(
    tmp_path: Path, people_csv: Path, capsys: pytest.CaptureFixture[str], i: int
) -> None:
    marker = tmp_path / "pwned"
    mf = _manifest_file(tmp_path, people_csv, subset=subset_payloads(marker)[i])
    rc = main(["extract", str(mf), "--results", str(tmp_path / "res"), "--quiet"])
    assert rc == 1
    _one_line(capsys.readouterr().err, "checkpoints[0].subset")
    assert not marker.exists()


@pytest.mark.parametrize("key", ["weights", "vcov", "absorb", "entity"])
def test_secure_side_column_keys_are_names_not_code(
    tmp_path: Path, people_csv: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    value: Any = {"weights": code, "vcov": f"cluster:{code}", "absorb": [code], "entity": code}[key]
    extra = {"model": "fe"} if key == "absorb" else ({"model": "re"} if key == "entity" else {})
    mf = _manifest_file(tmp_path, people_csv, **{key: value}, **extra)
    rc = main(["extract", str(mf), "--results", str(tmp_path / "res"), "--quiet"])
    assert rc == 1
    _one_line(capsys.readouterr().err, f"checkpoints[0].{key}")
    assert not marker.exists()


def test_cli_subprocess_refuses_formula_injection(tmp_path: Path, people_csv: Path) -> None:
    """The installed entry point, in a fresh interpreter: one line, exit 1, no marker."""
    marker = tmp_path / "pwned"
    mf = _manifest_file(tmp_path, people_csv, formula=formula_payloads(marker)[0])
    r = _cli(["extract", str(mf), "--results", str(tmp_path / "res"), "--quiet"], tmp_path)
    assert r.returncode == 1
    _one_line(r.stderr, "checkpoints[0].formula: calling 'np.os.system")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# the outside: an edited bundle with its sha256 list recomputed


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory: pytest.TempPathFactory, people_csv: Path) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    raw = manifest_for(people_csv)
    raw["checkpoints"] = [
        {
            "tag": "c1",
            "source": "people",
            "model": "ols",
            "formula": "y ~ x1 + x2",
            "subset": "age >= 40",  # differs from the source by far more than min_cell_size rows
        }
    ]
    return cmd_extract(load_manifest(raw), root / "res")


def _copy(good: Path, tmp: Path) -> Path:
    dst = tmp / "bundle"
    shutil.copytree(good, dst)
    return dst


def _relist(bundle: Path) -> None:
    """Recompute manifest.json's sha256 and byte counts, as anyone editing a bundle can."""
    mf = bundle / "manifest.json"
    info = json.loads(mf.read_text())
    for f in info["files"]:
        if (bundle / f["path"]).exists():
            f["sha256"] = sha256_file(bundle / f["path"])
            f["bytes"] = (bundle / f["path"]).stat().st_size
    mf.write_text(json.dumps(info))


def _edit(bundle: Path, key: str, value: str, where: str) -> None:
    if where in ("checkpoints", "both"):
        f = bundle / "checkpoints.json"
        d = json.loads(f.read_text())
        d["checkpoints"][0][key] = value
        f.write_text(json.dumps(d))
    if where in ("manifest", "both"):
        f = bundle / "manifest.json"
        d = json.loads(f.read_text())
        d["manifest"]["checkpoints"][0][key] = value
        f.write_text(json.dumps(d))
    _relist(bundle)


@pytest.mark.parametrize("where", ["checkpoints", "manifest", "both"])
@pytest.mark.parametrize("i", [0, 2, 3, 7, 9, 10, 13, 15, 17, 18])
def test_outside_formula_injection(
    tmp_path: Path, good_bundle: Path, capsys: pytest.CaptureFixture[str], i: int, where: str
) -> None:
    marker = tmp_path / "pwned"
    bundle = _copy(good_bundle, tmp_path)
    _edit(bundle, "formula", formula_payloads(marker)[i], where)
    for cmd in ("synthesize", "verify"):
        rc = main([cmd, "--bundle", str(bundle), "--results", str(tmp_path / "out"), "--quiet"])
        assert rc == 1
        err = capsys.readouterr().err
        # manifest.json is read first: an edit there is named there
        key = (
            "checkpoints.json: checkpoints[0].formula"
            if where == "checkpoints"
            else "manifest.json: manifest.checkpoints[0].formula"
        )
        _one_line(err, key)
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.parquet"))


@pytest.mark.parametrize("where", ["checkpoints", "both"])
@pytest.mark.parametrize("i", range(len(subset_payloads(Path("m")))))
def test_outside_subset_injection(tmp_path: Path, good_bundle: Path, i: int, where: str) -> None:
    marker = tmp_path / "pwned"
    bundle = _copy(good_bundle, tmp_path)
    _edit(bundle, "subset", subset_payloads(marker)[i], where)
    key = (
        r"checkpoints\.json: checkpoints\[0\]\.subset: "
        if where == "checkpoints"
        else r"manifest\.json: manifest\.checkpoints\[0\]\.subset: "
    )
    with pytest.raises(BundleError, match=key) as info:
        load_bundle(bundle)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_outside_cli_subprocess_refuses_edited_bundle(tmp_path: Path, good_bundle: Path) -> None:
    marker = tmp_path / "pwned"
    bundle = _copy(good_bundle, tmp_path)
    _edit(bundle, "formula", formula_payloads(marker)[0], "both")
    r = _cli(["synthesize", "--bundle", str(bundle), "--results", str(tmp_path / "out")], tmp_path)
    assert r.returncode == 1
    _one_line(r.stderr, "manifest.json: manifest.checkpoints[0].formula: calling 'np.os.system")
    assert not marker.exists()


def test_outside_edit_consistent_but_different_is_named(tmp_path: Path, good_bundle: Path) -> None:
    """A safe formula changed in checkpoints.json only: the record no longer matches the
    manifest recorded in manifest.json."""
    bundle = _copy(good_bundle, tmp_path)
    _edit(bundle, "formula", "y ~ x1", "checkpoints")
    with pytest.raises(
        BundleError, match=r"checkpoints\[0\]\.formula: differs from the manifest in manifest\.json"
    ):
        load_bundle(bundle)


@pytest.mark.workflow
def test_snakemake_outside_run_refuses_edited_bundle(tmp_path: Path, good_bundle: Path) -> None:
    """`snakemake --config bundle=DIR`: the workflow loads the bundle at start-up."""
    marker = tmp_path / "pwned"
    bundle = _copy(good_bundle, tmp_path)
    _edit(bundle, "formula", formula_payloads(marker)[2], "both")
    repo = Path(__file__).resolve().parents[1]
    snakemake = Path(sys.executable).parent / "snakemake"
    r = subprocess.run(
        [str(snakemake), "--cores", "1", "-n", "--config", f"bundle={bundle}"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=300,
    )
    assert r.returncode != 0
    line = next(x for x in r.stderr.splitlines() if x.startswith("replisynth: "))
    assert (
        "manifest.json: manifest.checkpoints[0].formula: calling" in line and "__import__" in line
    )
    assert "Traceback" not in r.stdout + r.stderr
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# malformed bundles: one line, never a traceback


def _json_edit(name: str, fn: Any) -> Any:
    def apply(bundle: Path) -> None:
        f = bundle / name
        d = json.loads(f.read_text())
        fn(d)
        f.write_text(json.dumps(d))
        if name != "manifest.json":
            _relist(bundle)

    return apply


def _truncate(name: str) -> Any:
    def apply(bundle: Path) -> None:
        f = bundle / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        _relist(bundle)

    return apply


def _src(d: dict[str, Any]) -> None:
    d["columns"][0]["name"] = 7


MALFORMED = {
    "truncated_checkpoints": (_truncate("checkpoints.json"), "checkpoints.json: not valid JSON"),
    "truncated_source": (_truncate("source_people.json"), "source_people.json: not valid JSON"),
    "n_is_text": (
        _json_edit("checkpoints.json", lambda d: d["checkpoints"][0].update(n="many")),
        "checkpoints[0].n",
    ),
    "formula_is_number": (
        _json_edit("checkpoints.json", lambda d: d["checkpoints"][0].update(formula=3)),
        "checkpoints[0].formula",
    ),
    "terms_missing": (
        _json_edit("checkpoints.json", lambda d: d["checkpoints"][0].pop("terms")),
        "checkpoints[0]",
    ),
    "beta_is_text": (
        _json_edit("checkpoints.json", lambda d: d["checkpoints"][0]["terms"][0].update(beta="1")),
        "checkpoints[0].terms[0]",
    ),
    "no_checkpoints_key": (
        _json_edit("checkpoints.json", lambda d: d.pop("checkpoints")),
        "checkpoints.json",
    ),
    "column_name_is_number": (_json_edit("source_people.json", _src), "columns[0].name"),
    "no_blocks": (
        _json_edit("source_people.json", lambda d: d.pop("blocks")),
        "source_people.json",
    ),
    "rows_negative": (
        _json_edit("source_people.json", lambda d: d.update(rows=-3)),
        "source_people.json: rows",
    ),
    "grid_has_text": (
        _json_edit(
            "source_people.json",
            lambda d: d["blocks"]["all"]["marginals"]["x1"].update(grid=[0, "a"]),
        ),
        "blocks.all.marginals.x1.grid[1]",
    ),
    "decisions_not_list": (
        _json_edit("sdc_log.json", lambda d: d.update(decisions={})),
        "sdc_log.json: decisions",
    ),
    "unknown_source": (
        _json_edit("checkpoints.json", lambda d: d["checkpoints"][0].update(source="other")),
        "checkpoints[0].source",
    ),
    "unknown_column": (
        _json_edit("checkpoints.json", lambda d: d["checkpoints"][0].update(weights="nope")),
        "checkpoints[0].weights",
    ),
    "file_path_escapes": (
        _json_edit("manifest.json", lambda d: d["files"][0].update(path="../../etc/passwd")),
        "files[0].path",
    ),
    "sha_not_hex": (
        _json_edit("manifest.json", lambda d: d["files"][0].update(sha256="zz")),
        "files[0].sha256",
    ),
    "file_unlisted": (_json_edit("manifest.json", lambda d: d["files"].pop(0)), "files not listed"),
    "manifest_wrong_type": (
        _json_edit("manifest.json", lambda d: d["manifest"].update(seed="x")),
        "manifest.json: manifest",
    ),
    "seed_wrong_type": (
        _json_edit("manifest.json", lambda d: d.update(seed=[1])),
        "manifest.json: seed",
    ),
    "dim_not_a_column": (
        _json_edit("source_people.json", lambda d: d["dims"][0].update(column="ghost")),
        "dims[0].column",
    ),
    "spearman_not_square": (
        _json_edit("source_people.json", lambda d: d["blocks"]["all"]["spearman"].pop()),
        "blocks.all.spearman",
    ),
    "moments_short": (
        _json_edit("checkpoints.json", lambda d: d["checkpoints"][0]["moments"]["mean"].pop()),
        "checkpoints[0].moments",
    ),
    "files_not_objects": (
        _json_edit("manifest.json", lambda d: d.update(files=["a.json"])),
        "manifest.json: files[0]",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_bundle_is_one_line(
    tmp_path: Path, good_bundle: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    mutate, key = MALFORMED[case]
    bundle = _copy(good_bundle, tmp_path)
    mutate(bundle)
    rc = main(
        ["synthesize", "--bundle", str(bundle), "--results", str(tmp_path / "out"), "--quiet"]
    )
    assert rc == 1
    err = capsys.readouterr().err
    _one_line(err, key)
    assert err.startswith("replisynth: ")


def test_malformed_bundles_through_the_cli_subprocess(tmp_path: Path, good_bundle: Path) -> None:
    """A few of the kinds, in a fresh interpreter: exit 1 and no 'Traceback' on stderr."""
    for case in (
        "truncated_checkpoints",
        "beta_is_text",
        "no_blocks",
        "file_path_escapes",
        "extra",
    ):
        bundle = tmp_path / case
        shutil.copytree(good_bundle, bundle)
        if case == "extra":
            (bundle / "notes.txt").write_text("x")
        else:
            MALFORMED[case][0](bundle)
        r = _cli(["verify", "--bundle", str(bundle), "--results", str(tmp_path / "out")], tmp_path)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replisynth.workflow.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=300,
    )


def test_schema_columns_are_the_column_spec_fields() -> None:
    """source_<name>.json columns are read as ColumnSpec(**column): the schema lists exactly
    its fields (a new field needs its line in bundle_schema.yaml and docs/bundle.md)."""
    from dataclasses import MISSING, fields

    from replisynth.disclosure.bundle import SCHEMA_PATH
    from replisynth.io.schema import ColumnSpec

    col = yaml.safe_load(SCHEMA_PATH.read_text())["$defs"]["source"]["properties"]["columns"][
        "items"
    ]
    assert set(col["properties"]) == {f.name for f in fields(ColumnSpec)}
    assert set(col["required"]) == {f.name for f in fields(ColumnSpec) if f.default is MISSING}
