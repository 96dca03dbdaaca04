"""`most data train-units --manifest FILE.jsonl --out DIR`: fit a speech-unit codebook (k-means)."""

from __future__ import annotations

import time

from most_jax.speech import kmeans, units


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-units", help="fit a k-means speech-unit extractor on a manifest",
        description="Computes frame features of the manifest's audio (up to --max-hours), groups them to the unit "
                    "rate, normalises them and fits a mini-batch k-means codebook (JAX, deterministic by seed). "
                    "Writes DIR/units.json and DIR/centroids.npy, loadable with UnitExtractor.load(DIR). Files "
                    "that cannot be read are skipped and counted by reason.")
    parser.add_argument("--manifest", required=True, help="JSONL manifest with 'audio' paths (relative to it or absolute)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (replaced atomically)")
    parser.add_argument("--k", type=int, default=500, help="codebook size (default 500, MoST's)")
    parser.add_argument("--rate", type=float, default=25.0, help="unit rate in Hz (default 25, MoST's; or 50)")
    parser.add_argument("--features", default="mfcc", choices=sorted(units.FEATURE_KINDS),
                        help="frame features (default mfcc: 13 MFCC + deltas + delta-deltas)")
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


def _run(args) -> int:
    options = kmeans.KMeansOptions(num_clusters=args.k, batch_size=args.batch_size, epochs=args.epochs,
                                   init=args.init, seed=args.seed)
    start = time.perf_counter()
    try:
        fit = units.fit_from_manifest(args.manifest, args.out, features=args.features, unit_rate=args.rate,
                                      pooling=args.pooling, dedup=args.dedup, utterance_cmvn=args.utterance_cmvn,
                                      min_run=args.min_run, max_hours=args.max_hours,
                                      options=options)
    except units.UnitExtractorError as exc:
        raise SystemExit(f"train-units: {exc}") from exc
    print(f"train-units: {fit['files']} files, {fit['hours']:.2f} h, skipped {fit['skipped'] or 'none'}; fitted in "
          f"{time.perf_counter() - start:.0f} s")
    print(f"train-units: wrote {args.out} (K={args.k}, {args.rate:g} Hz, {args.features}); "
          f"{fit['units_per_second']} units/s after dedup on the first {fit['sample_files']} files")
    return 0
