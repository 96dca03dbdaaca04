"""`most demo`: the main job, end to end on one machine."""

from __future__ import annotations

import argparse
import signal
import sys

from most_jax.commands.group import add_config_args

DESCRIPTION = """\
Synthesises the built-in speech corpus (train and held-out test over disjoint sentences), fits a
sentencepiece tokenizer and a k-means unit codebook, prepares the training records and the
held-out set, trains a small MAMoE MoST on ASR + TTS + text LM, evaluates ASR by generation on
the held-out utterances (whose sentences never occur in training) and prints the WER. Writes
OUT/curves.png (loss per task) and OUT/summary.json (wall time per stage, WER, final per-task
losses, sizes, machine load).

Settings come from the config (default: the shipped demo.yaml, configs/demo.yaml in the source
tree): its model, data and train sections train the model, its demo section sizes the corpus,
tokenizer, units and evaluation and is not stored with the checkpoints; override any field with
--set, e.g. --set demo.utterances=4000 --set train.steps=800.

A re-run with the same OUT skips finished stages, rebuilds those whose settings changed (and the
ones after them), and resumes an interrupted training run from its latest checkpoint. SIGTERM or
Ctrl-C during training saves a checkpoint first.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the main job: corpus -> units/tokenizer -> train -> held-out WER",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="output directory (default runs/demo)")
    add_config_args(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from most_jax.config import ConfigError, load_demo_config
    from most_jax.demo import DEFAULT_CONFIG, Demo, DemoError, DemoInterrupted

    config = args.config or DEFAULT_CONFIG
    try:
        cfg, demo = load_demo_config(config, args.overrides)
        summary = Demo(cfg, demo, args.out, config_name=config, overrides=tuple(args.overrides)).run()
    except DemoInterrupted as stop:
        print(f"most demo: {stop}", file=sys.stderr)
        return 128 + int(signal.Signals[stop.signal_name])
    except (ConfigError, DemoError) as err:
        print(f"most demo: error: {err}", file=sys.stderr)
        return 1
    print(f"held-out ASR WER {100 * summary['wer']:.2f}% ({summary['word_errors']} errors / {summary['words']} "
          f"words, {summary['test_utterances']} utterances); {summary['total_seconds'] / 60:.1f} min end to end")
    return 0
