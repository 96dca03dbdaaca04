"""Evaluation-mode HuBERT on host arrays: jitted once per padded shape, outputs zero past each length."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from most_jax.models.hubert.features import check_lengths


@nnx.jit
def _forward(model, wave_BS, lengths_B):
    hidden_LBTD, last_BTD, valid_BT = model(wave_BS, lengths_B)
    keep = valid_BT[:, :, None]
    return (jnp.where(keep[None], hidden_LBTD, 0).astype(jnp.float32), jnp.where(keep, last_BTD, 0).astype(jnp.float32),
            valid_BT.sum(axis=1).astype(jnp.int32))


def encode(model, wave: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hidden states float32 [L + 1, B, T, D], last hidden state float32 [B, T, D], frame lengths
    int32 [B]) of waveforms [B, S] with `lengths` valid samples (ValueError names a bad length)."""
    check_lengths(model.cfg, lengths, wave.shape[1])
    hidden, last, frames = _forward(model, jnp.asarray(wave, jnp.float32), jnp.asarray(lengths, jnp.int32))
    return np.asarray(hidden), np.asarray(last), np.asarray(frames)
