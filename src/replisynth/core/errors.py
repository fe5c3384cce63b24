"""Flat, specific exception classes. Every message names the file, column or manifest key
and says what to do; callers (CLI, Snakemake scripts) print the message, never a traceback."""


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
