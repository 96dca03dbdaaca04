"""WeNet's U2++ attention decoders: TransformerDecoder (L2R) and BiTransformerDecoder (+ R2L).

token embedding x sqrt(d) + absolute sinusoidal positions -> pre-LN DecoderLayers (self-attention,
cross-attention over the encoder output, FFN dense or MoE) -> after_norm -> output_layer.
Parameter names mirror WeNet's state_dict (left_decoder/decoders/self_attn/linear_q/kernel, ...:
kernels are stored [in, out], torch's weight transposed; `embed` is WeNet's embed.0.weight), with
the layers stacked on a leading axis.

Two ways to run a decoder: teacher forcing over whole hypotheses (`__call__`), and one token at a
time (`init_cache` / `step`) for beam search. The step keeps every layer's self-attention keys and
values in a buffer of fixed length (so one compiled step serves every position) and the
cross-attention keys and values of the encoder output computed once; it equals the last position
of the teacher-forced forward (WeNet's forward_one_step recomputes the same numbers).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.config import U2ppConfig, U2ppDecoderConfig
from most_jax.nn.dropout import dropout, split_rng
from most_jax.nn.ffn import FeedForward
from most_jax.nn.mha import MultiHeadedAttention
from most_jax.nn.mlp import Linear
from most_jax.nn.moe import MoE
from most_jax.nn.norms import LayerNorm
from most_jax.nn.params import DTYPES, normal_param
from most_jax.nn.positions import sinusoid_positions
from most_jax.nn.stack import layer_stack, run_stack

# Positions beyond WeNet's PositionalEncoding table (max_len 5000) are an error there too.
MAX_POSITIONS = 5000


def _scores(att: MultiHeadedAttention, query_BTD: jax.Array, k_BSHQ: jax.Array) -> jax.Array:
    q_BTHQ = att.heads(att.linear_q, query_BTD)
    scores = jnp.einsum("BTHQ,BSHQ->BHTS", q_BTHQ, k_BSHQ, preferred_element_type=jnp.float32)
    return scores / math.sqrt(att.d_k)


class DecoderLayer(nnx.Module):
    """x + SelfAttn(norm1 x) -> x + SrcAttn(norm2 x, memory) -> x + FFN(norm3 x) (WeNet, normalize_before)."""

    def __init__(self, d: int, cfg: U2ppDecoderConfig, *, init_std: float, param_dtype: str, dtype: str,
                 rngs: nnx.Rngs):
        kw = dict(std=init_std, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.self_attn = MultiHeadedAttention(d, cfg.attention_heads, dropout_rate=cfg.self_attention_dropout_rate,
                                              **kw)
        self.src_attn = MultiHeadedAttention(d, cfg.attention_heads, dropout_rate=cfg.src_attention_dropout_rate, **kw)
        if cfg.mlp_type == "moe":
            # Every expert is WeNet's PositionwiseFeedForward of width linear_units.
            moe_cfg = dataclasses.replace(cfg.moe, expert_ffn_dim=cfg.linear_units)
            self.feed_forward = MoE(d, moe_cfg, init_std=init_std, param_dtype=param_dtype, dtype=dtype, rngs=rngs,
                                    dropout_rate=cfg.dropout_rate)
        else:
            self.feed_forward = FeedForward(d, cfg.linear_units, activation="relu", bias=cfg.moe.expert_bias,
                                            dropout_rate=cfg.dropout_rate, rngs=rngs, std=init_std,
                                            param_dtype=param_dtype, dtype=dtype)
        self.norm1 = LayerNorm(d, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.norm2 = LayerNorm(d, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.norm3 = LayerNorm(d, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.dropout_rate = cfg.dropout_rate
        self.is_moe = cfg.mlp_type == "moe"

    def _ffn(self, x_BTD: jax.Array, valid_BT: jax.Array, rng: jax.Array | None):
        h_BTD = self.norm3(x_BTD)
        if self.is_moe:
            return self.feed_forward(h_BTD, valid_BT, dropout_rng=rng)
        return self.feed_forward(h_BTD, dropout_rng=rng), None

    def __call__(self, x_BTD, self_mask_BTT, memory_BSD, memory_mask_BS, valid_BT, dropout_rng=None):
        r_self, r_attn1, r_src, r_attn2, r_ffn, r_ffn_in = split_rng(dropout_rng, 6)
        h_BTD = self.norm1(x_BTD)
        self_BTD, _ = self.self_attn(h_BTD, h_BTD, h_BTD, self_mask_BTT, dropout_rng=r_attn1)
        x_BTD = x_BTD + dropout(self_BTD, self.dropout_rate, r_self)
        h_BTD = self.norm2(x_BTD)
        src_BTD, _ = self.src_attn(h_BTD, memory_BSD, memory_BSD, memory_mask_BS[:, None, :], dropout_rng=r_attn2)
        x_BTD = x_BTD + dropout(src_BTD, self.dropout_rate, r_src)
        y_BTD, stats = self._ffn(x_BTD, valid_BT, r_ffn_in)
        return x_BTD + dropout(y_BTD, self.dropout_rate, r_ffn), stats

    def cross_kv(self, memory_BSD: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.src_attn.heads(self.src_attn.linear_k, memory_BSD), self.src_attn.heads(self.src_attn.linear_v,
                                                                                            memory_BSD)

    def step(self, x_B1D, pos, memory_mask_BS, self_k_BSHQ, self_v_BSHQ, cross_k_BSHQ, cross_v_BSHQ):
        """One new position `pos` (traced int) given the buffers; returns (x, (self_k, self_v))."""
        att = self.self_attn
        h_B1D = self.norm1(x_B1D)
        self_k_BSHQ = jax.lax.dynamic_update_slice_in_dim(self_k_BSHQ, att.heads(att.linear_k, h_B1D), pos, axis=1)
        self_v_BSHQ = jax.lax.dynamic_update_slice_in_dim(self_v_BSHQ, att.heads(att.linear_v, h_B1D), pos, axis=1)
        b = x_B1D.shape[0]
        seen_B1S = jnp.broadcast_to(jnp.arange(self_k_BSHQ.shape[1]) <= pos, (b, 1, self_k_BSHQ.shape[1]))
        x_B1D = x_B1D + att.attend(_scores(att, h_B1D, self_k_BSHQ), self_v_BSHQ, seen_B1S, None)
        src = self.src_attn
        x_B1D = x_B1D + src.attend(_scores(src, self.norm2(x_B1D), cross_k_BSHQ), cross_v_BSHQ,
                                   memory_mask_BS[:, None, :], None)
        y_B1D, _ = self._ffn(x_B1D, jnp.ones(x_B1D.shape[:2], bool), None)
        return x_B1D + y_B1D, (self_k_BSHQ, self_v_BSHQ)


class DecoderCache(NamedTuple):
    """One decoder's step state: self-attention buffers [L, B, S_max, H, Q] and the cross-attention
    keys/values of the encoder output [L, B, S_enc, H, Q]."""

    self_k: jax.Array
    self_v: jax.Array
    cross_k: jax.Array
    cross_v: jax.Array


class TransformerDecoder(nnx.Module):
    def __init__(self, cfg: U2ppConfig, num_blocks: int, *, rngs: nnx.Rngs):
        d, dcfg = cfg.encoder.output_size, cfg.decoder
        self.d, self.dropout_rate = d, dcfg.positional_dropout_rate
        self.scan, self.remat = cfg.scan_layers, cfg.remat
        self.dtype = DTYPES[cfg.dtype]
        if num_blocks < 1:
            raise ValueError(f"a decoder needs at least one block, got {num_blocks}")
        self.embed = normal_param(rngs, (cfg.vocab_size, d), ("vocab", "embed"), cfg.init_std, cfg.param_dtype)
        self.decoders = layer_stack(lambda layer_rngs: DecoderLayer(
            d, dcfg, init_std=cfg.init_std, param_dtype=cfg.param_dtype, dtype=cfg.dtype, rngs=layer_rngs),
            num_blocks, rngs)
        self.num_blocks = num_blocks
        self.after_norm = LayerNorm(d, eps=dcfg.norm_eps, param_dtype=cfg.param_dtype)
        self.output_layer = Linear(d, cfg.vocab_size, ("embed", "vocab"), rngs=rngs, std=cfg.init_std,
                                   param_dtype=cfg.param_dtype, dtype=cfg.dtype, bias=True)

    def _embed(self, tokens_BT: jax.Array, positions_T: jax.Array) -> jax.Array:
        x_BTD = jnp.take(self.embed[...], tokens_BT, axis=0).astype(jnp.float32) * math.sqrt(self.d)
        return (x_BTD + sinusoid_positions(positions_T, self.d)[None]).astype(self.dtype)

    def __call__(self, memory_BSD, memory_mask_BS, ys_in_BT, ys_in_lens_B, dropout_rng=None):
        """Teacher-forced logits [B, T, V] (before log-softmax) and the stacked MoE stats (or None)."""
        b, t = ys_in_BT.shape
        if t > MAX_POSITIONS:
            raise ValueError(f"decoder input of {t} tokens exceeds the {MAX_POSITIONS} positions")
        valid_BT = jnp.arange(t)[None, :] < ys_in_lens_B[:, None]
        self_mask_BTT = valid_BT[:, None, :] & jnp.tril(jnp.ones((t, t), bool))[None]
        r_pos, r_layers = split_rng(dropout_rng, 2)
        x_BTD = dropout(self._embed(ys_in_BT, jnp.arange(t)), self.dropout_rate, r_pos)
        per_layer = None if r_layers is None else (jax.random.split(r_layers, self.num_blocks),)
        inputs = (self_mask_BTT, memory_BSD.astype(self.dtype), memory_mask_BS, valid_BT)
        x_BTD, stats = run_stack(self.decoders, x_BTD, inputs, scan=self.scan, remat=self.remat, per_layer=per_layer)
        return self.output_layer(self.after_norm(x_BTD)).astype(jnp.float32), stats

    def init_cache(self, memory_BSD: jax.Array, max_len: int) -> DecoderCache:
        """Buffers for `max_len` positions and the cross-attention keys/values of `memory`."""
        if max_len > MAX_POSITIONS:
            raise ValueError(f"decoding {max_len} positions exceeds the {MAX_POSITIONS} positions")
        memory_BSD = memory_BSD.astype(self.dtype)

        @nnx.vmap(in_axes=(0, None), out_axes=0)
        def cross(layer, memory):
            return layer.cross_kv(memory)

        cross_k, cross_v = cross(self.decoders, memory_BSD)
        l, b, _, h, q = cross_k.shape
        empty = jnp.zeros((l, b, max_len, h, q), self.dtype)
        return DecoderCache(empty, empty, cross_k, cross_v)

    def step(self, cache: DecoderCache, tokens_B: jax.Array, pos, memory_mask_BS) -> tuple[jax.Array, DecoderCache]:
        """log P(next token | tokens so far) [B, V] float32 after token `tokens_B` at position `pos`."""
        x_B1D = self._embed(tokens_B[:, None], jnp.reshape(pos, (1,)))
        per_layer = (cache.self_k, cache.self_v, cache.cross_k, cache.cross_v)
        x_B1D, (self_k, self_v) = run_stack(self.decoders, x_B1D, (pos, memory_mask_BS), scan=self.scan, remat="none",
                                            method="step", per_layer=per_layer)
        logits_BV = self.output_layer(self.after_norm(x_B1D[:, 0])).astype(jnp.float32)
        return jax.nn.log_softmax(logits_BV, axis=-1), cache._replace(self_k=self_k, self_v=self_v)


class BiTransformerDecoder(nnx.Module):
    """left_decoder (num_blocks, L2R) and right_decoder (r_num_blocks, R2L; None when 0)."""

    def __init__(self, cfg: U2ppConfig, *, rngs: nnx.Rngs):
        self.left_decoder = TransformerDecoder(cfg, cfg.decoder.num_blocks, rngs=rngs)
        self.right_decoder = (TransformerDecoder(cfg, cfg.decoder.r_num_blocks, rngs=rngs)
                              if cfg.decoder.r_num_blocks > 0 else None)

    def __call__(self, memory_BSD, memory_mask_BS, ys_in_BT, ys_in_lens_B, r_ys_in_BT=None, dropout_rng=None):
        """(L2R logits, R2L logits or None when r_ys_in is None, MoE stats {'left', 'right'})."""
        r_left, r_right = split_rng(dropout_rng, 2)
        left_BTV, left_stats = self.left_decoder(memory_BSD, memory_mask_BS, ys_in_BT, ys_in_lens_B, r_left)
        if r_ys_in_BT is None:
            return left_BTV, None, {"left": left_stats}
        if self.right_decoder is None:
            raise ValueError("this model has no right-to-left decoder (decoder.r_num_blocks = 0)")
        right_BTV, right_stats = self.right_decoder(memory_BSD, memory_mask_BS, r_ys_in_BT, ys_in_lens_B, r_right)
        return left_BTV, right_BTV, {"left": left_stats, "right": right_stats}
