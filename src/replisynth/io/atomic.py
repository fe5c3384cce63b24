"""Atomic file writing with the standard library only, so light jobs (the verdict) need no
numpy or pandas: write to a temporary file beside the target, rename it onto the target only
when the write succeeded, so nothing is left half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# `output: {private: true}` in the manifest (replisynth.config.manifest.private_outputs): the
# CLI sets the flag in its process, the Snakefile this variable for every job it starts.
PRIVATE_ENV = "REPLISYNTH_PRIVATE_OUTPUTS"
_private = False


def _read_umask() -> int:
    """The process's umask (os.umask can only be read by setting it: set and restore once,
    at import, before any worker thread exists)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def set_private_outputs(private: bool) -> None:
    """Make every file written from now on readable by its owner only (0600), or not."""
    global _private
    _private = private


def private_outputs() -> bool:
    """Whether outputs are private: set in this process, or asked for by the workflow."""
    return _private or os.environ.get(PRIVATE_ENV) == "1"


def output_mode() -> int:
    """The mode of a file written now: 0600 when outputs are private, else what the user's
    umask gives a new file (0644 under umask 022), as `open()` would."""
    return 0o600 if private_outputs() else 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.
    The file gets `output_mode()` (mkstemp's 0600 would otherwise stay)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, output_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
