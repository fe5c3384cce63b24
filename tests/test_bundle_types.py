"""The bundle's typed records (disclosure/bundle_types.py) agree with its JSON Schema, and a
freshly extracted bundle matches them key for key."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, NotRequired, Union, get_args, get_origin, get_type_hints

import numpy as np
import pytest
import yaml
from conftest import make_people

from replisynth.disclosure import bundle_types as bt
from replisynth.disclosure.bundle import SCHEMA_PATH, load_bundle
from replisynth.workflow.cli import main

SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())

# Each record and the schema object it types: a path of keys from the schema's root
# ($ref followed). An object the schema leaves open (`{type: object}`, no required keys)
# is typed all-NotRequired; those are listed too, so a schema that starts requiring keys
# there fails this test until the record follows.
TABLE: dict[str, tuple[str, ...]] = {
    "BundleInfo": ("$defs", "manifest.json"),
    "BundleFileEntry": ("$defs", "manifest.json", "properties", "files", "items"),
    "SdcSettings": ("$defs", "sdc_settings"),
    "SdcLogFile": ("$defs", "sdc_log.json"),
    "SdcDecision": ("$defs", "sdc_log.json", "properties", "decisions", "items"),
    "CheckpointsFile": ("$defs", "checkpoints.json"),
    "CheckpointRecord": ("$defs", "checkpoint"),
    "ReleasedTerm": ("$defs", "checkpoint", "properties", "terms", "items", "else"),
    "SuppressedTerm": ("$defs", "checkpoint", "properties", "terms", "items", "if"),
    "CheckpointMoments": ("$defs", "checkpoint", "properties", "moments"),
    "SourceRelease": ("$defs", "source"),
    "ColumnRecord": ("$defs", "source", "properties", "columns", "items"),
    "Dim": ("$defs", "source", "properties", "dims", "items"),
    "Strata": ("$defs", "source", "properties", "strata"),
    "StratumCell": ("$defs", "source", "properties", "strata", "properties", "cells", "items"),
    "Block": ("$defs", "source", "properties", "blocks", "additionalProperties"),
    "MissingCodes": ("$defs", "source", "properties", "missing_codes", "additionalProperties"),
    "Weights": ("$defs", "source", "properties", "weights"),
    "WeightedTable": (
        "$defs",
        "source",
        "properties",
        "weights",
        "properties",
        "tables",
        "additionalProperties",
    ),
    "WeightedGrid": (
        "$defs",
        "source",
        "properties",
        "weights",
        "properties",
        "grids",
        "additionalProperties",
    ),
    **{
        kind: (
            "$defs",
            "source",
            "properties",
            "blocks",
            "additionalProperties",
            "properties",
            "marginals",
            "additionalProperties",
        )
        for kind in ("CategoricalMarginal", "GridMarginal", "SuppressedMarginal")
    },
    "FrequencyTableRecord": (
        "$defs",
        "source",
        "properties",
        "blocks",
        "additionalProperties",
        "properties",
        "marginals",
        "additionalProperties",
        "properties",
        "table",
    ),
    "AtomsRecord": (
        "$defs",
        "source",
        "properties",
        "blocks",
        "additionalProperties",
        "properties",
        "marginals",
        "additionalProperties",
        "properties",
        "atoms",
    ),
    "AtomRest": (
        "$defs",
        "source",
        "properties",
        "blocks",
        "additionalProperties",
        "properties",
        "marginals",
        "additionalProperties",
        "properties",
        "atoms",
        "properties",
        "rest",
    ),
    "GroupRelease": ("$defs", "source", "properties", "groups", "additionalProperties"),
    "DerivedColumn": ("$defs", "source", "properties", "derived", "additionalProperties"),
    "Ordering": ("$defs", "source", "properties", "orderings", "items"),
    "EmptyCells": ("$defs", "source", "properties", "empty_cells", "items"),
    "Panel": ("$defs", "source", "properties", "panel"),
    "EntityStructure": ("$defs", "source", "properties", "entity_structure"),
}
# Objects the schema requires keys of that are typed as mappings (`dict[str, Block]`): the
# required key, and the record field holding the mapping.
MAPPINGS = {("$defs", "source", "properties", "blocks"): ("all", "SourceRelease", "blocks")}
# Records of objects the schema does not describe (sdc_log.json's ledger, written by the
# checkpoint stage; nested parts of open objects).
OUTSIDE_SCHEMA = {
    "Ledger",
    "LedgerEntry",
    "LedgerDifferencing",
    "SizeWindow",
    "PeriodTrend",
}
# Decisions carry context keys beyond the typed ones (source, column, block, ...).
OPEN_RECORDS = {"SdcDecision"}


def _records() -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(bt).items()
        if isinstance(obj, type) and typing.is_typeddict(obj)
    }


def _schema_at(path: tuple[str, ...]) -> dict[str, Any]:
    node: Any = SCHEMA
    for key in path:
        node = node[key]
        while isinstance(node, dict) and "$ref" in node:
            node = SCHEMA["$defs"][node["$ref"].split("/")[-1]]
    return node


def _schema_required(path: tuple[str, ...]) -> set[str]:
    """Keys required at `path`; an if/else branch also requires what its parent does."""
    req = set(_schema_at(path).get("required", []))
    if path[-1] in ("if", "else", "then"):
        req |= set(_schema_at(path[:-1]).get("required", []))
    return req


def _schema_keys(path: tuple[str, ...]) -> set[str]:
    node = _schema_at(path)
    keys = set(node.get("properties", {}))
    if path[-1] in ("if", "else", "then"):
        keys |= set(_schema_at(path[:-1]).get("properties", {}))
    return keys


def test_every_record_is_mapped():
    assert set(_records()) == set(TABLE) | OUTSIDE_SCHEMA


@pytest.mark.parametrize("name", sorted(TABLE))
def test_required_keys_agree_with_the_schema(name):
    rec = _records()[name]
    assert set(rec.__required_keys__) == _schema_required(TABLE[name]), name

    # every key the schema names at this object is a key of the record (or, for the variants
    # of a union typing one object, of one of them)
    def base(path: tuple[str, ...]) -> tuple[str, ...]:
        return path[:-1] if path[-1] in ("if", "else") else path

    variants = [_records()[n] for n, path in TABLE.items() if base(path) == base(TABLE[name])]
    assert _schema_keys(TABLE[name]) <= {k for v in variants for k in get_type_hints(v)}, name


def test_schema_requires_only_what_a_record_requires():
    """Walking every object of the schema: its required keys are those of some record."""
    mapped = {TABLE[n]: set(_records()[n].__required_keys__) for n in TABLE}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            return
        if path in MAPPINGS:
            key, rec, field = MAPPINGS[path]
            assert node["required"] == [key]
            assert get_origin(get_type_hints(_records()[rec])[field]) is dict
        elif node.get("required") and path[-1] != "then" and "allOf" not in path:
            assert path in mapped, f"schema object {'/'.join(path)} has no typed record"
            assert set(node["required"]) <= mapped[path], path
        for key, sub in node.items():
            if key not in ("required", "enum", "const"):
                walk(sub, (*path, key))

    walk(SCHEMA["$defs"], ("$defs",))


# ------------------------------------------------------------------ a tiny structural checker


def conforms(value: Any, tp: Any, where: str) -> None:
    """Raise AssertionError naming `where` unless `value` has the shape `tp` describes."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return
    if origin is NotRequired:
        conforms(value, args[0], where)
    elif isinstance(tp, type) and typing.is_typeddict(tp):
        _conforms_record(value, tp, where)
    elif origin in (Union, types.UnionType):
        _conforms_union(value, args, where)
    elif origin is Literal:
        assert value in args, f"{where}: {value!r} not one of {args}"
    elif origin is list:
        assert isinstance(value, list), f"{where}: not a list"
        for i, v in enumerate(value):
            conforms(v, args[0], f"{where}[{i}]")
    elif origin is dict:
        assert isinstance(value, dict), f"{where}: not an object"
        for k, v in value.items():
            conforms(v, args[1], f"{where}.{k}")
    else:
        _conforms_scalar(value, tp, where)


