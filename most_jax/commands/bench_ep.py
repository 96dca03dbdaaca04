"""`most bench ep`: all-to-all bytes of expert parallelism vs the minimum, step time on (simulated)
devices, per-rank load with and without the modality-balanced placement."""

from __future__ import annotations

import json
import os

from most_jax.commands.group import add_config_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ep", help="expert-parallel all-to-all bytes, step time and per-rank load",
        description="Runs one MoE layer (forward+backward) expert-parallel on the mesh and reports the all-to-all "
                    "bytes per MoE layer and per train step next to the minimum (tokens x top_k x width x 2 "
                    "directions), the median step time (on CPU: simulated devices, one host, not a speed "
                    "measurement of a cluster), and the per-rank load on a batch skewed towards audio with the "
                    "canonical and the balanced expert placement.")
    add_config_args(parser)
    parser.add_argument("--mesh", default="data=4,expert=2", metavar="AXIS=N,...",
                        help="device mesh (default %(default)s)")
    parser.add_argument("--devices", type=int, default=8,
                        help="simulated CPU devices when no accelerator is used (default %(default)s)")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per step (default %(default)s)")
    parser.add_argument("--skew", type=float, default=0.9, help="audio fraction of the skewed batch (default 0.9)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps, median reported (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    if os.environ.get("JAX_PLATFORMS", "cpu").startswith("cpu"):
        # Must precede the first JAX backend use.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.devices}").strip()
    from most_jax import sharding
    from most_jax.bench.ep import format_report, run
    from most_jax.config import load_config

    cfg = load_config(args.config, [*args.overrides, *sharding.parse_mesh_arg(args.mesh)])
    result = run(cfg, tokens=args.tokens, skew=args.skew, repeats=args.repeats)
    print(json.dumps(result) if args.json else format_report(result))
    return 0
