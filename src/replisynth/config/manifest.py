"""Load a manifest: validate it against config/schema.yaml, check its cross-references, and
freeze it into dataclasses. Package code reads these dataclasses, never the raw dicts."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from replisynth.core.errors import ManifestError, UnsupportedError
from replisynth.core.options import GLM_MODELS, MODELS, SOURCE_EXTENSIONS, SUPPORTED_MODELS

SCHEMA_PATH = Path(__file__).resolve().parent / "manifest_schema.yaml"
WORKFLOW_KEYS = ("bundle", "scatter", "fuse", "output")

# Agency profiles (see docs/disclosure.md, "Agency profiles"); explicit sdc keys override these.
SDC_PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "standard": {
        "dominance": 0.85,
        "min_cell_size": 50,
        "quantile_trim": 1,
        "min_resid_df": 10,
        "grid": "fixed",
        "round_significant": None,
        "budget": None,
    },
    "iab": {
        "dominance": 0.85,
        "min_cell_size": 20,
        "quantile_trim": 1,
        "min_resid_df": 20,
        "grid": "adaptive",
        "round_significant": None,
        "budget": 0.1,
    },
    "fsrdc": {
        "dominance": 0.85,
        "min_cell_size": 50,
        "quantile_trim": 1,
        "min_resid_df": 10,
        "grid": "pseudo",
        "round_significant": 4,
        "budget": 0.1,
    },
    "strict": {
        "dominance": 0.8,
        "min_cell_size": 100,
        "quantile_trim": 1,
        "min_resid_df": 20,
        "grid": "adaptive+pseudo",
        "round_significant": 4,
        "budget": 0.05,
    },
}
SDC_KEYS = (
    "min_cell_size",
    "quantile_trim",
    "min_resid_df",
    "grid",
    "round_significant",
    "budget",
    "dominance",
)


@dataclass(frozen=True)
class Panel:
    """A panel skeleton: `entity` is re-keyed like a group, `time` stays distinct within entity."""

    entity: str
    time: str


@dataclass(frozen=True)
class Source:
    """One data set of the manifest (`sources.<name>`)."""

    name: str
    path: str
    rows: int | None = None
    ids: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    continuous: tuple[str, ...] = ()
    strata: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    panel: Panel | None = None
    keys: tuple[str, ...] = ()
    sensitive: tuple[str, ...] = ()
    derive: tuple[tuple[str, str], ...] = ()  # (column, expression), in manifest order
    numeric: tuple[str, ...] = ()  # text columns read as numbers (missing_tokens, decimal_comma)
    missing_tokens: tuple[str, ...] = ()
    decimal_comma: bool = False
    dates: tuple[tuple[str, str], ...] = ()  # csv: column -> strftime format
    weight: str | None = None  # survey weight column (docs/method.md, "Survey weights")

    @property
    def format(self) -> str:
        """File format from the extension: csv, parquet, dta or sav."""
        return SOURCE_EXTENSIONS[Path(self.path).suffix.lower()]

    @property
    def key_columns(self) -> tuple[str, ...]:
        """Grouping columns that are re-keyed rather than synthesized from marginals."""
        keys = list(self.groups)
        if self.panel is not None and self.panel.entity not in keys:
            keys.append(self.panel.entity)
        return tuple(keys)


@dataclass(frozen=True)
class Sdc:
    """Resolved disclosure-control settings (profile defaults + explicit overrides)."""

    profile: str
    min_cell_size: int
    quantile_trim: float
    min_resid_df: int
    grid: str = "fixed"
    round_significant: int | None = None
    budget: float | None = None
    dominance: float = 0.85
    overridden: tuple[str, ...] = ()


@dataclass(frozen=True)
class Checkpoint:
    """A regression whose coefficients the synthetic data must reproduce (Layer 4)."""

    tag: str
    source: str
    model: str
    formula: str
    vcov: str = "nonrobust"
    weights: str | None = None
    absorb: tuple[str, ...] = ()
    entity: str | None = None
    time: str | None = None
    subset: str | None = None
    levels: tuple[Any, ...] | None = None

    @property
    def cluster(self) -> str | None:
        """The cluster column of a `cluster:<column>` vcov, else None."""
        return self.vcov.split(":", 1)[1] if self.vcov.startswith("cluster:") else None

    @property
    def absorbed(self) -> tuple[str, ...]:
        """Model fe: the columns whose fixed effects are absorbed (`absorb`, else the entity)."""
        if self.absorb:
            return self.absorb
        return (self.entity,) if self.entity else ()

    @property
    def outcome(self) -> str:
        """The left-hand-side variable name."""
        return formula_outcome(self.formula)


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. `raw` is the normalised mapping stored in the bundle."""

    name: str
    seed: int
    sources: tuple[Source, ...]
    sdc: Sdc
    checkpoints: tuple[Checkpoint, ...]
    verify_tier: int
    raw: dict[str, Any] = field(compare=False, repr=False)

    def source(self, name: str) -> Source:
        """The source called `name` (KeyError when absent)."""
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    def checkpoints_of(self, source: str) -> tuple[Checkpoint, ...]:
        """Checkpoints estimated on `source`, in manifest order."""
        return tuple(c for c in self.checkpoints if c.source == source)


