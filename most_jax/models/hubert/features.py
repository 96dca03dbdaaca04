"""HuBERT's convolutional feature extractor: waveform [B, S] -> frames [B, T, C].

Conv1d layers (no bias by default) each followed by GELU; "group" mode puts a GroupNorm with one
group per channel after the first conv only (hubert-base), "layer" mode a LayerNorm over channels
after every conv (hubert-large). The group norm's statistics run over time, so in a padded batch
they are taken over each utterance's valid frames only: every utterance gets what it gets alone.
(transformers' base model does not mask them, so its padded batches differ from its single runs.)
Parameter names follow transformers': conv_layers/{i}/conv/kernel ([K, C_in, C_out]) and
conv_layers/{i}/layer_norm/{scale,bias}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from most_jax.config import HubertConfig
from most_jax.nn.conv import Conv1d, conv_output_length
from most_jax.nn.norms import GroupNorm, LayerNorm

NORM_EPS = 1e-5  # torch's GroupNorm / LayerNorm default: HubertConfig.layer_norm_eps is not used here


def frame_lengths(cfg: HubertConfig, sample_lengths):
    """Output frames of each utterance of `sample_lengths` samples (ints or an integer array)."""
    length = sample_lengths
    for kernel, stride in zip(cfg.conv_kernel, cfg.conv_stride):
        length = conv_output_length(length, kernel, stride)
    return length


def receptive_field(cfg: HubertConfig) -> int:
    """The fewest samples that give one frame."""
    need = 1
    for kernel, stride in reversed(list(zip(cfg.conv_kernel, cfg.conv_stride))):
        need = (need - 1) * stride + kernel
    return need


class ConvLayer(nnx.Module):
    def __init__(self, cfg: HubertConfig, layer: int, *, rngs: nnx.Rngs):
        c_in = cfg.conv_dim[layer - 1] if layer else 1
        c_out = cfg.conv_dim[layer]
        self.conv = Conv1d(c_in, c_out, cfg.conv_kernel[layer], stride=cfg.conv_stride[layer], bias=cfg.conv_bias,
                           rngs=rngs, param_dtype=cfg.param_dtype, dtype=cfg.dtype)
        if cfg.feat_extract_norm == "layer":
            self.layer_norm = LayerNorm(c_out, eps=NORM_EPS, param_dtype=cfg.param_dtype, name=None)
        elif layer == 0:
            self.layer_norm = GroupNorm(c_out, c_out, eps=NORM_EPS, param_dtype=cfg.param_dtype)

    def __call__(self, x_BTC: jax.Array, valid_BT: jax.Array) -> jax.Array:
        y = self.conv(x_BTC)
        if isinstance(getattr(self, "layer_norm", None), GroupNorm):
            y = self.layer_norm(y, valid_BT)
        elif hasattr(self, "layer_norm"):
            y = self.layer_norm(y)
        return jax.nn.gelu(y, approximate=False)


class FeatureExtractor(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.conv_layers = nnx.List([ConvLayer(cfg, i, rngs=rngs) for i in range(len(cfg.conv_dim))])

    def __call__(self, wave_BS: jax.Array, lengths_B: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(frames [B, T, C], valid frames [B, T]) of waveforms [B, S] with `lengths_B` valid samples."""
        if frame_lengths(self.cfg, wave_BS.shape[1]) < 1:
            raise ValueError(f"waveforms of {wave_BS.shape[1]} samples give no frame (the conv feature extractor "
                             f"needs at least {receptive_field(self.cfg)})")
        x_BTC = wave_BS[:, :, None]
        length_B = lengths_B
        valid_BT = None
        for layer, (kernel, stride) in zip(self.conv_layers, zip(self.cfg.conv_kernel, self.cfg.conv_stride)):
            length_B = conv_output_length(length_B, kernel, stride)
            t = conv_output_length(x_BTC.shape[1], kernel, stride)
            valid_BT = jnp.arange(t)[None, :] < length_B[:, None]
            x_BTC = layer(x_BTC, valid_BT)
        return x_BTC, valid_BT


def check_lengths(cfg: HubertConfig, lengths: np.ndarray, samples: int, what: str = "lengths") -> None:
    """Host-side check: every utterance gives at least one frame and fits the padded width."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"{what} must be one length per waveform, got shape {list(lengths.shape)}")
    short = np.flatnonzero(lengths < receptive_field(cfg))
    if short.size:
        raise ValueError(f"{what}[{short[0]}] = {lengths[short[0]]} samples give no frame (HuBERT needs at least "
                         f"{receptive_field(cfg)})")
    long = np.flatnonzero(lengths > samples)
    if long.size:
        raise ValueError(f"{what}[{long[0]}] = {lengths[long[0]]} exceeds the padded width of {samples} samples")
