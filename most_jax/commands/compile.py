"""`most compile`: compile the full train step for a TPU topology on this (CPU) host and report
per-chip memory against HBM; exits 1 when it does not fit."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from most_jax.commands.group import add_config_args

EPILOG = """\
Needs libtpu: pip install -e '.[aot]'. Topology names: v5p-N and v4-N count TensorCores (2 per
chip), v5e-N and v6e-N count chips. Example:
  most compile --config configs/most_stage1.yaml --topology v5p-64 --mesh fsdp=-1,data=1 \\
      --set train.micro_batches=8
FLOPs per step are analytic (XLA's cost analysis counts a scanned layer stack once).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("compile", help="ahead-of-time compile the train step for a TPU topology",
                                   description=__doc__, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--topology", required=True, metavar="NAME", help="e.g. v5p-16, v5p-64, v5e-256, v4-32")
    parser.add_argument("--mesh", default=None, metavar="AXIS=N,...",
                        help="device mesh over the topology's chips, e.g. fsdp=-1 or data=2,expert=4")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--dump-hlo", default=None, metavar="DIR", help="write the optimised HLO to DIR")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Compiling for TPU must not try to run on one: the host's own backend stays the CPU.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # Only compiling, never running: other processes holding libtpu (another compile) are no conflict.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from most_jax import aot, sharding
    from most_jax.config import load_config

    def say(message: str) -> None:
        print(f"[compile] {message}", file=sys.stderr, flush=True)

    topology = aot.parse_topology(args.topology)
    mesh_overrides = sharding.parse_mesh_arg(args.mesh) if args.mesh else []
    cfg = load_config(args.config, [*args.overrides, *mesh_overrides])
    report = aot.compile_train_step(cfg, topology, dump_hlo=Path(args.dump_hlo) if args.dump_hlo else None,
                                    say=say)
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        gib = aot.GIB
        b = report.per_chip_bytes
        print(f"{report.topology}: {report.chips} chips, mesh "
              f"{' x '.join(f'{k}={v}' for k, v in report.mesh.items() if v > 1) or '1'}")
        for key in ("params", "optimizer", "temp", "total"):
            print(f"  {key:<9} {b[key] / gib:8.2f} GiB per chip")
        print(f"  HBM       {report.hbm_bytes_per_chip / gib:8.2f} GiB per chip -> "
              f"{'fits' if report.fits else 'DOES NOT FIT'}")
        if report.flops_per_step is not None:
            print(f"  FLOPs per step {report.flops_per_step:.3e} (analytic, forward + backward)")
    return 0 if report.fits else 1