# ---------------------------------------------------------------------------------------------
# formulas


IV_BRACKET = re.compile(r"\[([^\]]*)~([^\]]*)\]")


def formula_outcome(formula: str) -> str:
    """Name of the outcome: the left-hand side of `y ~ ...` (a bare column name, or any name
    in backticks, returned without them)."""
    lhs = formula.split("~", 1)[0].strip()
    if len(lhs) > 2 and lhs[0] == lhs[-1] == "`" and "`" not in lhs[1:-1]:
        return lhs[1:-1]
    return lhs


def formula_variables(formula: str, where: str = "") -> set[str]:
    """Every data column a Wilkinson formula reads, including linearmodels IV brackets; the
    formula is checked against the safe grammar first (`formula_grammar`)."""
    from replisynth.config.formula_grammar import formula_columns

    return formula_columns(formula, where)


# ---------------------------------------------------------------------------------------------
# loading


def schema_yaml(path: Path) -> Any:
    """A schema file of the package, parsed by libyaml's safe loader when PyYAML has it (the
    same documents as `yaml.safe_load`, several times faster: every job reads a schema)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as fh:
        return yaml.load(fh, Loader=loader)  # noqa: S506 (a safe loader)


def _schema() -> dict[str, Any]:
    out: dict[str, Any] = schema_yaml(SCHEMA_PATH)
    return out


def _format_path(path: Any) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _describe(err: Any) -> str:
    """One line for a jsonschema error: key path, what is wrong, what to do."""
    where = _format_path(err.absolute_path)
    v = err.validator
    if v == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
        return (
            f"{where}: unknown key {', '.join(repr(e) for e in extra)}; "
            f"allowed keys are {', '.join(allowed)} (check the spelling)"
        )
    if v == "required":
        return f"{where}: {err.message}; add it to the manifest"
    if v == "enum":
        opts = ", ".join(str(o) for o in err.validator_value)
        return f"{where}: {err.instance!r} is not one of {opts}"
    if v == "type":
        want = err.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        hint = " (a non-negative integer)" if where == "seed" else ""
        return f"{where}: expected {want}{hint}, got {err.instance!r}"
    if v == "minimum" and where == "seed":
        return f"seed: must be a non-negative integer, got {err.instance!r}"
    if v == "pattern":
        hints = {
            "^[A-Za-z0-9_-]+$": " (letters, digits, - and _)",
            "^[A-Za-z][A-Za-z0-9_]*$": " (a letter, then letters, digits and _)",
        }
        if str(err.validator_value).startswith("^(nonrobust"):
            return f"{where}: {err.instance!r} is not a vcov; use nonrobust, HC0, HC1, HC2, HC3 or cluster:<column>"
        return f"{where}: {err.instance!r} does not match {err.validator_value}{hints.get(err.validator_value, '')}"
    return f"{where}: {err.message}"


def validate_schema(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate against the JSON Schema and return a copy with schema defaults filled in."""
    import jsonschema

    if not isinstance(raw, dict):
        raise ManifestError("manifest: expected a YAML mapping at the top level")
    schema = _schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(
        validator.iter_errors(raw),
        key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))),
    )
    if errors:
        lines = [_describe(e) for e in errors[:10]]
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise ManifestError("manifest does not validate:\n  " + "\n  ".join(lines) + more)
    return copy.deepcopy(raw)


