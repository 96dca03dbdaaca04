"""Discrete speech units: frame features -> unit-rate frames -> normalisation -> k-means ids -> dedup.

Frame features come through the `FrameFeatures` protocol (MFCC(+deltas) and log-mel fbank here;
HuBERT layer features in most_jax/models/hubert/units.py, a plug-in named in `PLUGIN_KINDS` and
imported on first use, which registers itself with `register_features`). Frames are grouped to
the unit rate (e.g. 100 Hz MFCC -> 25 Hz: 4 frames per unit) by stacking (concatenation) or mean
pooling, normalised per dimension with statistics of the fitting data, and mapped to the nearest
k-means centroid. MoST removes consecutive duplicate units (`dedup`).

Two options suit features without a learned encoder (MFCC on synthetic speech): `utterance_cmvn`
normalises each utterance's frames to zero mean and unit variance per dimension first (removing
level and spectral tilt, which differ between speakers), and `min_run` drops runs of one unit
shorter than that many unit frames before dedup. With frame-rate units (100 Hz, K of a few dozen)
the runs that survive are the steady parts of phones: about 10 units per second, and the same
sentence gets far more similar unit sequences across speaking rates and voices than with stacked
frames, and TTS on them is easier, though the demo's ASR did not learn faster (BENCHMARKS.md, "Main job").

A fitted extractor is a directory: `units.json` (feature kind and options, unit rate, pooling, K,
dedup, utterance_cmvn, min_run, normalisation mean/std) and `centroids.npy` [V, I] (the k units by feature
dims); `save` writes it atomically.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
from pathlib import Path
from typing import Callable, Iterable, Protocol, runtime_checkable

import numpy as np

from most_jax.atomic import atomic_directory
from most_jax.speech import features as feat
from most_jax.speech import kmeans

FORMAT_VERSION = 1
POOLINGS = ("stack", "mean")
_STD_FLOOR = 1e-5


@runtime_checkable
class FrameFeatures(Protocol):
    """Per-frame features of 16 kHz mono audio. `kind` names it in FEATURE_KINDS and `config()`
    returns the JSON-able keyword arguments that rebuild it there."""

    kind: str

    @property
    def frame_rate(self) -> float: ...

    @property
    def dim(self) -> int: ...

    def __call__(self, wave_16k: np.ndarray) -> np.ndarray: ...  # [frames, dim] float32

    def config(self) -> dict: ...


@dataclasses.dataclass(frozen=True)
class MfccFeatures:
    """Kaldi MFCC (13 cepstra, energy as c0) with delta and delta-delta: 39 dims at 100 Hz by default."""

    num_ceps: int = 13
    num_mel_bins: int = 23
    delta_order: int = 2
    kind = "mfcc"

    @property
    def _options(self) -> feat.MfccOptions:
        return feat.MfccOptions(num_ceps=self.num_ceps, num_mel_bins=self.num_mel_bins)

    @property
    def frame_rate(self) -> float:
        return self._options.frame.frame_rate

    @property
    def dim(self) -> int:
        return self.num_ceps * (self.delta_order + 1)

    def __call__(self, wave_16k: np.ndarray) -> np.ndarray:
        ceps = feat.mfcc(wave_16k, self._options)
        return feat.deltas(ceps, order=self.delta_order) if self.delta_order else ceps

    def config(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FbankFeatures:
    """Kaldi 80-bin log-mel filterbank at 100 Hz."""

    num_mel_bins: int = 80
    kind = "fbank"

    @property
    def frame_rate(self) -> float:
        return feat.FrameOptions().frame_rate

    @property
    def dim(self) -> int:
        return self.num_mel_bins

    def __call__(self, wave_16k: np.ndarray) -> np.ndarray:
        return feat.fbank(wave_16k, feat.FbankOptions(num_mel_bins=self.num_mel_bins))

    def config(self) -> dict:
        return dataclasses.asdict(self)


FEATURE_KINDS: dict[str, Callable[..., FrameFeatures]] = {"mfcc": MfccFeatures, "fbank": FbankFeatures}
# Kinds whose module (a model's, above this layer) is imported by name only when asked for.
PLUGIN_KINDS = {"hubert": "most_jax.models.hubert.units"}


def feature_kinds() -> list[str]:
    return sorted({*FEATURE_KINDS, *PLUGIN_KINDS})


def register_features(kind: str, factory: Callable[..., FrameFeatures]) -> None:
    """Makes `kind` loadable from a saved extractor (e.g. "hubert" from a later module)."""
    FEATURE_KINDS[kind] = factory


def build_features(kind: str, config: dict | None = None) -> FrameFeatures:
    if kind not in FEATURE_KINDS and kind in PLUGIN_KINDS:
        importlib.import_module(PLUGIN_KINDS[kind])
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; known: {feature_kinds()}")
    try:
        return FEATURE_KINDS[kind](**(config or {}))
    except TypeError as exc:
        raise ValueError(f"bad options for feature kind {kind!r}: {config} ({exc})") from exc


def frames_per_unit(features: FrameFeatures, unit_rate: float) -> int:
    ratio = features.frame_rate / unit_rate
    if unit_rate <= 0 or ratio < 1 or not math.isclose(ratio, round(ratio), abs_tol=1e-6):
        raise ValueError(f"unit rate {unit_rate} Hz must divide the {features.kind} frame rate "
                         f"{features.frame_rate} Hz by a whole number")
    return round(ratio)


def group_frames(frames: np.ndarray, factor: int, pooling: str) -> np.ndarray:
    """[U, I] -> [ceil(U / factor), I * factor] (stack) or [.., I] (mean); a partial last group is
    completed by repeating the last frame, so every frame of audio lands in some unit."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    count = -(-len(frames) // factor)
    if count * factor != len(frames):
        frames = np.concatenate([frames, np.repeat(frames[-1:], count * factor - len(frames), axis=0)])
    grouped = frames.reshape(count, factor, frames.shape[1])
    return grouped.reshape(count, -1) if pooling == "stack" else grouped.mean(axis=1)


