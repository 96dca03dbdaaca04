"""Compute accounting of a U2++ config (WeNet's Conformer + CTC + bidirectional attention decoder):
parameters (total, active, the decoders' token embeddings apart) and the FLOPs of one training
utterance, reported per 10 ms input feature frame (what the U2++ trainer counts as its tokens).

The utterance is the step batch's shape: U input frames (the longest length bucket), T = U after
the conv2d subsampling encoder frames, L = data.seq_len + 1 decoder positions (sos + targets).
Conventions as flops.py: 2 n k m per matmul, convolutions as their multiply-adds (2 per), no
elementwise work; attention counts the full T x T (L x L, L x T) squares, as computed under the
masks. WeNet's relative-position attention adds a second T x T score matmul (queries against the
projected position sinusoids) and projects the T sinusoids once per layer. A branch the training
loss skips (the CTC head at ctc_weight 0, the decoders at 1, the right-to-left decoder at
reverse_weight 0) keeps its parameters but counts no active parameters and no FLOPs.
"""

from __future__ import annotations

import dataclasses

from most_jax.config import MoEConfig, U2ppConfig
from most_jax.models.u2pp.subsampling import VARIANTS, output_length
from most_jax.scaling.flops import Budget, Part, moe_parts

UNIT = "input frame (10 ms)"


def _linear(d_in: int, d_out: int, rows: int, bias: bool = True) -> tuple[int, float]:
    """(parameters, FLOPs) of a Linear applied to `rows` rows."""
    return d_in * d_out + (d_out if bias else 0), 2.0 * rows * d_in * d_out


def _ffn_parts(name: str, d: int, width: int, mlp_type: str, moe: MoEConfig, ffns: int, rows: int) -> list[Part]:
    """`ffns` FFN layers over `rows` rows per utterance: WeNet's dense FFN (biases iff moe.expert_bias)
    or an MoE of moe.num_experts experts of `width` (the U2++ MoE's expert width is linear_units)."""
    if mlp_type == "moe":
        per_token = moe_parts(d, dataclasses.replace(moe, expert_ffn_dim=width), ffns, prefix=f"{name}_")
        return [Part(p.name, p.params, p.params_active, p.flops_per_token * rows) for p in per_token]
    params = ffns * (2 * d * width + ((width + d) if moe.expert_bias else 0))
    return [Part(f"{name}_ffn", params, params, 2.0 * ffns * rows * 2 * d * width)]


def _encoder(cfg: U2ppConfig, frames: int) -> tuple[list[Part], int]:
    """The encoder's parts (FLOPs per utterance of `frames` input frames) and its output frames T."""
    enc, i = cfg.encoder, cfg.input_dim
    d, n = enc.output_size, enc.num_blocks
    variant = VARIANTS[enc.input_layer]
    conv_params, conv_flops, channels, t, f = 0, 0.0, 1, frames, i
    for kernel, stride in variant.convs:
        t, f = (t - kernel) // stride + 1, (f - kernel) // stride + 1
        conv_params += kernel * kernel * channels * d + d
        conv_flops += 2.0 * t * f * kernel * kernel * channels * d
        channels = d
    out_params, out_flops = _linear(d * f, d, t)
    qkvo_params, qkvo_flops = _linear(d, d, t)
    pos_params, pos_flops = _linear(d, d, t, bias=False)  # linear_pos over the T key positions
    ks = enc.cnn_module_kernel
    pw1_params, pw1_flops = _linear(d, 2 * d, t)
    pw2_params, pw2_flops = _linear(d, d, t)
    parts = [
        Part("global_cmvn", 2 * i, 2 * i, 0.0),
        Part("subsampling_conv", conv_params, conv_params, conv_flops),
        Part("subsampling_linear", out_params, out_params, out_flops),
        Part("encoder_attention_proj", n * (4 * qkvo_params + pos_params + 2 * d),
             n * (4 * qkvo_params + pos_params + 2 * d), n * (4 * qkvo_flops + pos_flops)),
        # content (q + u) k^T, position (q + v) p^T and probabilities x values: 3 matmuls of T x T x d
        Part("encoder_attention_scores", 0, 0, n * 3 * 2.0 * t * t * d),
        Part("encoder_conv_module", n * (pw1_params + ks * d + d + 2 * d + pw2_params),
             n * (pw1_params + ks * d + d + 2 * d + pw2_params), n * (pw1_flops + 2.0 * t * ks * d + pw2_flops)),
        *_ffn_parts("encoder", d, enc.linear_units, enc.mlp_type, enc.moe, 2 * n, t),  # macaron + final FFN
        Part("encoder_norms", n * 5 * 2 * d + 2 * d, n * 5 * 2 * d + 2 * d, 0.0),  # 5 per block + after_norm
    ]
    return parts, t