def _resolve_sdc(raw: dict[str, Any]) -> Sdc:
    profile = raw.get("profile", "standard")
    values = dict(SDC_PROFILE_DEFAULTS[profile])
    overridden = tuple(k for k in SDC_KEYS if k in raw)
    for k in overridden:
        values[k] = raw[k]
    return Sdc(
        profile=profile,
        min_cell_size=int(values["min_cell_size"]),
        quantile_trim=float(values["quantile_trim"]),
        min_resid_df=int(values["min_resid_df"]),
        grid=str(values["grid"]),
        round_significant=None
        if values["round_significant"] is None
        else int(values["round_significant"]),
        budget=None if values["budget"] is None else float(values["budget"]),
        dominance=float(values["dominance"]),
        overridden=overridden,
    )


def _source(name: str, d: dict[str, Any]) -> Source:
    where = f"sources.{name}"
    ext = Path(d["path"]).suffix.lower()
    if ext not in SOURCE_EXTENSIONS:
        raise ManifestError(
            f"{where}.path: unknown extension {ext or '(none)'!r} in {d['path']!r}; "
            f"use one of {', '.join(sorted(SOURCE_EXTENSIONS))}"
        )
    panel = d.get("panel")
    weight = [str(d["weight"])] if d.get("weight") else []
    src = Source(
        name=name,
        path=str(d["path"]),
        rows=d.get("rows"),
        ids=tuple(d.get("ids", [])),
        exclude=tuple(d.get("exclude", [])),
        categorical=tuple(d.get("categorical", [])),
        # a weight column is always continuous (its own marginal is a percentile grid)
        continuous=tuple(dict.fromkeys([*d.get("continuous", []), *weight])),
        strata=tuple(d.get("strata", [])),
        groups=tuple(d.get("groups", [])),
        panel=Panel(entity=panel["entity"], time=panel["time"]) if panel else None,
        keys=tuple(d.get("keys", [])),
        sensitive=tuple(d.get("sensitive", [])),
        derive=tuple((str(k), v) for k, v in (d.get("derive") or {}).items()),
        numeric=tuple(d.get("numeric", [])),
        missing_tokens=tuple(str(t) for t in d.get("missing_tokens", [])),
        decimal_comma=bool(d.get("decimal_comma", False)),
        dates=tuple((str(k), str(v)) for k, v in (d.get("dates") or {}).items()),
        weight=weight[0] if weight else None,
    )
    _check_derive(src, where)
    _check_weight(src, where)
    if src.dates and src.format != "csv":
        raise ManifestError(
            f"{where}.dates: only csv sources take date formats ({src.format} files carry "
            "their own date types); remove the key"
        )
    both = set(src.categorical) & set(src.continuous)
    if both:
        raise ManifestError(
            f"{where}: {sorted(both)} listed as both categorical and continuous; keep one"
        )
    roles = {"ids": src.ids, "exclude": src.exclude, "strata": src.strata, "groups": src.groups}
    if src.panel:
        roles["panel.entity"] = (src.panel.entity,)
    names = list(roles)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if {a, b} == {"groups", "panel.entity"}:
                continue  # an entity may also be listed as a group
            clash = set(roles[a]) & set(roles[b])
            if clash:
                raise ManifestError(
                    f"{where}: column(s) {sorted(clash)} are in both {a} and {b}; a column has one role"
                )
    if src.panel and src.panel.time in set(src.ids) | set(src.exclude):
        raise ManifestError(f"{where}.panel.time: {src.panel.time!r} is also in ids/exclude")
    return src


