"""Run a stage from a Snakemake script or the CLI: log to a file (counts and decisions only,
never row values) and turn a ReplisynthError into its message and exit status 1."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from replisynth.core.errors import ReplisynthError


def configure_logging(path: str | None = None) -> None:
    """Log INFO to `path` (if given) and WARNING+ to stderr."""
    root = logging.getLogger("replisynth")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    if path:
        fh = logging.FileHandler(path, mode="w", encoding="utf-8")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    sh = logging.StreamHandler(sys.stderr)
    sh.setLevel(logging.INFO if not path else logging.WARNING)
    sh.setFormatter(logging.Formatter("replisynth: %(message)s"))
    root.addHandler(sh)


def run(log_path: str | None, stage: Callable[[], Any], threads: int = 1) -> Any:
    """Call `stage()` with `threads` worker threads (`replisynth.core.parallel`); on a user-fixable
    error log it, print it, and exit 1 (no traceback)."""
    from replisynth.core.parallel import set_threads

    set_threads(threads)
    configure_logging(log_path)
    try:
        return stage()
    except ReplisynthError as exc:
        logging.getLogger("replisynth").error("%s", exc)
        if log_path:
            sys.stderr.write(f"replisynth: {exc}\n")
        raise SystemExit(1) from None
