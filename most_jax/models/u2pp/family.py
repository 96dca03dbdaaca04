"""The U2++ family for the generic machinery (models/family.py): build, batch, loss, metrics.

A batch holds WeNet's keys, padded to fixed shapes: feats float32 [B, U, I] (U: one of the length
buckets' frames, data.speech.bucket_frames, by default the frames of `data.max_audio_seconds` of
audio at the front end's 10 ms shift), feats_lengths int32 [B], target int32 [B, T] (T =
data.seq_len tokens; ids 1..vocab_size-2, padding ignored) and target_lengths int32 [B]. WeNet
divides its losses by the batch's utterances (or tokens), so every micro-batch divides by the whole
step's counts and the shares add up. `batches` reads records of `most data prepare --family u2pp`
(data/speech_pipeline.py); a fresh run takes the encoder's global CMVN from those records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from most_jax.config import Config, MoEConfig, U2ppConfig
from most_jax.models.family import Family, LossContext
from most_jax.models.u2pp.loss import u2pp_loss
from most_jax.models.u2pp.model import U2pp
from most_jax.scaling.accounting import train_flops_per_step
from most_jax.data.buckets import bucket_frames

BATCH_KEYS = ("feats", "feats_lengths", "target", "target_lengths")


def batch_spec(cfg: Config) -> dict[str, jax.ShapeDtypeStruct]:
    """The largest step batch (the longest bucket)."""
    return _spec(cfg, bucket_frames(cfg.data)[-1])


def batch_specs(cfg: Config) -> tuple[dict[str, jax.ShapeDtypeStruct], ...]:
    """One step batch per length bucket, shortest first."""
    return tuple(_spec(cfg, u) for u in bucket_frames(cfg.data))


def _spec(cfg: Config, u: int) -> dict[str, jax.ShapeDtypeStruct]:
    b = cfg.data.batch_size
    return {"feats": jax.ShapeDtypeStruct((b, u, cfg.model.input_dim), np.float32),
            "feats_lengths": jax.ShapeDtypeStruct((b,), np.int32),
            "target": jax.ShapeDtypeStruct((b, cfg.data.seq_len), np.int32),
            "target_lengths": jax.ShapeDtypeStruct((b,), np.int32)}


def step_totals(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The step's utterances and decoder targets (tokens + eos): the loss divisors."""
    lengths = batch["target_lengths"].astype(jnp.float32)
    return {"rows": jnp.float32(lengths.shape[0]), "tokens": (lengths + 1).sum()}


def loss_fn(model: U2pp, mb: dict[str, jax.Array], rng: jax.Array, ctx: LossContext) -> tuple[jax.Array, dict]:
    loss, metrics = u2pp_loss(model, mb, rng, rows=ctx.totals["rows"], tokens=ctx.totals["tokens"])
    # The step reports the summed objective itself as `loss` (train/step.py STEP_METRICS).
    sums = {"rows": jnp.float32(mb["target_lengths"].shape[0])}
    for key in ("loss_ctc", "loss_att"):
        if key in metrics:
            sums[key] = metrics[key]
    if "th_accuracy" in metrics:
        tokens = (mb["target_lengths"] + 1).sum().astype(jnp.float32)
        sums["att_hits"], sums["att_tokens"] = metrics["th_accuracy"] * tokens, tokens
    for name in ("moe_encoder", "moe_decoder"):
        stats = metrics.get(name)
        if isinstance(stats, dict):  # the decoder's: {'left': ..., 'right': ...}
            for side, side_stats in stats.items():
                if side_stats is not None:
                    sums[f"load_{name[4:]}_{side}"] = side_stats.load_GE.sum(axis=-2).astype(jnp.float32)
        elif stats is not None:
            sums[f"load_{name[4:]}"] = stats.load_GE.sum(axis=-2).astype(jnp.float32)
    return loss, sums