def _check_weight(src: Source, where: str) -> None:
    """The weight column is an ordinary released continuous column: no other role."""
    w = src.weight
    if w is None:
        return
    roles = {
        "ids": src.ids,
        "exclude": src.exclude,
        "categorical": src.categorical,
        "strata": src.strata,
        "groups": src.groups,
        "derive": tuple(c for c, _ in src.derive),
    }
    if src.panel:
        roles["panel"] = (src.panel.entity, src.panel.time)
    for key, cols in roles.items():
        if w in cols:
            raise ManifestError(
                f"{where}.weight: {w!r} is also in {where}.{key}; a weight column is released as "
                f"a continuous column only: drop it from {key}"
            )


def _check_derive(src: Source, where: str) -> None:
    """Derive keys: expressions in the grammar, no cycle, no chain (an input that is itself
    derived), the derived column released and not a key column, inputs released."""
    from replisynth.config.formula_grammar import parse_derive

    derived = dict(src.derive)
    unreleased = set(src.ids) | set(src.exclude)
    keyed = unreleased | set(src.strata) | set(src.key_columns)
    if src.panel:
        keyed.add(src.panel.time)
    for col, text in src.derive:
        key = f"{where}.derive.{col}"
        inputs = parse_derive(text, key).columns
        if col in inputs:
            raise ManifestError(f"{key}: {col!r} is computed from itself (a cycle); drop it")
        if col in keyed:
            raise ManifestError(
                f"{key}: {col!r} is in ids/exclude/strata/groups/panel; a derived column must be "
                "an ordinary released column: drop it from derive or from that list"
            )
        for c in sorted(inputs):
            if c in derived and col in parse_derive(derived[c], key).columns:
                raise ManifestError(
                    f"{key}: {col!r} and {c!r} are computed from each other (a cycle); keep one"
                )
            if c in derived:
                raise ManifestError(
                    f"{key}: input {c!r} is itself derived (sources.{src.name}.derive.{c}); "
                    "write the expression on source columns only (this also rules out cycles)"
                )
            if c in unreleased:
                raise ManifestError(
                    f"{key}: input {c!r} is in sources.{src.name}.ids/exclude and is never "
                    "released, so the column cannot be recomputed; drop it from ids/exclude"
                )


def _checkpoint(
    i: int, d: dict[str, Any], sources: dict[str, Source], parse_formulas: bool = True
) -> Checkpoint:
    where = f"checkpoints[{i}]"
    cp = Checkpoint(
        tag=d["tag"],
        source=d["source"],
        model=d["model"],
        formula=d["formula"],
        vcov=d.get("vcov", "nonrobust"),
        weights=d.get("weights"),
        absorb=tuple(d.get("absorb", [])),
        entity=d.get("entity"),
        time=d.get("time"),
        subset=d.get("subset"),
        levels=tuple(d["levels"]) if d.get("levels") is not None else None,
    )
    if cp.source not in sources:
        raise ManifestError(
            f"{where}.source: {cp.source!r} is not a source of this manifest "
            f"(sources: {', '.join(sources)})"
        )
    if "~" not in cp.formula:
        raise ManifestError(f"{where}.formula: {cp.formula!r} has no '~'; write 'y ~ x1 + x2'")
    lhs = cp.formula.split("~", 1)[0].strip()
    if not re.fullmatch(r"[^\W\d][\w.]*|`[^`\\]+`", lhs):
        raise ManifestError(
            f"{where}.formula: the left-hand side {lhs!r} must be one column name "
            "(transform the outcome in the data, not in the formula)"
        )
    # the safe grammar, always (cheap, no formulaic import): nothing outside it is ever evaluated
    variables = formula_variables(cp.formula, f"{where}.formula")
    if cp.subset is not None:
        from replisynth.config.formula_grammar import parse_subset

        parse_subset(cp.subset, f"{where}.subset")
    if parse_formulas:
        _check_id_terms(cp, variables, sources[cp.source], where)
    if cp.absorb and cp.model != "fe":
        raise ManifestError(
            f"{where}.absorb: only model fe absorbs fixed effects (model is {cp.model})"
        )
    if cp.entity and cp.model not in ("re", "fe"):
        raise ManifestError(
            f"{where}.entity: only models re and fe take an entity (model is {cp.model})"
        )
    if cp.time and not cp.entity:
        raise ManifestError(f"{where}.time: a time column needs an entity; add {where}.entity")
    _check_family(cp, where)
    if cp.levels is not None and cp.model not in ("ologit", "oprobit"):
        raise ManifestError(
            f"{where}.levels: only ordered models take levels (model is {cp.model})"
        )
    if cp.levels is not None and (
        len(cp.levels) < 2 or len({str(v) for v in cp.levels}) != len(cp.levels)
    ):
        raise ManifestError(
            f"{where}.levels: list at least two distinct categories, lowest first (got {list(cp.levels)})"
        )
    if cp.model in GLM_MODELS and cp.vcov in ("HC2", "HC3"):
        raise ManifestError(
            f"{where}.vcov: {cp.vcov!r} is not available for model {cp.model} (HC2/HC3 need the hat matrix of a "
            "linear model); use nonrobust, HC0, HC1 (Stata's vce(robust)) or cluster:<column>"
        )
    assert cp.model in MODELS
    if cp.model not in SUPPORTED_MODELS:
        raise UnsupportedError(
            f"{where}.model: {cp.model!r} is not yet supported in replisynth 0.1 "
            f"(supported: {', '.join(SUPPORTED_MODELS)}); remove the checkpoint or use ols"
        )
    return cp


