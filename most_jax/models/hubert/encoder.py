"""HuBERT's Transformer encoder: convolutional positional embedding, then post-LN (base) or pre-LN
"stable layer norm" (large) layers.

Positional embedding: a grouped Conv1d (kernel K, padding K // 2, the last frame dropped when K is
even) -> GELU, added to the input. Its kernel is weight-normed over the taps (pos_conv_embed/conv/
weight_v, weight_g), or, with `conv_pos_batch_norm` (mhubert-base-25hz), a plain kernel preceded by
a BatchNorm in evaluation mode (its running statistics are frozen parameters). Padded frames are
zero where the conv reads them (after the batch norm), as beyond the end of an utterance alone.

Base: x + pos -> LayerNorm -> dropout -> layers of (x + attn(x) -> LN -> x + FFN(x) -> LN).
Stable: x + pos -> dropout -> layers of (x + attn(LN x) -> x + FFN(LN x)) -> final LayerNorm.
Padded keys are masked in every attention. Layers are stacked on a leading `layers` axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.config import HubertConfig
from most_jax.nn.conv import WN_TAPS, Conv1d
from most_jax.nn.dropout import dropout, split_rng
from most_jax.nn.ffn import FeedForward
from most_jax.nn.mha import MultiHeadedAttention
from most_jax.nn.norms import BatchNorm, LayerNorm
from most_jax.nn.stack import layer_stack, run_stack

BATCH_NORM_EPS = 1e-5  # torch's BatchNorm1d default


class PositionalConvEmbedding(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        d, k = cfg.hidden_size, cfg.num_conv_pos_embeddings
        kw = dict(padding=k // 2, groups=cfg.num_conv_pos_embedding_groups, rngs=rngs, param_dtype=cfg.param_dtype,
                  dtype=cfg.dtype)
        if cfg.conv_pos_batch_norm:
            self.batch_norm = BatchNorm(d, eps=BATCH_NORM_EPS, param_dtype=cfg.param_dtype, name="embed")
            self.conv = Conv1d(d, d, k, **kw)
        else:
            self.conv = Conv1d(d, d, k, weight_norm=WN_TAPS, **kw)
        self.drop_last = k % 2 == 0

    def __call__(self, x_BTD: jax.Array, valid_BT: jax.Array) -> jax.Array:
        if hasattr(self, "batch_norm"):
            x_BTD = jnp.where(valid_BT[:, :, None], self.batch_norm(x_BTD), 0).astype(x_BTD.dtype)
        y = self.conv(x_BTD)
        if self.drop_last:
            y = y[:, :-1]
        return jax.nn.gelu(y, approximate=False)


class EncoderLayer(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        d, kw = cfg.hidden_size, dict(rngs=rngs, std=cfg.init_std, param_dtype=cfg.param_dtype, dtype=cfg.dtype)
        self.stable = cfg.do_stable_layer_norm
        self.hidden_dropout = cfg.hidden_dropout
        self.attention = MultiHeadedAttention(d, cfg.num_attention_heads, dropout_rate=cfg.attention_dropout, **kw)
        self.layer_norm = LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype)
        self.feed_forward = FeedForward(d, cfg.intermediate_size, activation=cfg.hidden_act, bias=True,
                                        dropout_rate=cfg.activation_dropout, **kw)
        self.final_layer_norm = LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype)

    def __call__(self, x_BTD: jax.Array, mask_B1S: jax.Array, rng: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """(output, output): the stack collects every layer's output."""
        attn_rng, attn_out_rng, ffn_rng, ffn_out_rng = split_rng(rng, 4)
        h = self.layer_norm(x_BTD) if self.stable else x_BTD
        h, _ = self.attention(h, h, h, mask_B1S, dropout_rng=attn_rng)
        x_BTD = x_BTD + dropout(h, self.hidden_dropout, attn_out_rng)
        if self.stable:
            ffn = self.feed_forward(self.final_layer_norm(x_BTD), ffn_rng)
            x_BTD = x_BTD + dropout(ffn, self.hidden_dropout, ffn_out_rng)
        else:
            x_BTD = self.layer_norm(x_BTD)
            x_BTD = self.final_layer_norm(x_BTD + dropout(self.feed_forward(x_BTD, ffn_rng), self.hidden_dropout,
                                                          ffn_out_rng))
        return x_BTD, x_BTD


class Encoder(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.pos_conv_embed = PositionalConvEmbedding(cfg, rngs=rngs)
        self.layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype)
        self.layers = layer_stack(lambda r: EncoderLayer(cfg, rngs=r), cfg.num_hidden_layers, rngs)

    def __call__(self, x_BTD: jax.Array, valid_BT: jax.Array,
                 dropout_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(hidden states [L + 1, B, T, D]: the first layer's input, then every layer's output;
        the final output [B, T, D]: the last layer's, after the final LayerNorm for stable LN)."""
        cfg = self.cfg
        input_rng, layers_rng = split_rng(dropout_rng, 2)
        x_BTD = jnp.where(valid_BT[:, :, None], x_BTD, 0).astype(x_BTD.dtype)
        x_BTD = x_BTD + self.pos_conv_embed(x_BTD, valid_BT).astype(x_BTD.dtype)
        if not cfg.do_stable_layer_norm:
            x_BTD = self.layer_norm(x_BTD)
        x_BTD = dropout(x_BTD, cfg.hidden_dropout, input_rng)
        per_layer = None if layers_rng is None else (jax.random.split(layers_rng, cfg.num_hidden_layers),)
        first = x_BTD
        x_BTD, outputs_LBTD = run_stack(self.layers, x_BTD, (valid_BT[:, None, :], *(() if per_layer else (None,))),
                                        scan=cfg.scan_layers, remat=cfg.remat, per_layer=per_layer)
        hidden_LBTD = jnp.concatenate([first[None], outputs_LBTD], axis=0)
        last_BTD = self.layer_norm(x_BTD) if cfg.do_stable_layer_norm else x_BTD
        return hidden_LBTD, last_BTD
