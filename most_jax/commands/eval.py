"""`most eval asr|tts`: held-out evaluation by generation."""

from __future__ import annotations

import argparse
import json
import sys

from most_jax.commands.generate import ERRORS
from most_jax.commands.speech_args import add_model_args, load_model_and_assets
from most_jax.eval.speech import evaluate_asr, evaluate_tts, load_eval_set

DESCRIPTION = """\
DATA is a manifest (JSONL with id, audio, text; units are extracted with the assets' unit
extractor) or a prepared directory (its speech/transcript records). ASR reports the word error
rate after normalisation (lowercase; characters other than a-z, 0-9 and apostrophes become
spaces). TTS reports the unit error rate (edit distance / reference units) and position-wise unit
accuracy of the generated units against the reference units.
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


def run(args: argparse.Namespace) -> int:
    try:
        model, data, sampling = load_model_and_assets(args)
        items = load_eval_set(args.data, data, args.limit)
        if not items:
            raise ValueError(f"{args.data}: no usable utterances")
        evaluate = evaluate_asr if args.task == "asr" else evaluate_tts
        result = evaluate(model, data, items, sampling=sampling, batch_size=args.batch_size)
    except ERRORS as e:
        raise SystemExit(f"most eval {args.task}: error: {e}") from None
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
