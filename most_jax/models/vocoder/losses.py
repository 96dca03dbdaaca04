"""HiFi-GAN's training losses: log-mel L1, least-squares GAN, feature matching.

The log-mel is HiFi-GAN's (meldataset.mel_spectrogram): reflect padding of (n_fft - hop) / 2 on
both sides, an uncentred STFT with a periodic Hann window, magnitude sqrt(re^2 + im^2 + 1e-9), a
Slaney-normalised Slaney-scale mel filter bank (librosa's default), log(max(x, 1e-5)).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from most_jax.models.vocoder.discriminators import Features, Scores


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 / 200 mel per Hz), logarithmic above."""
    hz = np.asarray(hz, np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(hz < 1000.0, 3.0 * hz / 200.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(mel < 15.0, 200.0 * mel / 3.0, 1000.0 * np.exp(log_step * (mel - 15.0)))


@functools.lru_cache(maxsize=8)
def mel_filters(sample_rate: int, n_fft: int, bins: int, fmin: float, fmax: float) -> np.ndarray:
    """[n_fft // 2 + 1, bins] triangular filters, each scaled to unit area over its band (Slaney)."""
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), bins + 2))
    lower = (freqs[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])[None, :]
    upper = (edges[None, 2:] - freqs[:, None]) / (edges[2:] - edges[1:-1])[None, :]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return (weights * (2.0 / (edges[2:] - edges[:-2]))[None, :]).astype(np.float32)


def log_mel(wave_BT: jax.Array, *, sample_rate: int, n_fft: int, hop: int, win: int, bins: int, fmin: float,
            fmax: float) -> jax.Array:
    """[B, T] waveform -> [B, frames, bins] log-mel magnitudes."""
    pad = (n_fft - hop) // 2
    x = jnp.pad(wave_BT.astype(jnp.float32), ((0, 0), (pad, pad)), mode="reflect")
    frames = (x.shape[1] - n_fft) // hop + 1
    idx = jnp.arange(frames)[:, None] * hop + jnp.arange(n_fft)[None, :]
    window = np.zeros(n_fft, np.float32)
    offset = (n_fft - win) // 2  # torch.stft centres a shorter window in the frame
    window[offset:offset + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    spec = jnp.fft.rfft(x[:, idx] * window[None, None, :], axis=-1)
    magnitude = jnp.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    mel = jnp.einsum("BNF,FM->BNM", magnitude, mel_filters(sample_rate, n_fft, bins, fmin, fmax),
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, 1e-5))


def discriminator_loss(real: Scores, fake: Scores) -> jax.Array:
    """Least squares: real scores pulled to 1, generated ones to 0, summed over discriminators."""
    return sum(jnp.mean((1.0 - r) ** 2) + jnp.mean(f ** 2) for r, f in zip(real, fake))


def generator_adversarial_loss(fake: Scores) -> jax.Array:
    return sum(jnp.mean((1.0 - f) ** 2) for f in fake)


def feature_matching_loss(real: Features, fake: Features) -> jax.Array:
    """Sum over every feature map of the mean absolute difference (HiFi-GAN's, before its x2)."""
    return sum(jnp.mean(jnp.abs(r - f)) for rs, fs in zip(real, fake) for r, f in zip(rs, fs))