def _decoder(cfg: U2ppConfig, blocks: int, positions: int, memory: int) -> list[Part]:
    """One attention decoder of `blocks` layers: FLOPs per utterance of `positions` decoder
    positions attending `memory` encoder frames (its embedding table is apart: Budget.embedding_params)."""
    d, dec, v = cfg.encoder.output_size, cfg.decoder, cfg.vocab_size
    proj_params, per_row = _linear(d, d, 1)
    head_params, head_flops = _linear(d, v, positions)
    return [
        Part("decoder_self_attention_proj", blocks * 4 * proj_params, blocks * 4 * proj_params,
             blocks * 4 * per_row * positions),
        Part("decoder_self_attention_scores", 0, 0, blocks * 2 * 2.0 * positions * positions * d),
        # q and out on the decoder positions, k and v on the encoder frames
        Part("decoder_cross_attention_proj", blocks * 4 * proj_params, blocks * 4 * proj_params,
             blocks * 2 * per_row * (positions + memory)),
        Part("decoder_cross_attention_scores", 0, 0, blocks * 2 * 2.0 * positions * memory * d),
        *_ffn_parts("decoder", d, dec.linear_units, dec.mlp_type, dec.moe, blocks, positions),
        Part("decoder_norms", blocks * 3 * 2 * d + 2 * d, blocks * 3 * 2 * d + 2 * d, 0.0),
        Part("decoder_output_layer", head_params, head_params, head_flops),
    ]


def _inactive(parts: list[Part]) -> list[Part]:
    return [Part(p.name, p.params, 0, 0.0) for p in parts]


def _merged(parts: list[Part]) -> tuple[Part, ...]:
    """Parts of the same name (the two decoders') added up, in first-seen order."""
    out: dict[str, Part] = {}
    for p in parts:
        q = out.get(p.name)
        out[p.name] = p if q is None else Part(p.name, q.params + p.params, q.params_active + p.params_active,
                                               q.flops_per_token + p.flops_per_token)
    return tuple(out.values())


def u2pp_budget(cfg: U2ppConfig, frames: int, target_tokens: int) -> Budget:
    """The accounting of one training utterance of `frames` input frames and `target_tokens` target
    tokens, FLOPs per input frame."""
    if frames < 1 or output_length(VARIANTS[cfg.encoder.input_layer], frames) < 1:
        raise ValueError(f"{frames} input frames give no encoder frame after {cfg.encoder.input_layer} subsampling")
    d, v = cfg.encoder.output_size, cfg.vocab_size
    parts, t = _encoder(cfg, frames)
    ctc_params, ctc_flops = _linear(d, v, t)
    ctc = [Part("ctc_head", ctc_params, ctc_params, ctc_flops)]
    parts += ctc if cfg.ctc_weight > 0 else _inactive(ctc)
    positions = target_tokens + 1  # sos + the targets (eos is the last output)
    left = _decoder(cfg, cfg.decoder.num_blocks, positions, t)
    parts += left if cfg.ctc_weight < 1 else _inactive(left)
    if cfg.decoder.r_num_blocks > 0:
        right = _decoder(cfg, cfg.decoder.r_num_blocks, positions, t)
        parts += right if cfg.ctc_weight < 1 and cfg.reverse_weight > 0 else _inactive(right)
    decoders = 1 + (cfg.decoder.r_num_blocks > 0)
    per_frame = [Part(p.name, p.params, p.params_active, p.flops_per_token / frames) for p in _merged(parts)]
    return Budget(parts=tuple(per_frame), embedding_params=decoders * v * d, unit=UNIT,
                  shape={"frames": frames, "encoder_frames": t, "target_tokens": target_tokens})
