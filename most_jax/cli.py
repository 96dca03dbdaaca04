"""`most <verb>`: a thin command line over the library.

Each command module in most_jax/commands/ exposes `register(subparsers)`, which adds its
sub-command and sets `handler` to a function taking the parsed arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order here is the order of `most --help`.
COMMAND_MODULES = (
    "demo",
    "data",
    "train",
    "generate",
    "eval",
    "bench",
    "import_hf",
    "export_hf",
    "init_most",
    "logits",
    "compile",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="most", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"most_jax.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
