"""Benchmarks and the reproduction report: ``python -m bench run EXPERIMENT --protocol cpu``."""
