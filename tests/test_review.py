"""The output checker's review (replisynth.disclosure.review) and the correlation gates behind it: an
old-style bundle with planted 2x2 risks is caught, a bundle from the new gates is clean, the
packet is complete, the exit codes hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replisynth.disclosure.review as review
import replisynth.extract.extract as extract
from replisynth.config.manifest import load_manifest
from replisynth.disclosure.linked_correlations import check_correlations
from replisynth.disclosure.sdc import SdcLog
from replisynth.extract.extract import correlation_gates
from replisynth.io.files import read_json
from replisynth.workflow.cli import cmd_extract, main


def _binary_pair(
    n: int, rng: np.random.Generator, ones: int, overlap: int
) -> tuple[np.ndarray, np.ndarray]:
    """Two 0/1 columns with `ones` ones each that are both 1 on exactly `overlap` rows."""
    idx = rng.permutation(n)
    a, b = np.zeros(n, dtype=int), np.zeros(n, dtype=int)
    a[idx[:ones]] = 1
    b[idx[:overlap]] = 1
    b[idx[ones : 2 * ones - overlap]] = 1
    return a, b


def _data(n: int, seed: int, names: tuple[str, str], overlap: int) -> pd.DataFrame:
    """n rows: a nominal column, a continuous one, a sparse one (zero but for 4 rows), and two
    binaries `names` whose 2x2 table has a cell of `overlap` rows (in stratum 1 only; stratum
    2 holds a large overlap so the source-level table alone is safe)."""
    rng = np.random.default_rng(seed)
    half = n // 2
    a1, b1 = _binary_pair(half, rng, 200, overlap)
    a2, b2 = _binary_pair(n - half, rng, 300, 150)
    sparse = np.zeros(n)
    sparse[rng.choice(n, 4, replace=False)] = rng.uniform(1, 9, size=4)
    return pd.DataFrame(
        {
            "pid": np.arange(n),
            names[0]: np.concatenate([a1, a2]),
            names[1]: np.concatenate([b1, b2]),
            "region": rng.choice(list("pqrs"), size=n),
            "x": rng.normal(size=n),
            "sparse": sparse,
            "stratum": np.repeat([1, 2], [half, n - half]),
        }
    )


def _extract(tmp: Path, df: pd.DataFrame, k: int = 20, **source: Any) -> Path:
    df.to_csv(tmp / "d.csv", index=False)
    raw = {
        "name": "rv",
        "seed": 3,
        "sdc": {"min_cell_size": k},
        "sources": {
            "d": {"path": str(tmp / "d.csv"), "ids": ["pid"], "strata": ["stratum"], **source}
        },
        "checkpoints": [],
        "verify": {"tier": 0},
    }
    return cmd_extract(load_manifest(raw), tmp / "res")


def _old_gate(
    X: np.ndarray, min_cell: int, rows: np.ndarray | None = None
) -> extract.CorrelationGate:
    """The gate before issue 13: only dims with a small group (0/1) or few rows blanked."""
    from replisynth.stats.correlations import spearman_matrix

    S = spearman_matrix(X, rows)
    bad = []
    for j in range(X.shape[1]):
        v = X[:, j][~np.isnan(X[:, j])]
        vals, cnt = np.unique(v, return_counts=True)
        if len(v) < min_cell or (len(vals) == 2 and cnt.min() < min_cell):
            bad.append(j)
    for j in bad:
        S[j, :] = S[:, j] = np.nan
    return extract.CorrelationGate(S, bad, 0)


@pytest.fixture
def no_interval_audit(monkeypatch):
    """The linked-tables interval audit lives in another module; here it is reported clean."""
    monkeypatch.setattr(review, "interval_audit", lambda release, k: ("run", []))


@pytest.fixture
def old_style(monkeypatch):
    monkeypatch.setattr(extract, "correlation_gates", _old_gate)
    monkeypatch.setattr(extract, "linked_correlation_gate", lambda release, k: SdcLog())


def _dim(release: dict[str, Any], column: str) -> int:
    return next(
        k for k, d in enumerate(release["dims"]) if d["column"] == column and d["kind"] != "missing"
    )


def test_old_style_bundle_with_planted_2x2_cells_is_caught(tmp_path, old_style, no_interval_audit):
    names = ("hiv_test", "rare_drug")
    bundle = _extract(tmp_path, _data(1600, 5, names, overlap=3), k=20)
    r = review.review_bundle(bundle)
    corr = [f for f in r["findings"] if f["check"] == "correlations"]
    hit = [f for f in corr if set(f["dims"]) == set(names)]
    assert hit, corr
    assert any(f["block"] == "s0" for f in hit)  # the stratum with the 3-row cell
    # and the implied cell is the planted one: 3 rows, exactly
    rel = read_json(bundle / "source_d.json")
    i, j = _dim(rel, names[0]), _dim(rel, names[1])
    from replisynth.disclosure.linked_correlations import block_pair_cells

    lo, hi = block_pair_cells(rel, "s0", i, j)
    assert np.round(lo[0]) == np.round(hi[0]) == 3
    assert r["verdict"].startswith(f"{len(r['findings'])} finding(s)")


def test_new_gates_withhold_the_planted_pairs_and_review_is_clean(tmp_path, no_interval_audit):
    names = ("flag_a", "flag_b")
    bundle = _extract(tmp_path, _data(1600, 5, names, overlap=3), k=20)
    rel = read_json(bundle / "source_d.json")
    i, j = _dim(rel, names[0]), _dim(rel, names[1])
    assert rel["blocks"]["s0"]["spearman"][i][j] is None  # primary: the 3-row cell
    assert rel["blocks"]["s1"]["spearman"][i][j] is not None  # a safe stratum keeps its pair
    # secondary: the source-level pair minus stratum s1 would give s0's table
    assert rel["blocks"]["all"]["spearman"][i][j] is None
    # only the pair: the dims keep their other correlations
    assert rel["blocks"]["s0"]["spearman"][i][_dim(rel, "x")] is not None
    r = review.review_bundle(bundle)
    assert r["findings"] == [], r["findings"]
    assert r["verdict"].startswith("clean")
    decisions = read_json(bundle / "sdc_log.json")["decisions"]
    assert any(
        d["stage"] == "correlations" and d.get("pairs") and d["block"] == "s0" for d in decisions
    )
    assert any(d["stage"] == "correlations" and "secondary" in d["reason"] for d in decisions)


def test_sparse_continuous_column_enters_no_correlation(tmp_path):
    bundle = _extract(
        tmp_path, _data(1200, 2, ("u", "v"), overlap=100), k=20, continuous=["sparse"]
    )
    rel = read_json(bundle / "source_d.json")
    j = _dim(rel, "sparse")
    for block in rel["blocks"].values():
        row = block["spearman"][j]
        assert all(v is None for k, v in enumerate(row) if k != j)


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), n=st.integers(400, 3000), k=st.sampled_from([5, 10, 25]))
def test_gated_pairs_of_two_valued_dims_have_no_small_cell(seed, n, k):
    rng = np.random.default_rng(seed)
    m = 6
    p = rng.uniform(0.002, 0.3, size=m)
    X = (rng.random((n, m)) < p).astype("float64")
    X[:, 1] = np.where(rng.random(n) < 0.05, np.nan, X[:, 1])  # pairwise-complete rows
    X = np.asfortranarray(X)
    g = correlation_gates(X, k)
    S = extract.spearman_matrix(X)
    for i in range(m):
        for j in range(i + 1, m):
            ok = ~np.isnan(X[:, i]) & ~np.isnan(X[:, j])
            a, b = X[ok, i], X[ok, j]
            cells = [int(np.sum((a == u) & (b == w))) for u in (0, 1) for w in (0, 1)]
            small = any(0 < c < k for c in cells)
            if np.isfinite(g.matrix[i, j]):
                assert not small, cells
            elif np.isfinite(S[i, j]):  # withheld: a small cell, or a dim withheld whole
                assert small or i in g.bad_dims or j in g.bad_dims
    for j in g.bad_dims:  # a withheld dim has few rows, or 1..k-1 rows off its mode
        v = X[:, j][~np.isnan(X[:, j])]
        assert len(v) < k or 0 < len(v) - np.unique(v, return_counts=True)[1].max() < k


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 10_000), overlap=st.integers(1, 15))
def test_review_of_new_gates_finds_no_correlation(tmp_path_factory, seed, overlap):
    tmp = tmp_path_factory.mktemp("r")
    bundle = _extract(tmp, _data(1000 + seed % 700, seed, ("c1", "c2"), overlap), k=20)
    for rel in (read_json(p) for p in bundle.glob("source_*.json")):
        assert check_correlations(rel, 20)[0] == []


def test_packet_is_complete_and_exit_codes(tmp_path, old_style, monkeypatch, capsys):
    bundle = _extract(tmp_path, _data(1200, 9, ("p1", "p2"), overlap=4), k=20)
    out = tmp_path / "packet"
    assert main(["review", str(bundle), "--out", str(out)]) == review.EXIT_FINDINGS
    assert "finding(s)" in capsys.readouterr().out
    r = json.loads((out / "disclosure_review.json").read_text())
    assert {
        "bundle",
        "settings",
        "released",
        "rules",
        "suppressed",
        "checks",
        "findings",
        "verdict",
    } <= set(r)
    assert r["bundle"]["sha256"] == review.review_bundle(bundle)["bundle"]["sha256"]
    assert {"frequency tables", "percentile grids", "correlations", "strata", "checkpoints"} <= set(
        r["released"]
    )
    assert {c["check"] for c in r["checks"]} >= {
        "interval audit of the linked frequency tables",
        "group sizes",
        "2x2 tables implied by correlations of two-valued dims",
    }
    page = (out / "disclosure_review.txt").read_text()
    for part in (
        "Released statistics",
        "Rules applied",
        "Suppressed",
        "Checks:",
        "Findings:",
        "Verdict:",
        "Signature",
    ):
        assert part in page
    assert "min_cell_size=20" in page
    # default packet directory: review/ beside the bundle; a clean bundle exits 0
    monkeypatch.undo()
    monkeypatch.setattr(review, "interval_audit", lambda release, k: ("run", []))
    (tmp_path / "c").mkdir()
    clean = _extract(tmp_path / "c", _data(1200, 9, ("p1", "p2"), overlap=4), k=20)
    packet = clean.parent / "review" / "disclosure_review.txt"
    packet.unlink()  # extract wrote one already
    assert main(["review", str(clean)]) == 0
    assert packet.exists() and "Verdict: clean" in packet.read_text()
    # not a bundle: one line, exit 1
    assert main(["review", str(tmp_path)]) == 1
    assert "not a bundle" in capsys.readouterr().err


def test_interval_audit_findings_fail_the_review_without_their_bounds(
    tmp_path, monkeypatch, capsys
):
    bundle = _extract(tmp_path, _data(1200, 4, ("e1", "e2"), overlap=60), k=20)

    def audit(release: dict[str, Any], min_cell: int) -> list[dict[str, Any]]:
        return [{"block": "s0", "column": "region", "level": "ZZRARELEVEL", "lower": 3, "upper": 4}]

    import types

    monkeypatch.setitem(
        __import__("sys").modules,
        "replisynth.disclosure.linked_tables",
        types.SimpleNamespace(audit_release_tables=audit),
    )
    assert main(["review", str(bundle), "--out", str(tmp_path / "p")]) == review.EXIT_FINDINGS
    r = json.loads((tmp_path / "p" / "disclosure_review.json").read_text())
    tables = [f for f in r["findings"] if f["check"] == "tables"]
    assert [(f["block"], f["column"]) for f in tables] == [("s0", "region")]
    text = (tmp_path / "p" / "disclosure_review.json").read_text() + (
        tmp_path / "p" / "disclosure_review.txt"
    ).read_text()
    assert "ZZRARELEVEL" not in text and '"lower"' not in text
    capsys.readouterr()


def test_log_that_calls_a_disclosed_cell_suppressed_is_a_finding():
    log = {
        "decisions": [
            {
                "stage": "marginals",
                "action": "suppressed",
                "source": "s",
                "block": "s2",
                "column": "region",
                "reason": "r",
            },
            {
                "stage": "correlations",
                "action": "suppressed",
                "source": "s",
                "block": "all",
                "pairs": 3,
                "reason": "r",
            },
            {
                "stage": "marginals",
                "action": "suppressed",
                "source": "s",
                "block": "s1",
                "column": "age",
                "reason": "r",
            },
        ]
    }
    found = [
        {"check": "tables", "source": "s", "block": "s2", "column": "region", "finding": "x"},
        {
            "check": "correlations",
            "source": "s",
            "block": "all",
            "dims": ["a=1", "b"],
            "finding": "x",
        },
    ]
    out = review.check_log(log, found)
    assert [(f["stage"], f["block"]) for f in out] == [("marginals", "s2"), ("correlations", "all")]
    assert review.check_log(log, []) == []


def test_interval_audit_not_available_is_said(tmp_path):
    bundle = _extract(tmp_path, _data(1000, 1, ("g1", "g2"), overlap=50), k=20)
    r = review.review_bundle(bundle)
    c = next(c for c in r["checks"] if c["check"].startswith("interval audit"))
    try:
        import replisynth.disclosure.linked_tables  # noqa: F401
    except ImportError:
        assert c["status"] == "not available" and "NOT RUN" in review.review_page(r)
        assert r["verdict"].startswith(
            "no findings in the checks that ran; not run: interval audit"
        )
    else:
        assert c["status"] == "run"


def _cp(tag: str, n: int, source: str = "s") -> dict[str, Any]:
    return {"tag": tag, "source": source, "status": "released", "n": n, "terms": [], "moments": {}}


def _rel(rows: int) -> dict[str, Any]:
    return {"rows": rows, "strata": {"cells": []}}


def test_checkpoints_differing_by_a_few_rows_need_the_ledger():
    cps = [_cp("full", 900), _cp("nested", 897)]
    log = {
        "decisions": [
            {"stage": "checkpoints", "action": "released_moments", "checkpoint": t}
            for t in ("full", "nested")
        ]
    }
    found, _ = review.check_checkpoints(cps, {"s": _rel(2000)}, log, 20)
    assert [f["samples"] for f in found if f["check"] == "differencing"] == [["full", "nested"]]
    found, _ = review.check_checkpoints(
        [_cp("full", 900), _cp("total", 1995)], {"s": _rel(2000)}, log, 20
    )
    assert any(
        f.get("samples") == ["total", "source total"] for f in found
    )  # against the source total
    ledger = {
        **log,
        "ledger": {
            "entries": [],
            "differencing": {"rule": "row sets compared", "pairs_checked": 1, "refused": []},
        },
    }
    found, notes = review.check_checkpoints(cps, {"s": _rel(2000)}, ledger, 20)
    assert not found and notes
    refused = {
        **log,
        "ledger": {"differencing": {"rule": "r", "pairs_checked": 1, "refused": ["nested"]}},
    }
    found, _ = review.check_checkpoints(cps, {"s": _rel(2000)}, refused, 20)
    assert any("refused" in f["finding"] for f in found)
    found, _ = review.check_checkpoints(cps, {"s": _rel(2000)}, {"decisions": []}, 20)
    assert sum("without a logged gate" in f["finding"] for f in found) == 2


def test_small_binary_term_in_checkpoint_moments_is_found():
    n, ones = 500, 7
    mean = ones / n
    sd = float(np.sqrt(mean * (1 - mean) * n / (n - 1)))
    cp = {
        **_cp("c", n),
        "moments": {
            "terms": ["rare", "x"],
            "mean": [mean, 3.2],
            "sd": [sd, 1.1],
            "weighted": False,
        },
    }
    log = {"decisions": [{"stage": "checkpoints", "checkpoint": "c"}]}
    found, _ = review.check_checkpoints([cp], {"s": _rel(n)}, log, 20)
    assert [f["term"] for f in found if "term" in f] == ["rare"]


def test_overlapping_group_windows_may_telescope():
    found, notes = review.check_groups(
        {
            "source": "s",
            "groups": {"hosp": {"groups": 60, "size_grid": [1.0, 2.0], "mean_size": 3.0}},
        }
    )
    assert found and "telescope" in found[0]["finding"] and notes
    assert (
        review.check_groups(
            {"source": "s", "groups": {"hosp": {"groups": 8, "size_grid": None, "mean_size": 3.0}}}
        )[0]
        == []
    )


@pytest.mark.parametrize("seed", [2, 8])
def test_derive_constants_listed_as_notes(seed: int, tmp_path: Path, capsys) -> None:
    """Each derive expression travels with the manifest: the review lists it with the numbers
    written in it (a threshold is a released number) as a note, never as a failing finding."""
    rng = np.random.default_rng(seed)
    n = 900 + 50 * seed
    cut, slope, shift = 0.35 + seed / 100, -2.5 - seed, 3 + seed
    df = _data(n, seed, ("q1", "q2"), overlap=100).drop(columns=["sparse"])
    df["pos"] = rng.lognormal(1.0, 0.4, n)
    df["low_x"] = (df["x"] < cut).astype(int)
    df["lin"] = slope * df["x"] + shift
    df["lpos"] = np.log(df["pos"])
    derive = {"low_x": f"x < {cut}", "lin": f"{slope} * x + {shift}", "lpos": "log(pos)"}
    df.to_csv(tmp_path / "d.csv", index=False)
    src = {"path": str(tmp_path / "d.csv"), "ids": ["pid"], "strata": ["stratum"]}
    raw = {
        "name": "rv",
        "seed": 3,
        "sdc": {"min_cell_size": 20},
        "sources": {"d": {**src, "derive": derive}},
        "checkpoints": [
            {"tag": "upper", "source": "d", "model": "ols", "formula": f"lpos ~ x + I(x > {cut})"}
            | {"subset": f"pos > {shift / 4}"}
        ],
        "verify": {"tier": 0},
    }
    bundle = cmd_extract(load_manifest(raw), tmp_path / "res")
    r = review.review_bundle(bundle)
    check = next(c for c in r["checks"] if c["check"].startswith("derive expressions"))
    assert check["status"] == "run" and check["findings"] == 0
    assert not [f for f in r["findings"] if "derive" in str(f)]  # a note, not a finding
    consts = {rec["key"]: rec["constants"] for rec in r["manifest_constants"]}
    assert consts == {
        "sources.d.derive.low_x": [cut],
        "sources.d.derive.lin": [slope, shift],
        "sources.d.derive.lpos": [],
        "checkpoints.upper.subset": [shift / 4],
        "checkpoints.upper.formula": [cut],
    }
    notes = check["notes"]
    assert len(notes) == 5 and sum("check it is not confidential" in s for s in notes) == 4
    assert any(repr(cut) in s and "released with the manifest" in s for s in notes)
    assert any("derive.lpos" in s and "no constant" in s for s in notes)
    out = tmp_path / "packet"
    main(["review", str(bundle), "--out", str(out)])
    page = (out / "disclosure_review.txt").read_text()
    assert f"note: sources.d.derive.low_x = 'x < {cut}': constant(s) {cut!r}" in page
    (tmp_path / "plain").mkdir()
    plain = review.review_bundle(_extract(tmp_path / "plain", df.drop(columns=["lin"])))
    check = next(c for c in plain["checks"] if c["check"].startswith("derive expressions"))
    assert plain["manifest_constants"] == [] and check["notes"] == [
        "the manifest declares no derive expression, no subset and no number in a formula"
    ]


def test_expression_constants() -> None:
    assert review.expression_constants("a < 88 and b >= -1.5 or c == 2e3") == [88, -1.5, 2000.0]
    assert review.expression_constants("log(wage) - log1p(hours)") == []
    assert review.formula_constants("y ~ x - 1 + I(age >= 95) + np.maximum(age - 90, 0)") == [
        95,
        90,
        0,
    ]
    assert review.formula_constants("y ~ 0 + x + I(z > -2.5) + np.log(w + 1)") == [-2.5, 1]
    assert review.formula_constants("y ~ x + C(g)") == []
    assert review.expression_constants("year in [1976, 1978] & age >= 18", subset=True) == [
        1976,
        1978,
        18,
    ]
