"""`most bench ...`: benchmarks whose figures go into BENCHMARKS.md."""

from most_jax.commands.group import register_group

# Each name X is the module most_jax/commands/bench_X.py.
MEMBERS: tuple[str, ...] = ("moe", "data", "ep", "convert", "u2pp", "step")


def register(subparsers) -> None:
    register_group(subparsers, "bench", "benchmarks (results recorded in BENCHMARKS.md)", MEMBERS)
