"""WeNet's PositionwiseFeedForward (also HuBERT's): w_2(dropout(act(w_1 x + b_1))) + b_2 (biases optional)."""

from __future__ import annotations

import jax
from flax import nnx

from most_jax.nn.dropout import dropout
from most_jax.nn.mlp import Linear

ACTIVATIONS = {"silu": jax.nn.silu, "relu": jax.nn.relu,  # WeNet's "swish" is silu
               "gelu": lambda x: jax.nn.gelu(x, approximate=False)}  # torch's default (erf) GELU


class FeedForward(nnx.Module):
    """Parameters w_1 [D, F] (+ bias [F]) and w_2 [F, D] (+ bias [D])."""

    def __init__(self, dim: int, ffn_dim: int, *, activation: str, bias: bool, dropout_rate: float,
                 rngs: nnx.Rngs, std: float, param_dtype: str, dtype: str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"FeedForward activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        kw = dict(rngs=rngs, std=std, param_dtype=param_dtype, dtype=dtype, bias=bias)
        self.w_1 = Linear(dim, ffn_dim, ("embed", "mlp"), **kw)
        self.w_2 = Linear(ffn_dim, dim, ("mlp", "embed"), **kw)
        self.activation = activation
        self.dropout_rate = dropout_rate

    def __call__(self, x: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
        # Flat [N, D] rows: XLA:CPU runs 2-D matmuls faster than 3-D ones.
        x_ND = x.reshape(-1, x.shape[-1])
        h_NF = dropout(ACTIVATIONS[self.activation](self.w_1(x_ND)), self.dropout_rate, dropout_rng)
        return self.w_2(h_NF).reshape(x.shape[:-1] + (-1,))
