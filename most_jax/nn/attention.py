"""Multi-head latent attention (DeepSeek-V2 MLA) with packed-segment causal masking.

Keys and values come from a compressed latent: kv_a_proj maps D -> M (latent) + R (one rope key
shared by all heads); the latent is RMS-normalised and kv_b_proj expands it to per-head
k_nope (O) and v (Z). Queries are [q_nope (O) | q_rope (R)] = Q per head, from q_proj or the
low-rank q_a_proj -> q_a_norm -> q_b_proj. Axis letters: most_jax/AXES.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.config import ModelConfig
from most_jax.nn.mlp import Linear
from most_jax.nn.norms import RMSNorm
from most_jax.nn.rope import apply_rope, softmax_scale

_MASKED = -1e30  # finite, so a fully masked row (padding) gives a uniform softmax, not NaN


def attention_mask(segment_ids_BT: jax.Array) -> jax.Array:
    """[B, T, S] bool: causal within the row and only inside one segment (packed rows)."""
    t = segment_ids_BT.shape[1]
    causal_TS = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
    same_BTS = segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
    return same_BTS & causal_TS[None]


class MLAttention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        a = cfg.attention
        self.num_heads = a.num_heads
        self.nope_dim, self.rope_dim, self.v_dim = a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim
        self.latent_dim = a.kv_lora_rank
        self.scale = softmax_scale(a, cfg.rope)
        self.dtype = cfg.dtype
        d, h, q_dim = cfg.hidden_size, a.num_heads, a.qk_nope_head_dim + a.qk_rope_head_dim
        kw = dict(rngs=rngs, std=cfg.init_std, param_dtype=cfg.param_dtype, dtype=cfg.dtype)
        if a.q_lora_rank is None:
            self.q_proj = Linear(d, h * q_dim, ("embed", "heads"), **kw)
        else:
            self.q_a_proj = Linear(d, a.q_lora_rank, ("embed", "latent"), **kw)
            self.q_a_norm = RMSNorm(a.q_lora_rank, eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype, name="latent")
            self.q_b_proj = Linear(a.q_lora_rank, h * q_dim, ("latent", "heads"), **kw)
        self.kv_a_proj = Linear(d, a.kv_lora_rank + a.qk_rope_head_dim, ("embed", "latent"), **kw)
        self.kv_a_norm = RMSNorm(a.kv_lora_rank, eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype, name="latent")
        self.kv_b_proj = Linear(a.kv_lora_rank, h * (a.qk_nope_head_dim + a.v_head_dim), ("latent", "heads"), **kw)
        self.o_proj = Linear(h * a.v_head_dim, d, ("heads", "embed"), **kw)

    def queries(self, x_BTD: jax.Array, cos_BTR: jax.Array, sin_BTR: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(q_nope [B,T,H,O], rotated q_rope [B,T,H,R])."""
        if hasattr(self, "q_proj"):
            q = self.q_proj(x_BTD)
        else:
            q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x_BTD)))
        q_BTHQ = q.reshape(q.shape[:2] + (self.num_heads, self.nope_dim + self.rope_dim))
        q_nope, q_rope = jnp.split(q_BTHQ, [self.nope_dim], axis=-1)
        return q_nope, apply_rope(q_rope, cos_BTR, sin_BTR)

    def latent(self, x_BTD: jax.Array, cos_BTR: jax.Array, sin_BTR: jax.Array) -> tuple[jax.Array, jax.Array]:
        """What a decoding cache holds per token: (normalised latent [B,T,M], rotated rope key [B,T,R])."""
        kv = self.kv_a_proj(x_BTD)
        c_BTM, k_rope_BTR = jnp.split(kv, [self.latent_dim], axis=-1)
        return self.kv_a_norm(c_BTM), apply_rope(k_rope_BTR, cos_BTR, sin_BTR)

    def _attend(self, scores_BHTS: jax.Array, mask_BTS: jax.Array) -> jax.Array:
        """Softmax in float32 over masked, scaled scores."""
        return jax.nn.softmax(jnp.where(mask_BTS[:, None], scores_BHTS * self.scale, _MASKED), axis=-1)

    def _kv_b_heads(self) -> tuple[jax.Array, jax.Array]:
        """kv_b_proj split per head: (W_uk [M, H, O], W_uv [M, H, Z])."""
        w = self.kv_b_proj.kernel[...].astype(self.kv_b_proj.dtype)
        w = w.reshape(self.latent_dim, self.num_heads, self.nope_dim + self.v_dim)  # [M, H, O + Z]
        return w[..., : self.nope_dim], w[..., self.nope_dim:]

    def __call__(self, x_BTD: jax.Array, cos_BTR: jax.Array, sin_BTR: jax.Array, mask_BTS: jax.Array) -> jax.Array:
        q_nope_BTHO, q_rope_BTHR = self.queries(x_BTD, cos_BTR, sin_BTR)
        c_BSM, k_rope_BSR = self.latent(x_BTD, cos_BTR, sin_BTR)
        kv = self.kv_b_proj(c_BSM)
        kv = kv.reshape(kv.shape[:2] + (self.num_heads, self.nope_dim + self.v_dim))  # [B, S, H, O + Z]
        k_nope_BSHO, v_BSHZ = jnp.split(kv, [self.nope_dim], axis=-1)
        # Scores in float32 from one contraction over [nope | rope] = Q: the single shared rope key is
        # repeated for every head (on CPU a separate rope contraction over R alone, with its
        # transposes, cost about as much as the nope one).
        q_BTHQ = jnp.concatenate([q_nope_BTHO, q_rope_BTHR], axis=-1)
        k_rope_BSHR = jnp.broadcast_to(k_rope_BSR[:, :, None, :].astype(k_nope_BSHO.dtype),
                                       k_nope_BSHO.shape[:3] + (self.rope_dim,))
        k_BSHQ = jnp.concatenate([k_nope_BSHO, k_rope_BSHR], axis=-1)
        scores_BHTS = jnp.einsum("BTHQ,BSHQ->BHTS", q_BTHQ, k_BSHQ, preferred_element_type=jnp.float32)
        probs_BHTS = self._attend(scores_BHTS, mask_BTS).astype(v_BSHZ.dtype)
        out_BTHZ = jnp.einsum("BHTS,BSHZ->BTHZ", probs_BHTS, v_BSHZ)
        return self.o_proj(out_BTHZ.reshape(out_BTHZ.shape[:2] + (-1,)))

    def decode(self, x_BTD: jax.Array, cos_BTR: jax.Array, sin_BTR: jax.Array, mask_BTS: jax.Array,
               latent_BSM: jax.Array, rope_key_BSR: jax.Array, index: jax.Array):
        """Attention of T new tokens over a latent cache; returns (out, latent cache, rope-key cache).

        The new tokens are written at cache slots index..index+T-1. kv_b_proj is absorbed into the
        query (W_uk) and output (W_uv) sides, so the cache keeps only M + R numbers per token instead
        of H x (O + R + Z): per head, q_nope . (c W_uk) == (q_nope W_uk^T) . c.
        """
        q_nope_BTHO, q_rope_BTHR = self.queries(x_BTD, cos_BTR, sin_BTR)
        c_BTM, k_rope_BTR = self.latent(x_BTD, cos_BTR, sin_BTR)
        latent_BSM = jax.lax.dynamic_update_slice_in_dim(latent_BSM, c_BTM.astype(latent_BSM.dtype), index, axis=1)
        rope_key_BSR = jax.lax.dynamic_update_slice_in_dim(rope_key_BSR, k_rope_BTR.astype(rope_key_BSR.dtype),
                                                           index, axis=1)
        w_uk_MHO, w_uv_MHZ = self._kv_b_heads()
        f32 = jnp.float32
        q_latent_BTHM = jnp.einsum("BTHO,MHO->BTHM", q_nope_BTHO, w_uk_MHO)
        scores_BHTS = (jnp.einsum("BTHM,BSM->BHTS", q_latent_BTHM, latent_BSM.astype(q_latent_BTHM.dtype),
                                  preferred_element_type=f32)
                       + jnp.einsum("BTHR,BSR->BHTS", q_rope_BTHR, rope_key_BSR.astype(q_rope_BTHR.dtype),
                                    preferred_element_type=f32))
        probs_BHTS = self._attend(scores_BHTS, mask_BTS).astype(q_latent_BTHM.dtype)
        out_latent_BTHM = jnp.einsum("BHTS,BSM->BTHM", probs_BHTS, latent_BSM.astype(probs_BHTS.dtype))
        out_BTHZ = jnp.einsum("BTHM,MHZ->BTHZ", out_latent_BTHM, w_uv_MHZ)
        return self.o_proj(out_BTHZ.reshape(out_BTHZ.shape[:2] + (-1,))), latent_BSM, rope_key_BSR
