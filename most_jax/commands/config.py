"""`most config`: the effective config as YAML, validated."""

from __future__ import annotations

import argparse
import sys

from most_jax.commands.group import add_config_args

DESCRIPTION = """\
Prints the config a command would run with: the defaults, then the YAML file (its `base:` chain
first), then the --set overrides, validated. --config takes a path or the name of a config
shipped with the package (most_tiny.yaml, demo.yaml, ...), so this works from any directory.
Without --demo it is the run config that training stores in its checkpoints (a file's `demo:`
section is left out); with --demo it is what `most demo` reads, its demo section included.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("config", help="print the effective config (file, base chain, --set) as YAML",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--demo", action="store_true",
                        help="as `most demo` reads it, with the demo section (default config: the shipped demo.yaml)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from most_jax.config import (DEMO_SECTION, DemoConfig, U2ppDemoConfig, load_config, load_demo_config, 
                                 to_dict)

    if args.demo:
        from most_jax.demo import DEFAULT_CONFIG

        path = args.config or DEFAULT_CONFIG
        # the demo section's class follows the model family: U2++ configs are `most demo u2pp`'s
        run_overrides = [o for o in args.overrides if not o.startswith(f"{DEMO_SECTION}.")]
        u2pp = load_config(path, run_overrides).model.family == "u2pp"
        cfg, demo = load_demo_config(path, args.overrides, U2ppDemoConfig if u2pp else DemoConfig)
        data = to_dict(cfg) | {DEMO_SECTION: to_dict(demo)}
    else:
        data = to_dict(load_config(args.config, args.overrides))
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    return 0
