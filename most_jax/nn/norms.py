"""RMSNorm (DeepSeek-V2 semantics: normalise in float32, scale, cast back)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.nn.params import ones_param


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float, param_dtype: str, name: str = "embed"):
        self.eps = eps
        self.scale = ones_param((dim,), (name,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        scale = self.scale[...].astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
        return (scale * x32).astype(x.dtype)