def _conforms_record(value: Any, tp: Any, where: str) -> None:
    assert isinstance(value, dict), f"{where}: not an object"
    hints = get_type_hints(tp)
    missing = set(tp.__required_keys__) - set(value)
    assert not missing, f"{where}: missing {sorted(missing)} ({tp.__name__})"
    if tp.__name__ not in OPEN_RECORDS:
        extra = set(value) - set(hints)
        assert not extra, f"{where}: keys {sorted(extra)} not in {tp.__name__}"
    for key, v in value.items():
        if key in hints:
            conforms(v, hints[key], f"{where}.{key}")


def _conforms_union(value: Any, alternatives: tuple[Any, ...], where: str) -> None:
    errors = []
    for alt in alternatives:
        try:
            return conforms(value, alt, where)
        except AssertionError as exc:
            errors.append(str(exc))
    raise AssertionError(" | ".join(errors))


def _conforms_scalar(value: Any, tp: Any, where: str) -> None:
    if tp is type(None):
        assert value is None, f"{where}: not null"
    elif tp in (int, float):
        ok = (int, float) if tp is float else (int,)
        assert isinstance(value, ok) and not isinstance(value, bool), f"{where}: not {tp.__name__}"
    else:
        assert isinstance(value, tp), f"{where}: not {tp.__name__}"


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    """A bundle of generated data with strata, a categorical, a group column and a released
    checkpoint with design moments."""
    tmp = tmp_path_factory.mktemp("typed")
    rng = np.random.default_rng(11)
    df = make_people(1500, seed=5).rename(columns={"region": "area", "cluster": "school"})
    df["grade"] = rng.choice(["lo", "mid", "hi"], size=len(df))
    path = tmp / "pupils.csv"
    df.to_csv(path, index=False)
    man = {
        "name": "typed",
        "seed": 3,
        "sources": {
            "pupils": {
                "path": str(path),
                "ids": ["pid"],
                "strata": ["female"],
                "categorical": ["grade"],
                "groups": ["school"],
            }
        },
        "checkpoints": [
            {
                "tag": "y_ols",
                "source": "pupils",
                "model": "ols",
                "formula": "y ~ x1 + x2 + C(area)",
                "vcov": "HC1",
            }
        ],
        "sdc": {"min_cell_size": 10},  # 40 schools: enough for released size windows
        "verify": {"tier": 0},
    }
    mp = tmp / "m.yaml"
    mp.write_text(yaml.safe_dump(man))
    assert main(["extract", str(mp), "--results", str(tmp / "res"), "--quiet"]) == 0
    return load_bundle(tmp / "res" / "typed" / "bundle")


