"""Property tests (hypothesis): for any generated data set of mixed column types, extraction
then synthesis gives data that passes its own released schema (tier 0) and the exact-count
part of tier 1, with no category outside the released ones and the requested row count."""

from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import manifest_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replisynth.config.manifest import load_manifest
from replisynth.extract.extract import extract_source
from replisynth.io.files import read_source
from replisynth.synthesize.plan import source_plan
from replisynth.synthesize.synthesize import synthesize_source
from replisynth.verify.verify import tier0, tier1

KINDS = ["float", "ordinal", "wide_int", "string", "bool", "date"]


def _column(kind: str, n: int, rng: np.random.Generator, miss: float) -> pd.Series:
    if kind == "float":
        s = pd.Series(rng.normal(size=n) * rng.uniform(0.1, 100))
    elif kind == "ordinal":
        s = pd.Series(rng.integers(0, rng.integers(2, 12), size=n))
    elif kind == "wide_int":
        s = pd.Series(rng.integers(0, 10_000, size=n))
    elif kind == "string":
        k = int(rng.integers(2, 8))
        p = rng.dirichlet(np.ones(k) * 0.7)
        s = pd.Series(rng.choice([f"cat{i}" for i in range(k)], p=p, size=n))
    elif kind == "bool":
        s = pd.Series(rng.random(n) < rng.uniform(0.1, 0.9))
    else:
        s = pd.Series(
            pd.Timestamp("2000-01-01") + pd.to_timedelta(rng.integers(0, 5000, size=n), unit="D")
        )
    if miss > 0 and kind not in ("bool",):
        s = s.astype(object) if kind in ("ordinal", "wide_int") else s
        s[rng.random(n) < miss] = None
        if kind in ("ordinal", "wide_int"):
            s = pd.to_numeric(s)
    return s


@st.composite
def datasets(draw):
    n = draw(st.integers(150, 500))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=2, max_size=7))
    seed = draw(st.integers(0, 2**31 - 1))
    miss = draw(
        st.lists(st.sampled_from([0.0, 0.0, 0.1, 0.4]), min_size=len(kinds), max_size=len(kinds))
    )
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            f"c{i}_{k}": _column(k, n, rng, m)
            for i, (k, m) in enumerate(zip(kinds, miss, strict=True))
        }
    )
    df.insert(0, "pid", np.arange(n))
    strata = (
        [c for c in df.columns if c.endswith("_string") or c.endswith("_bool")][:1]
        if draw(st.booleans())
        else []
    )
    rows = draw(st.sampled_from([None, None, 97, 1000]))
    return df, strata, rows, seed


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(datasets())
def test_synthetic_data_pass_their_own_schema(tmp_path_factory, case):
    df, strata, rows, seed = case
    path = tmp_path_factory.mktemp("prop") / "d.parquet"
    df.to_parquet(path)
    raw = manifest_for(path, strata=strata)
    raw["sdc"] = {"min_cell_size": 10}
    m = load_manifest(raw)
    data, meta = read_source(path)
    rel, _ = extract_source(data, meta, m, m.source("people"))
    syn = synthesize_source(rel, seed=seed % 1000, rows=rows)
    want_rows = rows or len(df)
    assert len(syn) == want_rows
    assert list(syn.columns) == [c["name"] for c in rel["columns"]]
    plan = source_plan(rel, want_rows)
    t0 = tier0(syn, rel, plan, set(), None)
    assert t0["passed"], t0["problems"]
    t1 = tier1(syn, rel, plan, set())
    bad = [p for p in t1["problems"] if "category counts" in p]
    assert not bad, bad
    assert syn["pid"].tolist() == list(range(1, want_rows + 1))
