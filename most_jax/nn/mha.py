"""WeNet's multi-head attention: MultiHeadedAttention and RelPositionMultiHeadedAttention.

Biased linear_q/k/v/out [D, D] (head h owns columns h*Q..(h+1)*Q, as WeNet's view(h, d_k)),
scores / sqrt(Q), softmax in float32, entries the mask hides set to zero after the softmax, dropout
on the probabilities. A key/value cache is WeNet's `att_cache` layout [B, H, S_cache, 2*Q]: the
cached keys in the first Q channels, the values in the last Q; the new frames' keys and values
are appended after the cached ones and the whole is returned as the next cache (the caller trims).

RelPositionMultiHeadedAttention is WeNet's, not Transformer-XL's: per-head biases pos_bias_u/v
[H, Q], linear_pos [D, D] without bias, and *no* rel_shift: the position term of query t and key
s is (q_t + v) . W_pos PE(s), where PE are the sinusoids of the keys' absolute positions.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.nn.dropout import dropout
from most_jax.nn.mlp import Linear
from most_jax.nn.params import normal_param

_MASKED = float(jnp.finfo(jnp.float32).min)  # finite: a fully masked row stays NaN-free (then zeroed)


class MultiHeadedAttention(nnx.Module):
    def __init__(self, dim: int, heads: int, *, dropout_rate: float, rngs: nnx.Rngs, std: float, param_dtype: str,
                 dtype: str):
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        kw = dict(rngs=rngs, std=std, param_dtype=param_dtype, dtype=dtype, bias=True)
        self.h, self.d_k = heads, dim // heads
        self.linear_q = Linear(dim, dim, ("embed", "heads"), **kw)
        self.linear_k = Linear(dim, dim, ("embed", "heads"), **kw)
        self.linear_v = Linear(dim, dim, ("embed", "heads"), **kw)
        self.linear_out = Linear(dim, dim, ("heads", "embed"), **kw)
        self.dropout_rate = dropout_rate

    def heads(self, linear: Linear, x_BTD: jax.Array) -> jax.Array:
        """linear(x) split into heads: [B, T, H, Q]."""
        y = linear(x_BTD)
        return y.reshape(y.shape[:-1] + (self.h, self.d_k))

    def append_cache(self, k_BSHQ: jax.Array, v_BSHQ: jax.Array, att_cache: jax.Array | None):
        """(keys, values) with the cached frames first, and the next cache [B, H, S_cache + S, 2Q]."""
        if att_cache is not None:
            if att_cache.ndim != 4 or att_cache.shape[1] != self.h or att_cache.shape[3] != 2 * self.d_k:
                raise ValueError(f"att_cache must be [B, {self.h}, S_cache, {2 * self.d_k}], got {att_cache.shape}")
            k_cache_BHSQ, v_cache_BHSQ = jnp.split(att_cache.astype(k_BSHQ.dtype), 2, axis=-1)
            k_BSHQ = jnp.concatenate([k_cache_BHSQ.transpose(0, 2, 1, 3), k_BSHQ], axis=1)
            v_BSHQ = jnp.concatenate([v_cache_BHSQ.transpose(0, 2, 1, 3), v_BSHQ], axis=1)
        new_cache = jnp.concatenate([k_BSHQ, v_BSHQ], axis=-1).transpose(0, 2, 1, 3)
        return k_BSHQ, v_BSHQ, new_cache

    def attend(self, scores_BHTS: jax.Array, v_BSHQ: jax.Array, mask_BTS: jax.Array | None,
               dropout_rng: jax.Array | None) -> jax.Array:
        """linear_out(softmax(scores) @ v); `scores` already divided by sqrt(Q).

        mask_BTS: bool, [B, T, S] or [B, 1, S] (True: query t may see key s); None sees everything."""
        scores_BHTS = scores_BHTS.astype(jnp.float32)
        if mask_BTS is None:
            probs_BHTS = jax.nn.softmax(scores_BHTS, axis=-1)
        else:
            if mask_BTS.ndim != 3 or mask_BTS.shape[-1] != scores_BHTS.shape[-1]:
                raise ValueError(f"attention mask must be [B, T or 1, S={scores_BHTS.shape[-1]}], got {mask_BTS.shape}")
            mask_B1TS = mask_BTS[:, None].astype(bool)
            probs_BHTS = jax.nn.softmax(jnp.where(mask_B1TS, scores_BHTS, _MASKED), axis=-1)
            probs_BHTS = jnp.where(mask_B1TS, probs_BHTS, 0.0)
        probs_BHTS = dropout(probs_BHTS.astype(v_BSHQ.dtype), self.dropout_rate, dropout_rng)
        out_BTHQ = jnp.einsum("BHTS,BSHQ->BTHQ", probs_BHTS, v_BSHQ)
        return self.linear_out(out_BTHQ.reshape(out_BTHQ.shape[:2] + (-1,)))

    def __call__(self, query_BTD: jax.Array, key_BSD: jax.Array, value_BSD: jax.Array,
                 mask_BTS: jax.Array | None = None, *, att_cache: jax.Array | None = None,
                 dropout_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(output [B, T, D], next cache [B, H, S_cache + S, 2Q])."""
        q_BTHQ = self.heads(self.linear_q, query_BTD)
        k_BSHQ, v_BSHQ, new_cache = self.append_cache(self.heads(self.linear_k, key_BSD),
                                                      self.heads(self.linear_v, value_BSD), att_cache)
        scores_BHTS = jnp.einsum("BTHQ,BSHQ->BHTS", q_BTHQ, k_BSHQ, preferred_element_type=jnp.float32)
        return self.attend(scores_BHTS / math.sqrt(self.d_k), v_BSHQ, mask_BTS, dropout_rng), new_cache


