"""WeNet's U2++ training loss: CTC (summed, / batch) and label-smoothed attention loss (L2R and R2L).

loss = ctc_weight x CTC + (1 - ctc_weight) x ((1 - reverse_weight) x L2R + reverse_weight x R2L).
Targets are padded [B, T] (T: tokens here) with lengths [B] (no ignore id in the arrays; `valid` masks carry it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.scipy.special import xlogy

from most_jax.nn.dropout import split_rng


def add_sos_eos(ys_BT: jax.Array, lengths_B: jax.Array, sos: int, eos: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """WeNet's add_sos_eos: decoder input [sos, y..., eos pad] and output [y..., eos, pad], both [B, T+1].

    Returns (ys_in_BT, ys_out_BT, out_valid_BT); out_valid marks the n + 1 scored positions of row b."""
    b, t = ys_BT.shape
    pos_T = jnp.arange(t + 1)
    ys_pad_BT = jnp.concatenate([ys_BT, jnp.full((b, 1), eos, ys_BT.dtype)], axis=1)
    inside_BT = pos_T[None, :] < lengths_B[:, None]
    ys_out_BT = jnp.where(inside_BT, ys_pad_BT, eos)
    shifted_BT = jnp.concatenate([jnp.full((b, 1), sos, ys_BT.dtype), ys_BT], axis=1)
    ys_in_BT = jnp.where(pos_T[None, :] <= lengths_B[:, None], shifted_BT, eos)
    return ys_in_BT, ys_out_BT, pos_T[None, :] <= lengths_B[:, None]


def reverse_targets(ys_BT: jax.Array, lengths_B: jax.Array) -> jax.Array:
    """WeNet's reverse_pad_list: each row's first n tokens reversed; the padding stays where it was."""
    pos_T = jnp.arange(ys_BT.shape[1])
    src_BT = jnp.clip(lengths_B[:, None] - 1 - pos_T[None, :], 0, ys_BT.shape[1] - 1)
    rev_BT = jnp.take_along_axis(ys_BT, src_BT, axis=1)
    return jnp.where(pos_T[None, :] < lengths_B[:, None], rev_BT, ys_BT)


def label_smoothing_loss(logits_BTV: jax.Array, targets_BT: jax.Array, valid_BT: jax.Array, smoothing: float,
                         normalize_length: bool, denom: jax.Array | None = None) -> jax.Array:
    """KL(true_dist || softmax(logits)) summed over valid positions, / batch (or / valid tokens);
    `denom` replaces that divisor (a whole step's, when a step is split into micro-batches).

    true_dist puts 1 - smoothing on the target and smoothing / (V - 1) on every other class (WeNet's
    LabelSmoothingLoss, whose KLDivLoss counts 0 log 0 as 0)."""
    v = logits_BTV.shape[-1]
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    confidence, other = 1.0 - smoothing, smoothing / (v - 1)
    entropy = xlogy(confidence, confidence) + (v - 1) * xlogy(other, other)  # sum_v t_v log t_v
    logp_target_BT = jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
    cross_BT = other * (logp_BTV.sum(axis=-1) - logp_target_BT) + confidence * logp_target_BT
    kl_BT = jnp.where(valid_BT, entropy - cross_BT, 0.0)
    if denom is None:
        denom = valid_BT.sum() if normalize_length else logits_BTV.shape[0]
    return kl_BT.sum() / denom


def attention_accuracy(logits_BTV: jax.Array, targets_BT: jax.Array, valid_BT: jax.Array) -> jax.Array:
    """Fraction of valid positions whose argmax is the target (WeNet's th_accuracy)."""
    hit_BT = (logits_BTV.argmax(axis=-1) == targets_BT) & valid_BT
    return hit_BT.sum() / jnp.maximum(valid_BT.sum(), 1)


def ctc_loss(logits_BTV: jax.Array, lengths_B: jax.Array, ys_BT: jax.Array, ys_lengths_B: jax.Array,
             blank_id: int = 0, denom: jax.Array | None = None) -> jax.Array:
    """Summed CTC negative log-likelihood / batch size (or / `denom`), an impossible alignment counting 0.

    torch.nn.CTCLoss(reduction='sum', zero_infinity=True) / B as WeNet's CTC module: a target needs
    n + (adjacent repeats) frames; rows with fewer frames contribute nothing (optax would give ~1e5)."""
    # Two T axes: frames of the logits, tokens of the targets.
    b, t, _ = logits_BTV.shape
    frame_pad_BT = (jnp.arange(t)[None, :] >= lengths_B[:, None]).astype(jnp.float32)
    label_valid_BT = jnp.arange(ys_BT.shape[1])[None, :] < ys_lengths_B[:, None]
    per_row_B = optax.ctc_loss(logits_BTV.astype(jnp.float32), frame_pad_BT, ys_BT,
                               (~label_valid_BT).astype(jnp.float32), blank_id=blank_id)
    repeats_B = (label_valid_BT[:, 1:] & (ys_BT[:, 1:] == ys_BT[:, :-1])).sum(axis=1)
    feasible_B = lengths_B >= ys_lengths_B + repeats_B
    return jnp.where(feasible_B, per_row_B, 0.0).sum() / (b if denom is None else denom)


def attention_loss(decoder, encoder_out_BSD: jax.Array, encoder_mask_BS: jax.Array, ys_BT: jax.Array,
                   ys_lengths_B: jax.Array, *, sos: int, eos: int, reverse_weight: float, lsm_weight: float,
                   length_normalized: bool, dropout_rng: jax.Array | None = None, denom: jax.Array | None = None):
    """WeNet's _calc_att_loss: (1 - rw) x L2R + rw x R2L label-smoothed loss, the L2R accuracy and
    the decoders' MoE stats. The R2L decoder runs only when reverse_weight > 0 (as WeNet)."""
    ys_in, ys_out, valid = add_sos_eos(ys_BT, ys_lengths_B, sos, eos)
    r_ys_in = r_ys_out = None
    if reverse_weight > 0:
        r_ys_in, r_ys_out, _ = add_sos_eos(reverse_targets(ys_BT, ys_lengths_B), ys_lengths_B, sos, eos)
    left_BTV, right_BTV, stats = decoder(encoder_out_BSD, encoder_mask_BS, ys_in, ys_lengths_B + 1, r_ys_in,
                                         dropout_rng=dropout_rng)
    loss = label_smoothing_loss(left_BTV, ys_out, valid, lsm_weight, length_normalized, denom)
    if reverse_weight > 0:
        r_loss = label_smoothing_loss(right_BTV, r_ys_out, valid, lsm_weight, length_normalized, denom)
        loss = loss * (1 - reverse_weight) + r_loss * reverse_weight
    return loss, attention_accuracy(left_BTV, ys_out, valid), stats


def u2pp_loss(model, batch: dict, rng: jax.Array | None, *, rows: jax.Array | None = None,
              tokens: jax.Array | None = None):
    """(loss, metrics) of a U2pp model on a batch of WeNet's keys: feats [B, U, I] float,
    feats_lengths [B], target [B, T] int (padding ignored), target_lengths [B]. `rng` drives the
    dropout and the dynamic chunk (None: evaluation, deterministic: full context, or the static chunk).

    loss = ctc_weight x CTC + (1 - ctc_weight) x attention; a weight of 0 or 1 skips the other branch.
    WeNet divides by the batch's utterances (attention: by its tokens + eos under
    length_normalized_loss); `rows` / `tokens` give a whole step's counts instead, so that the
    losses of a step's micro-batches add up to the step's loss."""
    cfg = model.cfg
    r_enc, r_chunk, r_dec = split_rng(rng, 3)
    encoder_out_BTD, mask_BT, enc_stats = model.encode(batch["feats"], batch["feats_lengths"],
                                                       chunk_size=0 if rng is not None else -1, dropout_rng=r_enc,
                                                       chunk_rng=r_chunk)
    target_BT, target_lengths_B = batch["target"], batch["target_lengths"]
    metrics = {"moe_encoder": enc_stats}
    loss = jnp.zeros((), jnp.float32)
    if cfg.ctc_weight > 0:
        loss_ctc = ctc_loss(model.ctc(encoder_out_BTD), mask_BT.sum(axis=1), target_BT, target_lengths_B, denom=rows)
        loss = loss + cfg.ctc_weight * loss_ctc
        metrics["loss_ctc"] = loss_ctc
    if cfg.ctc_weight < 1:
        loss_att, acc, dec_stats = attention_loss(
            model.decoder, encoder_out_BTD, mask_BT, target_BT, target_lengths_B, sos=model.sos, eos=model.eos,
            reverse_weight=cfg.reverse_weight, lsm_weight=cfg.lsm_weight,
            length_normalized=cfg.length_normalized_loss, dropout_rng=r_dec,
            denom=tokens if cfg.length_normalized_loss else rows)
        loss = loss + (1 - cfg.ctc_weight) * loss_att
        metrics.update(loss_att=loss_att, th_accuracy=acc, moe_decoder=dec_stats)
    metrics["loss"] = loss
    return loss, metrics
