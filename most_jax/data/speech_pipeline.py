"""U2++ training pipeline: utterance records -> length buckets -> fbank + WeNet augmentation -> padded batches.

The batch order is planned, not streamed: epoch e shuffles the utterances with (data.seed, e),
draws each utterance's speed (0.9 / 1.0 / 1.1 with data.speech.speed_perturb), puts it in the
first bucket whose padded frames hold its (perturbed) fbank frames, cuts each bucket into batches
of data.batch_size utterances (the remainder waits for the next epoch's shuffle) and shuffles the
batches. Batch i of that endless plan is the same on every JAX process, so all of them run the
same bucket shape at each step; process p reads rows p, p + P, ... of it (P processes). Each row is
then computed from its record alone with a NumPy generator seeded by (data.seed, i, row): speed
perturbation (soxr resampling, as sox's speed + rate), Kaldi fbank with dither, SpecAugment (time
then frequency masks) and spec-sub, in WeNet's order and with WeNet's sampling rules. Iterator
state is the next batch index, so a resumed run reads and augments exactly what an uninterrupted
one would have.

A batch (models/u2pp/family.py): feats float32 [B, U_b, I] (U_b: the bucket's frames, zero padded),
feats_lengths int32 [B], target int32 [B, data.seq_len] (zero padded) and target_lengths int32 [B].
Utterances longer than the largest bucket, or with more than data.seq_len tokens, are left out
(counted in a warning).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
from pathlib import Path

import grain
import numpy as np

from most_jax.config import Config, DataConfig, SpeechDataConfig
from most_jax.data import records as rec
from most_jax.data.buckets import bucket_frames
from most_jax.data.pipeline import PipelineError
from most_jax.data.prepare import CMVN_FILE, SAMPLE_RATE, U2PP_FILE
from most_jax.speech.features import FbankOptions, FrameOptions, fbank

log = logging.getLogger(__name__)

SPEEDS = (0.9, 1.0, 1.1)


class SpeechData:
    """A directory written by `most data prepare --family u2pp`."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        meta_path = self.directory / U2PP_FILE
        if not meta_path.is_file():
            raise PipelineError(f"{self.directory}: no {U2PP_FILE}; not a `most data prepare --family u2pp` output")
        meta = json.loads(meta_path.read_text())
        self.vocab_size = int(meta["vocab_size"])
        self.samples = np.asarray(meta["samples"], np.int64)
        self.target_lengths = np.asarray(meta["target_lengths"], np.int64)
        paths = rec.shard_paths(self.directory, "utterance")
        if not paths:
            raise PipelineError(f"{self.directory}: no utterance-*.array_record shards")
        self.source = grain.sources.ArrayRecordDataSource([str(p) for p in paths])
        if len(self.source) != len(self.samples):
            raise PipelineError(f"{self.directory}: {len(self.source)} utterance records but {U2PP_FILE} lists "
                                f"{len(self.samples)}")

    def cmvn(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, istd) float32 [I] of the training fbank, as WeNet's load_cmvn computes them."""
        from most_jax.checkpoint.wenet import read_cmvn_json

        return read_cmvn_json(self.directory / CMVN_FILE)


def perturbed_samples(samples: np.ndarray, speeds: np.ndarray) -> np.ndarray:
    """Samples after resampling by `speeds` (soxr's output length for a rate ratio 1 / speed)."""
    return np.ceil(np.asarray(samples) / np.asarray(speeds) - 1e-9).astype(np.int64)


