"""The bundle: the only thing that leaves the secure side, written with `manifest.json` last.
Format: docs/method.md, "Bundle format"; docs/bundle.md.
"""

from __future__ import annotations

import copy
import platform
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, cast

from replisynth import __version__
from replisynth.config.manifest import Manifest, load_manifest, schema_yaml
from replisynth.core.errors import BundleError, ReplisynthError
from replisynth.disclosure.bundle_types import (
    BundleInfo,
    CheckpointMoments,
    CheckpointRecord,
    SdcLogFile,
    SourceRelease,
    untyped,
)
from replisynth.disclosure.sdc import SdcLog, resolved_settings
from replisynth.io.files import read_json, sha256_file, write_json
from replisynth.stats.copula_dims import norm_key

FORMAT = "replisynth-bundle/1"
PACKAGES = (
    "numpy",
    "pandas",
    "scipy",
    "statsmodels",
    "linearmodels",
    "formulaic",
    "pandera",
    "pyarrow",
    "snakemake",
)


def software_versions() -> dict[str, str]:
    """Versions of replisynth, Python and the statistical stack."""
    out = {"replisynth": __version__, "python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def source_file(name: str) -> str:
    return f"source_{name}.json"


def bundle_files(manifest: Manifest) -> list[str]:
    """Every file a bundle of this manifest holds (manifest.json last)."""
    return [source_file(s.name) for s in manifest.sources] + [
        "checkpoints.json",
        "sdc_log.json",
        "manifest.json",
    ]


def write_bundle(
    out_dir: str | Path,
    manifest: Manifest,
    releases: dict[str, dict[str, Any]],
    checkpoints: list[dict[str, Any]],
    log: SdcLog,
    ledger: dict[str, Any] | None = None,
) -> Path:
    """Write a complete bundle into `out_dir`: all files go to a temporary directory first
    and are moved in only when complete, with manifest.json moved last."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    try:
        for s in manifest.sources:
            write_json(tmp / source_file(s.name), releases[s.name])
        write_json(tmp / "checkpoints.json", {"checkpoints": checkpoints})
        sdc_log: dict[str, Any] = {
            "settings": resolved_settings(manifest.sdc),
            "decisions": log.entries,
        }
        if ledger is not None:  # the checkpoint stage's disclosure ledger (extract/ledger.py)
            sdc_log["ledger"] = ledger
        write_json(tmp / "sdc_log.json", sdc_log)
        files = [
            {"path": f, "sha256": sha256_file(tmp / f), "bytes": (tmp / f).stat().st_size}
            for f in bundle_files(manifest)[:-1]
        ]
        write_json(
            tmp / "manifest.json",
            {
                "format": FORMAT,
                "name": manifest.name,
                "seed": manifest.seed,
                "software": software_versions(),
                "sdc": resolved_settings(manifest.sdc),
                "manifest": manifest.raw,
                "files": files,
            },
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").unlink(missing_ok=True)  # invalidate the old bundle first
        for stale in out.iterdir():
            if stale.is_file() and stale.name not in bundle_files(manifest):
                stale.unlink()
        for f in bundle_files(manifest):
            shutil.move(str(tmp / f), str(out / f))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass(frozen=True)
class Bundle:
    """A loaded, integrity-checked bundle."""

    path: Path
    manifest: Manifest
    info: BundleInfo
    releases: dict[str, SourceRelease]
    checkpoints: list[CheckpointRecord]
    sdc_log: SdcLogFile

    @property
    def sha256(self) -> str:
        """sha256 of manifest.json, which pins every other file: the bundle's fingerprint."""
        return sha256_file(self.path / "manifest.json")

    def released_outcomes(self, source: str) -> set[str]:
        """Outcomes of the source's released checkpoints: the columns Layer 4 moves."""
        return {
            c["outcome"]
            for c in self.checkpoints
            if c["source"] == source and c.get("status") == "released"
        }


def _bundle_info(p: Path) -> dict[str, Any]:
    """The bundle's manifest.json, checked for a files list, a manifest and this format."""
    mf = p / "manifest.json"
    if not mf.exists():
        raise BundleError(
            f"{p}: not a bundle (no manifest.json); point bundle= at the bundle directory written by extract"
        )
    info = _read(mf)
    if (
        not isinstance(info, dict)
        or not isinstance(info.get("files"), list)
        or "manifest" not in info
    ):
        raise BundleError(
            f"{mf}: not a bundle manifest (no files list or manifest); rebuild the bundle with extract"
        )
    if info.get("format") != FORMAT:
        raise BundleError(
            f"{mf}: format {info.get('format')!r} is not {FORMAT!r}; rebuild the bundle with this version"
        )
    check_schema(info, "manifest.json", mf)
    return info


def _check_listed_files(p: Path, info: dict[str, Any]) -> set[str]:
    """Every listed file present with its sha256 and nothing unlisted; returns the listed paths."""
    listed = {f["path"] for f in info["files"]}
    for f in info["files"]:
        fp = p / f["path"]
        if not fp.is_file():
            raise BundleError(f"{p}: bundle file {f['path']} is missing")
        if sha256_file(fp) != f["sha256"]:
            raise BundleError(
                f"{fp}: sha256 does not match manifest.json; the bundle was altered or is incomplete"
            )
    extra = sorted(x.name for x in p.iterdir() if x.name not in listed | {"manifest.json"})
    if extra:
        raise BundleError(
            f"{p}: files not listed in manifest.json: {', '.join(extra)}; a bundle holds only its listed files"
        )
    return listed


def _bundle_manifest(mf: Path, info: dict[str, Any], listed: set[str]) -> Manifest:
    """The manifest the bundle carries (formulas not parsed), whose bundle files must be the
    listed ones."""
    try:
        manifest = load_manifest(info["manifest"], parse_formulas=False)
    except ReplisynthError as exc:
        msg = str(exc).replace(":\n  ", ": ").replace("\n  ", "; ")
        raise BundleError(
            f"{mf}: {msg if msg.startswith('manifest') else 'manifest.' + msg}"
        ) from None
    want = set(bundle_files(manifest)) - {"manifest.json"}
    if listed != want:
        raise BundleError(
            f"{mf}: lists {', '.join(sorted(listed))} but its manifest needs {', '.join(sorted(want))}; the bundle was edited"
        )
    return manifest


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle directory and check it: format, every listed file present with its
    sha256, nothing unlisted; then every file against the bundle's JSON Schema and every
    formula and subset against the safe grammar (anyone can recompute the sha256 list, so a
    bundle from elsewhere is read as untrusted text: nothing in it is run as code)."""
    p = Path(path)
    _check_listed_files(p, _bundle_info(p))
    return copy.deepcopy(_checked_bundle(p, sha256_file(p / "manifest.json")))


@lru_cache(maxsize=4)
def _checked_bundle(p: Path, manifest_sha256: str) -> Bundle:
    """The schema and grammar checks of `load_bundle`, once per bundle content in a process:
    manifest.json lists the sha256 of every other file (checked before each call), so an
    equal directory and manifest.json sha256 mean equal bytes."""
    info = _bundle_info(p)
    listed = {f["path"] for f in info["files"]}
    manifest = _bundle_manifest(p / "manifest.json", info, listed)
    releases: dict[str, SourceRelease] = {}
    for s in manifest.sources:
        fp = p / source_file(s.name)
        releases[s.name] = check_release(check_schema(_read(fp), "source", fp), fp)
    cpf = p / "checkpoints.json"
    checkpoints = check_schema(_read(cpf), "checkpoints.json", cpf)["checkpoints"]
    check_checkpoints(checkpoints, manifest, releases, cpf)
    sdc_log = check_schema(_read(p / "sdc_log.json"), "sdc_log.json", p / "sdc_log.json")
    return Bundle(
        path=p,
        manifest=manifest,
        info=cast(BundleInfo, info),
        releases=releases,
        checkpoints=checkpoints,
        sdc_log=sdc_log,
    )


def _read(fp: Path) -> Any:
    try:
        return read_json(fp)
    except (OSError, ValueError) as exc:
        raise BundleError(
            f"{fp}: not valid JSON ({exc.__class__.__name__}); the bundle is damaged, rebuild it with extract"
        ) from None


SCHEMA_PATH = Path(__file__).resolve().parent / "bundle_schema.yaml"


@lru_cache(maxsize=1)
def _validators() -> dict[str, Any]:
    import jsonschema

    schema = schema_yaml(SCHEMA_PATH)
    base = jsonschema.Draft202012Validator
    plain_items = base.VALIDATORS["items"]
    number = {"$ref": "#/$defs/number_or_null"}

    def items(validator: Any, sub: Any, instance: Any, schema: Any) -> Any:
        """Arrays of numbers (grids, correlations: most of a bundle) checked in one loop."""
        if sub != number or not isinstance(instance, list):
            yield from plain_items(validator, sub, instance, schema)
            return
        for i, x in enumerate(instance):
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))):
                err = jsonschema.ValidationError(f"{x!r} is not a number or null")
                err.path.appendleft(i)
                yield err
                return

    fast = jsonschema.validators.extend(base, {"items": items})
    return {
        name: fast({**schema, "$ref": f"#/$defs/{name}"})
        for name in ("manifest.json", "checkpoints.json", "sdc_log.json", "source")
    }


def _key_path(path: Any) -> str:
    out = ""
    for k in path:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out or "(top level)"


def check_schema(doc: Any, name: str, fp: Path) -> Any:
    """`doc` (the parsed file `fp`) if it matches the bundle schema's `name`; else one line
    naming the file, the key and what is wrong."""
    import jsonschema

    err = jsonschema.exceptions.best_match(_validators()[name].iter_errors(doc))
    if err is None:
        return doc
    what = err.message if len(err.message) <= 160 else err.message[:157] + "..."
    raise BundleError(
        f"{fp}: {_key_path(err.absolute_path)}: {what}; the file does not match the bundle format (docs/bundle.md)"
    )


def _name_mismatch(rel: SourceRelease, names: set[str]) -> tuple[str, str] | None:
    """(key, what) of the first dim, strata column or stratum cell that names nothing released."""
    for i, d in enumerate(rel["dims"]):
        if d["column"] not in names:
            return f"dims[{i}].column", f"{d['column']!r} is not a released column"
    for col in rel["strata"]["columns"]:
        if col not in names:
            return "strata.columns", f"{col!r} is not a released column"
    for i, cell in enumerate(rel["strata"]["cells"]):
        if cell["id"] not in rel["blocks"]:
            return f"strata.cells[{i}].id", f"{cell['id']!r} has no entry in blocks"
    return None


def _block_mismatch(rel: SourceRelease, names: set[str]) -> tuple[str, str] | None:
    """(key, what) of the first block whose marginals name an unreleased column or whose
    Spearman matrix is not square over the dims."""
    k = len(rel["dims"])
    for b, block in rel["blocks"].items():
        stray = sorted(set(block["marginals"]) - names)
        if stray:
            return f"blocks.{b}.marginals", f"{stray[0]!r} is not a released column"
        sp = block.get("spearman")
        if sp and (len(sp) != k or any(len(row) != k for row in sp)):
            return f"blocks.{b}.spearman", f"not a {k} x {k} matrix (one row and column per dim)"
    return None


def check_release(rel: SourceRelease, fp: Path) -> SourceRelease:
    """Cross-references inside a source release that the schema cannot state: dims, strata,
    marginals and ordering flags name released columns, every stratum cell has its block, and
    each Spearman matrix is square over the dims."""
    names = {c["name"] for c in rel["columns"]}
    problem = (
        _name_mismatch(rel, names)
        or _block_mismatch(rel, names)
        or _ordering_mismatch(rel, names)
        or _empty_cells_mismatch(rel)
    )
    if problem is not None:
        key, what = problem
        raise BundleError(
            f"{fp}: {key}: {what}; the file does not match the bundle format (docs/bundle.md)"
        )
    return rel


def _ordering_mismatch(rel: SourceRelease, names: set[str]) -> tuple[str, str] | None:
    """(key, what) of the first ordering flag that names an unreleased column."""
    for i, o in enumerate(rel.get("orderings") or []):
        for col in (o.get("lo"), o.get("hi"), o.get("if"), o.get("then")):
            if col is not None and col not in names:
                return f"orderings[{i}]", f"{col!r} is not a released column"
    return None


def _empty_cells_mismatch(rel: SourceRelease) -> tuple[str, str] | None:
    """(key, what) of the first empty-cell flag whose columns are not two released categorical
    columns or whose cell names a value that is not one of their released levels."""
    top = rel["blocks"].get("all")
    marg: dict[str, Any] = untyped(top["marginals"]) if top is not None else {}
    for i, f in enumerate(rel.get("empty_cells") or []):
        levels = []
        for col in f["columns"]:
            m: dict[str, Any] = marg.get(col) or {}
            if m.get("kind") != "categorical":
                return f"empty_cells[{i}].columns", f"{col!r} is not a released categorical column"
            levels.append({norm_key(v) for v in m["table"]["levels"]})
        for j, cell in enumerate(f["cells"]):
            if any(norm_key(v) not in lv for v, lv in zip(cell, levels, strict=True)):
                return f"empty_cells[{i}].cells[{j}]", "not a pair of released levels"
    return None


def _check_moments(mo: CheckpointMoments, where: str) -> None:
    k = len(mo["terms"])
    if (
        len(mo["mean"]) != k
        or len(mo["sd"]) != k
        or len(mo["corr"]) != k
        or any(len(r) != k for r in mo["corr"])
    ):
        raise BundleError(
            f"{where}.moments: terms, mean, sd and corr do not have one entry per term; the bundle was edited"
        )


def check_checkpoints(
    checkpoints: list[CheckpointRecord],
    manifest: Manifest,
    releases: dict[str, SourceRelease],
    fp: Path,
) -> None:
    """Every released checkpoint record re-checked before anything reads it: the formula and
    subset inside the safe grammar, its source and columns in the bundle, and the same
    formula, subset, weights, model and vcov as the manifest recorded in manifest.json."""
    from replisynth.config.formula_grammar import parse_formula, parse_subset

    declared = {cp.tag: cp for cp in manifest.checkpoints}
    for i, c in enumerate(checkpoints):
        where = f"{fp}: checkpoints[{i}]"
        cols = set(parse_formula(c["formula"], f"{where}.formula", BundleError).columns)
        if c.get("subset") is not None:
            cols |= parse_subset(c["subset"], f"{where}.subset", BundleError).columns
        cp = declared.get(c["tag"])
        if cp is None:
            raise BundleError(
                f"{where}.tag: {c['tag']!r} is not a checkpoint of the manifest in manifest.json; the bundle was edited"
            )
        for key in ("source", "model", "formula", "subset", "weights", "vcov"):
            if c.get(key) != getattr(cp, key):
                raise BundleError(
                    f"{where}.{key}: differs from the manifest in manifest.json; the bundle was edited"
                )
        if isinstance(c.get("moments"), dict):
            _check_moments(c["moments"], where)
        have = {col["name"] for col in releases[c["source"]]["columns"]}
        cluster = c["vcov"].split(":", 1)[1] if c["vcov"].startswith("cluster:") else None
        cols |= {x for x in (c.get("weights"), c.get("entity"), c.get("time"), cluster) if x} | set(
            c.get("absorb") or ()
        )
        gone = sorted(cols - have)
        if gone:
            raise BundleError(
                f"{where}: reads {', '.join(map(repr, gone))}, not a column of {source_file(c['source'])}; the bundle was edited"
            )
