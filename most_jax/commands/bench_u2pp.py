"""`most bench u2pp`: U2++ real-time factor (encoder + CTC, batch 1) of dense, MoE and equal-parameter dense."""

from __future__ import annotations

import json
import os

from most_jax.bench.u2pp import U2ppBenchShape

_DEFAULT = U2ppBenchShape()



def pin_to_one_cpu() -> int:
    """Restricts this process (its threads created from now on) to one CPU, the first it may use:
    one compute thread whatever XLA:CPU's thread pools do (its flags for one thread were measured
    to leave ~1.7 cores busy). Returns the CPU."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "u2pp", help="U2++ real-time factor: dense vs MoE vs dense of the MoE's parameters",
        description="Measures the real-time factor (decode seconds / audio seconds; features excluded; batch 1; "
                    "jitted, after warm-up) of a U2++ encoder + CTC greedy search, streaming (chunk by chunk "
                    "with caches, as `most u2pp transcribe --chunk` runs it) and full context, for three models "
                    "of one encoder shape: dense (FFN width --ffn), MoE (every FFN --experts experts of width "
                    "--ffn, top --top-k) and dense_wide (the FFN width giving the MoE's parameters). Timed in "
                    "interleaved rounds, medians reported; progress goes to stderr. Random weights.")
    add_shape_args(parser)
    parser.add_argument("--threads", choices=("1", "all"), default="1",
                        help="1: the process pinned to one CPU (WeNet's one-thread RTF convention, default); "
                             "all: every CPU")
    parser.set_defaults(handler=_run)


def add_shape_args(parser) -> None:
    """The model-shape and timing flags (shared with tests/wenet_ref/bench_rtf.py, WeNet's side)."""
    parser.add_argument("--dim", type=int, default=_DEFAULT.dim, help="model width d (default %(default)s)")
    parser.add_argument("--blocks", type=int, default=_DEFAULT.blocks,
                        help="Conformer blocks (default %(default)s)")
    parser.add_argument("--ffn", type=int, default=_DEFAULT.ffn,
                        help="FFN width, each expert's under MoE (default %(default)s)")
    parser.add_argument("--experts", type=int, default=_DEFAULT.experts, help="MoE experts (default %(default)s)")
    parser.add_argument("--top-k", type=int, default=_DEFAULT.top_k,
                        help="experts per frame (default %(default)s)")
    parser.add_argument("--audio-seconds", type=float, default=_DEFAULT.audio_seconds,
                        help="utterance length (default %(default)s)")
    parser.add_argument("--chunk", type=int, default=_DEFAULT.chunk,
                        help="streaming chunk, frames after subsampling (default %(default)s)")
    parser.add_argument("--vocab", type=int, default=_DEFAULT.vocab, help="CTC vocabulary (default %(default)s)")
    parser.add_argument("--dispatch", default=_DEFAULT.dispatch,
                        help="MoE dispatch strategy (moe.dispatch; default %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed decodes per model, the first compiles "
                        "(default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; medians reported (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def shape_from_args(args) -> U2ppBenchShape:
    return U2ppBenchShape(dim=args.dim, blocks=args.blocks, ffn=args.ffn, experts=args.experts, top_k=args.top_k,
                          audio_seconds=args.audio_seconds, chunk=args.chunk, vocab=args.vocab,
                          dispatch=args.dispatch)


def _run(args) -> int:
    # Before the first JAX backend use: threads already running (an in-process caller's) keep their CPUs.
    cpu = pin_to_one_cpu() if args.threads == "1" else None
    from most_jax.bench.u2pp import format_report, run

    result = run(shape_from_args(args), warmup=args.warmup, repeats=args.repeats)
    result["threads"] = args.threads if cpu is None else f"1 (pinned to CPU {cpu})"
    print(json.dumps(result) if args.json else format_report(result))
    return 0
