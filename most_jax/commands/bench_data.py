"""`most bench data --records DIR`: packed tokens/s of the training pipeline and packing efficiency."""

from __future__ import annotations

import dataclasses

from most_jax.bench.data import bench_data, format_result
from most_jax.commands.group import add_config_args
from most_jax.config import load_config


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="data pipeline throughput and packing efficiency",
        description="Builds the Grain training pipeline of one process (task mixture, packing, batching) over a "
                    "prepared directory and reports packed tokens per second and the non-padding fraction. The "
                    "target is >= 10x what the CPU training demo consumes (about 7k tokens/s), i.e. >= 70k.")
    parser.add_argument("--records", default=None, metavar="DIR", help="prepared directory (default: data.records)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time (default 10)")
    add_config_args(parser)
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    cfg = load_config(args.config, args.overrides).data
    if args.records:
        cfg = dataclasses.replace(cfg, records=args.records)
    print(format_result(cfg, bench_data(cfg, args.seconds)))
    return 0
