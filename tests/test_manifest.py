"""Manifest validation: the JSON Schema, the cross-reference checks of `load_manifest`, the
column checks of `check_columns` against the data, and the frozen dataclasses they build."""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from replisynth.config.manifest import (
    SCHEMA_PATH,
    SDC_PROFILE_DEFAULTS,
    Checkpoint,
    Manifest,
    check_columns,
    formula_variables,
    load_manifest,
)
from replisynth.core.errors import ManifestError, ReplisynthError, UnsupportedError

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "config.yaml"
SCHEMA = REPO / "config" / "schema.yaml"

# Columns of conftest.make_people().
PEOPLE_COLUMNS = [
    "pid",
    "y",
    "x1",
    "x2",
    "female",
    "region",
    "age",
    "educ",
    "income",
    "w",
    "cluster",
]

BASE: dict[str, Any] = {
    "name": "base_run",
    "seed": 11,
    "sources": {
        "people": {"path": "people.csv", "ids": ["pid"], "strata": ["region"]},
        "firms": {"path": "firms.parquet"},
    },
    "sdc": {"profile": "standard"},
    "checkpoints": [
        {
            "tag": "wage",
            "source": "people",
            "model": "ols",
            "formula": "y ~ x1 + x2",
            "vcov": "HC1",
        },
        {
            "tag": "clustered",
            "source": "people",
            "model": "ols",
            "formula": "y ~ x1",
            "vcov": "cluster:cluster",
        },
    ],
    "verify": {"tier": 4},
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def mutate(f: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    d = base()
    f(d)
    return d


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


def _src(key: str, value: Any, source: str = "people") -> Callable[[dict[str, Any]], None]:
    return lambda d: d["sources"][source].__setitem__(key, value)


def _cp(i: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["checkpoints"][i].__setitem__(key, value)


# (id, mutation, exception class, regex the message must match: key path + what is wrong)
BROKEN: list[tuple[str, Callable[[dict[str, Any]], Any], type[Exception], str]] = [
    (
        "unknown_top_level_key",
        _set("seeds", 3),
        ManifestError,
        r"\(top level\): unknown key 'seeds'.*allowed keys are .*seed",
    ),
    (
        "unknown_source_key",
        _src("stratum", ["region"]),
        ManifestError,
        r"sources\.people: unknown key 'stratum'.*strata",
    ),
    (
        "unknown_checkpoint_key",
        _cp(1, "weight", "w"),
        ManifestError,
        r"checkpoints\[1\]: unknown key 'weight'.*weights",
    ),
    (
        "unknown_sdc_key",
        lambda d: d["sdc"].__setitem__("min_cell", 3),
        ManifestError,
        r"sdc: unknown key 'min_cell'.*min_cell_size",
    ),
    (
        "unknown_verify_key",
        lambda d: d["verify"].__setitem__("tiers", 3),
        ManifestError,
        r"verify: unknown key 'tiers'",
    ),
    ("missing_name", lambda d: d.pop("name"), ManifestError, r"'name' is a required property"),
    (
        "missing_source_path",
        lambda d: d["sources"]["people"].pop("path"),
        ManifestError,
        r"sources\.people: 'path' is a required property",
    ),
    ("bad_name_pattern", _set("name", "my run!"), ManifestError, r"name: 'my run!' does not match"),
    (
        "seed_negative",
        _set("seed", -1),
        ManifestError,
        r"seed: must be a non-negative integer, got -1",
    ),
    (
        "seed_string",
        _set("seed", "abc"),
        ManifestError,
        r"seed: expected integer \(a non-negative integer\), got 'abc'",
    ),
    ("seed_float", _set("seed", 1.5), ManifestError, r"seed: expected integer.*got 1\.5"),
    ("seed_bool", _set("seed", True), ManifestError, r"seed: expected integer.*got True"),
    (
        "checkpoint_source_unknown",
        _cp(1, "source", "peple"),
        ManifestError,
        r"checkpoints\[1\]\.source: 'peple' is not a source of this manifest \(sources: people, firms\)",
    ),
    (
        "duplicate_tags",
        _cp(1, "tag", "wage"),
        ManifestError,
        r"checkpoints\[1\]\.tag: 'wage' is already used by checkpoints\[0\]",
    ),
    (
        "unknown_model",
        _cp(0, "model", "tobit"),
        ManifestError,
        r"checkpoints\[0\]\.model: 'tobit' is not one of ols, ",
    ),
    (
        "fe_without_absorb",
        lambda d: d["checkpoints"][0].update(model="fe"),
        ManifestError,
        r"checkpoints\[0\]\.absorb: model fe needs 1 or 2 columns to absorb",
    ),
    (
        "glm_hc3",
        lambda d: d["checkpoints"][0].update(model="logit", vcov="HC3"),
        ManifestError,
        r"checkpoints\[0\]\.vcov: 'HC3' is not available for model logit.*HC0, HC1",
    ),
    (
        "levels_repeated",
        lambda d: d["checkpoints"][0].update(model="ologit", levels=["low", "high", "low"]),
        ManifestError,
        r"checkpoints\[0\]\.levels: list at least two distinct categories",
    ),
    (
        "levels_on_logit",
        lambda d: d["checkpoints"][0].update(model="logit", levels=[0, 1]),
        ManifestError,
        r"checkpoints\[0\]\.levels: only ordered models take levels",
    ),
    (
        "bad_vcov",
        _cp(0, "vcov", "robust"),
        ManifestError,
        r"checkpoints\[0\]\.vcov: 'robust' is not a vcov; use nonrobust, HC0",
    ),
    (
        "formula_without_tilde",
        _cp(0, "formula", "y + x1"),
        ManifestError,
        r"checkpoints\[0\]\.formula: 'y \+ x1' has no '~'",
    ),
    (
        "formula_does_not_parse",
        _cp(1, "formula", "y ~ x1 +"),
        ManifestError,
        r"(?s)(?=.*checkpoints\[1\]\.formula)(?=.*cannot parse formula 'y ~ x1 \+')",
    ),
    (
        "formula_unbalanced_paren",
        _cp(0, "formula", "y ~ (x1 + x2"),
        ManifestError,
        r"(?s)(?=.*checkpoints\[0\]\.formula)(?=.*cannot parse formula)",
    ),
    (
        "formula_lhs_transformed",
        _cp(0, "formula", "np.log(y) ~ x1"),
        ManifestError,
        r"checkpoints\[0\]\.formula: the left-hand side 'np\.log\(y\)' must be one column name",
    ),
    (
        "formula_too_short",
        _cp(0, "formula", "y~"),
        ManifestError,
        r"checkpoints\[0\]\.formula: 'y~' is too short",
    ),
    (
        "unknown_extension",
        _src("path", "people.xlsx"),
        ManifestError,
        r"sources\.people\.path: unknown extension '\.xlsx' in 'people\.xlsx'; use one of .*\.csv",
    ),
    (
        "no_extension",
        _src("path", "people"),
        ManifestError,
        r"sources\.people\.path: unknown extension '\(none\)'",
    ),
    (
        "categorical_and_continuous",
        lambda d: d["sources"]["people"].update(categorical=["age"], continuous=["age"]),
        ManifestError,
        r"sources\.people: \['age'\] listed as both categorical and continuous",
    ),
    (
        "ids_and_strata",
        _src("ids", ["pid", "region"]),
        ManifestError,
        r"sources\.people: column\(s\) \['region'\] are in both ids and strata",
    ),
    (
        "exclude_and_groups",
        lambda d: d["sources"]["people"].update(exclude=["cluster"], groups=["cluster"]),
        ManifestError,
        r"sources\.people: column\(s\) \['cluster'\] are in both exclude and groups",
    ),
    (
        "panel_time_in_ids",
        _src("panel", {"entity": "cluster", "time": "pid"}),
        ManifestError,
        r"sources\.people\.panel\.time: 'pid' is also in ids/exclude",
    ),
    (
        "absorb_on_ols",
        _cp(0, "absorb", ["region"]),
        ManifestError,
        r"checkpoints\[0\]\.absorb: only model fe absorbs fixed effects \(model is ols\)",
    ),
    (
        "entity_on_ols",
        _cp(0, "entity", "cluster"),
        ManifestError,
        r"checkpoints\[0\]\.entity: only models re and fe take an entity",
    ),
    (
        "levels_on_ols",
        _cp(0, "levels", [1, 2, 3]),
        ManifestError,
        r"checkpoints\[0\]\.levels: only ordered models take levels",
    ),
    (
        "sdc_profile_unknown",
        lambda d: d["sdc"].__setitem__("profile", "eurostat"),
        ManifestError,
        r"sdc\.profile: 'eurostat' is not one of standard, iab, fsrdc, strict",
    ),
    (
        "sdc_min_cell_zero",
        lambda d: d["sdc"].__setitem__("min_cell_size", 0),
        ManifestError,
        r"sdc\.min_cell_size: 0 is less than the minimum of 1",
    ),
    (
        "verify_tier_5",
        lambda d: d["verify"].__setitem__("tier", 5),
        ManifestError,
        r"verify\.tier: 5 is greater than the maximum of 4",
    ),
    ("sources_empty", _set("sources", {}), ManifestError, r"sources: \{\} should be non-empty"),
    (
        "source_name_pattern",
        lambda d: d["sources"].__setitem__("1bad", {"path": "x.csv"}),
        ManifestError,
        r"sources: '1bad' does not match",
    ),
    (
        "rows_zero",
        _src("rows", 0),
        ManifestError,
        r"sources\.people\.rows: 0 is less than the minimum of 1",
    ),
    (
        "checkpoints_not_a_list",
        _set("checkpoints", {"tag": "a"}),
        ManifestError,
        r"checkpoints: expected array",
    ),
]


def test_base_manifest_is_valid() -> None:
    m = load_manifest(base())
    assert isinstance(m, Manifest)
    assert m.name == "base_run" and m.seed == 11
    assert [s.name for s in m.sources] == ["people", "firms"]
    assert [c.tag for c in m.checkpoints] == ["wage", "clustered"]
    assert m.verify_tier == 4


def test_broken_table_is_large_enough() -> None:
    assert len(BROKEN) >= 14
    assert len({b[0] for b in BROKEN}) == len(BROKEN)


@pytest.mark.parametrize(
    ("mutation", "exc", "pattern"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN]
)
def test_broken_manifest(
    mutation: Callable[[dict[str, Any]], Any], exc: type[Exception], pattern: str
) -> None:
    raw = mutate(mutation)
    before = copy.deepcopy(raw)
    with pytest.raises(exc, match=pattern) as info:
        load_manifest(raw)
    assert isinstance(info.value, ReplisynthError)
    assert raw == before, "load_manifest must not modify the mapping it is given"


def test_unsupported_is_not_a_manifest_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unsupported features parse: the two classes are distinct so callers can tell them apart."""
    monkeypatch.setattr("replisynth.config.manifest.SUPPORTED_MODELS", ("ols",))
    with pytest.raises(UnsupportedError) as info:
        load_manifest(mutate(_cp(0, "model", "logit")))
    assert not isinstance(info.value, ManifestError)


def test_formula_parse_error_is_plain_text() -> None:
    """The message is printed by the CLI and logged to files: no terminal colour codes."""
    with pytest.raises(ManifestError) as info:
        load_manifest(mutate(_cp(0, "formula", "y ~ x1 +")))
    assert "\x1b" not in str(info.value)


def test_vcov_error_has_no_name_hint() -> None:
    """The '(letters, digits, - and _)' hint describes name patterns, not the vcov pattern."""
    with pytest.raises(ManifestError, match=r"checkpoints\[0\]\.vcov") as info:
        load_manifest(mutate(_cp(0, "vcov", "robust")))
    assert "letters, digits" not in str(info.value)
    assert "HC1" in str(info.value) and "cluster:" in str(info.value)


def test_several_schema_errors_are_all_reported() -> None:
    raw = mutate(lambda d: d.update(seed=-4, seeds=1, verify={"tier": 9}))
    with pytest.raises(ManifestError) as info:
        load_manifest(raw)
    msg = str(info.value)
    assert "unknown key 'seeds'" in msg
    assert "seed: must be a non-negative integer, got -4" in msg
    assert "verify.tier: 9" in msg


def test_not_a_mapping() -> None:
    with pytest.raises(ManifestError, match="expected a YAML mapping"):
        load_manifest([1, 2, 3])  # type: ignore[arg-type]


def test_manifest_file_not_found(tmp_path: Path) -> None:
    p = tmp_path / "nope.yaml"
    with pytest.raises(ManifestError, match=re.escape(str(p)) + ": manifest file not found"):
        load_manifest(p)


def test_manifest_file_not_yaml(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\nseed: 1\n")
    with pytest.raises(ManifestError, match=re.escape(str(p)) + ": not valid YAML"):
        load_manifest(p)


def test_manifest_file_empty(tmp_path: Path) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text("")
    with pytest.raises(ManifestError, match="expected a YAML mapping"):
        load_manifest(p)


def test_manifest_from_yaml_file_equals_dict(tmp_path: Path) -> None:
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(base(), sort_keys=False))
    assert load_manifest(p) == load_manifest(base())
    assert load_manifest(str(p)) == load_manifest(base())


def test_bundle_key_is_dropped() -> None:
    m = load_manifest(mutate(_set("bundle", "results/x/bundle")))
    assert "bundle" not in m.raw


# ---------------------------------------------------------------------------------------------
# check_columns


def _with(src: dict[str, Any] | None = None, cps: list[dict[str, Any]] | None = None) -> Manifest:
    s = {"path": "people.csv", "ids": ["pid"]}
    s.update(src or {})
    return load_manifest(
        {"name": "t", "seed": 1, "sources": {"people": s}, "checkpoints": cps or []}
    )


def _cpd(**k: Any) -> dict[str, Any]:
    return {"tag": "c", "source": "people", "model": "ols", "formula": "y ~ x1", **k}


def test_check_columns_accepts_valid() -> None:
    m = _with(
        {
            "strata": ["region"],
            "categorical": ["educ"],
            "continuous": ["age"],
            "groups": ["cluster"],
        },
        [
            _cpd(
                formula="y ~ C(region) + I(x1**2) + x1:female + x2",
                weights="w",
                vcov="cluster:cluster",
            )
        ],
    )
    check_columns(m, "people", PEOPLE_COLUMNS)


def test_check_columns_formula_column_missing() -> None:
    m = _with(cps=[_cpd(formula="y ~ educ2 + x1")])
    with pytest.raises(ManifestError) as info:
        check_columns(m, "people", PEOPLE_COLUMNS)
    msg = str(info.value)
    assert "checkpoints[0].formula: column 'educ2' is not in source 'people'" in msg
    assert "people.csv" in msg
    assert "columns: " + ", ".join(PEOPLE_COLUMNS) in msg


@pytest.mark.parametrize(
    ("src", "cps", "pattern"),
    [
        (
            {"strata": ["reg"]},
            None,
            r"sources\.people\.strata: column 'reg' is not in source 'people'",
        ),
        (
            {"categorical": ["sex"]},
            None,
            r"sources\.people\.categorical: column 'sex' is not in source 'people'",
        ),
        ({"ids": ["id"]}, None, r"sources\.people\.ids: column 'id' is not in source 'people'"),
        (
            {"panel": {"entity": "cluster", "time": "year"}},
            None,
            r"sources\.people\.panel\.time: column 'year' is not in source 'people'",
        ),
        (
            None,
            [_cpd(weights="wt")],
            r"checkpoints\[0\]\.weights: column 'wt' is not in source 'people'",
        ),
        (
            None,
            [_cpd(vcov="cluster:xyz")],
            r"checkpoints\[0\]\.vcov: column 'xyz' is not in source 'people'",
        ),
        (
            None,
            [_cpd(), _cpd(tag="d", formula="y ~ C(sector)")],
            r"checkpoints\[1\]\.formula: column 'sector' is not in source 'people'",
        ),
        (
            None,
            [_cpd(model="iv", formula="y ~ 1 + x1 + [x2 ~ z9]")],
            r"checkpoints\[0\]\.formula: column 'z9' is not in source 'people'",
        ),
    ],
    ids=[
        "strata",
        "categorical",
        "ids",
        "panel_time",
        "weights",
        "cluster",
        "second_checkpoint",
        "iv_instrument",
    ],
)
def test_check_columns_missing(
    src: dict[str, Any] | None, cps: list[dict[str, Any]] | None, pattern: str
) -> None:
    m = _with(src, cps)
    with pytest.raises(ManifestError, match=pattern) as info:
        check_columns(m, "people", PEOPLE_COLUMNS)
    assert "columns: pid, y, x1" in str(info.value)


@pytest.mark.parametrize(
    ("src", "formula", "col"),
    [({}, "y ~ pid + x1", "pid"), ({"exclude": ["x2"]}, "y ~ x1 + x2", "x2")],
    ids=["id_column", "excluded_column"],
)
def test_check_columns_formula_uses_unreleased_column(
    src: dict[str, Any], formula: str, col: str
) -> None:
    m = _with(src, [_cpd(formula=formula)])
    with pytest.raises(
        ManifestError,
        match=rf"checkpoints\[0\]\.formula: column '{col}' is in sources\.people\.ids/exclude",
    ):
        check_columns(m, "people", PEOPLE_COLUMNS)


def test_check_columns_ignores_other_sources() -> None:
    m = load_manifest(base())
    # the checkpoints are on `people`; firms has none, so any columns will do
    check_columns(m, "firms", ["firm_id", "sales"])


def test_check_columns_long_column_list_is_shortened() -> None:
    cols = PEOPLE_COLUMNS + [f"v{i}" for i in range(100)]
    m = _with(cps=[_cpd(formula="y ~ nothere")])
    with pytest.raises(ManifestError, match=r"column 'nothere'") as info:
        check_columns(m, "people", cols)
    msg = str(info.value)
    assert msg.endswith(", ...)")
    assert "v99" not in msg


# ---------------------------------------------------------------------------------------------
# valid manifests and the dataclasses


def test_demo_config_loads() -> None:
    m = load_manifest(CONFIG)
    assert m.name == "card1995"
    assert m.seed == 20261123
    (card,) = m.sources
    assert card.name == "card" and card.format == "dta"
    assert card.ids == ("id",) and card.strata == ("south", "smsa")
    assert [c.tag for c in m.checkpoints] == [
        "wage_ols",
        "kww_weighted",
        "iq_factors",
        "wage_iv",
        "enroll_logit",
    ]
    assert {c.model for c in m.checkpoints} == {"ols", "iv", "logit"}
    assert m.checkpoints[1].weights == "weight" and m.checkpoints[1].subset == "age >= 25"
    assert m.sdc.profile == "standard" and m.sdc.min_cell_size == 50
    assert m.verify_tier == 4
    assert m.checkpoints_of("card") == m.checkpoints


@pytest.mark.parametrize(
    ("profile", "cell", "trim", "df"),
    [("standard", 50, 1, 10), ("iab", 20, 1, 20), ("fsrdc", 50, 1, 10), ("strict", 100, 1, 20)],
)
def test_sdc_profile_defaults(profile: str, cell: int, trim: float, df: int) -> None:
    m = load_manifest(mutate(lambda d: d.__setitem__("sdc", {"profile": profile})))
    assert (m.sdc.profile, m.sdc.min_cell_size, m.sdc.quantile_trim, m.sdc.min_resid_df) == (
        profile,
        cell,
        trim,
        df,
    )
    assert m.sdc.overridden == ()
    got = SDC_PROFILE_DEFAULTS[profile]
    assert {k: got[k] for k in ("min_cell_size", "quantile_trim", "min_resid_df")} == {
        "min_cell_size": cell,
        "quantile_trim": trim,
        "min_resid_df": df,
    }


def test_sdc_defaults_without_sdc_key() -> None:
    m = load_manifest(mutate(lambda d: d.pop("sdc")))
    assert (m.sdc.profile, m.sdc.min_cell_size, m.sdc.quantile_trim, m.sdc.min_resid_df) == (
        "standard",
        50,
        1,
        10,
    )


def test_sdc_explicit_keys_override_profile() -> None:
    m = load_manifest(
        mutate(
            lambda d: d.__setitem__(
                "sdc", {"profile": "strict", "min_cell_size": 30, "quantile_trim": 2.5}
            )
        )
    )
    assert m.sdc.profile == "strict"
    assert m.sdc.min_cell_size == 30
    assert m.sdc.quantile_trim == 2.5
    assert m.sdc.min_resid_df == 20  # from the profile
    assert m.sdc.overridden == ("min_cell_size", "quantile_trim")
    m2 = load_manifest(
        mutate(lambda d: d.__setitem__("sdc", {"profile": "iab", "min_resid_df": 5}))
    )
    assert (m2.sdc.min_cell_size, m2.sdc.min_resid_df, m2.sdc.overridden) == (
        20,
        5,
        ("min_resid_df",),
    )


def test_defaults_filled() -> None:
    m = load_manifest({"name": "x", "seed": 0, "sources": {"s": {"path": "d.pq"}}})
    (s,) = m.sources
    assert s.format == "parquet"
    assert (s.rows, s.ids, s.exclude, s.categorical, s.continuous, s.strata, s.groups, s.panel) == (
        None,
        (),
        (),
        (),
        (),
        (),
        (),
        None,
    )
    assert m.checkpoints == ()
    assert m.verify_tier == 4
    assert m.seed == 0


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("a.csv", "csv"),
        ("a.PARQUET", "parquet"),
        ("a.pq", "parquet"),
        ("dir.v2/a.dta", "dta"),
        ("a.sav", "sav"),
    ],
)
def test_source_format_from_extension(path: str, fmt: str) -> None:
    m = load_manifest({"name": "x", "seed": 0, "sources": {"s": {"path": path}}})
    assert m.sources[0].format == fmt


def test_manifest_is_frozen() -> None:
    m = load_manifest(base())
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.seed = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.sources[0].path = "other.csv"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.checkpoints[0].formula = "y ~ 1"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.sdc.min_cell_size = 1  # type: ignore[misc]
    assert isinstance(m.sources, tuple) and isinstance(m.checkpoints, tuple)
    assert isinstance(m.sources[0].ids, tuple)


def test_manifest_does_not_alias_input() -> None:
    raw = base()
    m = load_manifest(raw)
    raw["sources"]["people"]["ids"].append("x1")
    raw["checkpoints"][0]["formula"] = "y ~ 1"
    assert m.sources[0].ids == ("pid",)
    assert m.raw["sources"]["people"]["ids"] == ["pid"]
    assert m.raw["checkpoints"][0]["formula"] == "y ~ x1 + x2"


def test_source_lookup() -> None:
    m = load_manifest(base())
    assert m.source("firms").path == "firms.parquet"
    with pytest.raises(KeyError):
        m.source("nope")
    assert [c.tag for c in m.checkpoints_of("people")] == ["wage", "clustered"]
    assert m.checkpoints_of("firms") == ()


def test_checkpoint_outcome_and_cluster() -> None:
    m = load_manifest(base())
    wage, clustered = m.checkpoints
    assert wage.outcome == "y" and wage.cluster is None and wage.vcov == "HC1"
    assert clustered.outcome == "y" and clustered.cluster == "cluster"
    cp = Checkpoint(
        tag="t", source="s", model="ols", formula="  lwage ~ educ", vcov="cluster:firm:id"
    )
    assert cp.outcome == "lwage"
    assert cp.cluster == "firm:id"
    assert Checkpoint(tag="t", source="s", model="ols", formula="y ~ x").vcov == "nonrobust"
    assert Checkpoint(tag="t", source="s", model="ols", formula="y ~ x").cluster is None


def test_key_columns_include_panel_entity() -> None:
    m = _with({"groups": ["cluster"], "panel": {"entity": "educ", "time": "age"}})
    assert m.sources[0].key_columns == ("cluster", "educ")
    m2 = _with({"groups": ["cluster"], "panel": {"entity": "cluster", "time": "age"}})
    assert m2.sources[0].key_columns == ("cluster",)


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("y ~ x1 + x2", {"y", "x1", "x2"}),
        ("y ~ C(region) + x1", {"y", "region", "x1"}),
        ("y ~ C(region, Treatment('b'))", {"y", "region"}),
        ("y ~ I(exper**2) + exper", {"y", "exper"}),
        (
            "lwage ~ educ + exper + I(exper**2) + black + C(region66)",
            {"lwage", "educ", "exper", "black", "region66"},
        ),
        ("y ~ x1 * female", {"y", "x1", "female"}),
        ("y ~ x1:x2", {"y", "x1", "x2"}),
        ("y ~ (a + b + c)**2", {"y", "a", "b", "c"}),
        ("y ~ a + b - 1", {"y", "a", "b"}),
        ("y ~ np.log(income)", {"y", "income"}),
        ("y ~ 1 + w + [x ~ z1 + z2]", {"y", "w", "x", "z1", "z2"}),
        ("y ~ [x1 + x2 ~ z1 + z2 + z3] + C(g)", {"y", "x1", "x2", "z1", "z2", "z3", "g"}),
    ],
)
def test_formula_variables(formula: str, expected: set[str]) -> None:
    assert formula_variables(formula) == expected


def test_formula_variables_parse_error() -> None:
    with pytest.raises(ManifestError, match=r"cannot parse formula 'y ~ x1 \+'"):
        formula_variables("y ~ x1 +")


# ---------------------------------------------------------------------------------------------
# the JSON Schema itself


def _load_schema(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_schema_is_valid_draft_2020_12() -> None:
    import jsonschema

    schema = _load_schema(SCHEMA)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    # and the demo manifest validates against it
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(CONFIG.read_text()))


def test_schema_forbids_unknown_keys_everywhere() -> None:
    s = _load_schema(SCHEMA)
    assert s["additionalProperties"] is False
    entry = s["properties"]["sources"]["additionalProperties"]
    assert entry["type"] == "object" and entry["additionalProperties"] is False
    assert entry["properties"]["panel"]["additionalProperties"] is False
    assert s["properties"]["sdc"]["additionalProperties"] is False
    assert s["properties"]["checkpoints"]["items"]["additionalProperties"] is False
    assert s["properties"]["verify"]["additionalProperties"] is False
    assert set(s["required"]) == {"name", "seed", "sources"}


def test_packaged_schema_matches_config_schema() -> None:
    """load_manifest reads the copy inside the package; it must be the documented contract."""
    assert _load_schema(Path(SCHEMA_PATH)) == _load_schema(SCHEMA)


def test_schema_enums_match_options() -> None:
    from replisynth.core.options import MODELS, SDC_PROFILES

    s = _load_schema(SCHEMA)
    assert tuple(s["properties"]["checkpoints"]["items"]["properties"]["model"]["enum"]) == MODELS
    assert tuple(s["properties"]["sdc"]["properties"]["profile"]["enum"]) == SDC_PROFILES
    assert set(SDC_PROFILE_DEFAULTS) == set(SDC_PROFILES)
