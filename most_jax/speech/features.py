"""Kaldi-compatible log-mel filterbank, MFCC and delta features in vectorised NumPy.

Follows Kaldi's conventions (and so matches the `kaldi-native-fbank` package on the same options):
frames of 25 ms every 10 ms with snip_edges (only whole frames, the first starting at sample 0);
per frame: remove the DC offset, take the raw log-energy, pre-emphasise (x[0] -= 0.97 x[0]), apply the
povey window (Hann ** 0.85), zero-pad to a power of two, power spectrum; triangular mel filters on
the mel scale 1127 ln(1 + f / 700) between low_freq and high_freq (<= 0 means Nyquist + high_freq);
log with a floor of float32 epsilon. Dither (`FrameOptions.dither` > 0, training only) adds
dither x N(0, 1) to every sample of every frame after the 32768 scaling and before the DC removal,
fresh noise per frame as Kaldi's ExtractWindow does; it needs a NumPy Generator. Without dither the
features are deterministic.

Input waveforms are float in [-1, 1]; they are multiplied by `wave_scale` = 32768 first, as Kaldi
reads 16-bit samples as integers, so absolute levels (and the log floor) match Kaldi recipes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_LOG_FLOOR = float(np.finfo(np.float32).eps)
WINDOWS = ("povey", "hanning", "hamming", "rectangular")


@dataclasses.dataclass(frozen=True)
class FrameOptions:
    sample_rate: int = 16000
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemph_coeff: float = 0.97
    remove_dc_offset: bool = True
    window: str = "povey"
    round_to_power_of_two: bool = True
    wave_scale: float = 32768.0
    dither: float = 0.0  # Kaldi's default is 1.0; WeNet recipes train with 0.1 and decode with 0

    def __post_init__(self):
        if self.window not in WINDOWS:
            raise ValueError(f"FrameOptions.window must be one of {WINDOWS}, got {self.window!r}")
        if self.frame_shift_ms <= 0 or self.frame_length_ms <= 0:
            raise ValueError("FrameOptions.frame_length_ms and frame_shift_ms must be positive")
        if self.dither < 0:
            raise ValueError(f"FrameOptions.dither must be >= 0, got {self.dither}")

    @property
    def frame_length(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def frame_shift(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    @property
    def fft_size(self) -> int:
        n = self.frame_length
        return 1 << (n - 1).bit_length() if self.round_to_power_of_two else n

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.frame_shift


@dataclasses.dataclass(frozen=True)
class FbankOptions:
    frame: FrameOptions = FrameOptions()
    num_mel_bins: int = 80
    low_freq: float = 20.0
    high_freq: float = 0.0


@dataclasses.dataclass(frozen=True)
class MfccOptions:
    """Kaldi's MFCC defaults: 23 mel bins, 13 cepstra, lifter 22, c0 replaced by the raw log-energy."""

    frame: FrameOptions = FrameOptions()
    num_mel_bins: int = 23
    low_freq: float = 20.0
    high_freq: float = 0.0
    num_ceps: int = 13
    cepstral_lifter: float = 22.0
    use_energy: bool = True
    energy_floor: float = 0.0


def num_frames(num_samples: int, frame: FrameOptions) -> int:
    if num_samples < frame.frame_length:
        return 0
    return 1 + (num_samples - frame.frame_length) // frame.frame_shift


def _frames(wave: np.ndarray, frame: FrameOptions, rng: np.random.Generator | None = None) -> np.ndarray:
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"waveform must be 1-D (mono), got shape {wave.shape}")
    if not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"waveform must be floating point in [-1, 1], got dtype {wave.dtype}")
    count = num_frames(len(wave), frame)
    if count == 0:
        return np.zeros((0, frame.frame_length), np.float64)
    starts = np.arange(count) * frame.frame_shift
    frames = wave.astype(np.float64)[starts[:, None] + np.arange(frame.frame_length)] * frame.wave_scale
    if frame.dither > 0:
        if rng is None:
            raise ValueError(f"FrameOptions.dither={frame.dither} needs a random generator (rng=)")
        frames = frames + frame.dither * rng.standard_normal(frames.shape)
    return frames


def window_function(kind: str, length: int) -> np.ndarray:
    n = np.arange(length)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / (length - 1))
    if kind == "povey":
        return hann ** 0.85
    if kind == "hanning":
        return hann
    if kind == "hamming":
        return 0.54 - 0.46 * np.cos(2 * np.pi * n / (length - 1))
    if kind == "rectangular":
        return np.ones(length)
    raise ValueError(f"unknown window {kind!r}; choose one of {WINDOWS}")


