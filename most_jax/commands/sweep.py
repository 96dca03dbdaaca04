"""`most sweep LADDER --out DIR`: trains a scaling ladder (configs/scaling/*.yaml) run after run
through the common trainer, resumable and idempotent, appending each finished run to
DIR/results.jsonl (the table `most scaling fit DIR` reads); or prints cluster launch commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def register(subparsers) -> None:
    parser = subparsers.add_parser("sweep", help="train a scaling ladder run after run into a results table",
                                   description=__doc__)
    parser.add_argument("ladder", metavar="LADDER", help="ladder spec (e.g. configs/scaling/most_ladder.yaml)")
    parser.add_argument("--out", required=True, metavar="DIR", help="sweep directory (configs/, runs/, results.jsonl)")
    parser.add_argument("--records", metavar="DIR",
                        help="prepared records to train on (`most data prepare`); the vocabulary comes from their "
                             "layout (default: the base config's data.records and vocabulary)")
    parser.add_argument("--eval-records", metavar="DIR",
                        help="held-out records of the same vocabulary (e.g. a demo's dev/): every run is scored on "
                             "them at each log window and the results' losses are those held-out losses")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the base config for every run, e.g. --set data.batch_size=8")
    parser.add_argument("--sizes", type=_names, metavar="A,B", help="only these sizes of the ladder")
    parser.add_argument("--variants", type=_names, metavar="dense,moe", help="only these variants")
    parser.add_argument("--list", action="store_true", help="print the runs (size, parameters, tokens, FLOPs) and stop")
    parser.add_argument("--emit-launch", choices=("tpu_pod", "slurm"),
                        help="print one cluster launch command per unfinished run instead of training")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: append the results of runs finished elsewhere (after --emit-launch)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from most_jax.scaling.sweep import finished, launch_commands, plan, run_sweep

    out = Path(args.out)
    runs = plan(args.ladder, args.overrides, args.records, args.sizes, args.variants, args.eval_records)
    if args.list:
        done = finished(out)
        print(f"{'run':<16}{'active params':>16}{'total params':>16}{'steps':>10}{'tokens':>16}"
              f"{'train FLOPs':>12}  state")
        for r in runs:
            b = r.budget
            print(f"{r.name:<16}{b.params_active:>16,}{b.params:>16,}{r.config.train.steps:>10,}{r.tokens:>16,}"
                  f"{r.tokens * b.train_flops_per_token:>12.3g}  {'done' if r.name in done else 'to run'}")
        return 0
    if args.emit_launch:
        for command in launch_commands(runs, out, args.emit_launch):
            print(command)
        print(f"# then: most sweep {args.ladder} --out {out} --collect", file=sys.stderr)
        return 0
    summary = run_sweep(runs, out, console=sys.stderr, collect_only=args.collect)
    print(", ".join(f"{len(v)} {k}" for k, v in summary.items()) + f"; results in {out / 'results.jsonl'}")
    return 130 if summary["pending"] and not args.collect else 0
