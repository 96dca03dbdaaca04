"""1-D convolutions over [B, T, C] (channels last), plain and weight-normed, as torch defines them.

Weight norm (Salimans & Kingma; torch.nn.utils.weight_norm with dim=0) keeps a direction `weight_v`
and a magnitude `weight_g` per slice of torch's weight dim 0, and uses g * v / |v|: for a Conv1d that
is one magnitude per output channel, for a ConvTranspose1d (torch weight [in, out, k]) one per
*input* channel. Kernels are stored [K, I, O] (K taps; I = input channels per group); a transposed
conv's kernel is torch's [I, O, K] moved to [K, I, O], unflipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.nn.params import normal_param, zeros_param

_NAMES3 = (None, None, None)


def conv1d(x_BTI: jax.Array, kernel_KIO: jax.Array, *, stride: int = 1, dilation: int = 1,
           padding: int | tuple[int, int] = 0, groups: int = 1) -> jax.Array:
    """torch.nn.functional.conv1d on channels-last input: zero padding, then a strided, dilated,
    grouped cross-correlation."""
    pad = (padding, padding) if isinstance(padding, int) else padding
    return jax.lax.conv_general_dilated(
        x_BTI, kernel_KIO.astype(x_BTI.dtype), (stride,), (pad,), rhs_dilation=(dilation,),
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups,
        precision=jax.lax.Precision.HIGHEST)


def conv_transpose1d(x_BTI: jax.Array, kernel_KIO: jax.Array, *, stride: int, padding: int) -> jax.Array:
    """torch.nn.functional.conv_transpose1d (output length (T - 1) * stride - 2 * padding + K): the
    input dilated by `stride`, padded by K - 1 - padding, correlated with the tap-reversed kernel."""
    k = kernel_KIO.shape[0]
    return jax.lax.conv_general_dilated(
        x_BTI, kernel_KIO[::-1].astype(x_BTI.dtype), (1,), ((k - 1 - padding, k - 1 - padding),),
        lhs_dilation=(stride,), dimension_numbers=("NWC", "WIO", "NWC"), precision=jax.lax.Precision.HIGHEST)


def weight_norm(v: jax.Array, g: jax.Array, axis: int) -> jax.Array:
    """g * v / |v|, the norm taken over every axis but `axis` (g has v.shape[axis] entries)."""
    v32 = v.astype(jnp.float32)
    others = tuple(a for a in range(v.ndim) if a != axis % v.ndim)
    norm = jnp.sqrt(jnp.sum(v32 * v32, axis=others, keepdims=True))  # torch adds no epsilon
    shape = [1] * v.ndim
    shape[axis] = -1
    return (v32 * (g.astype(jnp.float32).reshape(shape) / norm)).astype(v.dtype)


def _wn_params(rngs: nnx.Rngs, shape: tuple[int, int, int], axis: int, std: float):
    v = normal_param(rngs, shape, _NAMES3, std, "float32")
    others = tuple(a for a in range(3) if a != axis)
    g = nnx.Param(jnp.sqrt(jnp.sum(v[...] ** 2, axis=others)), out_sharding=(None,), eager_sharding=False)
    return v, g


class Conv1d(nnx.Module):
    """torch.nn.Conv1d (bias on), optionally weight-normed; params kernel | (weight_v, weight_g), bias."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, dilation: int = 1,
                 padding: int = 0, groups: int = 1, weight_norm: bool = True, std: float | None = None,
                 rngs: nnx.Rngs):
        self.stride, self.dilation, self.padding, self.groups = stride, dilation, padding, groups
        self.use_weight_norm = weight_norm
        shape = (kernel, in_ch // groups, out_ch)
        std = std if std is not None else (kernel * in_ch // groups) ** -0.5
        if weight_norm:
            self.weight_v, self.weight_g = _wn_params(rngs, shape, 2, std)
        else:
            self.kernel = normal_param(rngs, shape, _NAMES3, std, "float32")
        self.bias = zeros_param((out_ch,), (None,), "float32")

    def weight(self) -> jax.Array:
        if self.use_weight_norm:
            return weight_norm(self.weight_v[...], self.weight_g[...], axis=2)
        return self.kernel[...]

    def __call__(self, x_BTI: jax.Array) -> jax.Array:
        y = conv1d(x_BTI, self.weight(), stride=self.stride, dilation=self.dilation, padding=self.padding,
                   groups=self.groups)
        return y + self.bias[...].astype(y.dtype).reshape(1, 1, -1)


class ConvTranspose1d(nnx.Module):
    """torch.nn.ConvTranspose1d (bias on), weight-normed over its input channels (torch's dim 0)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, stride: int, padding: int, std: float,
                 rngs: nnx.Rngs):
        self.stride, self.padding = stride, padding
        self.weight_v, self.weight_g = _wn_params(rngs, (kernel, in_ch, out_ch), 1, std)
        self.bias = zeros_param((out_ch,), (None,), "float32")

    def weight(self) -> jax.Array:
        return weight_norm(self.weight_v[...], self.weight_g[...], axis=1)

    def __call__(self, x_BTI: jax.Array) -> jax.Array:
        y = conv_transpose1d(x_BTI, self.weight(), stride=self.stride, padding=self.padding)
        return y + self.bias[...].astype(y.dtype).reshape(1, 1, -1)