def remove_short_runs(units: np.ndarray, min_run: int) -> np.ndarray:
    """Drops every run of one unit shorter than `min_run`: [3, 3, 5, 3, 3, 3] with 2 -> [3, 3, 3, 3, 3].
    If no run is that long, the longest run (the first of equals) is kept, so audio never loses all its units."""
    units = np.asarray(units)
    if min_run <= 1 or units.size == 0:
        return units
    starts = np.flatnonzero(np.concatenate([[True], units[1:] != units[:-1]]))
    lengths = np.diff(np.append(starts, units.size))
    keep = lengths >= min_run
    if not keep.any():
        keep[np.argmax(lengths)] = True
    return units[np.repeat(keep, lengths)]


def normalise_utterance(frames: np.ndarray) -> np.ndarray:
    """Per-dimension zero mean and unit variance over one utterance's frames [U, I]."""
    std = np.maximum(frames.std(axis=0), _STD_FLOOR)
    return ((frames - frames.mean(axis=0)) / std).astype(np.float32)


def remove_duplicates(units: np.ndarray) -> np.ndarray:
    """Collapses runs of one unit to a single unit: [3, 3, 5, 3] -> [3, 5, 3]."""
    units = np.asarray(units)
    if units.size == 0:
        return units
    keep = np.concatenate([[True], units[1:] != units[:-1]])
    return units[keep]


class UnitExtractorError(ValueError):
    """A saved unit extractor directory is missing a file or has a bad field."""