class RelPositionMultiHeadedAttention(MultiHeadedAttention):
    def __init__(self, dim: int, heads: int, *, dropout_rate: float, rngs: nnx.Rngs, std: float, param_dtype: str,
                 dtype: str):
        super().__init__(dim, heads, dropout_rate=dropout_rate, rngs=rngs, std=std, param_dtype=param_dtype,
                         dtype=dtype)
        self.linear_pos = Linear(dim, dim, ("embed", "heads"), rngs=rngs, std=std, param_dtype=param_dtype,
                                 dtype=dtype)
        self.pos_bias_u = normal_param(rngs, (heads, self.d_k), ("heads", None), std, param_dtype)
        self.pos_bias_v = normal_param(rngs, (heads, self.d_k), ("heads", None), std, param_dtype)

    def __call__(self, query_BTD: jax.Array, key_BSD: jax.Array, value_BSD: jax.Array,
                 mask_BTS: jax.Array | None, pos_emb_SD: jax.Array, *, att_cache: jax.Array | None = None,
                 dropout_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """pos_emb_SD: the sinusoids of the S_cache + S key positions (shared by the batch)."""
        q_BTHQ = self.heads(self.linear_q, query_BTD)
        k_BSHQ, v_BSHQ, new_cache = self.append_cache(self.heads(self.linear_k, key_BSD),
                                                      self.heads(self.linear_v, value_BSD), att_cache)
        if pos_emb_SD.shape != (k_BSHQ.shape[1], query_BTD.shape[-1]):
            raise ValueError(f"pos_emb must be [S={k_BSHQ.shape[1]}, D={query_BTD.shape[-1]}] (one row per key), "
                             f"got {pos_emb_SD.shape}")
        p_SHQ = self.heads(self.linear_pos, pos_emb_SD)
        dtype = q_BTHQ.dtype
        u_11HQ = self.pos_bias_u[...].astype(dtype)[None, None]
        v_11HQ = self.pos_bias_v[...].astype(dtype)[None, None]
        f32 = jnp.float32
        content_BHTS = jnp.einsum("BTHQ,BSHQ->BHTS", q_BTHQ + u_11HQ, k_BSHQ, preferred_element_type=f32)
        position_BHTS = jnp.einsum("BTHQ,SHQ->BHTS", q_BTHQ + v_11HQ, p_SHQ, preferred_element_type=f32)
        scores_BHTS = (content_BHTS + position_BHTS) / math.sqrt(self.d_k)
        return self.attend(scores_BHTS, v_BSHQ, mask_BTS, dropout_rng), new_cache
