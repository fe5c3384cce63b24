"""Numerics used on both sides: marginals, correlations, copula, dimensions, designs."""
