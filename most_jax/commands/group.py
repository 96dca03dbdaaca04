"""Sub-command groups (`most data ...`, `most bench ...`): each member module exposes `register(sub)`."""

from __future__ import annotations

import argparse
import importlib


def register_group(subparsers, name: str, help_text: str, members: tuple[str, ...]) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    sub = parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")
    for member in members:
        importlib.import_module(f"most_jax.commands.{name}_{member}").register(sub)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--config FILE and repeated --set key.path=value, shared by every command that builds a Config."""
    parser.add_argument("--config", default=None,
                        help="YAML config (overrides of the defaults): a path, or the name of a config shipped with "
                             "the package (most_tiny.yaml, demo.yaml, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set model.moe.top_k=4 (repeatable)")
