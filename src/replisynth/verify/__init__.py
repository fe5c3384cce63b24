"""Fidelity tiers, the verdict and the human-readable report."""
