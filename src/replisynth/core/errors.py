"""Flat, specific exception classes. Every message names the file, column or manifest key
and says what to do; callers (CLI, Snakemake scripts) print the message, never a traceback."""

import re


class ReplisynthError(Exception):
    """Base class: a problem the user can fix, described in plain words."""


class ManifestError(ReplisynthError):
    """The manifest does not validate or refers to something that does not exist."""


class DataError(ReplisynthError):
    """A data file cannot be read or its content cannot be used as declared."""


class CheckpointError(ReplisynthError):
    """A checkpoint cannot be estimated (empty sample, singular design, ...)."""


class BundleError(ReplisynthError):
    """A bundle directory is missing files, was altered, or does not match this version."""


class UnsupportedError(ReplisynthError):
    """A manifest feature that this version parses but cannot run yet."""


class TierNotMet(ReplisynthError):
    """Verification ran and wrote its reports, but the required fidelity tier was not met."""


# Exit status of the CLI and of every workflow job (docs/usage.md, "Exit status").
EXIT_OK = 0
EXIT_BAD_INPUT = 1  # a ReplisynthError: the message says what to fix
EXIT_TIER_MISSED = 2  # verification ran, reports written, verify.tier not met
EXIT_FINDINGS = 3  # reserved: `replisynth review` found disclosure problems
EXIT_INTERNAL = 4  # a bug: an unexpected exception (its traceback goes to the log, not the screen)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, the shell's convention)


def exit_code(exc: BaseException) -> int:
    """The exit status for an exception that ends a run."""
    if isinstance(exc, TierNotMet):
        return EXIT_TIER_MISSED
    if isinstance(exc, (ReplisynthError, OSError, MemoryError)):
        return EXIT_BAD_INPUT
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_INTERNAL


def one_line(exc: BaseException, log_path: str = "") -> str:
    """The one line printed for an exception that ends a run. A ReplisynthError is its
    message; a file-system error names the file and the reason (never file contents); anything
    else is a bug, reported by its type only (its message could quote a data value)."""
    if isinstance(exc, ReplisynthError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return (
            "interrupted (Ctrl-C); nothing half-written is kept, rerun the same command to resume"
        )
    if isinstance(exc, MemoryError):
        # numpy's message gives the size asked for (never a data value): keep only that.
        size = re.search(r"allocate ([0-9.]+ [KMGTPE]?i?B)", str(exc))
        asked = f" (an array of {size.group(1)})" if size else ""
        return (
            f"out of memory{asked}: ask for fewer synthetic rows (sources.<name>.rows in the "
            "manifest; a bundle's rows are in its manifest.json), or run on a machine with more "
            "memory"
        )
    if isinstance(exc, OSError):
        target = exc.filename or "a file"
        hint = {
            28: "free disk space",
            13: "check the permissions, or choose another --results folder",
            30: "the file system is read-only; choose another --results folder",
            20: "a path component is a file, not a folder; choose another --results folder",
            21: "it is a folder, not a file",
        }.get(exc.errno or 0, "check the path")
        return f"{target}: {exc.strerror or str(exc) or exc.__class__.__name__}; {hint}"
    shown = (
        f"the traceback is in {log_path}"
        if log_path
        else "set REPLISYNTH_DEBUG=1 to print the traceback"
    )
    return f"internal error ({exc.__class__.__name__}); this is a bug in replisynth, please report it ({shown})"
