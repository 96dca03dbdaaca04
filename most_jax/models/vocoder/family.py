"""The vocoder family for the generic machinery (models/family.py): a GAN in two phases.

A step batch holds `data.batch_size` training segments of `data.seq_len` unit frames:
units int32 [B, U] (frame-level, aligned with the audio), audio float32 [B, U * hop], speaker and
lang int32 [B] (0 when the model has no such embedding), and for the duration predictor the
segment's runs: dedup_units int32 [B, U] and durations int32 [B, U] (0: padding, or a run cut by
the segment's edge, which is not trained on; speech-resynthesis drops those runs too).

The step updates the discriminators first, then the generator against the updated discriminators
(HiFi-GAN's order), each with its own optimizer (train/step.py, `Family.phases`). Each phase's
objective reads the other half through stop_gradient; with `ctx.phase` None the objective is both
terms at once (the simultaneous objective, for evaluation). With `model.adversarial` false only the
generator's mel-L1 (+ duration) loss is trained and the discriminators' phase is empty.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from most_jax.config import Config, VocoderConfig
from most_jax.models.family import Family, LossContext
from most_jax.models.vocoder import losses
from most_jax.models.vocoder.model import DISCRIMINATORS, GENERATOR, Vocoder

SUM_KEYS = ("loss_disc", "loss_gen", "loss_adv", "loss_fm", "mel_l1", "loss_dur")


def batch_spec(cfg: Config) -> dict[str, jax.ShapeDtypeStruct]:
    b, u = cfg.data.batch_size, cfg.data.seq_len
    return {"units": jax.ShapeDtypeStruct((b, u), np.int32),
            "audio": jax.ShapeDtypeStruct((b, u * cfg.model.hop), np.float32),
            "speaker": jax.ShapeDtypeStruct((b,), np.int32),
            "lang": jax.ShapeDtypeStruct((b,), np.int32),
            "dedup_units": jax.ShapeDtypeStruct((b, u), np.int32),
            "durations": jax.ShapeDtypeStruct((b, u), np.int32)}


def step_totals(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Runs the duration loss averages over (the whole step's, so micro-batch shares add up)."""
    return {"runs": jnp.maximum((batch["durations"] > 0).sum(), 1).astype(jnp.float32)}


def mel(cfg: VocoderConfig, wave_BT: jax.Array) -> jax.Array:
    return losses.log_mel(wave_BT, sample_rate=cfg.sample_rate, n_fft=cfg.mel_n_fft, hop=cfg.mel_hop,
                          win=cfg.mel_win, bins=cfg.mel_bins, fmin=cfg.mel_fmin, fmax=cfg.mel_fmax)


def _frozen(module: nnx.Module) -> nnx.Module:
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def loss_fn(model: Vocoder, mb: dict[str, jax.Array], rng: jax.Array, ctx: LossContext) -> tuple[jax.Array, dict]:
    cfg = model.generator.cfg
    share = 1.0 / ctx.micro_batches  # each loss is a mean over its micro-batch
    zero = jnp.zeros((), jnp.float32)
    sums = dict.fromkeys(SUM_KEYS, zero)
    objective = zero
    phase = ctx.phase
    if phase == DISCRIMINATORS and not cfg.adversarial:
        return objective, sums  # the discriminators' phase is a no-op (zero gradients)
    generator = model.generator if phase != DISCRIMINATORS else _frozen(model.generator)
    fake = generator(mb["units"], mb["speaker"], mb["lang"])
    if phase in (None, DISCRIMINATORS) and cfg.adversarial:
        real_scores, _ = model.discriminators(mb["audio"])
        fake_scores, _ = model.discriminators(jax.lax.stop_gradient(fake))
        loss_disc = losses.discriminator_loss(real_scores, fake_scores) * share
        sums["loss_disc"] = loss_disc
        objective = objective + loss_disc
    if phase in (None, GENERATOR):
        adv = fm = zero
        if cfg.adversarial:
            disc = _frozen(model.discriminators)
            _, real_feats = disc(mb["audio"])
            fake_scores, fake_feats = disc(fake)
            adv = losses.generator_adversarial_loss(fake_scores)
            fm = losses.feature_matching_loss(real_feats, fake_feats)
        mel_l1 = jnp.mean(jnp.abs(mel(cfg, mb["audio"]) - mel(cfg, fake)))
        total = adv + cfg.fm_weight * fm + cfg.mel_weight * mel_l1
        dur = zero
        if cfg.duration_predictor:
            mask = (mb["durations"] > 0).astype(jnp.float32)
            pred = model.generator.log_durations(mb["dedup_units"], rng)
            target = jnp.log1p(mb["durations"].astype(jnp.float32))
            # a sum over this micro-batch's runs / the step's runs: shares add up to the step's mean
            dur = jnp.sum(mask * (pred - target) ** 2) / ctx.totals["runs"]
            total = total + cfg.dur_weight * dur / share
        sums.update(loss_gen=total * share, loss_adv=adv * share, loss_fm=fm * share, mel_l1=mel_l1 * share,
                    loss_dur=dur)
        objective = objective + total * share
    return objective, sums


def summarise(cfg: Config, s: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    """Window means of each loss (per step: means over the step's segments)."""
    return {key: (float(s[key]) / n if n and key in s else None) for key in SUM_KEYS}


def count_tokens(batch: dict[str, jax.Array]) -> jax.Array:
    """Audio samples of the step (what a vocoder's throughput counts)."""
    return jnp.float32(batch["audio"].size)


def check_batch(batch: dict[str, np.ndarray], model_cfg: VocoderConfig) -> None:
    for key, limit in (("units", model_cfg.num_units), ("dedup_units", model_cfg.num_units),
                       ("speaker", max(model_cfg.num_speakers, 1)), ("lang", max(model_cfg.num_langs, 1))):
        values = np.asarray(batch[key])
        if values.size and (values.min() < 0 or values.max() >= limit):
            raise ValueError(f"batch[{key!r}] spans {values.min()}..{values.max()}, outside 0..{limit - 1}")
    if np.asarray(batch["durations"]).min() < 0:
        raise ValueError("batch['durations'] holds negative durations")


def moe_layers(_model_cfg: VocoderConfig) -> tuple:
    return ()


def _build(model_cfg: VocoderConfig, rngs: nnx.Rngs) -> Vocoder:
    return Vocoder(model_cfg, rngs=rngs)


FAMILY = Family(
    name="vocoder", config_class=VocoderConfig, build=_build, batch_spec=batch_spec, step_totals=step_totals,
    loss_fn=loss_fn, summarise=summarise, count_tokens=count_tokens, moe_layers=moe_layers, check_batch=check_batch,
    phases=(DISCRIMINATORS, GENERATOR))
