"""HiFi-GAN's discriminators: multi-period (MPD) and multi-scale (MSD), channels last.

Each returns, per sub-discriminator, its score map and the feature maps (after every conv's leaky
ReLU, plus the final conv's output) that feature matching compares. Deviation from HiFi-GAN: its
first multi-scale discriminator uses spectral norm, whose power-iteration vector is state the
trainer does not keep (it keeps parameters only); here every conv is weight-normed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.config import VocoderConfig
from most_jax.nn.conv import WN_OUT, Conv1d

_SLOPE = 0.1
_MSD_KERNELS = (15, 41, 41, 41, 41, 41, 5)
_MSD_STRIDES = (1, 2, 2, 4, 4, 1, 1)

Scores = list[jax.Array]  # one [B, ...] score map per sub-discriminator
Features = list[list[jax.Array]]  # per sub-discriminator, its feature maps


class PeriodDiscriminator(nnx.Module):
    """The waveform folded into `period` columns; (5, 1) convs (stride 3, the last 1) run down each
    column, so a Conv2d with a width-1 kernel is a 1-D conv over [B * period, T / period, C]."""

    def __init__(self, period: int, channels: tuple[int, ...], *, rngs: nnx.Rngs):
        self.period = period
        ins = (1, *channels[:-1])
        self.convs = nnx.List([Conv1d(i, o, 5, stride=3 if n < len(channels) - 1 else 1, padding=2,
                                      weight_norm=WN_OUT, rngs=rngs)
                               for n, (i, o) in enumerate(zip(ins, channels))])
        self.conv_post = Conv1d(channels[-1], 1, 3, padding=1, weight_norm=WN_OUT, rngs=rngs)

    def __call__(self, wave_BT: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        b, t = wave_BT.shape
        if t % self.period:
            wave_BT = jnp.pad(wave_BT, ((0, 0), (0, self.period - t % self.period)), mode="reflect")
        rows = wave_BT.shape[1] // self.period
        # x.view(b, 1, rows, period) in torch: column j holds samples j, j + period, ...
        h = wave_BT.reshape(b, rows, self.period).transpose(0, 2, 1).reshape(b * self.period, rows, 1)
        h, feats = _conv_stack(self.convs, self.conv_post, h)
        return h.reshape(b, -1), feats


def _conv_stack(convs, conv_post, h: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """leaky_relu(conv) layers, then conv_post; every layer's output is a feature-matching map."""
    feats = []
    for conv in convs:
        h = jax.nn.leaky_relu(conv(h), _SLOPE)
        feats.append(h)
    h = conv_post(h)
    feats.append(h)
    return h, feats


class ScaleDiscriminator(nnx.Module):
    def __init__(self, channels: tuple[int, ...], groups: tuple[int, ...], *, rngs: nnx.Rngs):
        ins = (1, *channels[:-1])
        self.convs = nnx.List([Conv1d(i, o, k, stride=s, padding=(k - 1) // 2, groups=g, weight_norm=WN_OUT,
                                      rngs=rngs)
                               for i, o, k, s, g in zip(ins, channels, _MSD_KERNELS, _MSD_STRIDES, groups)])
        self.conv_post = Conv1d(channels[-1], 1, 3, padding=1, weight_norm=WN_OUT, rngs=rngs)

    def __call__(self, wave_BT: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        h = wave_BT[..., None]
        h, feats = _conv_stack(self.convs, self.conv_post, h)
        return h.reshape(h.shape[0], -1), feats


def average_pool(wave_BT: jax.Array) -> jax.Array:
    """torch AvgPool1d(4, 2, padding=2): zero padding counted in the mean."""
    padded = jnp.pad(wave_BT, ((0, 0), (2, 2)))
    return jax.lax.reduce_window(padded, 0.0, jax.lax.add, (1, 4), (1, 2), "VALID") / 4.0


class Discriminators(nnx.Module):
    def __init__(self, cfg: VocoderConfig, *, rngs: nnx.Rngs):
        self.mpd = nnx.List([PeriodDiscriminator(p, cfg.mpd_channels, rngs=rngs) for p in cfg.mpd_periods])
        self.msd = nnx.List([ScaleDiscriminator(cfg.msd_channels, cfg.msd_groups, rngs=rngs)
                             for _ in range(cfg.msd_scales)])

    def __call__(self, wave_BT: jax.Array) -> tuple[Scores, Features]:
        scores, feats = [], []
        for d in self.mpd:
            s, f = d(wave_BT)
            scores.append(s)
            feats.append(f)
        for i, d in enumerate(self.msd):
            if i:
                wave_BT = average_pool(wave_BT)
            s, f = d(wave_BT)
            scores.append(s)
            feats.append(f)
        return scores, feats
