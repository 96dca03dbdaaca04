"""HuBERT pretraining data: a manifest's audio with frame targets -> records -> masked-prediction batches.

`prepare_hubert` (`most hubert prepare`) writes a directory, atomically (a temporary sibling renamed
on success):

    hubert-00000-of-00001.array_record   "hubert" records (data/records.py): 16-bit PCM and the
                                         frame targets, the k-means id of every unit-rate frame
    hubert.json                          num_units, unit_rate, samples and frames per record (in order)
    units/                               a copy of the unit extractor that made the targets
    report.json                          records, hours, skips by reason, repairs

The targets come from any fitted unit extractor at the model's frame rate: MFCC k-means
(`most data train-units --rate 50 --no-dedup`, HuBERT's iteration 1) or k-means of an earlier
HuBERT's layer (`--features hubert --hubert CKPT --layer N`, iteration 2). Bad inputs are skipped
and counted as in `most data prepare`: audio_<reason> (unreadable etc.), over_length, no_units;
"clipped" counts samples beyond full scale clipped to int16.

`HubertBatches` (the family's `batches`, reading `data.records`): step `i` draws, with a NumPy
generator seeded by (data.seed, i), data.batch_size records (with replacement), crops each longer
than data.max_audio_seconds at a random whole frame, takes the targets of the crop's frames (an
extractor's frame count may differ from the encoder's by up to MAX_FRAME_MISMATCH frames at the end
of an utterance: the last target repeats or the surplus is dropped) and draws span masks
(`span_mask`: model.mask_prob, model.mask_length). A batch is a pure function of (seed, step), so the
iterator's state is its step and a resumed run sees the batches an uninterrupted one would. Every
JAX process draws the same global batch (single-process training, as the vocoder's).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from most_jax.atomic import atomic_directory
from most_jax.config import Config
from most_jax.data import records as rec
from most_jax.data.pipeline import PipelineError
from most_jax.data.prepare import SAMPLE_RATE, PrepareError, ShardWriter
from most_jax.data.step_batches import StepBatches

KIND = "hubert"
HUBERT_FILE = "hubert.json"
MAX_FRAME_MISMATCH = 2


def _pcm16(wave: np.ndarray) -> tuple[np.ndarray, bool]:
    scaled = np.round(np.asarray(wave, np.float64) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16), bool(np.abs(scaled).max(initial=0) > 32767)


def prepare_hubert(manifest: str | Path, units_dir: str | Path, out_dir: str | Path, *,
                   max_audio_seconds: float = 30.0, overwrite: bool = False,
                   log: Callable[[str], None] = print) -> dict:
    """Writes OUT_DIR (see the module docstring) and returns its report."""
    from most_jax.speech.audio import AudioError, load_audio
    from most_jax.speech.manifest import read_manifest
    from most_jax.speech.units import UnitExtractor

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise PrepareError(f"{out_dir} already exists (use --overwrite to replace it)")
    extractor = UnitExtractor.load(units_dir)
    entries = read_manifest(manifest)
    skipped, repaired = Counter(), Counter()
    samples, frames, seconds = [], [], 0.0
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        writer = ShardWriter(tmp, 1)
        for entry in entries:
            try:
                wave, info = load_audio(entry["audio"], target_sr=SAMPLE_RATE)
            except AudioError as err:
                skipped[f"audio_{err.reason}"] += 1
                continue
            repaired.update(name for name, done in (("resampled", info.resampled), ("downmixed", info.downmixed))
                            if done)
            if len(wave) > max_audio_seconds * SAMPLE_RATE:
                skipped["over_length"] += 1
                continue
            pcm, clipped = _pcm16(wave)
            if clipped:
                repaired["clipped"] += 1
            units = extractor.frame_units(pcm.astype(np.float32) / 32768.0)  # the targets of what training reads
            if units.size == 0:
                skipped["no_units"] += 1
                continue
            writer.write(KIND, rec.encode_record(rec.Record(entry["id"], KIND, {"pcm": pcm, "units": units},
                                                            len(pcm) / SAMPLE_RATE)))
            samples.append(len(pcm))
            frames.append(int(units.size))
            seconds += len(pcm) / SAMPLE_RATE
        writer.close()
        if not samples:
            raise PrepareError(f"{manifest}: no utterance was written (skipped {dict(skipped)}); nothing to train on")
        (tmp / HUBERT_FILE).write_text(json.dumps({"num_units": extractor.num_units, "unit_rate": extractor.unit_rate,
                                                   "samples": samples, "frames": frames}))
        shutil.copytree(units_dir, tmp / rec.UNITS_DIR)
        report = {"records_written": len(samples), "items_read": len(entries), "hours": seconds / 3600.0,
                  "skipped": dict(sorted(skipped.items())), "repaired": dict(sorted(repaired.items())),
                  "num_units": extractor.num_units, "unit_rate": extractor.unit_rate}
        (tmp / rec.REPORT_FILE).write_text(json.dumps(report, indent=2))
    log(f"hubert prepare: wrote {len(samples)} records ({seconds / 3600:.3f} h) to {out_dir}; "
        f"skipped {dict(skipped) or 'none'}")
    return report


class HubertBatches(StepBatches):
    """Batch iterator for the trainer (train/loop.py BatchIterator) over a `prepare_hubert` directory."""

    def __init__(self, cfg: Config):
        import grain

        from most_jax.models.hubert.features import frame_lengths, receptive_field

        self.cfg, model = cfg, cfg.model
        directory = Path(cfg.data.records)
        meta_path = directory / HUBERT_FILE
        if not meta_path.is_file():
            raise PipelineError(f"data.records: {directory} has no {HUBERT_FILE}; not a `most hubert prepare` output")
        meta = json.loads(meta_path.read_text())
        if meta["num_units"] != model.num_clusters:
            raise PipelineError(f"{meta_path}: targets of {meta['num_units']} units, model.num_clusters is "
                                f"{model.num_clusters}")
        frame_rate = SAMPLE_RATE / model.frame_rate_samples
        if meta["unit_rate"] != frame_rate:
            raise PipelineError(f"{meta_path}: targets at {meta['unit_rate']:g} Hz, the model's frames are "
                                f"{frame_rate:g} Hz (model.conv_stride); fit the units with --rate {frame_rate:g}")
        paths = rec.shard_paths(directory, KIND)
        self.source = grain.sources.ArrayRecordDataSource([str(p) for p in paths])
        samples, frames = np.asarray(meta["samples"], np.int64), np.asarray(meta["frames"], np.int64)
        if len(self.source) != len(samples):
            raise PipelineError(f"{directory}: {len(self.source)} {KIND} records but {HUBERT_FILE} lists {len(samples)}")
        off = np.abs(frame_lengths(model, samples) - frames) > MAX_FRAME_MISMATCH
        if off.any():
            n = int(np.flatnonzero(off)[0])
            raise PipelineError(f"{directory}: record {n} has {frames[n]} target frames, the encoder makes "
                                f"{frame_lengths(model, int(samples[n]))} of its {samples[n]} samples")
        self.keep = np.flatnonzero(samples >= receptive_field(model))
        if not self.keep.size:
            raise PipelineError(f"{directory}: no record has the {receptive_field(model)} samples of one frame")
        self.width = int(round(cfg.data.max_audio_seconds * SAMPLE_RATE))
        self.step = 0

    def __next__(self) -> dict[str, np.ndarray]:
        from most_jax.models.hubert.features import frame_lengths
        from most_jax.models.hubert.loss import span_mask

        model = self.cfg.model
        rng = np.random.default_rng([self.cfg.data.seed, self.step])
        self.step += 1
        rows, hop = self.cfg.data.batch_size, model.frame_rate_samples
        t = frame_lengths(model, self.width)
        batch = {"waveforms": np.zeros((rows, self.width), np.float32), "lengths": np.zeros(rows, np.int32),
                 "targets": np.zeros((rows, t), np.int32)}
        for row, n in enumerate(rng.choice(self.keep, rows)):
            record = rec.decode_record(self.source[int(n)])
            pcm, units = record.arrays["pcm"], record.arrays["units"]
            first = int(rng.integers(0, (len(pcm) - self.width) // hop + 1)) if len(pcm) > self.width else 0
            wave = pcm[first * hop:first * hop + self.width]
            frames = frame_lengths(model, len(wave))
            targets = units[first:first + frames]
            batch["waveforms"][row, :len(wave)] = wave.astype(np.float32) / 32768.0
            batch["lengths"][row] = len(wave)
            batch["targets"][row, :frames] = np.pad(targets, (0, frames - len(targets)), mode="edge")
        batch["mask_indices"] = span_mask(rng, frame_lengths(model, batch["lengths"].astype(np.int64)), t,
                                          model.mask_prob, model.mask_length)
        return batch
