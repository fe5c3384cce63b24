"""Code style is part of the test suite: ruff must pass on the package, scripts and tests."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

RUFF = Path(sys.executable).with_name("ruff")


@pytest.mark.skipif(
    not RUFF.exists() and not shutil.which("ruff"), reason="ruff not installed in this environment"
)
def test_ruff_clean():
    exe = str(RUFF) if RUFF.exists() else shutil.which("ruff")
    r = subprocess.run(
        [exe, "check", "src", "scripts", "tests", "data", "benchmarks"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
