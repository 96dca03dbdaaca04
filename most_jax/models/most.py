"""The MoST decoder: DeepSeek-V2 (MLA attention, dense then MoE FFNs) with modality-aware routing.

Layers are stored stacked, one stack per layer kind (`dense_layers`, `moe_layers`), each with a
leading layer axis. The storage layout is fixed; `scan_layers` only chooses whether the forward
pass runs them with `jax.lax.scan` (one compiled body) or an unrolled Python loop.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.config import ModelConfig
from most_jax.nn.attention import MLAttention, attention_mask
from most_jax.nn.mlp import SwiGLU
from most_jax.nn.moe import MoE, MoEStats
from most_jax.nn.norms import RMSNorm
from most_jax.nn.params import DTYPES, normal_param
from most_jax.nn.rope import rope_angles
from most_jax.vocab import modality_of_tokens

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x)); the FFN is dense or MoE."""

    def __init__(self, cfg: ModelConfig, *, use_moe: bool, rngs: nnx.Rngs):
        norm = dict(eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype)
        self.attn_norm = RMSNorm(cfg.hidden_size, **norm)
        self.attn = MLAttention(cfg, rngs=rngs)
        self.ffn_norm = RMSNorm(cfg.hidden_size, **norm)
        if use_moe:
            self.moe = MoE(cfg, rngs=rngs)
        else:
            self.mlp = SwiGLU(cfg.hidden_size, cfg.dense_ffn_dim, rngs=rngs, std=cfg.init_std,
                              param_dtype=cfg.param_dtype, dtype=cfg.dtype)

    def __call__(self, x_BTD, cos_BTR, sin_BTR, mask_BTS, modality_BT, valid_BT):
        x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), cos_BTR, sin_BTR, mask_BTS)
        h_BTD = self.ffn_norm(x_BTD)
        if hasattr(self, "moe"):
            y_BTD, stats = self.moe(h_BTD, modality_BT, valid_BT)
        else:
            y_BTD, stats = self.mlp(h_BTD), None
        return x_BTD + y_BTD, stats


def _layer_stack(cfg: ModelConfig, count: int, use_moe: bool, rngs: nnx.Rngs) -> DecoderLayer | None:
    if count == 0:
        return None

    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(layer_rngs):
        return DecoderLayer(cfg, use_moe=use_moe, rngs=layer_rngs)

    return create(rngs)


def _run_stack(stack: DecoderLayer, cfg: ModelConfig, x_BTD, *inputs):
    """Applies every layer of a stack in order; returns (x, per-layer stats stacked on axis 0)."""
    graphdef, state = nnx.split(stack)

    def body(x, layer_state):
        return nnx.merge(graphdef, layer_state)(x, *inputs)

    if cfg.remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat])
    if cfg.scan_layers:
        return jax.lax.scan(body, x_BTD, state)
    count = jax.tree.leaves(state)[0].shape[0]
    per_layer = []
    for i in range(count):
        x_BTD, stats = body(x_BTD, jax.tree.map(lambda a: a[i], state))
        per_layer.append(stats)
    return x_BTD, jax.tree.map(lambda *s: jnp.stack(s), *per_layer) if per_layer[0] is not None else None


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
        self.dense_layers = _layer_stack(cfg, cfg.first_k_dense_replace, False, rngs)
        self.moe_layers = _layer_stack(cfg, cfg.num_moe_layers, True, rngs)
        self.final_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype)
        self.lm_head = normal_param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg.init_std,
                                    cfg.param_dtype)

    def hidden_states(self, tokens_BT: jax.Array, *, modality_BT: jax.Array | None = None,
                      segment_ids_BT: jax.Array | None = None,
                      positions_BT: jax.Array | None = None,
                      embeds_BTD: jax.Array | None = None) -> tuple[jax.Array, MoEStats | None]:
        """Final-normed hidden states [B, T, D] and the MoE layers' stats (leading layer axis).

        `embeds_BTD`, when given, replaces the token embeddings (continuous inputs such as MoST-C's
        projected speech features); `tokens_BT` still supplies the modality ids."""
        cfg = self.cfg
        b, t = tokens_BT.shape
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones((b, t), jnp.int32)
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if modality_BT is None:
            modality_BT = modality_of_tokens(cfg.vocab, tokens_BT)
        cos_BTR, sin_BTR = rope_angles(cfg.rope, cfg.attention.qk_rope_head_dim, positions_BT)
        inputs = (cos_BTR, sin_BTR, attention_mask(segment_ids_BT), modality_BT, segment_ids_BT != 0)
        x_BTD = self.embed(tokens_BT) if embeds_BTD is None else embeds_BTD.astype(DTYPES[cfg.dtype])
        if self.dense_layers is not None:
            x_BTD, _ = _run_stack(self.dense_layers, cfg, x_BTD, *inputs)
        stats = None
        if self.moe_layers is not None:
            x_BTD, stats = _run_stack(self.moe_layers, cfg, x_BTD, *inputs)
        return self.final_norm(x_BTD), stats

    def logits(self, h_BTD: jax.Array) -> jax.Array:
        dtype = DTYPES[self.cfg.dtype]
        return jnp.einsum("BTD,DV->BTV", h_BTD.astype(dtype), self.lm_head[...].astype(dtype),
                          preferred_element_type=jnp.float32)

    def __call__(self, tokens_BT: jax.Array, **kwargs: Any) -> tuple[jax.Array, MoEStats | None]:
        """Float32 logits [B, T, V] and MoE stats; kwargs as for `hidden_states`."""
        h_BTD, stats = self.hidden_states(tokens_BT, **kwargs)
        return self.logits(h_BTD), stats


def count_params(cfg: ModelConfig) -> int:
    """Parameter count from shapes alone (no memory is allocated)."""
    abstract = nnx.eval_shape(lambda: MoST(cfg, rngs=nnx.Rngs(0)))
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