def test_demo_bundle_has_what_the_test_needs(demo_bundle):
    rel = demo_bundle.releases["pupils"]
    assert rel["strata"]["cells"] and rel["groups"]["school"]["size_windows"]
    kinds = {m["kind"] for m in rel["blocks"]["all"]["marginals"].values()}
    assert {"categorical", "continuous"} <= kinds
    (cp,) = demo_bundle.checkpoints
    assert cp["status"] == "released" and "moments" in cp
    assert "ledger" in demo_bundle.sdc_log


def test_demo_bundle_files_match_their_records(demo_bundle):
    conforms(demo_bundle.info, bt.BundleInfo, "manifest.json")
    conforms(demo_bundle.sdc_log, bt.SdcLogFile, "sdc_log.json")
    conforms({"checkpoints": demo_bundle.checkpoints}, bt.CheckpointsFile, "checkpoints.json")
    for name, rel in demo_bundle.releases.items():
        conforms(rel, bt.SourceRelease, f"source_{name}.json")


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r["blocks"]["all"].__setitem__("cells", r["blocks"]["all"].pop("rows")),
        lambda r: r["columns"][0].__setitem__("kind", r["columns"][0].pop("role")),
        lambda r: r["strata"]["cells"][0].__setitem__("size", 1),
        lambda r: next(iter(r["groups"].values())).__setitem__("windows", []),
        lambda r: r["dims"][0].__setitem__("kind", 3),
    ],
)
def test_checker_fails_on_a_renamed_or_mistyped_key(demo_bundle, edit):
    import copy

    rel = copy.deepcopy(demo_bundle.releases["pupils"])
    edit(rel)
    with pytest.raises(AssertionError):
        conforms(rel, bt.SourceRelease, "source_pupils.json")


def test_untyped_is_the_same_object():
    rec: dict[str, Any] = {"a": 1}
    assert bt.untyped(rec) is rec


def test_schema_files_parse_as_safe_load_does() -> None:
    """The schema files read through libyaml (`schema_yaml`) are the documents
    `yaml.safe_load` gives."""
    from replisynth.config.manifest import SCHEMA_PATH as MANIFEST_SCHEMA
    from replisynth.config.manifest import schema_yaml

    for path in (MANIFEST_SCHEMA, SCHEMA_PATH):
        with open(path) as fh:
            assert schema_yaml(path) == yaml.safe_load(fh)


def test_schema_files_give_no_key_twice() -> None:
    """The manifest and bundle schemas read with the manifest's strict loader (a key given
    twice in one mapping is an error there, where plain YAML keeps the last one)."""
    from replisynth.config.manifest import SCHEMA_PATH as MANIFEST_SCHEMA
    from replisynth.config.manifest import _UniqueKeyLoader

    for path in (MANIFEST_SCHEMA, SCHEMA_PATH):
        with open(path) as fh:
            assert yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
