"""The MoST decoder: DeepSeek-V2 (MLA attention, dense then MoE FFNs) with modality-aware routing.

Layers are stored stacked, one stack per layer kind (`dense_layers`, `moe_layers`), each with a
leading layer axis. The storage layout is fixed; `scan_layers` only chooses whether the forward
pass runs them with `jax.lax.scan` (one compiled body) or an unrolled Python loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.config import ModelConfig
from most_jax.nn.attention import MLAttention, attention_mask
from most_jax.nn.mlp import Linear, SwiGLU
from most_jax.nn.moe import MoE, MoEStats
from most_jax.nn.norms import RMSNorm
from most_jax.nn.params import DTYPES, normal_param
from most_jax.nn.rope import rope_angles
from most_jax.nn.stack import layer_stack, run_stack
from most_jax.vocab import AUDIO, modality_of_tokens


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x)); the FFN is dense or MoE."""

    def __init__(self, cfg: ModelConfig, *, use_moe: bool, rngs: nnx.Rngs):
        norm = dict(eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype)
        self.attn_norm = RMSNorm(cfg.hidden_size, **norm)
        self.attn = MLAttention(cfg, rngs=rngs)
        self.ffn_norm = RMSNorm(cfg.hidden_size, **norm)
        if use_moe:
            self.moe = MoE(cfg.hidden_size, cfg.moe, init_std=cfg.init_std, param_dtype=cfg.param_dtype,
                           dtype=cfg.dtype, rngs=rngs)
        else:
            self.mlp = SwiGLU(cfg.hidden_size, cfg.dense_ffn_dim, rngs=rngs, std=cfg.init_std,
                              param_dtype=cfg.param_dtype, dtype=cfg.dtype)

    def _ffn(self, x_BTD, modality_BT, valid_BT):
        h_BTD = self.ffn_norm(x_BTD)
        if hasattr(self, "moe"):
            y_BTD, stats = self.moe(h_BTD, valid_BT, modality_BT)
        else:
            # Flat [N, D] rows: XLA:CPU runs the 2-D matmuls of forward+backward ~25% faster than 3-D.
            y_BTD, stats = self.mlp(h_BTD.reshape(-1, h_BTD.shape[-1])).reshape(h_BTD.shape), None
        return x_BTD + y_BTD, stats

    def __call__(self, x_BTD, cos_BTR, sin_BTR, mask_BTS, modality_BT, valid_BT):
        x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), cos_BTR, sin_BTR, mask_BTS)
        return self._ffn(x_BTD, modality_BT, valid_BT)

    def decode(self, x_BTD, cos_BTR, sin_BTR, mask_BTS, modality_BT, valid_BT, index, latent_BSM, rope_key_BSR):
        """Like __call__ for T new tokens over a latent cache; returns (x, (latent, rope_key))."""
        attn_BTD, latent_BSM, rope_key_BSR = self.attn.decode(self.attn_norm(x_BTD), cos_BTR, sin_BTR, mask_BTS,
                                                              latent_BSM, rope_key_BSR, index)
        x_BTD, _ = self._ffn(x_BTD + attn_BTD, modality_BT, valid_BT)
        return x_BTD, (latent_BSM, rope_key_BSR)


def _layer_stack(cfg: ModelConfig, count: int, use_moe: bool, rngs: nnx.Rngs) -> DecoderLayer | None:
    return layer_stack(lambda layer_rngs: DecoderLayer(cfg, use_moe=use_moe, rngs=layer_rngs), count, rngs)


def _run_stack(stack: DecoderLayer, cfg: ModelConfig, x_BTD, inputs: tuple, method: str = "__call__",
               per_layer: Any = None):
    return run_stack(stack, x_BTD, inputs, scan=cfg.scan_layers, remat=cfg.remat, method=method, per_layer=per_layer)


def default_modality(cfg: ModelConfig, tokens_BT: jax.Array, continuous_BT: jax.Array | None) -> jax.Array:
    """The tokens' modality ids, continuous speech frames (MoST-C) audio."""
    modality_BT = modality_of_tokens(cfg.vocab, tokens_BT)
    return modality_BT if continuous_BT is None else jnp.where(continuous_BT != 0, AUDIO, modality_BT)


class DecodeCache(NamedTuple):
    """MLA latent cache: per stack (dense, moe) latent [L, B, S, M] and rope key [L, B, S, R]."""

    dense: tuple[jax.Array, jax.Array] | None
    moe: tuple[jax.Array, jax.Array] | None


class Embed(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.embedding = normal_param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg.init_std,
                                      cfg.param_dtype)
        self.dtype = DTYPES[cfg.dtype]

    def __call__(self, tokens_BT: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], tokens_BT, axis=0).astype(self.dtype)


