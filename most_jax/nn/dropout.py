"""Inverted dropout driven by an explicit key: modules hold no RNG state (the trainer keeps
parameters only), so every layer that drops takes `dropout_rng` (None = evaluation) and splits it."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Zero each entry with probability `rate` and scale the rest by 1 / (1 - rate) (torch's
    nn.Dropout); rng None or rate 0 is the identity."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def split_rng(rng: jax.Array | None, n: int) -> tuple[jax.Array | None, ...]:
    """n independent keys from `rng`, or n Nones in evaluation."""
    if rng is None:
        return (None,) * n
    return tuple(jax.random.split(rng, n))