def frame_counts(samples: np.ndarray) -> np.ndarray:
    """features.num_frames of every length at once (25 ms frames every 10 ms, whole frames only)."""
    frame = FrameOptions()
    samples = np.asarray(samples, np.int64)
    return np.where(samples < frame.frame_length, 0, 1 + (samples - frame.frame_length) // frame.frame_shift)


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """One epoch's batches: rows[k] are the record indices of batch k, speeds[k] their speeds,
    bucket[k] its bucket."""

    rows: np.ndarray  # int64 [K, batch_size]
    speeds: np.ndarray  # float64 [K, batch_size]
    bucket: np.ndarray  # int64 [K]


def plan_epoch(samples: np.ndarray, target_lengths: np.ndarray, cfg: DataConfig, epoch: int) -> EpochPlan:
    buckets = np.asarray(bucket_frames(cfg))
    rng = np.random.default_rng([cfg.seed, epoch])
    n = len(samples)
    order = rng.permutation(n)
    speeds = rng.choice(SPEEDS, size=n) if cfg.speech.speed_perturb else np.ones(n)
    frames = frame_counts(perturbed_samples(samples, speeds))
    bucket_of = np.searchsorted(buckets, frames)  # first bucket with frames <= its size
    usable = (bucket_of < len(buckets)) & (frames > 0) & (target_lengths <= cfg.seq_len) & (target_lengths > 0)
    rows, bucket = [], []
    for b in range(len(buckets)):
        members = order[usable[order] & (bucket_of[order] == b)]
        whole = len(members) // cfg.batch_size * cfg.batch_size
        rows += list(members[:whole].reshape(-1, cfg.batch_size))
        bucket += [b] * (whole // cfg.batch_size)
    batch_order = rng.permutation(len(rows))
    rows_arr = np.asarray(rows, np.int64).reshape(-1, cfg.batch_size)[batch_order]
    return EpochPlan(rows_arr, speeds[rows_arr], np.asarray(bucket, np.int64)[batch_order])


class _Plan(grain.MapDataset):
    """The endless batch plan: element i is (i, bucket, record indices, speeds) of global batch i."""

    def __init__(self, data: SpeechData, cfg: DataConfig):
        super().__init__()
        self._samples, self._targets, self._cfg = data.samples, data.target_lengths, cfg
        self._epoch_sizes: list[int] = []
        first = self._epoch(0)
        if len(first.rows) == 0:
            raise PipelineError(self._too_few())
        frames = frame_counts(self._samples)
        left_out = int(((frames > bucket_frames(cfg)[-1]) | (self._targets > cfg.seq_len)).sum())
        if left_out:
            log.warning("%d of %d utterances are longer than the largest bucket (%d frames) or data.seq_len (%d "
                        "tokens) and are left out", left_out, len(frames), bucket_frames(cfg)[-1], cfg.seq_len)

    def _too_few(self) -> str:
        return (f"data.records: no bucket of {bucket_frames(self._cfg)} frames gathers data.batch_size="
                f"{self._cfg.batch_size} utterances of at most data.seq_len={self._cfg.seq_len} tokens "
                f"({len(self._samples)} utterances)")

    @functools.lru_cache(maxsize=2)
    def _epoch(self, epoch: int) -> EpochPlan:
        return plan_epoch(self._samples, self._targets, self._cfg, epoch)

    def _locate(self, index: int) -> tuple[int, int]:
        epoch, start = 0, 0
        while True:
            if epoch == len(self._epoch_sizes):
                self._epoch_sizes.append(len(self._epoch(epoch).rows))
                if self._epoch_sizes[-1] == 0:
                    raise PipelineError(self._too_few() + f" in epoch {epoch}")
            if index < start + self._epoch_sizes[epoch]:
                return epoch, index - start
            start += self._epoch_sizes[epoch]
            epoch += 1

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, k = self._locate(int(index))
        plan = self._epoch(epoch)
        return {"index": int(index), "bucket": int(plan.bucket[k]), "rows": plan.rows[k], "speeds": plan.speeds[k]}

    def __str__(self) -> str:
        return "U2ppBatchPlan"


def speed_perturb(wave: np.ndarray, speed: float) -> np.ndarray:
    """The waveform played `speed` times faster (pitch shifts with it), at the same sample rate."""
    if speed == 1.0:
        return wave
    import soxr

    return soxr.resample(wave, SAMPLE_RATE * speed, SAMPLE_RATE).astype(np.float32)


def spec_aug(feats_UI: np.ndarray, rng: np.random.Generator, cfg: SpeechDataConfig) -> np.ndarray:
    """WeNet's spec_aug: num_t_mask time masks, then num_f_mask frequency masks, set to 0; each
    starts uniformly in the axis and is 1..max wide (cut at the end)."""
    y = feats_UI.copy()
    frames, bins = y.shape
    for _ in range(cfg.num_t_mask):
        start = int(rng.integers(0, frames))
        y[start:min(frames, start + int(rng.integers(1, cfg.max_t + 1))), :] = 0
    for _ in range(cfg.num_f_mask):
        start = int(rng.integers(0, bins))
        y[:, start:min(bins, start + int(rng.integers(1, cfg.max_f + 1)))] = 0
    return y


def spec_sub(feats_UI: np.ndarray, rng: np.random.Generator, cfg: SpeechDataConfig) -> np.ndarray:
    """WeNet's spec_sub: num_t_sub times, frames start..end (1..spec_sub_max_t long) are replaced by
    the original frames `pos` earlier, pos uniform in 0..start."""
    y = feats_UI.copy()
    frames = y.shape[0]
    for _ in range(cfg.num_t_sub):
        start = int(rng.integers(0, frames))
        end = min(frames, start + int(rng.integers(1, cfg.spec_sub_max_t + 1)))
        pos = int(rng.integers(0, start + 1))
        y[start:end, :] = feats_UI[start - pos:end - pos, :]
    return y


def utterance_features(pcm: np.ndarray, speed: float, rng: np.random.Generator, cfg: SpeechDataConfig,
                       num_bins: int) -> np.ndarray:
    """fbank [U, num_bins] of one training utterance with WeNet's train-time processing."""
    wave = speed_perturb(pcm.astype(np.float32) / 32768.0, speed)
    feats = fbank(wave, FbankOptions(FrameOptions(dither=cfg.dither), num_mel_bins=num_bins), rng)
    if cfg.spec_aug:
        feats = spec_aug(feats, rng, cfg)
    if cfg.spec_sub:
        feats = spec_sub(feats, rng, cfg)
    return feats


@dataclasses.dataclass(frozen=True)
class _MakeBatch:
    """A planned batch -> this process's rows, featurised and padded to the bucket's shape."""

    source: object
    cfg: DataConfig
    num_bins: int
    process_index: int
    process_count: int

    def __call__(self, plan: dict) -> dict[str, np.ndarray]:
        frames = bucket_frames(self.cfg)[plan["bucket"]]
        rows = range(self.process_index, self.cfg.batch_size, self.process_count)
        b = len(rows)
        out = {"feats": np.zeros((b, frames, self.num_bins), np.float32),
               "feats_lengths": np.zeros(b, np.int32),
               "target": np.zeros((b, self.cfg.seq_len), np.int32),
               "target_lengths": np.zeros(b, np.int32)}
        for j, row in enumerate(rows):
            record = rec.decode_record(self.source[int(plan["rows"][row])])
            rng = np.random.default_rng([self.cfg.seed, plan["index"], row])
            feats = utterance_features(record.arrays["pcm"], float(plan["speeds"][row]), rng, self.cfg.speech,
                                       self.num_bins)[:frames]  # resampling may round one frame over the plan
            target = record.arrays["target"]
            out["feats"][j, :len(feats)] = feats
            out["feats_lengths"][j] = len(feats)
            out["target"][j, :len(target)] = target
            out["target_lengths"][j] = len(target)
        return out


def build_speech_dataset(cfg: Config, data: SpeechData | None = None, *, process_index: int | None = None,
                         process_count: int | None = None) -> grain.IterDataset:
    """The U2++ training stream of one JAX process (defaults: jax.process_index() / process_count())."""
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    d = cfg.data
    if d.batch_size % process_count:
        raise PipelineError(f"data.batch_size={d.batch_size} does not split over {process_count} processes")
    data = data if data is not None else SpeechData(d.records)
    if data.vocab_size != cfg.model.vocab_size:
        raise PipelineError(f"model.vocab_size={cfg.model.vocab_size}, but {data.directory} was tokenised for "
                            f"vocab_size {data.vocab_size} (tokenizer size + 2: blank and sos/eos)")
    batches = _Plan(data, d).map(_MakeBatch(data.source, d, cfg.model.input_dim, process_index, process_count))
    stream = batches.to_iter_dataset()
    if d.num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # see data/pipeline.py (google/grain#1355)
            flags.FLAGS.mark_as_parsed()
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.num_workers))
    return stream
