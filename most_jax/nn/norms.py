"""RMSNorm (DeepSeek-V2) and LayerNorm (WeNet's torch.nn.LayerNorm): both normalise in float32."""

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
