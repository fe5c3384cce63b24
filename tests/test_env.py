"""The conda env the rules name pins the same versions as requirements.lock, and every
rule names it."""

import re

import yaml
from conftest import REPO


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            name, ver = line.split("==", 1)
            pins[name.lower().replace("_", "-")] = ver
    return pins


def test_env_pins_match_lock():
    env = yaml.safe_load((REPO / "envs" / "replisynth.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    lock = _lock()
    pinned = [p for p in pip if "==" in p]
    assert len(pinned) >= 10
    for p in pinned:
        name, ver = p.split("==", 1)
        assert lock.get(name.lower().replace("_", "-")) == ver, (
            f"{name}: env {ver} != lock {lock.get(name.lower())}"
        )
    py = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert py == "python=3.11"


def test_direct_dependencies_are_locked():
    lock = _lock()
    for dep in [
        "snakemake",
        "pyyaml",
        "pandas",
        "numpy",
        "scipy",
        "statsmodels",
        "linearmodels",
        "pandera",
        "formulaic",
        "pyarrow",
        "pyreadstat",
        "pytest",
        "hypothesis",
    ]:
        assert dep in lock, f"{dep} missing from requirements.lock"


def test_every_rule_names_the_env_and_a_log():
    for smk in (REPO / "rules").glob("*.smk"):
        text = smk.read_text()
        rules = re.split(r"\nrule ", text)[1:]
        for body in rules:
            name = body.split(":", 1)[0]
            if "script:" not in body:
                continue  # target rules
            assert 'conda:\n        "../envs/replisynth.yaml"' in body, (
                f"{smk.name}:{name} has no conda env"
            )
            assert "log:" in body, f"{smk.name}:{name} has no log"
