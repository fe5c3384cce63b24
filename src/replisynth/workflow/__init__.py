"""Orchestration: stages, CLI, Snakemake layout, scatter/gather, resources."""