def _power_spectrum(wave: np.ndarray, frame: FrameOptions,
                    rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(power spectrum [T, fft_size/2 + 1], raw log-energy per frame [T])."""
    frames = _frames(wave, frame, rng)
    if frame.remove_dc_offset:
        frames = frames - frames.mean(axis=1, keepdims=True)
    log_energy = np.log(np.maximum((frames ** 2).sum(axis=1), _LOG_FLOOR))
    if frame.preemph_coeff:
        # Kaldi's first sample is pre-emphasised against itself.
        previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        frames = frames - frame.preemph_coeff * previous
    frames = frames * window_function(frame.window, frame.frame_length)
    spectrum = np.fft.rfft(frames, n=frame.fft_size, axis=1)
    return spectrum.real ** 2 + spectrum.imag ** 2, log_energy


def mel_scale(freq_hz):
    return 1127.0 * np.log1p(np.asarray(freq_hz, np.float64) / 700.0)


def mel_banks(num_bins: int, frame: FrameOptions, low_freq: float, high_freq: float) -> np.ndarray:
    """Triangular filters [num_bins, fft_size / 2] (Kaldi leaves out the Nyquist bin)."""
    nyquist = 0.5 * frame.sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0 <= low_freq < high <= nyquist:
        raise ValueError(f"mel range must satisfy 0 <= low_freq < high_freq <= Nyquist ({nyquist} Hz); "
                         f"got low_freq={low_freq}, high_freq={high_freq} (-> {high})")
    num_fft_bins = frame.fft_size // 2
    mel_low, mel_high = mel_scale(low_freq), mel_scale(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + delta * np.arange(num_bins)[:, None]
    center, right = left + delta, left + 2 * delta
    mel = mel_scale(np.arange(num_fft_bins) * frame.sample_rate / frame.fft_size)[None, :]
    rising, falling = (mel - left) / (center - left), (right - mel) / (right - center)
    banks = np.where(mel <= center, rising, falling) * ((mel > left) & (mel < right))
    empty = np.flatnonzero(banks.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(f"num_mel_bins={num_bins} is too large for fft_size {frame.fft_size}: "
                         f"mel bins {empty.tolist()} cover no FFT bin")
    return banks


def _log_mel(power: np.ndarray, banks: np.ndarray) -> np.ndarray:
    energies = power[:, :banks.shape[1]] @ banks.T
    return np.log(np.maximum(energies, _LOG_FLOOR))


def fbank(wave: np.ndarray, options: FbankOptions = FbankOptions(),
          rng: np.random.Generator | None = None) -> np.ndarray:
    """Log-mel filterbank energies [num_frames, num_mel_bins], float32 (`rng`: the dither's noise)."""
    power, _ = _power_spectrum(wave, options.frame, rng)
    banks = mel_banks(options.num_mel_bins, options.frame, options.low_freq, options.high_freq)
    return _log_mel(power, banks).astype(np.float32)


def dct_matrix(num_ceps: int, num_bins: int) -> np.ndarray:
    """Orthonormal DCT-II rows [num_ceps, num_bins], as Kaldi's ComputeDctMatrix."""
    if not 0 < num_ceps <= num_bins:
        raise ValueError(f"num_ceps must be in 1..num_mel_bins ({num_bins}), got {num_ceps}")
    k, n = np.arange(num_ceps)[:, None], np.arange(num_bins)[None, :]
    matrix = np.sqrt(2.0 / num_bins) * np.cos(np.pi / num_bins * (n + 0.5) * k)
    matrix[0] = np.sqrt(1.0 / num_bins)
    return matrix


def mfcc(wave: np.ndarray, options: MfccOptions = MfccOptions()) -> np.ndarray:
    """MFCCs [num_frames, num_ceps], float32; coefficient 0 is the raw log-energy when use_energy."""
    power, log_energy = _power_spectrum(wave, options.frame)
    banks = mel_banks(options.num_mel_bins, options.frame, options.low_freq, options.high_freq)
    ceps = _log_mel(power, banks) @ dct_matrix(options.num_ceps, options.num_mel_bins).T
    if options.cepstral_lifter:
        q = options.cepstral_lifter
        ceps = ceps * (1.0 + 0.5 * q * np.sin(np.pi * np.arange(options.num_ceps) / q))
    if options.use_energy:
        floor = np.log(options.energy_floor) if options.energy_floor > 0 else -np.inf
        ceps[:, 0] = np.maximum(log_energy, floor)
    return ceps.astype(np.float32)


def deltas(features: np.ndarray, order: int = 2, window: int = 2) -> np.ndarray:
    """[U, I] -> [U, I * (order + 1)] (frames, feature bins): features, then Kaldi's delta and delta-delta (edges repeat the
    first/last frame). Each order's filter is the previous one convolved with the delta window."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be [frames, dims], got shape {features.shape}")
    taps = np.arange(-window, window + 1, dtype=np.float64)
    base = taps / (taps ** 2).sum()
    filters = [np.ones(1)]
    for _ in range(order):
        filters.append(np.convolve(filters[-1], base))
    num_frames_ = features.shape[0]
    outputs = [features.astype(np.float64)]
    for filt in filters[1:]:
        half = len(filt) // 2
        index = np.clip(np.arange(num_frames_)[:, None] + np.arange(-half, half + 1)[None, :], 0, num_frames_ - 1)
        outputs.append(np.tensordot(features[index].astype(np.float64), filt, axes=([1], [0])))
    return np.concatenate(outputs, axis=1).astype(np.float32)
