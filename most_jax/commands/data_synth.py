"""`most data synth OUT_DIR --num N --seed S`: the built-in eSpeak speech corpus."""

from __future__ import annotations

import argparse

from most_jax.commands import UsageError
from most_jax.corpus import synth


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth", help="synthesise the built-in speech corpus with eSpeak NG",
        description="Speaks generated sentences with eSpeak NG (several voices, pitches and rates) and writes "
                    "OUT_DIR/audio/<id>.wav (16 kHz, 16-bit), OUT_DIR/{train,dev,test}.jsonl manifests (audio paths "
                    "relative to OUT_DIR), OUT_DIR/text_lm.txt and OUT_DIR/corpus.json. Train, dev, test and "
                    "text-LM sentences are disjoint; the same seed gives the same corpus.")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="corpus directory to create")
    parser.add_argument("--num", type=int, required=True, help="number of utterances (all splits)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="synthesis processes (default 2)")
    parser.add_argument("--dev-fraction", type=float, default=0.05, help="share of utterances in dev (default 0.05)")
    parser.add_argument("--test-fraction", type=float, default=0.05, help="share of utterances in test (default 0.05)")
    parser.add_argument("--text-lm", type=int, default=20000, metavar="N",
                        help="text-only sentences written to text_lm.txt (default 20000)")
    parser.add_argument("--voices", type=_names, default=synth.VOICES, metavar="V1,V2,...",
                        help=f"eSpeak voices (default: {','.join(synth.VOICES)})")
    parser.add_argument("--pitches", type=_ints, default=synth.PITCHES, metavar="P1,P2,...",
                        help=f"pitches 0..100, each voice at each (default: {','.join(map(str, synth.PITCHES))})")
    parser.add_argument("--rate-wpm", type=_ints, default=synth.RATE_WPM, metavar="LOW,HIGH",
                        help="speaking-rate range in words per minute, drawn per utterance "
                             f"(default: {','.join(map(str, synth.RATE_WPM))})")
    parser.add_argument("--vocabulary", type=int, default=None, metavar="N",
                        help="use only the generator's N most frequent words (default: every word, about 3,500); "
                             "fewer words make an easier corpus")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    parser.set_defaults(handler=_run)


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _run(args) -> int:
    try:
        speaker_set = synth.SpeakerSet(args.voices, args.pitches, args.rate_wpm)
    except (ValueError, TypeError) as exc:  # "pitches must be ...": SpeakerSet names the field, the flag's name
        raise UsageError(f"--{str(exc).split()[0].replace('_', '-')}: {exc}") from None
    synth.synthesize_corpus(args.out_dir, args.num, seed=args.seed, workers=args.workers,
                            dev_fraction=args.dev_fraction, test_fraction=args.test_fraction,
                            num_text_lm=args.text_lm, speaker_set=speaker_set, vocabulary_limit=args.vocabulary,
                            overwrite=args.overwrite)
    return 0