def _check_id_terms(cp: Checkpoint, variables: set[str], source: Source, where: str) -> None:
    """Cluster-id and entity columns (the source's groups and panel entity, the checkpoint's
    cluster, entity and absorbed columns) cannot be formula terms: C(hospital) would release
    raw codes and which clusters are small. Absorb them (model fe) or cluster on them."""
    ids = {c: f"sources.{source.name}.groups" for c in source.groups}
    if source.panel is not None:
        ids[source.panel.entity] = f"sources.{source.name}.panel.entity"
    for key, cols in (("vcov", (cp.cluster,)), ("entity", (cp.entity,)), ("absorb", cp.absorb)):
        ids.update({c: f"{where}.{key}" for c in cols if c})
    for col in sorted(set(variables) & set(ids)):
        raise ManifestError(
            f"{where}.formula: column {col!r} is a cluster-id or entity column ({ids[col]}) and cannot be a formula term "
            "(its coefficients would describe single clusters); absorb it (model fe) or cluster on it instead"
        )


def _check_family(cp: Checkpoint, where: str) -> None:
    """Keys each linear family needs: fe 1-2 absorbed columns or an entity, re an entity,
    iv one [endogenous ~ instruments] bracket; no HC2/HC3 for fe, re and iv."""
    has_iv = IV_BRACKET.search(cp.formula) is not None
    if cp.model == "iv":
        if not has_iv or len(IV_BRACKET.findall(cp.formula)) != 1:
            raise ManifestError(
                f"{where}.formula: model iv needs one [endogenous ~ instruments] part, e.g. 'y ~ 1 + w + [x ~ z1 + z2]'"
            )
        endog, instr = IV_BRACKET.search(cp.formula).groups()  # type: ignore[union-attr]
        if not endog.strip() or not instr.strip():
            raise ManifestError(
                f"{where}.formula: the IV part needs endogenous variables and instruments: [x ~ z]"
            )
    elif has_iv:
        raise ManifestError(
            f"{where}.formula: a [x ~ z] part is only read by model iv (model is {cp.model}); set model: iv"
        )
    if cp.model == "fe":
        if cp.absorb and cp.entity:
            raise ManifestError(
                f"{where}: model fe takes either absorb (1 or 2 columns) or entity, not both; list the entity in absorb"
            )
        if not cp.absorb and not cp.entity:
            raise ManifestError(
                f"{where}.absorb: model fe needs 1 or 2 columns to absorb (or an entity); add absorb: [<column>]"
            )
        if len(cp.absorb) > 2:
            raise ManifestError(
                f"{where}.absorb: model fe absorbs 1 or 2 columns, got {len(cp.absorb)}; put the others in the formula as C(<column>)"
            )
        if len(set(cp.absorb)) != len(cp.absorb):
            raise ManifestError(f"{where}.absorb: a column is listed twice")
    if cp.model == "re" and not cp.entity:
        raise ManifestError(
            f"{where}.entity: model re needs the panel unit column; add entity: <column>"
        )
    if cp.model in ("fe", "re", "iv") and cp.vcov in ("HC2", "HC3"):
        raise ManifestError(
            f"{where}.vcov: {cp.vcov} is not available for model {cp.model} (its leverages are not defined "
            "alike across packages, and linearmodels has none); use HC1 or cluster:<column>"
        )


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (plain YAML keeps
    the last value without a word)."""


def _unique_mapping(
    loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise ManifestError(
                f"line {key_node.start_mark.line + 1}: key {key!r} is given twice in the same section "
                f"(first on line {seen[key]}); keep one"
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_manifest_yaml(path: Path) -> Any:
    """The parsed YAML of a manifest file; one ManifestError line for a missing, unreadable,
    binary or malformed file, or a key given twice."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest file not found") from None
    except IsADirectoryError:
        raise ManifestError(
            f"{path}: is a folder; give the manifest's YAML file (e.g. config/config.yaml)"
        ) from None
    except OSError as exc:
        raise ManifestError(
            f"{path}: cannot be read ({exc.strerror}); check its permissions"
        ) from None
    except UnicodeDecodeError:
        raise ManifestError(
            f"{path}: not a text file (not UTF-8); give the manifest's YAML file"
        ) from None
    if "\x00" in text:
        raise ManifestError(
            f"{path}: not a text file (binary content); give the manifest's YAML file"
        )
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None


