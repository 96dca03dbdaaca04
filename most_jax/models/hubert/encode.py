"""Evaluation-mode HuBERT on host arrays: jitted once per padded shape, outputs zero past each length.

The padding is zeroed on the host: the same `jnp.where` inside the jitted function made XLA's CPU
compile of a tiny model take a minute instead of seconds."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from most_jax.models.hubert.features import check_lengths


@nnx.jit
def _forward(model, wave_BS, lengths_B):
    return model(wave_BS, lengths_B)


def encode(model, wave: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hidden states float32 [L + 1, B, T, D], last hidden state float32 [B, T, D], frame lengths
    int32 [B]) of waveforms [B, S] with `lengths` valid samples (ValueError names a bad length)."""
    check_lengths(model.cfg, lengths, wave.shape[1])
    hidden, last, valid = _forward(model, jnp.asarray(wave, jnp.float32), jnp.asarray(lengths, jnp.int32))
    keep = np.asarray(valid)[:, :, None]
    return (np.where(keep[None], np.asarray(hidden, np.float32), 0), np.where(keep, np.asarray(last, np.float32), 0),
            keep[:, :, 0].sum(axis=1).astype(np.int32))
