"""MoST's training objective of one micro-batch, scaled so that accumulated micro-batches equal one big batch.

The objective of a step over micro-batches m = 1..M is

    sum_m CE_sum_m / N  +  sum_m (aux_m + z_m) / M

where CE_sum_m is the summed next-token cross-entropy over the loss-masked tokens of micro-batch m,
N the number of loss tokens in the WHOLE step batch, and aux_m / z_m the MoE losses of micro-batch
m summed over layers (each already a mean over that micro-batch's sequences or tokens). Summing the
gradients of these per-micro-batch terms gives the gradient of the one-big-batch objective: exactly
for the cross-entropy; for the sequence-level balance loss (a mean over rows) and the z-loss (a mean
over routed tokens) when every micro-batch has the same number of rows with routed tokens / of
routed tokens (equal-size packed micro-batches); the batch-level balance loss (seq_aux false) is a
product of batch means, so accumulation averages the micro-batch values instead. The original MoST
let the aux-loss gradient bypass the accumulation scaling (M times too large).

Besides the objective, every micro-batch returns sums (never means) for metrics, so they can be
added over micro-batches and over logging windows: loss per task and per target modality.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from most_jax.config import VocabConfig
from most_jax.vocab import AUDIO, TEXT, modality_of_tokens

# Target modalities reported separately, indexed by modality id (text tokens vs audio-unit tokens);
# targets with no modality group (waveform markers) count in neither.
MODALITY_NAMES = ("text", "audio")
assert (TEXT, AUDIO) == (0, 1)


class LossSums(NamedTuple):
    """Additive loss statistics (float32); divide sums by counts for means."""

    ce_sum: jax.Array  # [] summed cross-entropy over loss tokens
    loss_tokens: jax.Array  # [] number of loss tokens
    task_ce_sum: jax.Array  # [num_tasks]
    task_tokens: jax.Array  # [num_tasks]
    modality_ce_sum: jax.Array  # [len(MODALITY_NAMES)], by the modality of the target token
    modality_tokens: jax.Array  # [len(MODALITY_NAMES)]
    aux_loss: jax.Array  # [] MoE balance loss summed over layers (already alpha-weighted)
    z_loss: jax.Array  # [] router z-loss summed over layers (already alpha-weighted)


def token_cross_entropy(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
    """-log softmax(logits)[target] per token, in float32."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return log_z_BT - target_logit_BT


def loss_sums(logits_BTV: jax.Array, targets_BT: jax.Array, loss_mask_BT: jax.Array, task_BT: jax.Array,
              moe_aux: jax.Array, moe_z: jax.Array, *, num_tasks: int, vocab: VocabConfig) -> LossSums:
    """Cross-entropy sums over the loss mask, split by task and by target modality."""
    mask_BT = loss_mask_BT.astype(jnp.float32)
    ce_BT = token_cross_entropy(logits_BTV, targets_BT) * mask_BT
    modality_BT = modality_of_tokens(vocab, targets_BT)

    def by(ids_BT, values_BT, count):  # out-of-range ids (e.g. modality -1) are dropped
        return jax.ops.segment_sum(values_BT.reshape(-1), ids_BT.reshape(-1), num_segments=count)

    return LossSums(
        ce_sum=ce_BT.sum(),
        loss_tokens=mask_BT.sum(),
        task_ce_sum=by(task_BT, ce_BT, num_tasks),
        task_tokens=by(task_BT, mask_BT, num_tasks),
        modality_ce_sum=by(modality_BT, ce_BT, len(MODALITY_NAMES)),
        modality_tokens=by(modality_BT, mask_BT, len(MODALITY_NAMES)),
        aux_loss=moe_aux,
        z_loss=moe_z,
    )


def micro_batch_objective(sums: LossSums, *, step_loss_tokens: jax.Array, num_micro_batches: int) -> jax.Array:
    """This micro-batch's share of the step objective (see the module docstring)."""
    # A batch without loss tokens has ce_sum == 0; the max keeps 0/0 out of the gradient.
    ce = sums.ce_sum / jnp.maximum(step_loss_tokens, 1.0)
    return ce + (sums.aux_loss + sums.z_loss) / num_micro_batches
