"""The inverse-STFT head of the vocoder (iSTFTNet / Vocos): the generator's last conv predicts,
per STFT frame, a log-magnitude and a phase for each of n_fft / 2 + 1 bins, and an inverse STFT
makes the samples: torch.istft with a periodic Hann window, center=True (frame f is centred on
sample f * hop) and length = frames * hop, so F frames give exactly F * hop samples, like the
transposed-conv head.

The overlap-add is a sum of n_fft / hop shifted copies (n_fft a multiple of hop), divided by the
summed squared window (at the ends, where fewer frames overlap, too).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MAX_LOG_MAGNITUDE = float(np.log(100.0))  # Vocos clips exp(log-magnitude) at 1e2


def hann(n_fft: int) -> np.ndarray:
    """The periodic Hann window (torch.hann_window's default)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def initial_bias(n_fft: int, key: jax.Array) -> jax.Array:
    """conv_post's bias: log-magnitude 0 and a random phase per bin. With the near-zero initial
    kernel every frame would otherwise get phase 0 in every bin, an impulse on the window's zero
    at its first sample, i.e. silence, whose log-mel is clamped and passes no gradient."""
    bins = n_fft // 2 + 1
    phase = jax.random.uniform(key, (bins,), jnp.float32, -np.pi, np.pi)
    return jnp.concatenate([jnp.zeros((bins,), jnp.float32), phase])


def spectrum(head_BFC: jax.Array) -> jax.Array:
    """[B, F, 2 * bins] conv output -> complex [B, F, bins]: exp(clipped log-magnitude) * e^(i phase)."""
    log_mag, phase = jnp.split(head_BFC.astype(jnp.float32), 2, axis=-1)
    magnitude = jnp.exp(jnp.minimum(log_mag, MAX_LOG_MAGNITUDE))
    return magnitude * jax.lax.complex(jnp.cos(phase), jnp.sin(phase))


def istft(spec_BFN: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """complex [B, F, n_fft / 2 + 1] -> float32 [B, F * hop] (see the module docstring)."""
    b, frames, bins = spec_BFN.shape
    if bins != n_fft // 2 + 1 or n_fft % hop or n_fft < 2 * hop:
        raise ValueError(f"istft: {bins} bins for n_fft {n_fft}, hop {hop} (needs n_fft / 2 + 1 bins, n_fft a "
                         "multiple of hop and at least 2 hops)")
    window = hann(n_fft)
    pieces = jnp.fft.irfft(spec_BFN, n=n_fft, axis=-1) * window[None, None, :]  # [B, F, n_fft]
    overlap = n_fft // hop
    pieces = pieces.reshape(b, frames, overlap, hop)
    # frame f's j-th hop lands on output block f + j: pad the frame axis and add the shifted copies
    total = frames + overlap - 1
    wave = sum(jnp.pad(pieces[:, :, j], ((0, 0), (j, overlap - 1 - j), (0, 0))) for j in range(overlap))
    envelope = np.zeros((total, hop), np.float32)
    for j in range(overlap):
        envelope[j:j + frames] += (window[j * hop:(j + 1) * hop] ** 2)[None, :]
    wave = wave.reshape(b, total * hop) / np.maximum(envelope.reshape(1, -1), 1e-11)
    start = n_fft // 2
    return wave[:, start:start + frames * hop]
