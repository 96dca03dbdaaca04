"""`most bench moe`: one MoE layer per dispatch path vs a dense SwiGLU FFN, forward+backward tokens/s."""

from __future__ import annotations

import json

from most_jax.bench.moe import MoEBenchShape, format_report, run

_DEFAULT = MoEBenchShape()


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "moe", help="MoE layer vs dense FFN of equal active parameters (fwd+bwd tokens/s)",
        description="Times forward+backward (jit; gradient w.r.t. all parameters and the input) of one MoE layer "
                    "for each dispatch path and of a dense SwiGLU FFN of width (top_k + shared) x ffn, i.e. the "
                    "same active parameters per token. Prints tokens/s for each and the best MoE/dense ratio; "
                    "progress goes to stderr.")
    parser.add_argument("--tokens", type=int, default=_DEFAULT.tokens, help="tokens per step (default %(default)s)")
    parser.add_argument("--seq-len", type=int, default=_DEFAULT.seq_len,
                        help="tokens per row; --tokens must be a multiple (default %(default)s)")
    parser.add_argument("--dim", type=int, default=_DEFAULT.dim, help="model width D (default %(default)s)")
    parser.add_argument("--experts", type=int, default=_DEFAULT.experts, help="routed experts E (default %(default)s)")
    parser.add_argument("--ffn", type=int, default=_DEFAULT.ffn, help="expert hidden width F (default %(default)s)")
    parser.add_argument("--top-k", type=int, default=_DEFAULT.top_k, help="experts per token K (default %(default)s)")
    parser.add_argument("--shared", type=int, default=_DEFAULT.shared,
                        help="shared experts, each of width F (default %(default)s)")
    parser.add_argument("--capacity-factor", type=float, default=_DEFAULT.capacity_factor,
                        help="expert capacity factor of the capacity path (default %(default)s)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=_DEFAULT.dtype,
                        help="compute dtype (default %(default)s)")
    parser.add_argument("--paths", default="capacity,dropless",
                        help="comma-separated dispatch paths: reference, capacity, dropless (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps, the first compiles (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps; the median is reported (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    shape = MoEBenchShape(tokens=args.tokens, dim=args.dim, experts=args.experts, ffn=args.ffn, top_k=args.top_k,
                          shared=args.shared, seq_len=args.seq_len, capacity_factor=args.capacity_factor,
                          dtype=args.dtype)
    paths = tuple(p.strip() for p in args.paths.split(",") if p.strip())
    result = run(shape, paths, warmup=args.warmup, repeats=args.repeats)
    print(json.dumps(result) if args.json else format_report(result))
    return 0
