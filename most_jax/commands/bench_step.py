"""`most bench step`: the train step of one config under several sets of overrides, side by side."""

from __future__ import annotations

import argparse
import json

from most_jax.bench.step import format_report, parse_variant, run
from most_jax.commands.group import add_config_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "step", help="train-step time and real tokens/s of config variants (interleaved)",
        description="Builds the train step `most train` would (one device) for the config with each variant's "
                    "overrides, feeds it batches of the family's own training pipeline (data.records) and times "
                    "the variants in interleaved rounds. Reports seconds per step, the real (non-padding) "
                    "fraction of the tokens and real tokens/s relative to the first variant. Example: most bench "
                    "step --config demo.yaml --set data.records=runs/demo/prepared --variant "
                    "rows256:data.seq_len=256,data.batch_size=16 --variant rows160:data.seq_len=160,"
                    "data.batch_size=26")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[:key=value,...]",
                        help="a variant: its name and the overrides it adds to --set (repeatable; none: the config "
                             "as it is)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant, the first compiles (default 2)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds; medians are reported (default 10)")
    parser.add_argument("--batches", type=int, default=4, help="pipeline batches each variant cycles through (default 4)")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="also trace 3 steps of the first variant with jax.profiler into DIR and list the XLA ops "
                             "that take the most time, with the JAX operation each came from")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_config_args(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    result = run(args.config, [parse_variant(v) for v in args.variant], base_overrides=tuple(args.overrides),
                 warmup=args.warmup, repeats=args.repeats, batches=args.batches, profile_dir=args.profile)
    print(json.dumps(result) if args.json else format_report(result))
    return 0
