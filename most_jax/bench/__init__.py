"""Benchmarks behind `most bench ...`; their figures are recorded in BENCHMARKS.md."""


class BenchArgumentError(ValueError):
    """A benchmark shape or option that cannot run; the message names the flag (--dim, --paths, ...)."""
