"""Sinusoidal position tables (Vaswani et al.; WeNet's PositionalEncoding `pe` rows)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def sinusoid_positions(positions_T: jax.Array, d: int) -> jax.Array:
    """[T, d] float32: row p is pe[p, 2i] = sin(p w_i), pe[p, 2i + 1] = cos(p w_i),
    w_i = 10000^(-2i / d) (d even, as WeNet's table requires)."""
    if d % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {d}")
    w_F = jnp.exp(jnp.arange(0, d, 2, dtype=jnp.float32) * -(math.log(10000.0) / d))
    angle_TF = positions_T.astype(jnp.float32)[:, None] * w_F[None, :]
    return jnp.stack([jnp.sin(angle_TF), jnp.cos(angle_TF)], axis=-1).reshape(positions_T.shape[0], d)
