"""The unit HiFi-GAN generator side: embeddings, duration predictor and the upsampling generator.

Semantics of transformers' SeamlessM4TCodeHifiGan (speech-resynthesis' CodeGenerator is the
special case without a language embedding): the conditioning is [language, unit, speaker]
embeddings concatenated per frame -> conv_pre (k7) -> per upsampler: leaky ReLU, transposed conv
(rate r, kernel k, padding (k - r) / 2: exactly r x longer), then the mean of the multi-receptive-
field ResBlocks -> leaky ReLU (slope 0.01, torch's default, as both references) -> conv_post (k7)
-> tanh. A ResBlock (HiFi-GAN's "1") is, per dilation d: x + conv(lrelu(conv_d(lrelu(x)))).
With `istft_n_fft` set, conv_post instead predicts a log-magnitude and a phase per frequency bin
and an inverse STFT makes the samples (iSTFTNet; models/vocoder/istft.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.config import VocoderConfig
from most_jax.models.vocoder import istft
from most_jax.models.vocoder.duration import DurationPredictor
from most_jax.nn.conv import WN_OUT, Conv1d, ConvTranspose1d
from most_jax.nn.params import normal_param

_INIT_STD = 0.01  # HiFi-GAN's init_weights: conv weights ~ N(0, 0.01)
_POST_SLOPE = 0.01  # F.leaky_relu's default, used before conv_post in both references


def _same_padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock(nnx.Module):
    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], slope: float, *, rngs: nnx.Rngs):
        self.slope = slope

        def conv(d):
            return Conv1d(channels, channels, kernel, dilation=d, padding=_same_padding(kernel, d), std=_INIT_STD,
                          weight_norm=WN_OUT, rngs=rngs)

        self.convs1 = nnx.List([conv(d) for d in dilations])
        self.convs2 = nnx.List([conv(1) for _ in dilations])

    def __call__(self, x_BTC: jax.Array) -> jax.Array:
        for c1, c2 in zip(self.convs1, self.convs2):
            h = c1(jax.nn.leaky_relu(x_BTC, self.slope))
            x_BTC = x_BTC + c2(jax.nn.leaky_relu(h, self.slope))
        return x_BTC


class HifiGan(nnx.Module):
    """[B, T, C_in] conditioning frames -> [B, T * hop] waveform (in (-1, 1) from the tanh head)."""

    def __init__(self, cfg: VocoderConfig, in_dim: int, *, rngs: nnx.Rngs):
        self.slope = cfg.leaky_relu_slope
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        ch = cfg.upsample_initial_channel
        self.conv_pre = Conv1d(in_dim, ch, 7, padding=3, std=_INIT_STD, weight_norm=WN_OUT, rngs=rngs)
        ups, blocks = [], []
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            ups.append(ConvTranspose1d(ch // 2 ** i, ch // 2 ** (i + 1), kernel, stride=rate,
                                       padding=(kernel - rate) // 2, std=_INIT_STD, rngs=rngs))
            blocks += [ResBlock(ch // 2 ** (i + 1), k, d, self.slope, rngs=rngs)
                       for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)]
        self.ups = nnx.List(ups)
        self.resblocks = nnx.List(blocks)
        self.n_fft, self.istft_hop = cfg.istft_n_fft, cfg.istft_hop
        out = 2 * (self.n_fft // 2 + 1) if self.n_fft else 1
        self.conv_post = Conv1d(ch // 2 ** len(ups), out, 7, padding=3, std=_INIT_STD, weight_norm=WN_OUT, rngs=rngs)
        if self.n_fft:
            self.conv_post.bias[...] = istft.initial_bias(self.n_fft, rngs.params())

    def __call__(self, x_BTC: jax.Array) -> jax.Array:
        h = self.conv_pre(x_BTC)
        for i, up in enumerate(self.ups):
            h = up(jax.nn.leaky_relu(h, self.slope))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            h = sum(block(h) for block in blocks) / self.num_kernels
        h = self.conv_post(jax.nn.leaky_relu(h, _POST_SLOPE))
        if self.n_fft:
            return istft.istft(istft.spectrum(h), self.n_fft, self.istft_hop)
        return jnp.tanh(h[..., 0])


class UnitGenerator(nnx.Module):
    """Everything that makes speech from units: embeddings, duration predictor (optional), HiFi-GAN."""

    def __init__(self, cfg: VocoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.unit_embedding = normal_param(rngs, (cfg.num_units, cfg.unit_embed_dim), (None, None), 1.0, "float32")
        if cfg.num_speakers:
            self.speaker_embedding = normal_param(rngs, (cfg.num_speakers, cfg.speaker_embed_dim), (None, None), 1.0,
                                                  "float32")
        if cfg.num_langs:
            self.lang_embedding = normal_param(rngs, (cfg.num_langs, cfg.lang_embed_dim), (None, None), 1.0, "float32")
        if cfg.duration_predictor:
            self.dur_predictor = DurationPredictor(cfg.unit_embed_dim, cfg.dur_hidden_dim, cfg.dur_kernel_size,
                                                   cfg.dur_dropout, rngs=rngs)
        in_dim = cfg.unit_embed_dim + cfg.speaker_embed_dim + cfg.lang_embed_dim
        self.hifi_gan = HifiGan(cfg, in_dim, rngs=rngs)

    def embed_units(self, units_BN: jax.Array) -> jax.Array:
        return jnp.take(self.unit_embedding[...], units_BN, axis=0)

    def log_durations(self, units_BN: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
        """Predicted log(1 + run length) [B, N] of deduplicated units."""
        if not self.cfg.duration_predictor:
            raise ValueError("this vocoder has no duration predictor (model.duration_predictor false)")
        return self.dur_predictor(self.embed_units(units_BN), dropout_rng)

    def conditioning(self, units_BT: jax.Array, speaker_B: jax.Array | None = None,
                     lang_B: jax.Array | None = None) -> jax.Array:
        """[lang, unit, speaker] per frame, as transformers concatenates them: [B, T, C]."""
        parts = []
        b, t = units_BT.shape
        for name, ids, count in (("lang", lang_B, self.cfg.num_langs), ("unit", None, None),
                                 ("speaker", speaker_B, self.cfg.num_speakers)):
            if name == "unit":
                parts.append(self.embed_units(units_BT))
            elif count:
                ids = jnp.zeros((b,), jnp.int32) if ids is None else ids
                table = getattr(self, f"{name}_embedding")[...]
                parts.append(jnp.broadcast_to(jnp.take(table, ids, axis=0)[:, None, :], (b, t, table.shape[1])))
        return jnp.concatenate(parts, axis=-1)

    def __call__(self, units_BT: jax.Array, speaker_B: jax.Array | None = None,
                 lang_B: jax.Array | None = None) -> jax.Array:
        """Frame-level units (already expanded to their durations) -> waveform [B, T * hop]."""
        return self.hifi_gan(self.conditioning(units_BT, speaker_B, lang_B))
