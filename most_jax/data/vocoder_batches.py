"""Training batches of the vocoder: random segments of audio with their frame-level units.

Units come from a fitted extractor (`most data train-units`), frame by frame and aligned with the
audio: one unit per hop = 16000 / unit rate samples. The extractor's `min_run` drops short runs
(which would shift the alignment), so here a short run is absorbed into the run before it (the
first into the one after): the sequence keeps its length, and its deduplication is exactly what
the extractor emits. Batch `step` is a pure function of (seed, step), so the iterator's state is
its step count and a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

from most_jax.config import Config
from most_jax.data.step_batches import StepBatches
from most_jax.models.vocoder.duration import run_lengths
from most_jax.speech.units import UnitExtractor


class VocoderDataError(ValueError):
    """The units, manifest or config do not fit together (names the culprit)."""


def aligned_units(extractor: UnitExtractor, wave_16k: np.ndarray) -> np.ndarray:
    """Frame-level unit ids of one waveform, short runs absorbed (see the module docstring)."""
    ids = extractor._nearest(extractor.unit_frames(wave_16k).astype(np.float32))
    if extractor.min_run <= 1 or ids.size == 0:
        return ids
    units, lengths = run_lengths(ids)
    keep = lengths >= extractor.min_run
    if not keep.any():  # the extractor then keeps only the longest run
        return np.full_like(ids, units[np.argmax(lengths)])
    # each dropped run takes the unit of the nearest kept run before it (after it, at the start)
    index = np.where(keep, np.arange(units.size), -1)
    index = np.maximum.accumulate(index)
    index[index < 0] = np.flatnonzero(keep)[0]
    return np.repeat(units[index], lengths)


def segment_runs(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dedup units padded to len(units), durations with 0 for padding and for the runs cut by the
    segment's two edges when there are more than two runs)."""
    dedup, lengths = run_lengths(units)
    if dedup.size > 2:
        lengths = lengths.copy()
        lengths[[0, -1]] = 0
    out_units = np.zeros(units.size, np.int32)
    out_dur = np.zeros(units.size, np.int32)
    out_units[:dedup.size], out_dur[:dedup.size] = dedup, lengths
    return out_units, out_dur


class VocoderBatches(StepBatches):
    """Batch iterator for the trainer (train/loop.py BatchIterator)."""

    def __init__(self, cfg: Config, waves: list[np.ndarray], units: list[np.ndarray], speakers: list[int]):
        self.cfg, self.hop = cfg, cfg.model.hop
        self.rows, self.frames = cfg.data.batch_size, cfg.data.seq_len
        keep = [i for i, u in enumerate(units) if len(u) >= self.frames]
        if not keep:
            longest = max((len(u) for u in units), default=0)
            raise VocoderDataError(f"data.seq_len={self.frames} unit frames: no utterance is that long (longest "
                                   f"{longest}); lower data.seq_len")
        self.waves = [waves[i] for i in keep]
        self.units = [units[i] for i in keep]
        self.speakers = [speakers[i] for i in keep]
        self.step = 0

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.cfg.data.seed, self.step])
        self.step += 1
        u, hop = self.frames, self.hop
        batch = {"units": np.zeros((self.rows, u), np.int32), "audio": np.zeros((self.rows, u * hop), np.float32),
                 "speaker": np.zeros(self.rows, np.int32), "lang": np.zeros(self.rows, np.int32),
                 "dedup_units": np.zeros((self.rows, u), np.int32), "durations": np.zeros((self.rows, u), np.int32)}
        for row, i in enumerate(rng.integers(0, len(self.units), self.rows)):
            start = int(rng.integers(0, len(self.units[i]) - u + 1))
            seg = self.units[i][start:start + u]
            audio = self.waves[i][start * hop:(start + u) * hop]
            batch["units"][row] = seg
            batch["audio"][row, :audio.size] = audio
            batch["speaker"][row] = self.speakers[i]
            batch["dedup_units"][row], batch["durations"][row] = segment_runs(seg)
        return batch


def from_manifest(cfg: Config, units_dir: str, manifest: str, max_utterances: int,
                  log=print) -> VocoderBatches:
    """Reads up to `max_utterances` files of the manifest, extracts their aligned units."""
    extractor = UnitExtractor.load(units_dir)
    model = cfg.model
    if extractor.num_units != model.num_units:
        raise VocoderDataError(f"{units_dir}: {extractor.num_units} units, model.num_units is {model.num_units}")
    hop = 16000 / extractor.unit_rate
    if hop != model.hop or model.sample_rate != 16000:
        raise VocoderDataError(f"{units_dir}: {extractor.unit_rate:g} Hz units are {hop:g} samples at 16 kHz, the "
                               f"model's upsample_rates multiply to {model.hop} (sample_rate {model.sample_rate})")
    waves, speakers, names = load_speech(manifest, max_utterances, model.num_speakers, log, "vocoder train")
    units = [aligned_units(extractor, w) for w in waves]
    log(f"vocoder train: {len(waves)} utterances, {sum(len(w) for w in waves) / 16000 / 3600:.2f} h, "
        f"{len(names)} speakers")
    return VocoderBatches(cfg, waves, units, [s or 0 for s in speakers])


def load_speech(manifest: str, max_utterances: int, num_speakers: int, log,
                what: str) -> tuple[list[np.ndarray], list[int | None], list[str]]:
    """(16 kHz float32 waveforms, speaker ids, speaker names) of the first `max_utterances` entries
    of a manifest; unreadable audio is skipped with a message. A vocoder's speaker ids are the
    manifest's speaker names in sorted order (None for every entry when it has no speakers)."""
    from most_jax.speech.audio import AudioError, load_audio
    from most_jax.speech.manifest import read_manifest

    entries = read_manifest(manifest)[:max_utterances]
    names = sorted({str(e.get("speaker", "")) for e in entries})
    if num_speakers and len(names) > num_speakers:
        raise VocoderDataError(f"{manifest}: {len(names)} speakers, model.num_speakers is {num_speakers}")
    waves, speakers = [], []
    for entry in entries:
        try:
            wave, _ = load_audio(entry["audio"])
        except AudioError as e:
            log(f"{what}: skipping {e}")
            continue
        waves.append(wave.astype(np.float32))
        speakers.append(names.index(str(entry.get("speaker", ""))) if num_speakers else None)
    return waves, speakers, names
