"""`most data synth OUT_DIR --num N --seed S`: the built-in eSpeak speech corpus."""

from __future__ import annotations

from most_jax.commands.voice_args import add_voice_args, speaker_set
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
    add_voice_args(parser)
    parser.add_argument("--vocabulary", type=int, default=None, metavar="N",
                        help="use only the generator's N most frequent words (default: every word, about 3,500); "
                             "fewer words make an easier corpus")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    synth.synthesize_corpus(args.out_dir, args.num, seed=args.seed, workers=args.workers,
                            dev_fraction=args.dev_fraction, test_fraction=args.test_fraction,
                            num_text_lm=args.text_lm, speaker_set=speaker_set(args), vocabulary_limit=args.vocabulary,
                            overwrite=args.overwrite)
    return 0
