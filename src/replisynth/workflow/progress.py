"""Progress lines with the elapsed time, `[  12.3 s] pin: card outcome lwage (2 checkpoint(s):
...)`, on stderr and in the job's log file, for steps that can take more than a few seconds. The
stages pass `progress` to the core functions as a callback; the core prints nothing."""

from __future__ import annotations

import logging
import sys
import threading
import time

_clock = {"start": time.monotonic()}
_lock = threading.Lock()


def start_clock() -> None:
    """Count elapsed time from now (a CLI command or a Snakemake job starts it)."""
    _clock["start"] = time.monotonic()


def progress_line(message: str) -> str:
    """`message` prefixed with the seconds since `start_clock`."""
    return f"[{time.monotonic() - _clock['start']:6.1f} s] {message}"


def progress(message: str) -> None:
    """Print a progress line on stderr (unless the package logger is quieter than INFO, as
    with --quiet) and write it to the log files of the package logger. It does not start
    with `replisynth:`, which marks messages and the one line of an error."""
    line = progress_line(message)
    log = logging.getLogger("replisynth")
    if log.getEffectiveLevel() <= logging.INFO:
        with _lock:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
    for h in log.handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(log.makeRecord(log.name, logging.INFO, "", 0, "%s", (line,), None))
