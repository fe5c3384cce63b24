"""The utility section of verification: a pinned outcome leaving its released support is
flagged (tiers.json `utility`, the report, the certificate) without changing the tier; a clean
run stays quiet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_people, manifest_for

from replisynth.verify.report import certificate_text, render_report
from replisynth.verify.utility import SUPPORT_BREACH, outcome_utility, utility_sentence
from replisynth.workflow.cli import main


def _grid(values: np.ndarray, trim: int = 1) -> list[float]:
    q = np.percentile(values, np.arange(101), method="averaged_inverted_cdf")
    q[: trim + 1], q[100 - trim :] = q[trim], q[100 - trim]
    return q.tolist()


def _marginal(values: np.ndarray) -> dict[str, Any]:
    return {"kind": "continuous", "missing": 0, "n": len(values), "grid": _grid(values)}


@pytest.mark.parametrize(("seed", "n", "share"), [(0, 2000, 0.36), (3, 5000, 0.02)])
def test_negatives_breach_a_non_negative_release(seed: int, n: int, share: float) -> None:
    """Earnings with a mass at zero, released non-negative; the synthetic outcome has a share
    of negative rows (a linear pin spreading the zeros)."""
    rng = np.random.default_rng(seed)
    earn = np.where(rng.random(n) < 0.3, 0.0, rng.lognormal(9, 0.6, n))
    syn = earn.copy()
    bad = rng.random(n) < share
    syn[bad] = -rng.uniform(1, 5000, bad.sum())
    rec = outcome_utility(pd.Series(syn, name="earnings"), _marginal(earn), False, 1, 0.0)
    assert rec["share_negative"] == pytest.approx(bad.mean())
    assert rec["support_breached"]
    assert any(
        f.startswith("pinned outcome earnings: ")
        and "of rows negative where the released marginal has none (support breached)" in f
        for f in rec["findings"]
    )
    assert rec["released_share_zero"] == pytest.approx(0.3, abs=0.02)
    zeros_lost = any("exact zeros in" in f for f in rec["findings"])
    assert zeros_lost == (abs(rec["share_zero"] - rec["released_share_zero"]) > 0.02)
    assert zeros_lost == (share > 0.1)
    clean = outcome_utility(pd.Series(earn, name="earnings"), _marginal(earn), False, 1, 0.0)
    assert clean["findings"] == [] and not clean["support_breached"]
    assert clean["share_negative"] == 0.0 and abs(clean["mean_drift_se"]) < 0.5


def test_non_integer_and_missingness_and_range() -> None:
    rng = np.random.default_rng(7)
    bw = rng.integers(40, 180, 3000).astype(float)
    m = _marginal(bw)
    decimals = pd.Series(bw + rng.uniform(0.05, 0.95, 3000), name="bwght")
    rec = outcome_utility(decimals, m, True, 1, 0.0)
    assert rec["share_non_integer"] == 1.0 and rec["support_breached"]
    widened = pd.Series(np.concatenate([bw[:2900], rng.uniform(400, 500, 100)]), name="bwght")
    rec = outcome_utility(widened, m, True, 1, 0.0)
    assert rec["share_out_of_support"] > SUPPORT_BREACH and rec["support_breached"]
    holes = pd.Series(bw, name="bwght")
    holes[holes.index % 3 == 0] = np.nan
    rec = outcome_utility(holes, m, True, 1, 0.05)
    assert any("missing in 33% of rows where the release has 5%" in f for f in rec["findings"])
    assert not rec["support_breached"]  # missingness is reported, not a support breach


def test_categorical_outcome_outside_levels() -> None:
    s = pd.Series([0, 1, 1, 0, 2, 0, 1, 0] * 50, name="enroll")
    m = {"kind": "categorical", "table": {"levels": [0, 1], "counts": [240, 160]}}
    rec = outcome_utility(s, m, True, 1, 0.0)
    assert rec["share_out_of_support"] == pytest.approx(1 / 8) and rec["support_breached"]


@pytest.fixture(scope="module")
def earn_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A zero-heavy, non-negative outcome pinned by the real pipeline (CLI `run`)."""
    tmp = tmp_path_factory.mktemp("utility")
    df = make_people(1200, seed=4)
    rng = np.random.default_rng(4)
    df["earn"] = np.where(rng.random(1200) < 0.35, 0.0, np.round(np.exp(8 + 0.8 * df["x1"])))
    df.to_csv(tmp / "people.csv", index=False)
    raw = manifest_for(tmp / "people.csv")
    raw["checkpoints"] = [
        {"tag": "c", "source": "people", "model": "ols", "formula": "earn ~ x1", "vcov": "HC1"}
    ]
    (tmp / "m.yaml").write_text(yaml.safe_dump(raw))
    res = tmp / "res"
    assert main(["run", str(tmp / "m.yaml"), "--results", str(res), "--quiet"]) == 0
    return {"res": res / "t", "original": df}


def _verify_with(run: dict[str, Any], earn: np.ndarray, tmp: Path) -> dict[str, Any]:
    """Verification and report of the run's synthetic file with `earn` put in its place."""
    from replisynth.workflow.pipeline import stage_report, stage_verify

    syn = pd.read_parquet(run["res"] / "synthetic" / "people.parquet")
    syn["earn"] = earn
    syn.to_parquet(tmp / "people.parquet")
    paths = {"people": tmp / "people.parquet"}
    tiers = stage_verify(run["res"] / "bundle", paths, tmp / "tiers.json")
    stage_report(run["res"] / "bundle", paths, tmp / "tiers.json", tmp / "r.html", tmp / "c.txt")
    return {
        "tiers": tiers,
        "html": (tmp / "r.html").read_text(),
        "cert": (tmp / "c.txt").read_text(),
    }