def private_outputs(raw_or_path: dict[str, Any] | str | Path) -> bool:
    """The workflow setting `output: {private: true}`: files readable by their owner only."""
    raw = (
        read_manifest_yaml(Path(raw_or_path))
        if isinstance(raw_or_path, (str, Path))
        else raw_or_path
    )
    out = (raw or {}).get("output") if isinstance(raw, dict) else None
    if out is None:
        return False
    if not isinstance(out, dict) or set(out) - {"private"}:
        raise ManifestError(
            "output: the only key is private (true or false), e.g. output: {private: true}"
        )
    private = out.get("private", False)
    if not isinstance(private, bool):
        raise ManifestError(f"output.private: must be true or false, got {private!r}")
    return private


def load_manifest(
    raw_or_path: dict[str, Any] | str | Path, parse_formulas: bool = True
) -> Manifest:
    """Validate a manifest (mapping or YAML file) and return it frozen.

    Checks the JSON Schema, then everything that needs no data: checkpoint sources exist,
    tags are unique, column roles do not clash, formulas and subsets are inside the safe
    grammar (always: it imports nothing and evaluates nothing), models are supported.
    Column existence is checked against the data by `check_columns`. `parse_formulas` is kept
    for callers; the grammar check it once switched off is cheap and now always runs.
    """
    if isinstance(raw_or_path, (str, Path)):
        raw = read_manifest_yaml(Path(raw_or_path))
    else:
        raw = raw_or_path
    private_outputs(raw)  # checked here, so a bad `output:` stops every command
    # Workflow settings, not part of the manifest the bundle records: `bundle` (outside runs),
    # `scatter` (how many jobs; replisynth.workflow.workflow checks it) and `output`
    # (file modes; `private_outputs` checks it).
    raw = (
        {k: v for k, v in (raw or {}).items() if k not in WORKFLOW_KEYS}
        if isinstance(raw, dict)
        else raw
    )
    raw = validate_schema(raw)
    sources = {name: _source(name, d) for name, d in raw["sources"].items()}
    cps = [
        _checkpoint(i, d, sources, parse_formulas) for i, d in enumerate(raw.get("checkpoints", []))
    ]
    seen: dict[str, int] = {}
    for i, cp in enumerate(cps):
        if cp.tag in seen:
            raise ManifestError(
                f"checkpoints[{i}].tag: {cp.tag!r} is already used by checkpoints[{seen[cp.tag]}]; tags must be unique"
            )
        seen[cp.tag] = i
    return Manifest(
        name=raw["name"],
        seed=int(raw["seed"]),
        sources=tuple(sources.values()),
        sdc=_resolve_sdc(raw.get("sdc", {})),
        checkpoints=tuple(cps),
        verify_tier=int(raw.get("verify", {}).get("tier", 4)),
        raw=raw,
    )


