"""`most bench convert`: import-hf / export-hf of a synthetic ~3B DeepSeek-V2-shaped checkpoint."""

from __future__ import annotations

import json
import sys

from most_jax.bench.convert import format_report, run


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="Hugging Face import/export throughput and peak RSS on a synthetic checkpoint",
        description="Generates a synthetic bf16 DeepSeek-V2-shaped checkpoint (DeepSeek-V2-Lite widths, as many "
                    "MoE layers as reach --params; release per-expert layout, 5 GB shards) in a temporary "
                    "directory under --dir, runs `most import-hf` and `most export-hf` on it, each in its own "
                    "subprocess, and reports seconds, GB/s (safetensors bytes / wall time) and peak RSS of each, "
                    "next to a plain copy of the same files; checks the round trip is byte-exact and deletes "
                    "everything (unless --keep). Needs about 3x the checkpoint size of free disk. "
                    "Target: peak RSS under 2.5 GB each way at 3e9 parameters.")
    parser.add_argument("--params", type=float, default=3e9, help="parameter count to approach (default 3e9)")
    parser.add_argument("--dir", default=None, help="where to create the temporary directory (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    def say(message: str) -> None:
        print(f"[bench convert] {message}", file=sys.stderr, flush=True)

    result = run(args.params, args.dir, args.keep, say)
    print(json.dumps(result) if args.json else format_report(result))
    return 0
