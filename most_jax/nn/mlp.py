"""Linear layers and the dense SwiGLU feed-forward (DeepSeek-V2 MLP; also the shared experts of an MoE layer)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.nn.params import DTYPES, normal_param, zeros_param


class Linear(nnx.Module):
    """y = x @ kernel (+ bias), kernel stored [in, out] (torch's weight transposed).

    DeepSeek-V2 has no biases; WeNet's Linears have them (`bias=True`, zero-initialised here)."""

    def __init__(self, d_in: int, d_out: int, names: tuple[str | None, str | None], *, rngs: nnx.Rngs,
                 std: float, param_dtype: str, dtype: str, bias: bool = False):
        self.kernel = normal_param(rngs, (d_in, d_out), names, std, param_dtype)
        if bias:
            self.bias = zeros_param((d_out,), (names[1],), param_dtype)
        self.dtype = DTYPES[dtype]

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if hasattr(self, "bias"):
            y = y + self.bias[...].astype(self.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
        return y


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x)); parameters gate_proj/up_proj [D, F], down_proj [F, D]."""

    def __init__(self, dim: int, ffn_dim: int, *, rngs: nnx.Rngs, std: float, param_dtype: str, dtype: str):
        kw = dict(rngs=rngs, std=std, param_dtype=param_dtype, dtype=dtype)
        self.gate_proj = Linear(dim, ffn_dim, ("embed", "mlp"), **kw)
        self.up_proj = Linear(dim, ffn_dim, ("embed", "mlp"), **kw)
        self.down_proj = Linear(ffn_dim, dim, ("mlp", "embed"), **kw)

    def __call__(self, x_ND: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x_ND)) * self.up_proj(x_ND))
