"""`most eval asr|tts`: held-out evaluation by generation."""

from __future__ import annotations

import argparse
import functools
import json
import sys

from most_jax.commands import UsageError
from most_jax.commands.speech_args import add_model_args, load_model_and_assets
from most_jax.eval.speech import evaluate_asr, evaluate_tts, load_eval_set

DESCRIPTION = """\
DATA is a manifest (JSONL with id, audio, text; units are extracted with the assets' unit
extractor) or a prepared directory (its speech/transcript records). ASR reports the word error
rate after normalisation (lowercase; characters other than a-z, 0-9 and apostrophes become
spaces). TTS reports the unit error rate (edit distance / reference units) and position-wise unit
accuracy of the generated units against the reference units.
"""


AUDIO_LM_DESCRIPTION = """\
Scores each (real, fake) pair by the model's log-likelihood of the items' units in the unit-LM
format (BOS BOA units EOA EOS; the units and EOA are scored): summed, and divided by the scored
tokens (length-normalised). A pair counts 1 when the real item scores higher, 0.5 on a tie, 0
otherwise (ZeroSpeech 2021); accuracy is reported for both scores, overall and per category. Items
given as audio get their units from the assets' unit extractor.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="held-out ASR WER / TTS unit error by generation")
    sub = parser.add_subparsers(dest="eval_command", required=True, metavar="TASK")
    for task, max_new in (("asr", 128), ("tts", 512)):
        p = sub.add_parser(task, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                           help=f"evaluate {task.upper()}")
        add_model_args(p, max_new_tokens=max_new)
        p.add_argument("--data", required=True, metavar="DATA", help="manifest .jsonl or prepared directory")
        p.add_argument("--limit", type=int, default=None, help="evaluate only the first N utterances")
        p.add_argument("--json", action="store_true", help="print the result as one JSON object")
        p.set_defaults(handler=run, task=task)
    lm = sub.add_parser("audio-lm", help="pair accuracy of unit log-likelihoods (sWUGGY / sBLIMP style)",
                        description=AUDIO_LM_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    lm.add_argument("checkpoint", metavar="CKPT", help="MoST checkpoint")
    lm.add_argument("--pairs", required=True, metavar="FILE",
                    help="pairs JSONL (`most data audio-lm-pairs`) or a ZeroSpeech 2021 lexical/syntactic directory")
    lm.add_argument("--assets", default=None, metavar="PREPARED_DIR",
                    help="prepared data directory (tokenizer, unit extractor, layout; default: data.records)")
    lm.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    lm.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of the checkpoint's config")
    lm.add_argument("--json", action="store_true", help="print the result as one JSON object")
    lm.set_defaults(handler=run_audio_lm)


def run(args: argparse.Namespace) -> int:
    model, data, sampling = load_model_and_assets(args)
    items = load_eval_set(args.data, data, args.limit)
    if not items:
        raise UsageError(f"{args.data}: no usable utterances")
    evaluate = evaluate_asr if args.task == "asr" else evaluate_tts
    result = evaluate(model, data, items, sampling=sampling, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result))
    elif args.task == "asr":
        for ex in result["examples"][:5]:
            print(f"REF: {ex['reference']}\nHYP: {ex['hypothesis']}\n", file=sys.stderr)
        print(f"ASR WER {100 * result['wer']:.2f}% ({result['word_errors']} errors / {result['words']} words, "
              f"{result['utterances']} utterances, {result['seconds']:.1f} s)")
    else:
        print(f"TTS unit error rate {100 * result['unit_error_rate']:.2f}%, unit accuracy "
              f"{100 * result['unit_accuracy']:.2f}% ({result['utterances']} utterances, {result['seconds']:.1f} s)")
    return 0


def run_audio_lm(args: argparse.Namespace) -> int:
    from most_jax.checkpoint.params_io import restore_model
    from most_jax.data.pipeline import PreparedData
    from most_jax.eval.audio_lm import SCORES, score_pairs
    from most_jax.eval.pair_sets import read_pair_set
    from most_jax.infer.speech import check_assets

    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    cfg, model = restore_model(args.checkpoint, ["model.moe.dispatch=dropless", *args.overrides])
    data = PreparedData(args.assets or cfg.data.records)
    check_assets(model, data)
    extractor = functools.cache(data.unit_extractor)  # loaded for the first item given as audio
    pairs = read_pair_set(args.pairs, lambda wave: extractor().extract(wave))
    num_units = data.layout.config.num_audio_units
    for pair in pairs:
        for side in ("real", "fake"):
            if getattr(pair, side).max() >= num_units:
                raise UsageError(f"--pairs {args.pairs}: pair {pair.id!r} {side} has unit "
                                 f"{getattr(pair, side).max()}, the checkpoint has {num_units} units")
    result = score_pairs(model, data.formatter, pairs, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result))
        return 0
    for name, label in zip(SCORES, ("summed", "length-normalised")):
        acc = result[name]
        cats = ", ".join(f"{k} {100 * v['accuracy']:.1f}% ({v['pairs']})" for k, v in acc["by_category"].items())
        print(f"audio-LM accuracy ({label} log-likelihood) {100 * acc['accuracy']:.2f}% over {acc['pairs']} pairs: "
              f"{cats}")
    return 0
