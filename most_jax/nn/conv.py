"""1-D convolutions over [B, T, C] (channels last), plain and weight-normed, as torch defines them.

Kernels are stored [K, I, O] (K taps; I = input channels per group): torch's Conv1d weight
[O, I, K] transposed by (2, 1, 0); a transposed conv's kernel is torch's [I, O, K] moved to
[K, I, O], unflipped. Weight norm (Salimans & Kingma; torch's weight_norm) keeps a direction
`weight_v` (kernel layout) and a magnitude `weight_g` per slice of one kernel axis, and uses
g * v / |v| (norm over the other axes): torch's dim=0 of a Conv1d is our axis 2 (one magnitude per
output channel, HiFi-GAN), of a ConvTranspose1d our axis 1 (per input channel), and dim=2 our axis 0
(per tap, HuBERT's positional conv).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.nn.params import DTYPES, normal_param, zeros_param

WN_OUT = 2  # Conv1d(weight_norm=WN_OUT): torch's weight_norm(conv) (dim=0), one magnitude per output channel
WN_TAPS = 0  # torch's weight_norm(conv, dim=2), one magnitude per tap


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


def conv_output_length(length, kernel: int, stride: int):
    """Frames an unpadded conv of `kernel`/`stride` makes of `length` inputs (ints or integer arrays;
    <= 0 when the input is shorter than the kernel)."""
    return (length - kernel) // stride + 1


def weight_norm(v: jax.Array, g: jax.Array, axis: int) -> jax.Array:
    """g * v / |v|, the norm taken over every axis but `axis` (g has v.shape[axis] entries)."""
    v32 = v.astype(jnp.float32)
    others = tuple(a for a in range(v.ndim) if a != axis % v.ndim)
    norm = jnp.sqrt(jnp.sum(v32 * v32, axis=others, keepdims=True))  # torch adds no epsilon
    shape = [1] * v.ndim
    shape[axis] = -1
    return (v32 * (g.astype(jnp.float32).reshape(shape) / norm)).astype(v.dtype)


def _wn_params(rngs: nnx.Rngs, shape: tuple[int, int, int], names: tuple, axis: int, std: float, param_dtype: str):
    """(weight_v, weight_g) as torch initialises them: g = |v|, so the first kernel is v itself."""
    v = normal_param(rngs, shape, names, std, param_dtype)
    others = tuple(a for a in range(3) if a != axis)
    g = nnx.Param(jnp.sqrt(jnp.sum(v[...].astype(jnp.float32) ** 2, axis=others)).astype(v[...].dtype),
                  out_sharding=(names[axis],), eager_sharding=False)
    return v, g


class Conv1d(nnx.Module):
    """torch.nn.Conv1d; params `kernel` (or, with `weight_norm` = the normed kernel axis, `weight_v`
    and `weight_g`) and `bias`. Computes in `dtype` (default: the input's)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int = 1, dilation: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = True, weight_norm: int | None = None,
                 std: float | None = None, rngs: nnx.Rngs, param_dtype: str = "float32", dtype: str | None = None,
                 names: tuple[str | None, str | None] = (None, None)):
        if c_in % groups or c_out % groups:
            raise ValueError(f"Conv1d channels {c_in} -> {c_out} are not divisible by {groups} groups")
        self.stride, self.dilation, self.padding, self.groups = stride, dilation, padding, groups
        self.weight_norm_axis = weight_norm
        shape, axes = (kernel, c_in // groups, c_out), (None, *names)
        std = std if std is not None else (kernel * c_in // groups) ** -0.5  # torch's fan-in scale, as a normal
        if weight_norm is None:
            self.kernel = normal_param(rngs, shape, axes, std, param_dtype)
        else:
            self.weight_v, self.weight_g = _wn_params(rngs, shape, axes, weight_norm, std, param_dtype)
        if bias:
            self.bias = zeros_param((c_out,), (names[1],), param_dtype)
        self.dtype = None if dtype is None else DTYPES[dtype]

    def weight(self) -> jax.Array:
        if self.weight_norm_axis is None:
            return self.kernel[...]
        return weight_norm(self.weight_v[...], self.weight_g[...], axis=self.weight_norm_axis)

    def __call__(self, x_BTI: jax.Array) -> jax.Array:
        if self.dtype is not None:
            x_BTI = x_BTI.astype(self.dtype)
        y = conv1d(x_BTI, self.weight(), stride=self.stride, dilation=self.dilation, padding=self.padding,
                   groups=self.groups)
        if hasattr(self, "bias"):
            y = y + self.bias[...].astype(y.dtype).reshape(1, 1, -1)
        return y


class ConvTranspose1d(nnx.Module):
    """torch.nn.ConvTranspose1d (bias on), weight-normed over its input channels (torch's dim 0)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, stride: int, padding: int, std: float,
                 rngs: nnx.Rngs):
        self.stride, self.padding = stride, padding
        self.weight_v, self.weight_g = _wn_params(rngs, (kernel, in_ch, out_ch), (None, None, None), 1, std, "float32")
        self.bias = zeros_param((out_ch,), (None,), "float32")

    def weight(self) -> jax.Array:
        return weight_norm(self.weight_v[...], self.weight_g[...], axis=1)

    def __call__(self, x_BTI: jax.Array) -> jax.Array:
        y = conv_transpose1d(x_BTI, self.weight(), stride=self.stride, padding=self.padding)
        return y + self.bias[...].astype(y.dtype).reshape(1, 1, -1)
