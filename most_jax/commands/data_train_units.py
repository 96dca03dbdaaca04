"""`most data train-units --manifest FILE.jsonl --out DIR`: fit a speech-unit codebook (k-means)."""

from __future__ import annotations

import time

from most_jax.commands import UsageError
from most_jax.speech import kmeans, units

# MoST's units: layer 11 of mhubert-base-25hz (imported with `most hubert import-hf`), 500 clusters, 25 Hz.
PRESETS = {"most": {"features": "hubert", "layer": 11, "k": 500, "rate": 25.0}}
DEFAULTS = {"features": "mfcc", "layer": None, "k": 500, "rate": None}  # rate None: 25 Hz, or HuBERT's frame rate


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-units", help="fit a k-means speech-unit extractor on a manifest",
        description="Computes frame features of the manifest's audio (up to --max-hours), groups them to the unit "
                    "rate, normalises them and fits a mini-batch k-means codebook (JAX, deterministic by seed). "
                    "Writes DIR/units.json and DIR/centroids.npy, loadable with UnitExtractor.load(DIR). Files "
                    "that cannot be read are skipped and counted by reason. --features hubert takes layer --layer "
                    "of the HuBERT checkpoint --hubert at its frame rate (50 Hz, 25 Hz for a 25 Hz model); "
                    "--preset most is MoST's setting (HuBERT layer 11, 500 units, 25 Hz: give --hubert an "
                    "imported mhubert-base-25hz).")
    parser.add_argument("--manifest", required=True, help="JSONL manifest with 'audio' paths (relative to it or absolute)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (replaced atomically)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="most: --features hubert --layer 11 --k 500 --rate 25 (explicit options win)")
    parser.add_argument("--k", type=int, default=None, help="codebook size (default 500, MoST's)")
    parser.add_argument("--rate", type=float, default=None,
                        help="unit rate in Hz (default 25, MoST's, or the HuBERT frame rate with --features hubert)")
    parser.add_argument("--features", default=None, choices=units.feature_kinds(),
                        help="frame features (default mfcc: 13 MFCC + deltas + delta-deltas; hubert: a HuBERT layer)")
    parser.add_argument("--hubert", default=None, metavar="CKPT",
                        help="HuBERT checkpoint for --features hubert (`most hubert import-hf` or `most hubert train`)")
    parser.add_argument("--layer", type=int, default=None, metavar="N",
                        help="HuBERT layer for --features hubert: 0 is the first layer's input, N layer N's output")
    parser.add_argument("--pooling", default="stack", choices=units.POOLINGS,
                        help="how frames are grouped to the unit rate (default stack = concatenate)")
    parser.add_argument("--utterance-cmvn", action="store_true",
                        help="normalise each utterance's frames to zero mean and unit variance before the codebook")
    parser.add_argument("--min-run", type=int, default=1, metavar="N",
                        help="drop runs of one unit shorter than N unit frames before dedup (default 1: keep all)")
    parser.add_argument("--no-dedup", dest="dedup", action="store_false",
                        help="keep consecutive duplicate units (MoST removes them)")
    parser.add_argument("--max-hours", type=float, default=10.0, help="use at most this much audio (default 10)")
    parser.add_argument("--epochs", type=int, default=10, help="k-means passes over the data (default 10)")
    parser.add_argument("--batch-size", type=int, default=4096, help="k-means mini-batch size (default 4096)")
    parser.add_argument("--init", default="k-means++", choices=kmeans.INITS, help="codebook initialisation")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    parser.set_defaults(handler=_run)


def resolve_features(args) -> tuple[str, dict | None, float, int]:
    """(feature kind, its options, unit rate, K) from the arguments, the preset and the defaults;
    UsageError names the argument that does not fit."""
    chosen = {**DEFAULTS, **PRESETS.get(args.preset, {}),
              **{k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}}
    if chosen["features"] != "hubert":
        if args.hubert is not None or args.layer is not None:
            raise UsageError(f"--hubert and --layer need --features hubert (got {chosen['features']})")
        return chosen["features"], None, chosen["rate"] or 25.0, chosen["k"]
    if args.hubert is None or chosen["layer"] is None:
        raise UsageError("--features hubert needs --hubert CKPT and --layer N")
    options = {"checkpoint": args.hubert, "layer": chosen["layer"]}
    try:
        frame_rate = units.build_features("hubert", options).frame_rate
    except ValueError as exc:  # build_features checks the checkpoint and the layer against each other
        raise UsageError(f"--hubert/--layer: {exc}") from None
    if args.preset == "most" and frame_rate != 25.0:
        raise UsageError(f"--preset most needs a 25 Hz HuBERT (mhubert-base-25hz); {args.hubert} gives "
                         f"{frame_rate:g} Hz frames")
    return "hubert", options, chosen["rate"] or frame_rate, chosen["k"]


def _run(args) -> int:
    features, feature_options, rate, k = resolve_features(args)
    options = kmeans.KMeansOptions(num_clusters=k, batch_size=args.batch_size, epochs=args.epochs,
                                   init=args.init, seed=args.seed)
    start = time.perf_counter()
    fit = units.fit_from_manifest(args.manifest, args.out, features=features, feature_options=feature_options,
                                  unit_rate=rate, pooling=args.pooling, dedup=args.dedup,
                                  utterance_cmvn=args.utterance_cmvn, min_run=args.min_run,
                                  max_hours=args.max_hours, options=options)
    print(f"train-units: {fit['files']} files, {fit['hours']:.2f} h, skipped {fit['skipped'] or 'none'}; fitted in "
          f"{time.perf_counter() - start:.0f} s")
    layer = f" layer {feature_options['layer']}" if feature_options else ""
    print(f"train-units: wrote {args.out} (K={k}, {rate:g} Hz, {features}{layer}); "
          f"{fit['units_per_second']} units/s after dedup on the first {fit['sample_files']} files")
    return 0