@dataclasses.dataclass(frozen=True)
class UnitExtractor:
    features: FrameFeatures
    unit_rate: float
    pooling: str
    dedup: bool
    mean: np.ndarray  # [dims]
    std: np.ndarray  # [dims]
    centroids: np.ndarray  # [V, I]: the k units by feature dims
    utterance_cmvn: bool = False
    min_run: int = 1

    def __post_init__(self):
        if self.min_run < 1:
            raise ValueError(f"min_run must be at least 1, got {self.min_run}")

    @property
    def num_units(self) -> int:
        return self.centroids.shape[0]

    @property
    def frames_per_unit(self) -> int:
        return frames_per_unit(self.features, self.unit_rate)

    def unit_frames(self, wave_16k: np.ndarray) -> np.ndarray:
        """Normalised unit-rate frames [units, dims] (before the codebook)."""
        return (self.raw_unit_frames(wave_16k) - self.mean) / self.std

    def raw_unit_frames(self, wave_16k: np.ndarray) -> np.ndarray:
        frames = self.features(np.asarray(wave_16k, np.float32))
        if len(frames) == 0:
            return np.zeros((0, self.mean.shape[0]), np.float32)
        if self.utterance_cmvn:
            frames = normalise_utterance(frames)
        return group_frames(frames, self.frames_per_unit, self.pooling)

    def _nearest(self, frames: np.ndarray) -> np.ndarray:
        # |x|^2 is the same for every centroid, so it drops out of the argmin.
        scores = (self.centroids * self.centroids).sum(axis=1)[None, :] - 2.0 * frames @ self.centroids.T
        return scores.argmin(axis=1).astype(np.int32)

    def frame_units(self, wave_16k: np.ndarray) -> np.ndarray:
        """The nearest centroid of every unit-rate frame (int32 [units]): no short-run removal, no dedup."""
        return self._nearest(self.unit_frames(wave_16k).astype(np.float32))

    def extract(self, wave_16k: np.ndarray) -> np.ndarray:
        """Unit ids (int32, 0..K-1) of one 16 kHz mono waveform; empty for audio under one frame."""
        return self._finish(self.frame_units(wave_16k))

    def _finish(self, units: np.ndarray) -> np.ndarray:
        units = remove_short_runs(units, self.min_run)
        return remove_duplicates(units) if self.dedup else units

    def extract_batch(self, waves: Iterable[np.ndarray]) -> list[np.ndarray]:
        """`extract` for many waveforms, with one codebook search over all their frames."""
        frames = [self.unit_frames(w).astype(np.float32) for w in waves]
        if not frames:
            return []
        ids = self._nearest(np.concatenate(frames))
        pieces = np.split(ids, np.cumsum([len(f) for f in frames])[:-1])
        return [self._finish(p) for p in pieces]

    @classmethod
    def fit(cls, waves: Iterable[np.ndarray], features: FrameFeatures, unit_rate: float = 25.0,
            pooling: str = "stack", dedup: bool = True, options: kmeans.KMeansOptions = kmeans.KMeansOptions(),
            progress: Callable[[int, float, int], None] | None = None, utterance_cmvn: bool = False,
            min_run: int = 1) -> "UnitExtractor":
        """Normalisation statistics and k-means codebook from 16 kHz waveforms."""
        shell = cls(features, unit_rate, pooling, dedup, np.zeros(0), np.ones(0), np.zeros((0, 0)), utterance_cmvn,
                    min_run)
        frames = [f for f in (shell.raw_unit_frames(w) for w in waves) if len(f)]
        if not frames:
            raise ValueError("no audio frames to fit units on")
        data = np.concatenate(frames).astype(np.float64)
        mean, std = data.mean(axis=0), np.maximum(data.std(axis=0), _STD_FLOOR)
        normalised = ((data - mean) / std).astype(np.float32)
        centroids = kmeans.fit(normalised, options, progress)
        return dataclasses.replace(shell, mean=mean.astype(np.float32), std=std.astype(np.float32), centroids=centroids)

    def metadata(self) -> dict:
        return {"format_version": FORMAT_VERSION,
                "features": {"kind": self.features.kind, **self.features.config()},
                "unit_rate": self.unit_rate, "pooling": self.pooling, "dedup": self.dedup,
                "utterance_cmvn": self.utterance_cmvn, "min_run": self.min_run,
                "num_units": self.num_units, "dims": int(self.centroids.shape[1]),
                "normalization": {"mean": self.mean.tolist(), "std": self.std.tolist()}}

    def save(self, directory: str | os.PathLike, extra_metadata: dict | None = None) -> None:
        """Writes `directory` (replacing it) via a temporary sibling, renamed into place when complete."""
        with atomic_directory(directory, overwrite=True) as tmp:
            np.save(tmp / "centroids.npy", self.centroids.astype(np.float32))
            meta = self.metadata() | ({"fit": extra_metadata} if extra_metadata else {})
            (tmp / "units.json").write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "UnitExtractor":
        directory = Path(directory)
        meta_path, centroids_path = directory / "units.json", directory / "centroids.npy"
        for path in (meta_path, centroids_path):
            if not path.is_file():
                raise UnitExtractorError(f"{path}: missing (not a unit extractor directory?)")
        try:
            meta = json.loads(meta_path.read_text())
            centroids = np.load(centroids_path)
        except (OSError, ValueError) as exc:
            raise UnitExtractorError(f"{directory}: unreadable extractor files ({exc})") from exc

        def field(name):
            if name not in meta:
                raise UnitExtractorError(f"{meta_path}: missing field {name!r}")
            return meta[name]

        if field("format_version") != FORMAT_VERSION:
            raise UnitExtractorError(f"{meta_path}: format_version {meta['format_version']} is not {FORMAT_VERSION}")
        feature_config = dict(field("features"))
        try:
            features = build_features(feature_config.pop("kind", None), feature_config)
        except ValueError as exc:
            raise UnitExtractorError(f"{meta_path}: field 'features': {exc}") from exc
        norm = field("normalization")
        mean = np.asarray(norm["mean"], np.float32)
        std = np.asarray(norm["std"], np.float32)
        if centroids.ndim != 2 or centroids.shape[0] != field("num_units") or centroids.shape[1] != mean.shape[0] \
                or std.shape != mean.shape:
            raise UnitExtractorError(f"{centroids_path}: shape {centroids.shape} does not match num_units "
                                     f"{meta['num_units']} and {mean.shape[0]} normalisation dims")
        pooling = field("pooling")
        if pooling not in POOLINGS:
            raise UnitExtractorError(f"{meta_path}: field 'pooling' must be one of {POOLINGS}, got {pooling!r}")
        # Extractors saved before utterance_cmvn / min_run existed used neither.
        min_run = meta.get("min_run", 1)
        if not isinstance(min_run, int) or min_run < 1:
            raise UnitExtractorError(f"{meta_path}: field 'min_run' must be a positive integer, got {min_run!r}")
        extractor = cls(features, float(field("unit_rate")), pooling, bool(field("dedup")), mean, std,
                        centroids.astype(np.float32), bool(meta.get("utterance_cmvn", False)), min_run)
        try:
            extractor.frames_per_unit
        except ValueError as exc:
            raise UnitExtractorError(f"{meta_path}: field 'unit_rate': {exc}") from exc
        return extractor


