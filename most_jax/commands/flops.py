"""`most flops`: parameters and FLOPs per token of a config, part by part (most_jax/scaling/flops.py)."""

from __future__ import annotations

import argparse
import json
import sys

from most_jax.commands.group import add_config_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("flops", help="parameters and FLOPs per token of a config", description=__doc__)
    add_config_args(parser)
    parser.add_argument("--seq-len", type=int, default=None,
                        help="tokens per row for the attention FLOPs (default: data.seq_len)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from most_jax.config import ConfigError, load_config
    from most_jax.scaling.flops import most_budget

    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.model.family != "most":
            raise ConfigError(f"model.family: most flops counts MoST configs, got {cfg.model.family!r}")
        seq_len = cfg.data.seq_len if args.seq_len is None else args.seq_len
        if seq_len <= 0:
            raise ConfigError(f"--seq-len: must be positive, got {seq_len}")
    except ConfigError as e:
        print(f"most flops: error: {e}", file=sys.stderr)
        return 2
    budget = most_budget(cfg.model, seq_len)
    if args.json:
        print(json.dumps(budget.as_json()))
        return 0
    print(f"per token at seq_len {seq_len} (forward; training = 3 x forward)")
    print(f"{'part':<18}{'params':>16}{'active':>16}{'FLOPs/token':>16}")
    for p in budget.parts:
        print(f"{p.name:<18}{p.params:>16,}{p.params_active:>16,}{p.flops_per_token:>16.4g}")
    print(f"{'embedding':<18}{budget.embedding_params:>16,}{0:>16,}{0:>16}")
    print(f"total params {budget.params:,} (non-embedding {budget.params_non_embedding:,}); "
          f"active {budget.params_active:,}")
    print(f"forward {budget.forward_flops_per_token:.4g} FLOPs/token, training {budget.train_flops_per_token:.4g}")
    return 0
