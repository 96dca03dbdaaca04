"""Rotary position embedding with DeepSeek-V2 YaRN scaling.

DeepSeek rotates interleaved pairs (x[2j], x[2j+1]) of the rope dims by angle pos * inv_freq[j].
YaRN blends extrapolated (original) and interpolated (divided by `factor`) frequencies with a
linear ramp between two correction dims, scales cos/sin by mscale(mscale)/mscale(mscale_all_dim),
and the attention softmax scale by mscale(mscale_all_dim)^2.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from most_jax.config import AttentionConfig, RopeConfig


def yarn_mscale(factor: float, mscale: float) -> float:
    if factor <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def _correction_dim(num_rotations: float, dim: int, base: float, max_pos: int) -> float:
    # The rope dim whose wavelength makes `num_rotations` full turns over the original context.
    return dim * math.log(max_pos / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def inverse_frequencies(cfg: RopeConfig, dim: int) -> np.ndarray:
    """inv_freq [dim // 2] in float32, as DeepSeek-V2 computes it."""
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    extrapolated = (1.0 / (np.float32(cfg.theta) ** exponents)).astype(np.float32)
    if cfg.type == "default":
        return extrapolated
    interpolated = (1.0 / (np.float32(cfg.factor) * np.float32(cfg.theta) ** exponents)).astype(np.float32)
    low = max(math.floor(_correction_dim(cfg.beta_fast, dim, cfg.theta, cfg.original_max_position_embeddings)), 0)
    high = min(math.ceil(_correction_dim(cfg.beta_slow, dim, cfg.theta, cfg.original_max_position_embeddings)),
               dim - 1)
    if low == high:
        high += 0.001  # the ramp needs a non-empty interval
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0.0, 1.0)
    keep_extrapolated = (1.0 - ramp).astype(np.float32)
    return (interpolated * (1.0 - keep_extrapolated) + extrapolated * keep_extrapolated).astype(np.float32)


def cos_sin_scale(cfg: RopeConfig) -> float:
    if cfg.type == "default":
        return 1.0
    return yarn_mscale(cfg.factor, cfg.mscale) / yarn_mscale(cfg.factor, cfg.mscale_all_dim)


def softmax_scale(attn: AttentionConfig, rope: RopeConfig) -> float:
    scale = (attn.qk_nope_head_dim + attn.qk_rope_head_dim) ** -0.5
    if rope.type == "yarn" and rope.mscale_all_dim:
        m = yarn_mscale(rope.factor, rope.mscale_all_dim)
        scale *= m * m
    return scale


def rope_angles(cfg: RopeConfig, dim: int, positions_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cos, sin) [B, T, dim // 2] in float32, magnitude-scaled as YaRN prescribes."""
    inv_freq = jnp.asarray(inverse_frequencies(cfg, dim))
    angles_BTR = positions_BT.astype(jnp.float32)[..., None] * inv_freq[None, None, :]
    scale = cos_sin_scale(cfg)
    return jnp.cos(angles_BTR) * scale, jnp.sin(angles_BTR) * scale


def apply_rope(x: jax.Array, cos_BTR: jax.Array, sin_BTR: jax.Array) -> jax.Array:
    """Rotates interleaved pairs of the last axis. x: [B, T, ..., 2R'], cos/sin: [B, T, R']."""
    extra = x.ndim - cos_BTR.ndim  # head axes between T and the rope dims
    shape = cos_BTR.shape[:2] + (1,) * extra + cos_BTR.shape[2:]
    cos, sin = cos_BTR.reshape(shape), sin_BTR.reshape(shape)
    pairs = x.astype(jnp.float32).reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)