def test_pipeline_flags_negatives_everywhere(earn_run: dict[str, Any], tmp_path: Path) -> None:
    """36% negative earnings where the release is non-negative: tiers.json, the report and
    the certificate say so."""
    earn = earn_run["original"]["earn"].sample(frac=1.0, random_state=1).to_numpy()
    neg = np.random.default_rng(2).permutation(len(earn)) < int(0.36 * len(earn))
    earn = np.where(neg, -np.abs(earn) - 1.0, earn)
    out = _verify_with(earn_run, earn, tmp_path)
    u = out["tiers"]["utility"]
    text = "pinned outcome earn: 36% of rows negative where the released marginal has none"
    assert u["support_breached"] and any(text in f for f in u["findings"])
    assert text in out["cert"] and "support breached" in out["cert"]
    assert text in out["html"] and "Utility of the pinned outcomes" in out["html"]


def test_pipeline_quiet_when_clean(earn_run: dict[str, Any], tmp_path: Path) -> None:
    """The original earnings, shuffled, in place of the pinned ones: nothing to report."""
    earn = earn_run["original"]["earn"].sample(frac=1.0, random_state=3).to_numpy()
    out = _verify_with(earn_run, earn, tmp_path)
    u = out["tiers"]["utility"]
    assert u["findings"] == [] and not u["support_breached"]
    rec = u["sources"]["people"]["earn"]
    assert rec["share_negative"] == 0.0 and rec["share_non_integer"] == 0.0
    assert "support breached" not in out["cert"] and "stays inside" in out["cert"]
    assert "No pinned outcome leaves its released support" in out["html"]


def test_certificate_quiet_when_clean() -> None:
    tiers = {
        "name": "t",
        "tier_met": 4,
        "tier_required": 4,
        "passed": True,
        "sources": {"s": {"rows": 10}},
        "checkpoints": {},
        "utility": {"sources": {"s": {"y": {"findings": []}}}, "findings": []},
    }
    text = certificate_text(tiers)
    assert "support breached" not in text and "stays inside its released support" in text
    assert utility_sentence({"sources": {}, "findings": []}) == ""
    dirty = dict(
        tiers, utility={"sources": {"s": {"y": {}}}, "findings": ["s: x"], "support_breached": True}
    )
    assert "Utility (beside the tier; support breached): s: x." in certificate_text(dirty)
    html = render_report(dirty, {}, {}, "")
    assert "Utility of the pinned outcomes" not in render_report(
        tiers | {"utility": {}}, {}, {}, ""
    )
    assert "<li>s: x</li>" in html


def test_derived_columns_are_reported_with_their_role() -> None:
    from replisynth.verify.utility import utility_section

    rng = np.random.default_rng(5)
    age = rng.integers(24, 35, 1000)
    release = {
        "columns": [{"name": "age", "integer": True, "missing": 0, "rows": 1000}],
        "blocks": {
            "all": {
                "marginals": {
                    "age": {
                        "kind": "categorical",
                        "table": {
                            "levels": list(range(24, 35)),
                            "counts": np.bincount(age - 24, minlength=11).tolist(),
                        },
                    }
                }
            }
        },
    }
    wide = pd.DataFrame({"age": np.where(rng.random(1000) < 0.06, age + 20, age)})
    u = utility_section({"s": wide}, {"s": release}, {"s": set()}, {}, 1, derived={"s": {"age"}})
    rec = u["sources"]["s"]["age"]
    assert rec["role"] == "derived column" and rec["support_breached"]
    assert u["findings"][0].startswith("s: derived column age: ")
    clean = pd.DataFrame({"age": age})
    u = utility_section({"s": clean}, {"s": release}, {"s": set()}, {}, 1, derived={"s": {"age"}})
    assert u["findings"] == [] and not u["support_breached"]


@pytest.mark.parametrize(
    ("seed", "kind"), [(1, "count"), (2, "count"), (5, "zero_cost"), (8, "zero_cost")]
)
def test_mean_drift_of_a_release_with_atoms(seed: int, kind: str) -> None:
    """A marginal released as atoms and a rest (a count, a cost with exact zeros): the
    original against its own release shows no drift (a percentile grid of a count moves by a
    whole step at a share's crossing, which read as 2-3 SE of drift on the original itself),
    and a shift of a tenth of an SD is reported."""
    from replisynth.extract.extract import _atom_marginal

    rng = np.random.default_rng(seed)
    n = 10_000
    if kind == "count":
        y = rng.poisson(rng.gamma(1 / 1.6, 1.2 * 1.6, n)).astype(float)
    else:
        y = np.where(rng.random(n) < 0.22, 0.0, np.round(np.exp(rng.normal(6.5, 1.0, n)), 2))
    m = _atom_marginal(0, y, 50, 1.0, "fixed", None)
    assert m is not None and m["atoms"]["values"]
    rec = outcome_utility(pd.Series(y, name="y"), m, kind == "count", 1, 0.0)
    assert abs(rec["mean_drift_se"]) < 0.25
    assert not any("mean drifted" in f for f in rec["findings"])
    shifted = y.copy()
    up = rng.choice(np.flatnonzero(y > 0), 2_000, replace=False)
    shifted[up] = np.minimum(shifted[up] + (2.0 if kind == "count" else 600.0), y.max())
    rec = outcome_utility(pd.Series(shifted, name="y"), m, kind == "count", 1, 0.0)
    assert rec["mean_drift_se"] > 3.0
    assert any(f.startswith("pinned outcome y: mean drifted +") for f in rec["findings"])
