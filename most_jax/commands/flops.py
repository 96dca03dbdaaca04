"""`most flops`: parameters and FLOPs of a MoST or U2++ config, part by part (most_jax/scaling/).

MoST: per token of a packed data.seq_len row. U2++: per 10 ms input feature frame of a training
utterance of --frames input frames (default: the longest length bucket, data.max_audio_seconds)
with --seq-len target tokens (default data.seq_len). Training = 3 x forward."""

from __future__ import annotations

import argparse
import json

from most_jax.commands.group import add_config_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("flops", help="parameters and FLOPs per token of a config", description=__doc__)
    add_config_args(parser)
    parser.add_argument("--seq-len", type=int, default=None,
                        help="MoST: tokens per row for the attention FLOPs; U2++: target tokens per utterance "
                             "(default: data.seq_len)")
    parser.add_argument("--frames", type=int, default=None,
                        help="U2++: input feature frames per utterance (default: the longest length bucket)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from most_jax.config import load_config
    from most_jax.scaling.accounting import config_budget

    cfg = load_config(args.config, args.overrides)
    budget, per_step = config_budget(cfg, args.seq_len, args.frames)
    if args.json:
        print(json.dumps(budget.as_json(per_step)))
        return 0
    shape = ", ".join(f"{k} {v}" for k, v in budget.shape.items())
    print(f"per {budget.unit} at {shape} (forward; training = 3 x forward)")
    print(f"{'part':<32}{'params':>16}{'active':>16}{'FLOPs/unit':>16}")
    for p in budget.parts:
        print(f"{p.name:<32}{p.params:>16,}{p.params_active:>16,}{p.flops_per_token:>16.4g}")
    print(f"{'embedding':<32}{budget.embedding_params:>16,}{0:>16,}{0:>16}")
    print(f"total params {budget.params:,} (non-embedding {budget.params_non_embedding:,}); "
          f"active {budget.params_active:,}")
    print(f"forward {budget.forward_flops_per_token:.4g} FLOPs per {budget.unit}, training "
          f"{budget.train_flops_per_token:.4g} (6 x active: {6 * budget.params_active:.4g}); per step of "
          f"{per_step:,} units: training {per_step * budget.train_flops_per_token:.4g}")
    return 0
