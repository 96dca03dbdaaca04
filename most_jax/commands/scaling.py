"""`most scaling ...`: scaling-law studies: power-law fits of a results table."""

from __future__ import annotations

import argparse
import json
import sys

from most_jax.commands import UsageError

FIT_DESCRIPTION = """\
Fits DIR/results.jsonl (one JSON object per run: run, variant, params_active, tokens, flops, loss,
optionally loss_text and loss_audio; DIR may also be the file itself) with L(C) = E + A C^-alpha and
L(N, D) = E + A N^-alpha + B D^-beta (Huber loss on log-residuals, several starting points),
for all runs pooled and per variant, with bootstrap intervals over runs. Also: the compute-optimal
frontier of L(N, D) (N_opt ~ C^a, D_opt ~ C^b), the compute multiplier of every variant over the
baseline (the baseline's compute reaching the variant's fitted loss, divided by the variant's
compute) at each of its sizes, and the L(C) exponents of the text and audio losses. Prints a table
(--json: one object; the L(N, D) fit under params_data, the L(C) fit under compute, each constant as
{value, low, high}) and writes loss_vs_compute.png, loss_by_modality.png and multiplier_vs_size.png
into --plots (default DIR).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("scaling", help="scaling-law studies: fit a results table",
                                   description=__doc__.splitlines()[0].split(": ", 1)[1])
    sub = parser.add_subparsers(dest="scaling_command", required=True, metavar="COMMAND")
    fit = sub.add_parser("fit", help="power-law fits, intervals, frontier, MoE multiplier and plots",
                         description=FIT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    fit.add_argument("dir", metavar="DIR", help="directory holding results.jsonl (or the file itself)")
    fit.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    fit.add_argument("--plots", metavar="OUT", help="directory for the PNG plots (default DIR)")
    fit.add_argument("--no-plots", action="store_true", help="write no plots")
    fit.add_argument("--baseline", default="dense", help="variant the multiplier compares against (default dense)")
    fit.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    fit.add_argument("--huber-delta", type=float, default=1e-3, help="Huber threshold on log-residuals (default 1e-3)")
    fit.set_defaults(handler=run_fit)


def run_fit(args) -> int:
    from most_jax.scaling.fit import analyse, json_ready, summary_table
    from most_jax.scaling.results import read_results, results_path

    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if not args.huber_delta > 0:
        raise UsageError(f"--huber-delta must be positive, got {args.huber_delta}")
    runs = read_results(args.dir)
    analysis = analyse(runs, baseline=args.baseline, bootstrap=args.bootstrap, seed=args.seed,
                       delta=args.huber_delta)
    written = []
    if not args.no_plots:
        from most_jax.scaling.plots import write_plots

        written = write_plots(runs, analysis, args.plots or results_path(args.dir).parent)
    if args.json:
        print(json.dumps(json_ready(analysis) | {"plots": [str(p) for p in written]}, indent=1))
    else:
        print(summary_table(analysis))
        for path in written:
            print(f"wrote {path}", file=sys.stderr)
    return 0
