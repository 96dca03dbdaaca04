"""Reading audio files: any format libsndfile reads (wav, flac, ogg, ...), mixed to mono, resampled.

`load_audio` either returns a finite float32 mono waveform at the target rate with an `AudioInfo`
saying what was done to it, or raises `AudioError` with one of `AUDIO_ERROR_REASONS`:

- "missing": no file at the path;
- "unreadable": not audio libsndfile understands (garbage bytes, a directory, unknown format);
- "empty": a zero-byte file or zero audio frames;
- "truncated": the file ends before the length its header declares (a cut-off download);
  with `allow_truncated=True` the readable part is returned instead and `AudioInfo.truncated` is set;
- "invalid_samples": NaN or infinite sample values (float formats).
"""

from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np
import soundfile as sf
import soxr

AUDIO_ERROR_REASONS = ("missing", "unreadable", "empty", "truncated", "invalid_samples")


class AudioError(Exception):
    """A bad audio file; `reason` is one of AUDIO_ERROR_REASONS."""

    def __init__(self, reason: str, path: str | os.PathLike, detail: str):
        if reason not in AUDIO_ERROR_REASONS:
            raise ValueError(f"unknown AudioError reason {reason!r}; expected one of {AUDIO_ERROR_REASONS}")
        self.reason, self.path, self.detail = reason, str(path), detail
        super().__init__(f"{self.path}: {reason}: {detail}")


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    path: str
    sample_rate: int  # of the file
    channels: int  # of the file
    frames: int  # frames read from the file, at its own rate
    format: str  # libsndfile's format/subtype, e.g. "WAV/PCM_16"
    resampled: bool
    downmixed: bool
    truncated: bool

    @property
    def duration(self) -> float:
        """Seconds of audio returned."""
        return self.frames / self.sample_rate


def _wav_data_shortfall(path: str) -> int:
    """Bytes missing from a RIFF/WAVE data chunk (0 if complete, or not a plain RIFF file).

    libsndfile silently shortens a truncated WAV to the bytes present, so this checks the header."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return 0
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"data":
                # 0 and 0xFFFFFFFF mark a stream written without a final length: nothing to check.
                if chunk_size in (0, 0xFFFFFFFF):
                    return 0
                return max(0, chunk_size - (size - offset - 8))
            offset += 8 + chunk_size + (chunk_size & 1)  # chunks are word aligned
    return 0


def _read(path: str, allow_truncated: bool) -> tuple[np.ndarray, int, str, bool]:
    """(frames [N, channels], sample rate, "FORMAT/SUBTYPE", truncated)."""
    try:
        handle = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError("unreadable", path, f"libsndfile cannot open it ({exc})") from exc
    with handle:
        declared = handle.frames
        blocks, truncated = [], False
        while True:
            try:
                # Small blocks, so that a decoder error late in the file keeps what came before it.
                data = handle.read(4096, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                truncated, detail = True, f"decoding failed after {sum(len(b) for b in blocks)} frames ({exc})"
                break
            if len(data) == 0:
                break
            blocks.append(data)
        wave = np.concatenate(blocks) if blocks else np.zeros((0, handle.channels), np.float32)
        if not truncated and 0 < declared < 2 ** 62 and declared != len(wave):
            truncated, detail = True, f"header declares {declared} frames, {len(wave)} decoded"
        if not truncated and handle.format == "WAV":
            missing = _wav_data_shortfall(path)
            truncated, detail = missing > 0, f"data chunk is {missing} bytes shorter than its header declares"
        if truncated and (not allow_truncated or len(wave) == 0):
            raise AudioError("truncated", path, detail)
        return wave, handle.samplerate, f"{handle.format}/{handle.subtype}", truncated


SAMPLE_RATE = 16000  # what the unit extractors and feature front ends read


def resample(wave: np.ndarray, sample_rate: int, target_sr: int) -> np.ndarray:
    """float32 mono `wave` at `sample_rate` -> at `target_sr` (soxr, high quality)."""
    return np.asarray(soxr.resample(wave, sample_rate, target_sr, quality="HQ"), np.float32)


def load_audio(path: str | os.PathLike, target_sr: int = SAMPLE_RATE,
               allow_truncated: bool = False) -> tuple[np.ndarray, AudioInfo]:
    """Reads `path` -> (float32 mono waveform at `target_sr`, AudioInfo); raises AudioError on a bad file."""
    path = os.fspath(path)
    if target_sr <= 0:
        raise ValueError(f"target_sr must be positive, got {target_sr}")
    if not os.path.exists(path):
        raise AudioError("missing", path, "no such file")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise AudioError("empty", path, "zero-byte file")
    wave, sample_rate, format_name, truncated = _read(path, allow_truncated)
    if len(wave) == 0:
        raise AudioError("empty", path, "no audio frames")
    if not np.isfinite(wave).all():
        raise AudioError("invalid_samples", path, f"{int((~np.isfinite(wave)).sum())} NaN or infinite samples")
    channels = wave.shape[1]
    mono = wave.mean(axis=1) if channels > 1 else wave[:, 0]
    resampled = sample_rate != target_sr
    if resampled:
        mono = resample(mono, sample_rate, target_sr)
    info = AudioInfo(path=path, sample_rate=sample_rate, channels=channels, frames=len(wave),
                     format=format_name, resampled=resampled, downmixed=channels > 1,
                     truncated=truncated)
    return np.ascontiguousarray(mono, dtype=np.float32), info
