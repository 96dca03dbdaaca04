"""`most data audio-lm-pairs OUT_DIR`: the built-in sWUGGY-like and sBLIMP-like spoken pair sets."""

from __future__ import annotations

import sys

from most_jax.commands import UsageError
from most_jax.commands.voice_args import add_voice_args, speaker_set


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "audio-lm-pairs", help="spoken (real, fake) pairs for `most eval audio-lm`",
        description="Makes word / pronounceable non-word pairs (sWUGGY-like, OUT_DIR/lexical.jsonl) and "
                    "sentence / minimally broken sentence pairs (sBLIMP-like, OUT_DIR/syntactic.jsonl) from the "
                    "corpus generator, speaks both items of a pair with one eSpeak speaker into OUT_DIR/audio/, "
                    "and with --units stores their units too. Each line: {id, category, real: {text, audio, "
                    "units}, fake: {...}}; audio paths are relative to OUT_DIR.")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to create")
    parser.add_argument("--lexical", type=int, default=200, metavar="N", help="lexical pairs (default 200)")
    parser.add_argument("--syntactic", type=int, default=200, metavar="N", help="syntactic pairs (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--units", default=None, metavar="DIR",
                        help="unit extractor (`most data train-units`) whose units to store with the audio")
    add_voice_args(parser, rate_wpm=(150, 185))
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    from most_jax.corpus.pairs import write_spoken_pairs
    from most_jax.speech.units import UnitExtractor

    if args.lexical < 0 or args.syntactic < 0:
        raise UsageError("--lexical and --syntactic must be >= 0")
    extractor = UnitExtractor.load(args.units) if args.units else None
    speakers = speaker_set(args)
    try:  # asking for more pairs than the word lists / sentence pool make is the one ValueError here
        write_spoken_pairs(args.out_dir, args.lexical, args.syntactic, args.seed,
                           extractor.extract if extractor is not None else None, speakers,
                           overwrite=args.overwrite,
                           log=lambda m: print(m, file=sys.stderr))
    except ValueError as e:
        raise UsageError(f"--lexical/--syntactic: {e}") from None
    print(f"wrote {args.out_dir}")
    return 0
