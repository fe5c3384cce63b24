"""Run a stage from a Snakemake script or the CLI: log to a file (counts and decisions only,
never row values) and turn any exception into one line and its exit status
(replisynth.core.errors.exit_code: 1 bad input, 2 tier missed, 4 internal error, 130 Ctrl-C)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from replisynth.core.errors import EXIT_INTERNAL, exit_code, one_line


def configure_logging(path: str | None = None) -> None:
    """Log INFO to `path` (if given) and WARNING+ to stderr."""
    root = logging.getLogger("replisynth")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    if path:
        fh = logging.FileHandler(path, mode="w", encoding="utf-8")
        from replisynth.io.atomic import output_mode

        os.chmod(path, output_mode())
        fh.setFormatter(fmt)
        root.addHandler(fh)
    sh = logging.StreamHandler(sys.stderr)
    sh.setLevel(logging.INFO if not path else logging.WARNING)
    sh.setFormatter(logging.Formatter("replisynth: %(message)s"))
    root.addHandler(sh)


def report_failure(exc: BaseException, log_path: str | None = None) -> int:
    """Print (through the logger: once, to stderr and the log file) the one line of `exc`,
    keep an internal error's traceback in the log file only (or on screen with
    REPLISYNTH_DEBUG=1), and return the exit status."""
    log = logging.getLogger("replisynth")
    code = exit_code(exc)
    log.error("%s", one_line(exc, log_path or ""))
    if code == EXIT_INTERNAL:
        import traceback

        if os.environ.get("REPLISYNTH_DEBUG"):
            traceback.print_exception(exc)
        # The log keeps where it happened, not the exception's message (it could quote a value).
        frames = "".join(traceback.format_tb(exc.__traceback__))
        text = f"traceback (message withheld: it could quote a data value):\n{frames}{exc.__class__.__name__}"
        for h in log.handlers:
            if isinstance(h, logging.FileHandler):
                h.handle(log.makeRecord(log.name, logging.ERROR, "", 0, "%s", (text,), None))
    return code


def run(log_path: str | None, stage: Callable[[], Any], threads: int = 1) -> Any:
    """Call `stage()` with `threads` worker threads (`replisynth.core.parallel`); on any exception
    print its one line and exit with its status (no traceback on screen)."""
    from replisynth.core.parallel import set_threads
    from replisynth.workflow.progress import start_clock

    set_threads(threads)
    start_clock()
    configure_logging(log_path)
    try:
        return stage()
    except (Exception, KeyboardInterrupt) as exc:
        raise SystemExit(report_failure(exc, log_path)) from None
