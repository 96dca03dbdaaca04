"""The HuBERT family for the generic machinery (models/family.py): build, batch, loss, metrics.

A batch holds waveforms float32 [B, S] (S = data.max_audio_seconds at 16 kHz), lengths int32 [B]
(valid samples), targets int32 [B, T] (cluster ids per frame, T = the frames of S samples) and
mask_indices bool [B, T] (the frames to mask and predict, from loss.span_mask). The loss needs the
masked-prediction head (model.num_clusters > 0). `batches` reads `data.records`, a `most hubert
prepare` directory (data/hubert_data.py).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from most_jax.config import Config, HubertConfig, MoEConfig
from most_jax.models.family import Family, LossContext
from most_jax.models.hubert.features import check_lengths, frame_lengths
from most_jax.models.hubert.loss import masked_prediction_loss
from most_jax.models.hubert.model import Hubert

SAMPLE_RATE = 16000


def batch_spec(cfg: Config) -> dict[str, jax.ShapeDtypeStruct]:
    b = cfg.data.batch_size
    s = int(round(cfg.data.max_audio_seconds * SAMPLE_RATE))
    t = frame_lengths(cfg.model, s)
    return {"waveforms": jax.ShapeDtypeStruct((b, s), np.float32), "lengths": jax.ShapeDtypeStruct((b,), np.int32),
            "targets": jax.ShapeDtypeStruct((b, t), np.int32), "mask_indices": jax.ShapeDtypeStruct((b, t), np.bool_)}


def step_totals(batch: dict[str, jax.Array]) -> jax.Array:
    """The step's masked frames (within each utterance): the loss divisor. Masks only mark valid
    frames (span_mask draws inside each utterance; check_batch refuses others)."""
    return batch["mask_indices"].astype(jnp.float32).sum()


def loss_fn(model: Hubert, mb: dict[str, jax.Array], rng: jax.Array, ctx: LossContext) -> tuple[jax.Array, dict]:
    # The step reports the summed objective itself as `loss` (train/step.py STEP_METRICS).
    return masked_prediction_loss(model, mb, rng, ctx.totals)


def summarise(cfg: Config, s: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    """The window's accuracy over its masked frames and its masked frames per step (the trainer
    reports the `loss`: cross-entropy per masked frame)."""
    frames = float(s.get("masked_frames", 0))
    return {"masked_accuracy": float(s["masked_hits"]) / frames if n and frames > 0 else None,
            "masked_frames": frames / n if n else None}


def count_tokens(batch: dict[str, jax.Array]) -> jax.Array:
    """Waveform samples of the batch (seconds x 16k)."""
    return batch["lengths"].sum().astype(jnp.float32)


def check_batch(batch: dict[str, np.ndarray], model_cfg: HubertConfig) -> None:
    if not model_cfg.num_clusters:
        raise ValueError("model.num_clusters is 0: the model has no masked-prediction head to train")
    lengths = np.asarray(batch["lengths"])
    check_lengths(model_cfg, lengths, batch["waveforms"].shape[1], "batch['lengths']")
    frames = frame_lengths(model_cfg, lengths.astype(np.int64))
    valid = np.arange(batch["targets"].shape[1])[None, :] < frames[:, None]
    mask = np.asarray(batch["mask_indices"]).astype(bool)
    if (mask & ~valid).any():
        b, t = np.argwhere(mask & ~valid)[0]
        raise ValueError(f"batch['mask_indices'][{b}, {t}] masks a padded frame (utterance {b} has {frames[b]} frames)")
    targets = np.asarray(batch["targets"])
    bad = mask & ((targets < 0) | (targets >= model_cfg.num_clusters))
    if bad.any():
        b, t = np.argwhere(bad)[0]
        raise ValueError(f"batch['targets'][{b}, {t}] = {targets[b, t]} is not a cluster id 0..{model_cfg.num_clusters - 1}")


def moe_layers(model_cfg: HubertConfig) -> tuple[tuple[str, MoEConfig], ...]:
    return ()


def frozen(path: tuple[str, ...]) -> bool:
    """The positional batch norm's running statistics come from the checkpoint, never from the optimizer."""
    return path[-2:] in (("batch_norm", "running_mean"), ("batch_norm", "running_var"))


def _batches(cfg: Config):
    from most_jax.data.hubert_data import HubertBatches  # Grain: only where training reads data

    return HubertBatches(cfg)


def _build(model_cfg: HubertConfig, rngs: nnx.Rngs) -> Hubert:
    return Hubert(model_cfg, rngs=rngs)


FAMILY = Family(
    name="hubert", config_class=HubertConfig, build=_build, batch_spec=batch_spec, step_totals=step_totals,
    loss_fn=loss_fn, summarise=summarise, count_tokens=count_tokens, moe_layers=moe_layers, check_batch=check_batch,
    frozen=frozen, batches=_batches)
