"""The result of a reference fit, shared by every estimator family."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FitResult:
    """Coefficients `beta` (k,), standard errors `se` (k,) under the checkpoint's vcov, the
    sample size, residual df and residual variance (`scale`), with formulaic term names.
    `extra` holds family-specific released quantities (variance components, nbreg alpha, ...)."""

    terms: list[str]
    beta: np.ndarray
    se: np.ndarray
    n: int
    resid_df: float
    scale: float
    extra: dict = field(default_factory=dict)
