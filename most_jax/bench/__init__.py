"""Benchmarks behind `most bench ...`; their figures are recorded in BENCHMARKS.md."""
