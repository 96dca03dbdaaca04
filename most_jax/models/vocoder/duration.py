"""Durations of deduplicated units: run-length coding, re-expansion, and the duration predictor.

The unit extractor (speech/units.py) collapses runs of one unit to a single unit; the vocoder's
duration predictor learns those runs' lengths back, in log(1 + d), from the unit embeddings
(speech-resynthesis' VariancePredictor: Conv-ReLU-LayerNorm-dropout twice, then Linear -> 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from most_jax.nn.conv import Conv1d
from most_jax.nn.dropout import dropout, split_rng
from most_jax.nn.mlp import Linear
from most_jax.nn.norms import LayerNorm


def run_lengths(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(deduplicated units, their run lengths): [3, 3, 5, 3] -> ([3, 5, 3], [2, 1, 1])."""
    units = np.asarray(units)
    if units.size == 0:
        return units, np.zeros(0, np.int32)
    starts = np.flatnonzero(np.concatenate([[True], units[1:] != units[:-1]]))
    return units[starts], np.diff(np.append(starts, units.size)).astype(np.int32)


def durations_from_log(log_dur: jax.Array) -> jax.Array:
    """Predicted log(1 + d) -> whole frames, at least one (round(exp(x) - 1), clamped to >= 1)."""
    return jnp.maximum(jnp.round(jnp.expm1(log_dur)), 1).astype(jnp.int32)


class DurationPredictor(nnx.Module):
    """[B, N, C] unit embeddings -> [B, N] predicted log(1 + duration)."""

    def __init__(self, dim: int, hidden: int, kernel: int, rate: float, *, rngs: nnx.Rngs):
        pad = (kernel - 1) // 2
        self.rate = rate
        self.conv1 = Conv1d(dim, hidden, kernel, padding=pad, rngs=rngs)
        self.ln1 = LayerNorm(hidden, eps=1e-5, param_dtype="float32", name=None)
        self.conv2 = Conv1d(hidden, hidden, kernel, padding=pad, rngs=rngs)
        self.ln2 = LayerNorm(hidden, eps=1e-5, param_dtype="float32", name=None)
        self.proj = Linear(hidden, 1, (None, None), rngs=rngs, std=hidden ** -0.5, param_dtype="float32",
                           dtype="float32", bias=True)

    def __call__(self, x_BNC: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
        rng1, rng2 = split_rng(dropout_rng, 2)
        h = dropout(self.ln1(jax.nn.relu(self.conv1(x_BNC))), self.rate, rng1)
        h = dropout(self.ln2(jax.nn.relu(self.conv2(h))), self.rate, rng2)
        return self.proj(h)[..., 0]