def check_columns(manifest: Manifest, source: str, columns: list[str]) -> None:
    """Check every column the manifest names for `source` exists in its data."""
    src = manifest.source(source)
    have = set(columns)
    shown = ", ".join(columns[:40]) + (", ..." if len(columns) > 40 else "")

    def missing(where: str, col: str) -> ManifestError:
        return ManifestError(
            f"{where}: column {col!r} is not in source {source!r} ({src.path}; columns: {shown})"
        )

    if src.weight is not None and src.weight not in have:
        raise missing(f"sources.{source}.weight", src.weight)
    for key in (
        "ids",
        "exclude",
        "categorical",
        "continuous",
        "strata",
        "groups",
        "keys",
        "sensitive",
        "numeric",
    ):
        for col in getattr(src, key):
            if col not in have:
                raise missing(f"sources.{source}.{key}", col)
    for col, _ in src.dates:
        if col not in have:
            raise missing(f"sources.{source}.dates", col)
    if src.panel:
        for key in ("entity", "time"):
            col = getattr(src.panel, key)
            if col not in have:
                raise missing(f"sources.{source}.panel.{key}", col)
    for col, text in src.derive:
        from replisynth.config.formula_grammar import parse_derive

        key = f"sources.{source}.derive.{col}"
        for c in [col, *sorted(parse_derive(text, key).columns)]:
            if c not in have:
                raise missing(key, c)
    for i, cp in enumerate(manifest.checkpoints):
        if cp.source != source:
            continue
        where = f"checkpoints[{i}]"
        for col in sorted(formula_variables(cp.formula)):
            if col not in have:
                raise missing(f"{where}.formula", col)
            if col in src.ids or col in src.exclude:
                raise ManifestError(
                    f"{where}.formula: column {col!r} is in sources.{source}.ids/exclude and is "
                    "never released, so the checkpoint cannot be rebuilt; drop it from ids/exclude"
                )
        if cp.subset is not None:
            from replisynth.config.formula_grammar import parse_subset

            for col in sorted(parse_subset(cp.subset, f"{where}.subset").columns):
                if col not in have:
                    raise missing(f"{where}.subset", col)
        for key in ("weights", "entity", "time", "cluster"):
            col = getattr(cp, key)
            if col is not None and col not in have:
                raise missing(f"{where}.{'vcov' if key == 'cluster' else key}", col)
        for col in cp.absorb:
            if col not in have:
                raise missing(f"{where}.absorb", col)
        for key, cols in (("absorb", cp.absorb), ("entity", (cp.entity,) if cp.entity else ())):
            for col in cols:
                if col in src.ids or col in src.exclude:
                    raise ManifestError(
                        f"{where}.{key}: column {col!r} is in sources.{source}.ids/exclude and is never "
                        f"released; list it under sources.{source}.groups (or panel.entity) instead"
                    )


def checkpoint_from_release(c: dict[str, Any]) -> Checkpoint:
    """The Checkpoint a released record describes."""
    return Checkpoint(
        tag=c["tag"],
        source=c["source"],
        model=c["model"],
        formula=c["formula"],
        vcov=c["vcov"],
        weights=c.get("weights"),
        absorb=tuple(c.get("absorb") or ()),
        entity=c.get("entity"),
        time=c.get("time"),
        subset=c.get("subset"),
        # ordered models: the released category order, so the synthetic refit codes alike
        levels=tuple(c.get("levels") or c.get("outcome_levels") or ()) or None,
    )
