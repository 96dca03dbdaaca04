"""HuBERT's masked-prediction objective and the span masks it trains on.

The batch names the masked frames (`mask_indices`, drawn on the host by `span_mask`, as
transformers draws `mask_time_indices`): their projected features are replaced by masked_spec_embed
and the encoder must predict each masked frame's cluster id (`targets`: k-means units of MFCC
features, or of an earlier HuBERT's layer features). Logits are cosine similarities of
final_proj(output) with one embedding per cluster over logit_temp; the loss is the cross-entropy
summed over the masked valid frames, divided by the step's number of them (unmasked frames carry
no loss: HuBERT's pred_nomask_weight 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def span_mask(rng: np.random.Generator, frame_lengths: np.ndarray, frames: int, prob: float,
              length: int) -> np.ndarray:
    """bool [B, frames]: per utterance of n valid frames, round(prob * n / length + U[0, 1)) spans of
    `length` frames (fewer when the utterance is short) whose starts are drawn without replacement
    from 0..n - length; spans may overlap (fairseq's compute_mask_indices, static lengths)."""
    mask = np.zeros((len(frame_lengths), frames), bool)
    for b, n in enumerate(np.asarray(frame_lengths)):
        starts = max(int(n) - length + 1, 0)
        spans = min(int(prob * n / length + rng.random()), starts)
        for s in rng.choice(starts, size=spans, replace=False) if spans else ():
            mask[b, s:s + length] = True
    return mask


def masked_prediction_loss(model, batch: dict[str, jax.Array], rng: jax.Array | None,
                           masked_total: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss sum over the micro-batch's masked frames / masked_total, {masked_frames, masked_hits, ce_sum})."""
    mask_BT = batch["mask_indices"].astype(bool)
    _, last_BTD, valid_BT = model(batch["waveforms"], batch["lengths"], mask_BT=mask_BT, dropout_rng=rng)
    logits_BTV = model.cluster_logits(last_BTD)
    targets_BT = batch["targets"].astype(jnp.int32)
    log_probs_BTV = jax.nn.log_softmax(logits_BTV, axis=-1)
    nll_BT = -jnp.take_along_axis(log_probs_BTV, targets_BT[..., None], axis=-1)[..., 0]
    weight_BT = (mask_BT & valid_BT).astype(jnp.float32)
    ce_sum = (nll_BT * weight_BT).sum()
    hits = ((jnp.argmax(logits_BTV, axis=-1) == targets_BT) * weight_BT).sum()
    return ce_sum / jnp.maximum(masked_total, 1.0), {"masked_frames": weight_BT.sum(), "masked_hits": hits,
                                                     "ce_sum": ce_sum}
