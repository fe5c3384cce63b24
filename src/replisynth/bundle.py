"""The bundle: the only thing that leaves the secure side.

Layout (format replisynth-bundle/1):
  manifest.json          files with sha256 and bytes, software versions, seed, the manifest used
  sdc_log.json           every SDC decision, with the resolved settings and the disclosure ledger
  source_<name>.json     per source: schema, value labels, marginals, correlations, strata, groups
  checkpoints.json       released checkpoint coefficients and standard errors
manifest.json is written last: a directory without it is not a bundle, and a file whose
sha256 differs from the one listed (or a file not listed) makes the bundle invalid.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__
from .errors import BundleError
from .io import read_json, sha256_file, write_json
from .manifest import Manifest, load_manifest
from .sdc import SdcLog, resolved_settings

FORMAT = "replisynth-bundle/1"
PACKAGES = ("numpy", "pandas", "scipy", "statsmodels", "linearmodels", "formulaic", "pandera", "pyarrow", "snakemake")


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
    return [source_file(s.name) for s in manifest.sources] + ["checkpoints.json", "sdc_log.json", "manifest.json"]


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
        sdc_log: dict[str, Any] = {"settings": resolved_settings(manifest.sdc), "decisions": log.entries}
        if ledger is not None:  # the checkpoint stage's disclosure ledger (replisynth.ledger)
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
    info: dict[str, Any]
    releases: dict[str, dict[str, Any]]
    checkpoints: list[dict[str, Any]]
    sdc_log: dict[str, Any]

    @property
    def sha256(self) -> str:
        """sha256 of manifest.json, which pins every other file: the bundle's fingerprint."""
        return sha256_file(self.path / "manifest.json")


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle directory and check it: format, every listed file present with its
    sha256, nothing unlisted."""
    p = Path(path)
    mf = p / "manifest.json"
    if not mf.exists():
        raise BundleError(f"{p}: not a bundle (no manifest.json); point bundle= at the bundle directory written by extract")
    try:
        info = read_json(mf)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{mf}: not valid JSON ({exc.__class__.__name__}); the bundle is damaged, rebuild it with extract") from None
    if not isinstance(info, dict) or not isinstance(info.get("files"), list) or "manifest" not in info:
        raise BundleError(f"{mf}: not a bundle manifest (no files list or manifest); rebuild the bundle with extract")
    if info.get("format") != FORMAT:
        raise BundleError(f"{mf}: format {info.get('format')!r} is not {FORMAT!r}; rebuild the bundle with this version")
    listed = {f["path"] for f in info["files"]}
    for f in info["files"]:
        fp = p / f["path"]
        if not fp.exists():
            raise BundleError(f"{p}: bundle file {f['path']} is missing")
        if sha256_file(fp) != f["sha256"]:
            raise BundleError(f"{fp}: sha256 does not match manifest.json; the bundle was altered or is incomplete")
    extra = sorted(x.name for x in p.iterdir() if x.name not in listed | {"manifest.json"})
    if extra:
        raise BundleError(f"{p}: files not listed in manifest.json: {', '.join(extra)}; a bundle holds only its listed files")
    manifest = load_manifest(info["manifest"], parse_formulas=False)  # checked when the bundle was written
    releases = {s.name: read_json(p / source_file(s.name)) for s in manifest.sources}
    return Bundle(
        path=p,
        manifest=manifest,
        info=info,
        releases=releases,
        checkpoints=read_json(p / "checkpoints.json")["checkpoints"],
        sdc_log=read_json(p / "sdc_log.json"),
    )
