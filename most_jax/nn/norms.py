"""RMSNorm (DeepSeek-V2), LayerNorm (torch.nn.LayerNorm), GroupNorm with padding-aware statistics and
evaluation-mode BatchNorm: all normalise in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.nn.params import ones_param, zeros_param


def _row(p: nnx.Param, ndim: int) -> jax.Array:
    return p[...].astype(jnp.float32).reshape((1,) * (ndim - 1) + (-1,))


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float, param_dtype: str, name: str = "embed"):
        self.eps = eps
        self.scale = ones_param((dim,), (name,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (_row(self.scale, x.ndim) * x32).astype(x.dtype)


class LayerNorm(nnx.Module):
    """(x - mean) / sqrt(biased var + eps) * scale + bias over the last axis (torch's LayerNorm)."""

    def __init__(self, dim: int, *, eps: float, param_dtype: str, name: str = "embed"):
        self.eps = eps
        self.scale = ones_param((dim,), (name,), param_dtype)
        self.bias = zeros_param((dim,), (name,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        x32 = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
        return (_row(self.scale, x.ndim) * x32 + _row(self.bias, x.ndim)).astype(x.dtype)


class GroupNorm(nnx.Module):
    """torch's GroupNorm over [B, T, C]: statistics per (utterance, group of channels) over time and
    the group's channels, counting only the frames `valid_BT` marks (so a padded utterance is
    normalised as it is alone); per-channel affine."""

    def __init__(self, groups: int, channels: int, *, eps: float, param_dtype: str, name: str | None = None):
        if channels % groups:
            raise ValueError(f"GroupNorm: {channels} channels are not divisible by {groups} groups")
        self.groups, self.eps = groups, eps
        self.scale = ones_param((channels,), (name,), param_dtype)
        self.bias = zeros_param((channels,), (name,), param_dtype)

    def __call__(self, x_BTC: jax.Array, valid_BT: jax.Array | None = None) -> jax.Array:
        b, t, c = x_BTC.shape
        x_BTGc = x_BTC.astype(jnp.float32).reshape(b, t, self.groups, c // self.groups)
        w_BT11 = (jnp.ones((b, t), jnp.float32) if valid_BT is None else valid_BT.astype(jnp.float32))[:, :, None, None]
        count_B11 = jnp.maximum(w_BT11.sum(axis=(1, 3), keepdims=True) * (c // self.groups), 1.0)
        mean_B1G1 = (x_BTGc * w_BT11).sum(axis=(1, 3), keepdims=True) / count_B11
        centred = x_BTGc - mean_B1G1
        var_B1G1 = (centred * centred * w_BT11).sum(axis=(1, 3), keepdims=True) / count_B11
        y = (centred * jax.lax.rsqrt(var_B1G1 + self.eps)).reshape(b, t, c)
        return (_row(self.scale, 3) * y + _row(self.bias, 3)).astype(x_BTC.dtype)


class BatchNorm(nnx.Module):
    """torch's BatchNorm1d in evaluation mode over the last axis: (x - running_mean) /
    sqrt(running_var + eps) * scale + bias. The running statistics are parameters the optimizer must
    leave alone (the owning family marks them frozen); they are never updated here."""

    def __init__(self, dim: int, *, eps: float, param_dtype: str, name: str | None = None):
        self.eps = eps
        self.scale = ones_param((dim,), (name,), param_dtype)
        self.bias = zeros_param((dim,), (name,), param_dtype)
        self.running_mean = zeros_param((dim,), (name,), param_dtype)
        self.running_var = ones_param((dim,), (name,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = jax.lax.stop_gradient(_row(self.running_mean, x.ndim))
        var = jax.lax.stop_gradient(_row(self.running_var, x.ndim))
        x32 = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.eps)
        return (_row(self.scale, x.ndim) * x32 + _row(self.bias, x.ndim)).astype(x.dtype)
