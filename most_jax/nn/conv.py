"""1-D convolutions over [B, T, C] (channels last), kernels stored [K, C_in / groups, C_out].

torch's Conv1d weight [C_out, C_in / groups, K] is the kernel transposed by (2, 1, 0). A
weight-normed kernel (torch's weight_norm(dim=2), the one normalised axis being the kernel taps)
keeps its two factors as parameters: the direction `weight_v` (kernel layout) and the per-tap
magnitude `weight_g` [K]; the kernel is g[k] * v[k] / ||v[k]|| (norm over the other two axes).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.nn.params import DTYPES, normal_param, ones_param, zeros_param


def conv1d(x_BTC: jax.Array, kernel_KIO: jax.Array, *, stride: int = 1, padding: int = 0,
           groups: int = 1) -> jax.Array:
    """Cross-correlation as torch's Conv1d: `padding` zeros on both sides, then VALID with `stride`."""
    return jax.lax.conv_general_dilated(x_BTC, kernel_KIO.astype(x_BTC.dtype), (stride,), [(padding, padding)],
                                        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups)


def conv_output_length(length, kernel: int, stride: int):
    """Frames a VALID conv of `kernel`/`stride` makes of `length` inputs (ints or integer arrays;
    <= 0 when the input is shorter than the kernel)."""
    return (length - kernel) // stride + 1


class Conv1d(nnx.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int = 1, padding: int = 0, groups: int = 1,
                 bias: bool = True, rngs: nnx.Rngs, param_dtype: str, dtype: str,
                 names: tuple[str | None, str | None] = (None, None)):
        if c_in % groups or c_out % groups:
            raise ValueError(f"Conv1d channels {c_in} -> {c_out} are not divisible by {groups} groups")
        self.stride, self.padding, self.groups = stride, padding, groups
        # torch's default (kaiming-uniform) scale as a normal: std 1/sqrt(fan_in)
        std = 1.0 / math.sqrt(kernel * c_in // groups)
        self.kernel = normal_param(rngs, (kernel, c_in // groups, c_out), (None,) + names, std, param_dtype)
        if bias:
            self.bias = zeros_param((c_out,), (names[1],), param_dtype)
        self.dtype = DTYPES[dtype]

    def __call__(self, x_BTC: jax.Array) -> jax.Array:
        y = conv1d(x_BTC.astype(self.dtype), self.kernel[...], stride=self.stride, padding=self.padding,
                   groups=self.groups)
        if hasattr(self, "bias"):
            y = y + self.bias[...].astype(self.dtype)[None, None]
        return y


class WeightNormConv1d(nnx.Module):
    """Conv1d whose kernel is weight-normed over the taps axis (torch's weight_norm(conv, dim=2))."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, padding: int = 0, groups: int = 1, rngs: nnx.Rngs,
                 param_dtype: str, dtype: str, names: tuple[str | None, str | None] = (None, None)):
        if c_in % groups or c_out % groups:
            raise ValueError(f"WeightNormConv1d channels {c_in} -> {c_out} are not divisible by {groups} groups")
        self.padding, self.groups = padding, groups
        std = 1.0 / math.sqrt(kernel * c_in // groups)
        self.weight_v = normal_param(rngs, (kernel, c_in // groups, c_out), (None,) + names, std, param_dtype)
        self.weight_g = ones_param((kernel,), (None,), param_dtype)
        self.bias = zeros_param((c_out,), (names[1],), param_dtype)
        self.dtype = DTYPES[dtype]

    def kernel(self) -> jax.Array:
        """g[k] * v[k] / ||v[k]||, in float32."""
        v = self.weight_v[...].astype(jnp.float32)
        norm_K11 = jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True))
        return self.weight_g[...].astype(jnp.float32)[:, None, None] * v / norm_K11

    def __call__(self, x_BTC: jax.Array) -> jax.Array:
        y = conv1d(x_BTC.astype(self.dtype), self.kernel(), padding=self.padding, groups=self.groups)
        return y + self.bias[...].astype(self.dtype)[None, None]
