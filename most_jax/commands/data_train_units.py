"""`most data train-units --manifest FILE.jsonl --out DIR`: fit a speech-unit codebook (k-means)."""

from __future__ import annotations

import collections
import dataclasses
import time

from most_jax.speech import kmeans, units
from most_jax.speech.audio import AudioError, load_audio
from most_jax.speech.manifest import read_manifest


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
    parser.add_argument("--no-dedup", dest="dedup", action="store_false",
                        help="keep consecutive duplicate units (MoST removes them)")
    parser.add_argument("--max-hours", type=float, default=10.0, help="use at most this much audio (default 10)")
    parser.add_argument("--epochs", type=int, default=10, help="k-means passes over the data (default 10)")
    parser.add_argument("--batch-size", type=int, default=4096, help="k-means mini-batch size (default 4096)")
    parser.add_argument("--init", default="k-means++", choices=kmeans.INITS, help="codebook initialisation")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    entries = read_manifest(args.manifest)
    features = units.build_features(args.features)
    units.frames_per_unit(features, args.rate)  # fail on a bad rate before reading any audio
    skipped: collections.Counter[str] = collections.Counter()
    totals = {"files": 0, "seconds": 0.0}
    sample: list = []  # the first files, kept to report the unit rate after fitting

    def waves():
        # A generator, so only the (much smaller) unit-rate frames of each file are held in memory.
        for entry in entries:
            if totals["seconds"] >= args.max_hours * 3600:
                return
            try:
                wave, _ = load_audio(entry["audio"])
            except AudioError as exc:
                skipped[exc.reason] += 1
                print(f"train-units: skipping {exc}")
                continue
            totals["files"] += 1
            totals["seconds"] += len(wave) / 16000
            if len(sample) < 200:
                sample.append(wave)
            if totals["files"] % 500 == 0:
                print(f"train-units: featurised {totals['files']} files, {totals['seconds'] / 3600:.2f} h")
            yield wave

    options = kmeans.KMeansOptions(num_clusters=args.k, batch_size=args.batch_size, epochs=args.epochs,
                                   init=args.init, seed=args.seed)

    def progress(epoch: int, inertia: float, reseeded: int) -> None:
        print(f"train-units: k-means epoch {epoch + 1}/{args.epochs}: mean batch inertia {inertia:.3f}, "
              f"{reseeded} empty centroids re-seeded")

    start = time.perf_counter()
    try:
        extractor = units.UnitExtractor.fit(waves(), features, args.rate, args.pooling, args.dedup, options,
                                            progress)
    except ValueError as exc:
        raise SystemExit(f"train-units: cannot fit on {args.manifest}: {exc} (skipped {dict(skipped)})") from exc
    hours = totals["seconds"] / 3600
    frames = sum(len(extractor.raw_unit_frames(w)) for w in sample)
    emitted = sum(len(u) for u in extractor.extract_batch(sample))
    fit_info = {"manifest": str(args.manifest), "files": totals["files"], "hours": round(hours, 4),
                "skipped": dict(skipped), "kmeans": dataclasses.asdict(options),
                "units_per_second": round(emitted / max(sum(len(w) for w in sample) / 16000, 1e-9), 2),
                "kept_after_dedup": round(emitted / max(frames, 1), 4)}
    extractor.save(args.out, fit_info)
    print(f"train-units: {totals['files']} files, {hours:.2f} h, skipped {dict(skipped) or 'none'}; fitted in "
          f"{time.perf_counter() - start:.0f} s")
    print(f"train-units: wrote {args.out} (K={args.k}, {args.rate:g} Hz, {features.kind}); "
          f"{fit_info['units_per_second']} units/s after dedup on the first {len(sample)} files")
    return 0
