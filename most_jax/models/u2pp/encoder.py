"""WeNet's U2++ Conformer encoder: GlobalCMVN -> Conv2dSubsampling -> RelPositionalEncoding ->
Conformer blocks (stacked) -> after_norm.

Each block (pre-LN, macaron): x + 0.5 FFN(norm_ff_macaron x) -> x + MHSA(norm_mha x) ->
x + Conv(norm_conv x) -> x + 0.5 FFN(norm_ff x) -> norm_final; every sub-block's output goes
through dropout before its residual add. The FFNs are WeNet's PositionwiseFeedForward (swish) or,
with mlp_type "moe", most_jax's MoE layer with WeNet's router and "ffn" experts.

Parameter names mirror WeNet's state_dict (encoder.encoders.3.self_attn.linear_q.weight is
encoders/self_attn/linear_q/kernel[3]): blocks are stacked on a leading `layers` axis; Linear
kernels are [in, out] (torch's weight transposed); the conv module's pointwise convs are Linears
[in, out] (torch's [O, I, 1] squeezed and transposed) and its depthwise kernel is [X, D] (torch's
[D, 1, X] squeezed and transposed); subsampling conv kernels are described in subsampling.py.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.config import U2ppConfig
from most_jax.models.u2pp.masks import add_optional_chunk_mask, make_pad_mask
from most_jax.models.u2pp.subsampling import Conv2dSubsampling
from most_jax.nn.dropout import dropout, split_rng
from most_jax.nn.ffn import FeedForward
from most_jax.nn.mha import RelPositionMultiHeadedAttention
from most_jax.nn.mlp import Linear
from most_jax.nn.moe import MoE, MoEStats
from most_jax.nn.norms import LayerNorm
from most_jax.nn.params import DTYPES, normal_param, ones_param, zeros_param
from most_jax.nn.positions import sinusoid_positions
from most_jax.nn.stack import layer_stack, run_stack

MAX_POSITIONS = 5000  # WeNet's PositionalEncoding max_len: positions beyond it are an error there too


class GlobalCMVN(nnx.Module):
    """(x - mean) * istd with statistics from data; the model never trains them (stop_gradient
    here, and the trainer freezes the leaves global_cmvn/mean and global_cmvn/istd)."""

    def __init__(self, dim: int, *, param_dtype: str):
        self.mean = zeros_param((dim,), (None,), param_dtype)
        self.istd = ones_param((dim,), (None,), param_dtype)

    def __call__(self, x_BUI: jax.Array) -> jax.Array:
        mean_11I = jax.lax.stop_gradient(self.mean[...]).astype(jnp.float32)[None, None]
        istd_11I = jax.lax.stop_gradient(self.istd[...]).astype(jnp.float32)[None, None]
        return (x_BUI.astype(jnp.float32) - mean_11I) * istd_11I


class RelPositionalEncoding(nnx.Module):
    """x * sqrt(d), and separately the sinusoids of absolute positions offset..offset+size-1
    (WeNet's RelPositionalEncoding: the attention's linear_pos consumes them); both dropped out."""

    def __init__(self, d: int, dropout_rate: float):
        self.d, self.dropout_rate = d, dropout_rate

    def position_encoding(self, offset: jax.Array | int, size: int, dropout_rng: jax.Array | None = None) -> jax.Array:
        if isinstance(offset, int) and offset + size > MAX_POSITIONS:
            raise ValueError(f"positions {offset}..{offset + size - 1} exceed WeNet's max_len {MAX_POSITIONS}")
        pos_SD = sinusoid_positions(offset + jnp.arange(size), self.d)
        return dropout(pos_SD, self.dropout_rate, dropout_rng)

    def __call__(self, x_BTD: jax.Array, offset: jax.Array | int = 0,
                 dropout_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        x_rng, pos_rng = split_rng(dropout_rng, 2)
        x_BTD = dropout(x_BTD * math.sqrt(self.d), self.dropout_rate, x_rng)
        return x_BTD, self.position_encoding(offset, x_BTD.shape[1], pos_rng).astype(x_BTD.dtype)


class DepthwiseConv1d(nnx.Module):
    """y[t, c] = sum_x kernel[x, c] * x[t + x, c] + bias[c] over an already padded input."""

    def __init__(self, channels: int, kernel_size: int, *, rngs: nnx.Rngs, std: float, param_dtype: str, dtype: str):
        self.kernel = normal_param(rngs, (kernel_size, channels), (None, "embed"), std, param_dtype)
        self.bias = zeros_param((channels,), ("embed",), param_dtype)
        self.dtype = DTYPES[dtype]

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        kernel_X1D = self.kernel[...].astype(self.dtype)[:, None, :]
        y_BTD = jax.lax.conv_general_dilated(x_BTD.astype(self.dtype), kernel_X1D, (1,), "VALID",
                                             dimension_numbers=("NWC", "WIO", "NWC"),
                                             feature_group_count=x_BTD.shape[-1])
        return y_BTD + self.bias[...].astype(self.dtype)[None, None, :]


class ConvolutionModule(nnx.Module):
    """pointwise_conv1 (D -> 2D) -> GLU -> depthwise_conv (causal: over the kernel-1 input frames
    before, zeros or the cache; else symmetric zero padding) -> LayerNorm -> swish -> pointwise_conv2.
    Padded frames are zeroed before and after, as WeNet's mask_pad."""

    def __init__(self, channels: int, kernel_size: int, *, causal: bool, norm_eps: float, rngs: nnx.Rngs,
                 std: float, param_dtype: str, dtype: str):
        if not causal and kernel_size % 2 == 0:
            raise ValueError(f"a non-causal conv module needs an odd cnn_module_kernel, got {kernel_size}")
        kw = dict(rngs=rngs, std=std, param_dtype=param_dtype, dtype=dtype)
        self.pointwise_conv1 = Linear(channels, 2 * channels, ("embed", "mlp"), bias=True, **kw)
        self.depthwise_conv = DepthwiseConv1d(channels, kernel_size, **kw)
        self.norm = LayerNorm(channels, eps=norm_eps, param_dtype=param_dtype)
        self.pointwise_conv2 = Linear(channels, channels, ("mlp", "embed"), bias=True, **kw)
        self.lorder = kernel_size - 1 if causal else 0  # frames of left context the cache holds
        self.kernel_size = kernel_size

    def __call__(self, x_BTD: jax.Array, valid_BT: jax.Array | None = None,
                 cnn_cache_BDX: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(output [B, T, D], next cache [B, D, lorder]: the last lorder input frames)."""
        b, t, d = x_BTD.shape
        if valid_BT is not None:
            x_BTD = jnp.where(valid_BT[..., None], x_BTD, 0.0).astype(x_BTD.dtype)
        if self.lorder > 0:
            if cnn_cache_BDX is None:
                left_BXD = jnp.zeros((b, self.lorder, d), x_BTD.dtype)
            elif cnn_cache_BDX.shape != (b, d, self.lorder):
                raise ValueError(f"cnn_cache must be [B={b}, D={d}, {self.lorder}], got {cnn_cache_BDX.shape}")
            else:
                left_BXD = cnn_cache_BDX.transpose(0, 2, 1).astype(x_BTD.dtype)
            x_BTD = jnp.concatenate([left_BXD, x_BTD], axis=1)
            new_cache_BDX = x_BTD[:, -self.lorder:].transpose(0, 2, 1)
        else:
            new_cache_BDX = jnp.zeros((b, d, 0), x_BTD.dtype)
        a_BTD, gate_BTD = jnp.split(self.pointwise_conv1(x_BTD), 2, axis=-1)
        glu_BTD = a_BTD * jax.nn.sigmoid(gate_BTD)
        if self.lorder == 0:
            # WeNet's symmetric padding belongs to the depthwise conv: zeros after the GLU, whereas
            # the causal left context (zeros or cache) enters before pointwise_conv1.
            pad = (self.kernel_size - 1) // 2
            glu_BTD = jnp.pad(glu_BTD, ((0, 0), (pad, pad), (0, 0)))
        h_BTD = self.depthwise_conv(glu_BTD)
        y_BTD = self.pointwise_conv2(jax.nn.silu(self.norm(h_BTD)))
        if valid_BT is not None:
            y_BTD = jnp.where(valid_BT[..., None], y_BTD, 0.0).astype(y_BTD.dtype)
        return y_BTD, new_cache_BDX


class ConformerEncoderLayer(nnx.Module):
    def __init__(self, cfg: U2ppConfig, *, rngs: nnx.Rngs):
        enc = cfg.encoder
        d = enc.output_size
        kw = dict(rngs=rngs, std=cfg.init_std, param_dtype=cfg.param_dtype, dtype=cfg.dtype)
        self.self_attn = RelPositionMultiHeadedAttention(d, enc.attention_heads,
                                                         dropout_rate=enc.attention_dropout_rate, **kw)
        if enc.mlp_type == "moe":
            # Every expert is WeNet's PositionwiseFeedForward of width linear_units.
            moe_cfg = dataclasses.replace(enc.moe, expert_ffn_dim=enc.linear_units)
            make_ffn = lambda: MoE(d, moe_cfg, init_std=cfg.init_std, param_dtype=cfg.param_dtype,  # noqa: E731
                                   dtype=cfg.dtype, rngs=rngs, dropout_rate=enc.dropout_rate)
        else:
            make_ffn = lambda: FeedForward(d, enc.linear_units, activation="silu",  # noqa: E731
                                           bias=enc.moe.expert_bias, dropout_rate=enc.dropout_rate, **kw)
        self.feed_forward_macaron = make_ffn()
        self.feed_forward = make_ffn()
        self.conv_module = ConvolutionModule(d, enc.cnn_module_kernel, causal=enc.causal, norm_eps=enc.norm_eps, **kw)
        norm = dict(eps=enc.norm_eps, param_dtype=cfg.param_dtype)
        self.norm_ff_macaron = LayerNorm(d, **norm)
        self.norm_mha = LayerNorm(d, **norm)
        self.norm_conv = LayerNorm(d, **norm)
        self.norm_ff = LayerNorm(d, **norm)
        self.norm_final = LayerNorm(d, **norm)
        self.is_moe = enc.mlp_type == "moe"
        self.dropout_rate = enc.dropout_rate

    def _ffn(self, ffn, x_BTD: jax.Array, valid_BT: jax.Array, rng: jax.Array | None):
        if self.is_moe:
            return ffn(x_BTD, valid_BT, dropout_rng=rng)
        return ffn(x_BTD, dropout_rng=rng), None

    def block(self, x_BTD, mask_BTS, pos_emb_SD, valid_BT, att_cache, cnn_cache_BDX, dropout_rng):
        """One Conformer block; returns (x, MoE stats of (macaron, ffn) or None, att cache, cnn cache)."""
        rngs = split_rng(dropout_rng, 7)
        h_BTD, macaron_stats = self._ffn(self.feed_forward_macaron, self.norm_ff_macaron(x_BTD), valid_BT, rngs[0])
        x_BTD = x_BTD + 0.5 * dropout(h_BTD, self.dropout_rate, rngs[1])
        h_BTD = self.norm_mha(x_BTD)
        h_BTD, new_att_cache = self.self_attn(h_BTD, h_BTD, h_BTD, mask_BTS, pos_emb_SD, att_cache=att_cache,
                                              dropout_rng=rngs[2])
        x_BTD = x_BTD + dropout(h_BTD, self.dropout_rate, rngs[3])
        h_BTD, new_cnn_cache = self.conv_module(self.norm_conv(x_BTD), valid_BT, cnn_cache_BDX)
        x_BTD = x_BTD + dropout(h_BTD, self.dropout_rate, rngs[4])
        h_BTD, ffn_stats = self._ffn(self.feed_forward, self.norm_ff(x_BTD), valid_BT, rngs[5])
        x_BTD = self.norm_final(x_BTD + 0.5 * dropout(h_BTD, self.dropout_rate, rngs[6]))
        stats = None if macaron_stats is None else jax.tree.map(lambda a, b: jnp.stack([a, b]), macaron_stats,
                                                                ffn_stats)
        return x_BTD, stats, new_att_cache, new_cnn_cache

    def __call__(self, x_BTD, mask_BTS, pos_emb_SD, valid_BT, dropout_rng=None):
        """Full-utterance step of the layer stack: (x, stats)."""
        x_BTD, stats, _, _ = self.block(x_BTD, mask_BTS, pos_emb_SD, valid_BT, None, None, dropout_rng)
        return x_BTD, stats

    def forward_chunk(self, x_BTD, pos_emb_SD, att_cache, cnn_cache_BDX):
        """Streaming step (evaluation): no mask, every cached and new frame visible; (x, caches)."""
        valid_BT = jnp.ones(x_BTD.shape[:2], bool)
        x_BTD, _, new_att_cache, new_cnn_cache = self.block(x_BTD, None, pos_emb_SD, valid_BT, att_cache,
                                                            cnn_cache_BDX, None)
        return x_BTD, (new_att_cache, new_cnn_cache)


class ConformerEncoder(nnx.Module):
    def __init__(self, cfg: U2ppConfig, *, rngs: nnx.Rngs):
        enc = cfg.encoder
        self.cfg = cfg
        self.global_cmvn = GlobalCMVN(cfg.input_dim, param_dtype=cfg.param_dtype)
        self.embed = Conv2dSubsampling(enc.input_layer, cfg.input_dim, enc.output_size, rngs=rngs, std=cfg.init_std,
                                       param_dtype=cfg.param_dtype, dtype=cfg.dtype)
        self.pos_enc = RelPositionalEncoding(enc.output_size, enc.positional_dropout_rate)
        self.encoders = layer_stack(lambda layer_rngs: ConformerEncoderLayer(cfg, rngs=layer_rngs), enc.num_blocks,
                                    rngs)
        self.after_norm = LayerNorm(enc.output_size, eps=enc.norm_eps, param_dtype=cfg.param_dtype)

    @property
    def max_chunk_size(self) -> int:
        """WeNet's cap on a drawn training chunk: 1 s (100 input frames) of frames after subsampling."""
        return int(100.0 / self.embed.rate)

    def encode(self, feats_BUI: jax.Array, feats_lengths_B: jax.Array, *, chunk_size: int = 0,
               num_left_chunks: int = -1, dropout_rng: jax.Array | None = None,
               chunk_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array, MoEStats | None]:
        """WeNet's BaseEncoder.forward: (encoder_out [B, T, D], valid mask [B, T], MoE stats).

        chunk_size as WeNet's decoding_chunk_size: -1 full context, N > 0 chunks of N frames with
        `num_left_chunks` chunks of left context (-1: all); 0 the training mask: WeNet's random
        chunk drawn with `chunk_rng` under use_dynamic_chunk, else static_chunk_size (0: full).
        `dropout_rng` None is evaluation. The stats have leading axes [layers, 2] (2: the
        feed_forward_macaron and feed_forward MoE layers of a block); None for dense FFNs."""
        enc = self.cfg.encoder
        if feats_BUI.ndim != 3 or feats_BUI.shape[-1] != self.cfg.input_dim:
            raise ValueError(f"feats must be [B, U, {self.cfg.input_dim}], got {feats_BUI.shape}")
        if feats_lengths_B.shape != feats_BUI.shape[:1]:
            raise ValueError(f"feats_lengths must be [B={feats_BUI.shape[0]}], got {feats_lengths_B.shape}")
        embed_rng, layers_rng = split_rng(dropout_rng, 2)
        valid_BU = ~make_pad_mask(feats_lengths_B, feats_BUI.shape[1])
        x_BTD, valid_BT = self.embed(self.global_cmvn(feats_BUI), valid_BU)
        x_BTD, pos_emb_SD = self.pos_enc(x_BTD, 0, embed_rng)
        mask_BTS = add_optional_chunk_mask(valid_BT[:, None, :], use_dynamic_chunk=enc.use_dynamic_chunk,
                                           use_dynamic_left_chunk=enc.use_dynamic_left_chunk,
                                           decoding_chunk_size=chunk_size, static_chunk_size=enc.static_chunk_size,
                                           num_decoding_left_chunks=num_left_chunks,
                                           max_chunk_size=self.max_chunk_size, rng=chunk_rng)
        per_layer = None if layers_rng is None else (jax.random.split(layers_rng, enc.num_blocks),)
        x_BTD, stats = run_stack(self.encoders, x_BTD, (mask_BTS, pos_emb_SD, valid_BT), scan=self.cfg.scan_layers,
                                 remat=self.cfg.remat, per_layer=per_layer)
        return self.after_norm(x_BTD), valid_BT, stats

    def __call__(self, feats_BUI: jax.Array, feats_lengths_B: jax.Array, **kwargs):
        return self.encode(feats_BUI, feats_lengths_B, **kwargs)