class MoST(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embed(cfg, rngs=rngs)
        if cfg.continuous_input_dim:
            # MoST-C: continuous speech frames -> the embedding space (a Linear with bias)
            self.speech_proj = Linear(cfg.continuous_input_dim, cfg.hidden_size, (None, "embed"), rngs=rngs,
                                      std=cfg.init_std, param_dtype=cfg.param_dtype, dtype=cfg.dtype, bias=True)
        self.dense_layers = _layer_stack(cfg, cfg.first_k_dense_replace, False, rngs)
        self.moe_layers = _layer_stack(cfg, cfg.num_moe_layers, True, rngs)
        self.final_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype)
        self.lm_head = normal_param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg.init_std,
                                    cfg.param_dtype)

    def input_embeddings(self, tokens_BT: jax.Array, features_BTF: jax.Array | None = None,
                         continuous_BT: jax.Array | None = None) -> jax.Array:
        """[B, T, D]: the token embeddings, and at the positions `continuous_BT` marks (MoST-C's
        speech frames) the projected `features_BTF` instead."""
        x_BTD = self.embed(tokens_BT)
        if features_BTF is None:
            return x_BTD
        if not hasattr(self, "speech_proj"):
            raise ValueError("continuous speech features given to a model without continuous input "
                             "(model.continuous_input_dim is 0)")
        frames_BTD = self.speech_proj(features_BTF)
        return jnp.where(continuous_BT[..., None] != 0, frames_BTD.astype(x_BTD.dtype), x_BTD)

    def hidden_states(self, tokens_BT: jax.Array, *, modality_BT: jax.Array | None = None,
                      segment_ids_BT: jax.Array | None = None,
                      positions_BT: jax.Array | None = None,
                      features_BTF: jax.Array | None = None, continuous_BT: jax.Array | None = None,
                      embeds_BTD: jax.Array | None = None) -> tuple[jax.Array, MoEStats | None]:
        """Final-normed hidden states [B, T, D] and the MoE layers' stats (leading layer axis).

        `features_BTF` / `continuous_BT`: continuous speech frames and where they go (see
        `input_embeddings`), audio by default modality. `embeds_BTD`, when given, replaces the input
        embeddings altogether; `tokens_BT` still supplies the default modality ids."""
        cfg = self.cfg
        b, t = tokens_BT.shape
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones((b, t), jnp.int32)
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if modality_BT is None:
            modality_BT = default_modality(cfg, tokens_BT, continuous_BT)
        cos_BTR, sin_BTR = rope_angles(cfg.rope, cfg.attention.qk_rope_head_dim, positions_BT)
        inputs = (cos_BTR, sin_BTR, attention_mask(segment_ids_BT), modality_BT, segment_ids_BT != 0)
        if embeds_BTD is None:
            embeds_BTD = self.input_embeddings(tokens_BT, features_BTF, continuous_BT)
        x_BTD = embeds_BTD.astype(DTYPES[cfg.dtype])
        if self.dense_layers is not None:
            x_BTD, _ = _run_stack(self.dense_layers, cfg, x_BTD, inputs)
        stats = None
        if self.moe_layers is not None:
            x_BTD, stats = _run_stack(self.moe_layers, cfg, x_BTD, inputs)
        return self.final_norm(x_BTD), stats

    def logits(self, h_BTD: jax.Array) -> jax.Array:
        dtype = DTYPES[self.cfg.dtype]
        return jnp.einsum("BTD,DV->BTV", h_BTD.astype(dtype), self.lm_head[...].astype(dtype),
                          preferred_element_type=jnp.float32)

    def __call__(self, tokens_BT: jax.Array, **kwargs: Any) -> tuple[jax.Array, MoEStats | None]:
        """Float32 logits [B, T, V] and MoE stats; kwargs as for `hidden_states`."""
        h_BTD, stats = self.hidden_states(tokens_BT, **kwargs)
        return self.logits(h_BTD), stats

    def init_cache(self, batch: int, length: int, dtype: str | None = None) -> DecodeCache:
        """An empty latent cache for `batch` rows of up to `length` tokens."""
        cfg = self.cfg
        dt = DTYPES[dtype or cfg.dtype]

        def zeros(count):
            if count == 0:
                return None
            return (jnp.zeros((count, batch, length, cfg.attention.kv_lora_rank), dt),
                    jnp.zeros((count, batch, length, cfg.attention.qk_rope_head_dim), dt))

        return DecodeCache(dense=zeros(cfg.first_k_dense_replace), moe=zeros(cfg.num_moe_layers))

    def decode(self, tokens_BT: jax.Array, cache: DecodeCache, *, index: jax.Array, slot_valid_BS: jax.Array,
               positions_BT: jax.Array, modality_BT: jax.Array | None = None, features_BTF: jax.Array | None = None,
               continuous_BT: jax.Array | None = None) -> tuple[jax.Array, DecodeCache]:
        """Logits [B, T, V] of T new tokens written at cache slots index..index+T-1.

        `slot_valid_BS` marks the cache slots holding real tokens (the new ones included); each new
        token attends to the valid slots at or before its own slot. `features_BTF` / `continuous_BT`
        as for `hidden_states` (a prompt's continuous speech frames).
        """
        cfg = self.cfg
        t, s = tokens_BT.shape[1], slot_valid_BS.shape[1]
        if modality_BT is None:
            modality_BT = default_modality(cfg, tokens_BT, continuous_BT)
        slot_T = index + jnp.arange(t)
        mask_BTS = slot_valid_BS[:, None, :] & (jnp.arange(s)[None, :] <= slot_T[:, None])[None]
        valid_BT = jax.lax.dynamic_slice_in_dim(slot_valid_BS, index, t, axis=1)
        cos_BTR, sin_BTR = rope_angles(cfg.rope, cfg.attention.qk_rope_head_dim, positions_BT)
        inputs = (cos_BTR, sin_BTR, mask_BTS, modality_BT, valid_BT, index)
        x_BTD = self.input_embeddings(tokens_BT, features_BTF, continuous_BT)
        new = {}
        for name, stack in (("dense", self.dense_layers), ("moe", self.moe_layers)):
            if stack is not None:
                x_BTD, new[name] = _run_stack(stack, cfg, x_BTD, inputs, "decode", getattr(cache, name))
        return self.logits(self.final_norm(x_BTD)), DecodeCache(dense=new.get("dense"), moe=new.get("moe"))


def count_params(cfg: ModelConfig) -> int:
    """Parameter count from shapes alone (no memory is allocated)."""
    abstract = nnx.eval_shape(lambda: MoST(cfg, rngs=nnx.Rngs(0)))
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