def fit_from_manifest(manifest: str | os.PathLike, out_dir: str | os.PathLike, *, features: str = "mfcc",
                      feature_options: dict | None = None, unit_rate: float = 25.0, pooling: str = "stack",
                      dedup: bool = True, utterance_cmvn: bool = False, min_run: int = 1, max_hours: float = 10.0,
                      options: kmeans.KMeansOptions = kmeans.KMeansOptions(),
                      log: Callable[[str], None] = print) -> dict:
    """Fits a unit extractor on the audio of a manifest (up to `max_hours`) and saves it to `out_dir`.

    Unreadable files are skipped and counted by reason. Returns the fit report, also stored under
    "fit" in units.json: files, hours, skips, k-means options, units per second and the fraction of
    unit frames kept after duplicate removal (measured on the first 200 files).
    """
    from most_jax.speech.audio import AudioError, load_audio
    from most_jax.speech.manifest import read_manifest

    entries = read_manifest(manifest)
    try:
        frame_features = build_features(features, feature_options)
        frames_per_unit(frame_features, unit_rate)  # fail on a bad rate before reading any audio
    except ValueError as exc:
        raise UnitExtractorError(str(exc)) from None
    skipped: dict[str, int] = {}
    totals = {"files": 0, "seconds": 0.0}
    sample: list[np.ndarray] = []

    def waves():
        # A generator, so only the (much smaller) unit-rate frames of each file are held in memory.
        for entry in entries:
            if totals["seconds"] >= max_hours * 3600:
                return
            try:
                wave, _ = load_audio(entry["audio"])
            except AudioError as exc:
                skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
                log(f"train-units: skipping {exc}")
                continue
            totals["files"] += 1
            totals["seconds"] += len(wave) / 16000
            if len(sample) < 200:
                sample.append(wave)
            if totals["files"] % 500 == 0:
                log(f"train-units: featurised {totals['files']} files, {totals['seconds'] / 3600:.2f} h")
            yield wave

    def progress(epoch: int, inertia: float, reseeded: int) -> None:
        log(f"train-units: k-means epoch {epoch + 1}/{options.epochs}: mean batch inertia {inertia:.3f}, "
            f"{reseeded} empty centroids re-seeded")

    try:
        extractor = UnitExtractor.fit(waves(), frame_features, unit_rate, pooling, dedup, options, progress,
                                      utterance_cmvn, min_run)
    except ValueError as exc:
        raise UnitExtractorError(f"cannot fit on {manifest}: {exc} (skipped {skipped})") from exc
    frames = sum(len(extractor.raw_unit_frames(w)) for w in sample)
    emitted = sum(len(u) for u in extractor.extract_batch(sample))
    fit_info = {"manifest": str(manifest), "files": totals["files"], "hours": round(totals["seconds"] / 3600, 4),
                "skipped": skipped, "kmeans": dataclasses.asdict(options),
                "units_per_second": round(emitted / max(sum(len(w) for w in sample) / 16000, 1e-9), 2),
                "kept_after_dedup": round(emitted / max(frames, 1), 4), "sample_files": len(sample)}
    extractor.save(out_dir, fit_info)
    return fit_info

