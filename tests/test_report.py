"""The HTML verification report and the quotable certificate."""

from __future__ import annotations

import copy
import re

import numpy as np
import pandas as pd
import pytest

from replisynth.verify.report import certificate_text, correlation_difference, render_report

SHA = "ab12" * 16


def _release() -> dict:
    rng = np.random.default_rng(0)
    grid = list(np.percentile(rng.normal(12, 2, 500), np.arange(101)))
    dims = [
        {"column": "educ", "kind": "continuous"},
        {"column": "region", "kind": "ordered"},
        {"column": "black", "kind": "indicator", "level": 1},
        {"column": "lwage", "kind": "continuous"},
    ]
    spear = [
        [1.0, 0.2, -0.1, 0.3],
        [0.2, 1.0, None, 0.1],
        [-0.1, None, 1.0, -0.2],
        [0.3, 0.1, -0.2, 1.0],
    ]
    return {
        "columns": [
            {
                "name": "educ",
                "logical_type": "float",
                "storage_type": "float64",
                "ordered": False,
                "role": "continuous",
                "integer": False,
                "missing": 0,
                "rows": 200,
                "variable_label": "Years of <script>alert(1)</script> schooling",
            },
            {
                "name": "region",
                "logical_type": "integer",
                "storage_type": "int64",
                "ordered": False,
                "role": "categorical",
                "integer": True,
                "missing": 0,
                "rows": 200,
                "variable_label": "Region",
            },
            {
                "name": "black",
                "logical_type": "integer",
                "storage_type": "int64",
                "ordered": True,
                "role": "categorical",
                "integer": True,
                "missing": 0,
                "rows": 200,
                "variable_label": None,
            },
            {
                "name": "lwage",
                "logical_type": "float",
                "storage_type": "float64",
                "ordered": False,
                "role": "continuous",
                "integer": False,
                "missing": 0,
                "rows": 200,
                "variable_label": "log wage",
            },
            {
                "name": "id",
                "logical_type": "integer",
                "storage_type": "int64",
                "ordered": False,
                "role": "id",
                "integer": True,
                "missing": 0,
                "rows": 200,
                "variable_label": None,
            },
        ],
        "blocks": {
            "all": {
                "marginals": {
                    "educ": {"kind": "continuous", "missing": 0, "n": 200, "grid": grid},
                    "region": {
                        "kind": "categorical",
                        "missing": 0,
                        "table": {
                            "levels": [1, 2, 3],
                            "counts": [80, 70, 50],
                            "ordered": True,
                            "suppressed": 0,
                        },
                    },
                    "black": {
                        "kind": "categorical",
                        "missing": 0,
                        "table": {
                            "levels": [0, 1],
                            "counts": [150, 50],
                            "ordered": False,
                            "suppressed": 0,
                        },
                    },
                    "lwage": {
                        "kind": "continuous",
                        "missing": 0,
                        "n": 200,
                        "grid": list(np.linspace(5, 7, 101)),
                    },
                },
                "spearman": spear,
            }
        },
        "dims": dims,
        "strata": {"columns": []},
        "value_labels": {"black": {"0": "not black", "1": "<b>black</b>"}},
    }


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    n = 200
    educ = rng.normal(12, 2, n)
    return pd.DataFrame(
        {
            "educ": educ,
            "region": rng.choice([1, 2, 3], n, p=[0.4, 0.35, 0.25]),
            "black": rng.choice([0.0, 1.0], n, p=[0.75, 0.25]),  # floats must match integer levels
            "lwage": 6 + 0.05 * educ + rng.normal(0, 0.3, n),
            "id": np.arange(n),
        }
    )


