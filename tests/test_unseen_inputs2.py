"""More inputs a new user (or a bundle from elsewhere) brings that the demo does not have. Each
either runs through or stops with one clear line saying what to change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import make_people, manifest_for

from replisynth.config.manifest import load_manifest
from replisynth.core.errors import EXIT_BAD_INPUT, exit_code, one_line
from replisynth.workflow.cli import cmd_extract, main


def test_out_of_memory_is_one_clear_line_not_an_internal_error(tmp_path: Path, capsys) -> None:
    """A manifest (or a bundle's manifest.json) asking for far more synthetic rows than fit in
    memory stopped with 'internal error (MemoryError); this is a bug' and exit 4. It is bad
    input: one line saying memory ran out, the size asked for and the key to change; exit 1.
    (10**17 rows need petabytes: no machine's address space holds them, so the allocation
    fails at once everywhere.)"""
    df = make_people(300)
    df.to_csv(tmp_path / "p.csv", index=False)
    cmd_extract(load_manifest(manifest_for(tmp_path / "p.csv")), tmp_path / "in")
    bundle = tmp_path / "bundle"
    shutil.copytree(tmp_path / "in" / "t" / "bundle", bundle)
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    m["manifest"]["sources"]["people"]["rows"] = 10**17
    path.write_text(json.dumps(m))
    rc = main(
        ["synthesize", "--bundle", str(bundle), "--results", str(tmp_path / "out"), "--quiet"]
    )
    err = capsys.readouterr().err
    assert rc == EXIT_BAD_INPUT, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("replisynth: out of memory (an array of "), err
    assert "sources.<name>.rows" in lines[-1] and "internal error" not in err


def test_memory_error_line_keeps_only_the_size() -> None:
    exc = MemoryError("Unable to allocate 186. GiB for an array with shape (199800000000,)")
    assert exit_code(exc) == EXIT_BAD_INPUT
    line = one_line(exc)
    assert "(an array of 186. GiB)" in line and "199800000000" not in line
    assert exit_code(MemoryError()) == EXIT_BAD_INPUT and one_line(MemoryError()).startswith(
        "out of memory:"
    )
