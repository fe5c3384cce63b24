"""Outside side: pin checkpoint coefficients and cross-moments on the synthetic data."""