def _tiers(passed: bool = True) -> dict:
    terms = [
        {
            "term": "educ",
            "beta_target": 0.074,
            "beta_synthetic": 0.0745,
            "se_target": 0.0035,
            "se_synthetic": 0.0036,
            "dbeta_se": 0.139,
            "dbeta_se_target": 0.143,
            "se_ratio": 1.029,
        },
        {
            "term": "black",
            "beta_target": -0.19,
            "beta_synthetic": -0.18,
            "se_target": 0.02,
            "se_synthetic": 0.021,
            "dbeta_se": 0.476,
            "dbeta_se_target": 0.5,
            "se_ratio": 1.05,
        },
        {
            "term": None,
            "position": 3,
            "suppressed": True,
            "reason": "indicator with fewer than 50 <cases>",
        },
    ]
    return {
        "name": "card1995",
        "seed": 20261123,
        "tier_required": 4,
        "tier_met": 4 if passed else 1,
        "passed": passed,
        "bundle_sha256": SHA,
        "software": {
            "numpy": "2.4.6",
            "replisynth": "0.1.0",
            "python": "3.11.7",
            "pandas": "3.1.1",
            "statsmodels": "0.14.4",
        },
        "sources": {
            "card": {
                "tier_met": 4 if passed else 1,
                "rows": 200,
                "schema": {"passed": True, "problems": []},
                "marginals": {
                    "passed": True,
                    "worst_ks_p": 0.41,
                    "worst_variable": "educ",
                    "max_percentile_gap_iqr": 0.02,
                    "problems": [],
                    "variables": {
                        "educ": {"ks_d": 0.05, "ks_p": 0.41, "max_percentile_gap_iqr": 0.02},
                        "region": {"exact_counts": True},
                        "black": {"exact_counts": True},
                    },
                    "outcome_drift": {
                        "lwage": {"ks_d": 0.1, "ks_p": 0.2, "max_percentile_gap_iqr": 0.05}
                    },
                },
                "correlations": {
                    "passed": passed,
                    "max_abs_delta": 0.012 if passed else 0.31,
                    "pair": ["educ", "black==1"],
                    "pairs_checked": 3,
                },
                "strata": {
                    "passed": passed,
                    "note": "no strata configured: tier 3 holds when tier 2 does",
                    "strata": [],
                },
                "checkpoints": {"passed": True, "tags": ["wage_main", "rejected_cp"]},
            }
        },
        "checkpoints": {
            "wage_main": {
                "passed": True,
                "status": "verified",
                "source": "card",
                "model": "ols",
                "n_target": 200,
                "n_synthetic": 200,
                "max_dbeta_se": 0.476,
                "max_dbeta_se_target": 0.5,
                "terms": terms,
            },
            "rejected_cp": {
                "passed": True,
                "status": "rejected",
                "source": "card",
                "reason": "too few <rows> for release",
                "terms": [],
            },
        },
        "checkpoint_summary": {
            "terms": 2,
            "median": 0.3075,
            "p95": 0.459,
            "max": 0.476,
            "share_below_1": 1.0,
            "share_below_2": 1.0,
            "share_below_3": 1.0,
            "max_target_se": 0.5,
            "se_ratio_median": 1.04,
            "se_ratio_min": 1.029,
            "se_ratio_max": 1.05,
        },
    }


def _render(tiers: dict | None = None, **kw) -> str:
    t = tiers or _tiers()
    return render_report(
        t,
        {"card": _release()},
        {"card": _frame()},
        certificate_text(t),
        provenance={"benchmarks": {"synthesize": 1.25}, "total_seconds": 3.5},
        **kw,
    )


def test_one_svg_per_plot_heatmap_and_checkpoint_chart():
    html = _render(outcomes={"card": {"lwage"}})
    # 4 plotted variables (id is not released) + 1 heatmap + 1 chart for the verified checkpoint
    assert html.count("<svg") == 4 + 1 + 1
    assert html.count("</svg>") == html.count("<svg")
    assert "<script" not in html.lower() or "&lt;script&gt;" in html
    # self-contained: no external resources
    assert not re.search(r'(src|href)="https?:', html)
    # sections in order
    order = [
        html.index(s)
        for s in (
            "PASSED",
            "Fidelity tiers",
            "Marginal distributions",
            "Correlation differences",
            "Checkpoints",
            "Provenance",
        )
    ]
    assert order == sorted(order)


def test_escapes_data_strings():
    html = _render()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>black</b>" not in html and "&lt;b&gt;black&lt;/b&gt;" in html
    assert "suppressed (indicator with fewer than 50 &lt;cases&gt;)" in html
    assert "too few &lt;rows&gt; for release" in html