def summarise(cfg: Config, s: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    """Window means of the branch losses (each step's is already a per-utterance mean; the trainer
    reports the total `loss`), the L2R token accuracy, and the routed tokens per expert of every MoE layer."""
    rec: dict[str, Any] = {key: (float(s[key]) / n if n and key in s else None) for key in ("loss_ctc", "loss_att")}
    rec["th_accuracy"] = float(s["att_hits"] / s["att_tokens"]) if n and s.get("att_tokens", 0) > 0 else None
    for key in sorted(k for k in s if k.startswith("load_")):
        per_layer = np.asarray(s[key]).reshape(-1, np.asarray(s[key]).shape[-1])
        rec[f"{key.replace('_', '/', 1)}/tokens_per_expert"] = per_layer.round().astype(int).tolist()
    return rec


def count_tokens(batch: dict[str, jax.Array]) -> jax.Array:
    """Feature frames of the batch (what an ASR trainer's throughput counts)."""
    return batch["feats_lengths"].sum().astype(jnp.float32)


def check_batch(batch: dict[str, np.ndarray], model_cfg: U2ppConfig) -> None:
    feats_lengths, lengths = np.asarray(batch["feats_lengths"]), np.asarray(batch["target_lengths"])
    if feats_lengths.min() < 1 or feats_lengths.max() > batch["feats"].shape[1]:
        raise ValueError(f"batch['feats_lengths'] spans {feats_lengths.min()}..{feats_lengths.max()}, outside "
                         f"1..{batch['feats'].shape[1]}")
    if lengths.min() < 0 or lengths.max() > batch["target"].shape[1]:
        raise ValueError(f"batch['target_lengths'] spans {lengths.min()}..{lengths.max()}, outside "
                         f"0..{batch['target'].shape[1]}")
    target = np.asarray(batch["target"])
    real = np.arange(target.shape[1])[None, :] < lengths[:, None]
    bad = real & ((target < 1) | (target > model_cfg.vocab_size - 2))
    if bad.any():
        b, t = np.argwhere(bad)[0]
        raise ValueError(f"batch['target'][{b}, {t}] = {target[b, t]} is not a token id 1..{model_cfg.vocab_size - 2} "
                         f"(0 is the CTC blank, {model_cfg.vocab_size - 1} sos/eos)")


def moe_layers(model_cfg: U2ppConfig) -> tuple[tuple[str, MoEConfig], ...]:
    return tuple((f"model.{name}.moe", section.moe) for name, section in
                 (("encoder", model_cfg.encoder), ("decoder", model_cfg.decoder)) if section.mlp_type == "moe")


def frozen(path: tuple[str, ...]) -> bool:
    """The global CMVN statistics come from the data, never from the optimiser."""
    return path[:2] == ("encoder", "global_cmvn")


def _batches(cfg: Config):
    """Length-bucketed, augmented batches of the prepared utterances `data.records`."""
    from most_jax.data.speech_pipeline import build_speech_dataset  # Grain: only where training reads data

    return iter(build_speech_dataset(cfg))


def data_params(cfg: Config) -> dict[tuple[str, ...], np.ndarray]:
    """The encoder's global CMVN (mean, istd) from the training records' statistics; none when
    `data.records` is not a `most data prepare --family u2pp` output (a caller trains on batches of
    its own: the initial CMVN stays, and `most train` fails on the missing records first)."""
    from most_jax.data.prepare import U2PP_FILE
    from most_jax.data.speech_pipeline import SpeechData

    if not (Path(cfg.data.records) / U2PP_FILE).is_file():
        return {}
    mean, istd = SpeechData(cfg.data.records).cmvn()
    return {("encoder", "global_cmvn", "mean"): mean, ("encoder", "global_cmvn", "istd"): istd}


def _build(model_cfg: U2ppConfig, rngs: nnx.Rngs) -> U2pp:
    return U2pp(model_cfg, rngs=rngs)


FAMILY = Family(
    name="u2pp", config_class=U2ppConfig, build=_build, batch_spec=batch_spec, step_totals=step_totals,
    loss_fn=loss_fn, summarise=summarise, count_tokens=count_tokens, moe_layers=moe_layers, check_batch=check_batch,
    frozen=frozen, train_flops=train_flops_per_step, batches=_batches, batch_specs=batch_specs,
    data_params=data_params)
