"""`most data prepare`: manifest, text or TFDS split -> tokenised ArrayRecord shards + report.json."""

from __future__ import annotations

import itertools
import json

from most_jax.commands import UsageError
from most_jax.data.prepare import PrepareOptions, manifest_items, prepare, text_items, tfds_items


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare", help="tokenise text and extract units into ArrayRecord shards",
        description="Reads speech pairs and dialogs from a JSONL manifest (and/or a TFDS split), text-LM lines from "
                    "text files, tokenises the text, extracts speech units, and writes DIR/{kind}-*.array_record, "
                    "DIR/layout.json, DIR/tokenizer/ and DIR/report.json (records_written, hours, units_per_second, "
                    "skipped by reason, repaired). Bad inputs are skipped or repaired and counted, never fatal: see "
                    "the policy in most_jax/data/prepare.py. Output goes to a temporary directory renamed on "
                    "success.")
    parser.add_argument("--manifest", action="append", default=[], metavar="FILE.jsonl",
                        help="JSONL manifest (repeatable): {id, audio, text} pairs or {id, instruction?, prompt, "
                             "response} dialogs")
    parser.add_argument("--text", action="append", default=[], metavar="FILE",
                        help="text-only file, one sentence per line, for the text-LM task (repeatable)")
    parser.add_argument("--tfds", action="append", default=[], metavar="NAME[:SPLIT]",
                        help="a TFDS dataset split with audio/speech and text features, e.g. librispeech:dev_clean "
                             "or most_speech:train (repeatable)")
    parser.add_argument("--tfds-data-dir", default=None, help="TFDS data directory (default: TFDS's own)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--tokenizer", required=True, metavar="DIR",
                        help="tokenizer directory (spm.model from train-tokenizer, or an HF tokenizer.json)")
    parser.add_argument("--units", default=None, metavar="DIR",
                        help="unit extractor directory from train-units (required for audio inputs)")
    parser.add_argument("--max-audio-seconds", type=float, default=30.0, help="longer audio is skipped (default 30)")
    parser.add_argument("--max-tokens", type=int, default=2048,
                        help="formatted sequences longer than this are skipped (default 2048, the MoST length)")
    parser.add_argument("--num-shards", type=int, default=1, help="ArrayRecord shards per record kind (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="processes for audio and tokenising (default 2)")
    parser.add_argument("--family", choices=("most", "u2pp"), default="most",
                        help="most (default): MoST records of unit ids; u2pp: U2++ utterance records (16-bit PCM + "
                             "WeNet token ids, no --units) with the lengths index u2pp.json and the global CMVN "
                             "statistics global_cmvn.json")
    parser.add_argument("--continuous-hubert", default=None, metavar="CKPT",
                        help="MoST-C: also store each speech pair's continuous frames, the hidden states of this "
                             "HuBERT checkpoint (`most hubert import-hf` / `most hubert train`), for "
                             "data.speech_input=features")
    parser.add_argument("--continuous-layer", type=int, default=None, metavar="N",
                        help="the HuBERT layer of --continuous-hubert (0: the first layer's input, N: the output "
                             "of layer N; default: the last, as MoST-C)")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    if not (args.manifest or args.text or args.tfds):
        raise UsageError("give at least one of --manifest, --text, --tfds")
    if args.family == "u2pp" and (args.text or args.units):
        raise UsageError("--family u2pp takes speech only (--manifest, --tfds); drop --text and --units")
    if args.continuous_layer is not None and args.continuous_hubert is None:
        raise UsageError("--continuous-layer needs --continuous-hubert")
    continuous = None
    if args.continuous_hubert is not None:
        if args.family != "most":
            raise UsageError("--continuous-hubert is for MoST records (--family most)")
        continuous = ("hubert", {"checkpoint": args.continuous_hubert, "layer": args.continuous_layer})
    options = PrepareOptions(args.tokenizer, args.units, args.max_audio_seconds, args.max_tokens, args.num_shards,
                             args.workers, family=args.family, continuous=continuous)
    items = [item for path in args.manifest for item in manifest_items(path)]
    items += [item for path in args.text for item in text_items(path)]
    total = None if args.tfds else len(items)
    # TFDS examples carry decoded audio: stream them rather than hold a whole split in memory.
    stream = itertools.chain(items, *(tfds_items(spec, args.tfds_data_dir) for spec in args.tfds))
    report = prepare(stream, args.out, options, total=total, overwrite=args.overwrite)
    print(json.dumps(report, indent=2))
    return 0