def test_deterministic():
    assert _render() == _render()
    assert certificate_text(_tiers()) == certificate_text(copy.deepcopy(_tiers()))


def test_failed_verdict():
    html = _render(_tiers(passed=False))
    assert "FAILED" in html and ">PASSED" not in html
    assert "fidelity tier met: 1 (required: 4)" in html


def test_marginal_status_and_outcome_exclusion():
    html = _render(outcomes={"card": {"lwage"}})
    assert "exact counts" in html and "KS p = " in html
    assert "outcome (not gated)" in html
    # lwage is excluded from the heatmap axis labels; indicator dims are labelled col==level
    heat = html[html.index("Correlation differences") : html.index("<h2>Checkpoints")]
    assert "black==1" in heat and ">lwage<" not in heat
    assert ">lwage<" in _render()[_render().index("Correlation differences") :]


def test_correlation_difference_matches_pandas():
    rel, df = _release(), _frame()
    dims, S, T = correlation_difference(rel, df, {"lwage"})
    assert [d["column"] for d in dims] == ["educ", "region", "black"]
    want = pd.DataFrame(
        {"a": df["educ"], "b": df["region"] - 1, "c": (df["black"] == 1).astype(float)}
    ).corr(method="spearman")
    np.testing.assert_allclose(S, want.to_numpy(), atol=1e-12)
    assert np.isnan(T[1, 2]) and T[0, 1] == pytest.approx(0.2)


def test_certificate_text():
    t = _tiers()
    c = certificate_text(t)
    assert "20261123" in c and SHA in c
    assert "met fidelity tier 4 (tier 4 required" in c
    assert "replisynth 0.1.0, python 3.11.7, numpy 2.4.6, pandas 3.1.1, statsmodels 0.14.4" in c
    assert "2 verified coefficient terms" in c and "100.0% of terms were within 1 SE" in c
    assert "\n" not in c
    assert "No checkpoint coefficient terms" in certificate_text(
        {**t, "checkpoint_summary": {"terms": 0}}
    )


def test_empty_certificate_is_computed_and_shown():
    t = _tiers()
    html = render_report(t, {"card": _release()}, {"card": _frame()}, "")
    assert SHA in html and "Provenance" not in html


def test_report_from_verifications_figures_equals_the_recomputed_one(tmp_path):
    """The report draws the synthetic percentiles and Spearman matrix tiers.json carries; the
    page is byte for byte the one recomputing them from the synthetic frame."""
    from conftest import make_people, manifest_for, run_pipeline

    from replisynth.io.files import read_json, write_json
    from replisynth.workflow.pipeline import stage_report

    p = tmp_path / "people.csv"
    make_people(1500, seed=3).to_csv(p, index=False)
    raw = manifest_for(p, strata=["female"], categorical=["region"])
    raw["checkpoints"] = [
        {"tag": "m", "source": "people", "formula": "y ~ x1 + x2", "model": "ols"}
    ]
    out = tmp_path / "out"
    tiers = run_pipeline(raw, out)
    src = tiers["sources"]["people"]
    assert set(src["synthetic"]["percentiles"]) >= {"x1", "x2", "y"}
    assert src["synthetic"]["spearman"]["matrix"] is not None
    root = out / "t"
    args = dict(
        bundle_dir=root / "bundle", synthetic={"people": root / "synthetic" / "people.parquet"}
    )
    stage_report(
        **args,
        tiers_path=root / "verify" / "tiers.json",
        html_out=tmp_path / "a.html",
        certificate_out=tmp_path / "a.txt",
    )
    for s in tiers["sources"].values():
        del s["synthetic"]
    write_json(tmp_path / "old.json", tiers)
    stage_report(
        **args,
        tiers_path=tmp_path / "old.json",
        html_out=tmp_path / "b.html",
        certificate_out=tmp_path / "b.txt",
    )
    a, b = (tmp_path / "a.html").read_text(), (tmp_path / "b.html").read_text()
    assert a == b and "Spearman difference" in a
    assert read_json(tmp_path / "old.json")["sources"]["people"]["marginals"] == src["marginals"]
