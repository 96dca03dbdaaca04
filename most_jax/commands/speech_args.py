"""Arguments shared by `most generate` and `most eval`: checkpoint, assets, decoding settings."""

from __future__ import annotations

import argparse

from most_jax.checkpoint.params_io import restore_model
from most_jax.commands import UsageError
from most_jax.data.pipeline import PreparedData
from most_jax.infer.generate import Sampling


def add_model_args(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint (a training run directory, a step, or an import)")
    parser.add_argument("--assets", default=None, metavar="PREPARED_DIR",
                        help="prepared data directory holding the tokenizer, unit extractor and vocabulary layout "
                             "(default: the checkpoint's data.records)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per generation batch (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                        help=f"generation length limit (default {max_new_tokens})")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k best ids (0: off)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the checkpoint's config")


def load_model_and_assets(args: argparse.Namespace):
    """(model, PreparedData, Sampling) from parsed arguments. Routed experts run dropless, so a
    row's output never depends on the other rows of its batch."""
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        max_new_tokens=args.max_new_tokens)
    try:
        sampling.validate()
    except ValueError as e:  # "top_k must be >= 0, ...": the field is the flag
        field = str(e).split()[0]
        raise UsageError(f"--{field.replace('_', '-')}: {e}") from None
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    cfg, model = restore_model(args.checkpoint, ["model.moe.dispatch=dropless", *args.overrides])
    data = PreparedData(args.assets or cfg.data.records)
    return model, data, sampling
