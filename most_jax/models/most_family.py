"""The MoST family: packed [B, T] token batches, next-token cross-entropy plus the MoE losses
(most_loss.py), metrics per task, per target modality and per expert group.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from most_jax.config import Config, ConfigError, ModelConfig, MoEConfig
from most_jax.data.tasks import TASKS
from most_jax.models.family import Family, LossContext
from most_jax.models.most import MoST
from most_jax.models.most_loss import MODALITY_NAMES, loss_sums, micro_batch_objective
from most_jax.scaling.accounting import train_flops_per_step

# Every array is [B, T] int32; `targets` are already the next tokens (the pipeline shifts).
BATCH_KEYS = ("tokens", "targets", "loss_mask", "modality", "segment_ids", "positions", "task")
# MoST-C (data.speech_input "features") adds float32 [B, T, F] features and int32 [B, T] continuous.


def batch_spec(cfg: Config) -> dict[str, jax.ShapeDtypeStruct]:
    rows = (cfg.data.batch_size, cfg.data.seq_len)
    spec = {k: jax.ShapeDtypeStruct(rows, np.int32) for k in BATCH_KEYS}
    if cfg.data.speech_input == "features":
        spec["features"] = jax.ShapeDtypeStruct((*rows, cfg.model.continuous_input_dim), np.float32)
        spec["continuous"] = jax.ShapeDtypeStruct(rows, np.int32)
    return spec


def step_totals(batch: dict[str, jax.Array]) -> jax.Array:
    """The step's number of loss tokens: the cross-entropy's denominator for every micro-batch."""
    return batch["loss_mask"].astype(jnp.float32).sum()


def loss_fn(model: MoST, mb: dict[str, jax.Array], _rng: jax.Array, ctx: LossContext) -> tuple[jax.Array, dict]:
    """(this micro-batch's share of the step objective, additive sums); MoST is deterministic,
    so the rng goes unused."""
    logits_BTV, stats = model(mb["tokens"], modality_BT=mb["modality"], segment_ids_BT=mb["segment_ids"],
                              positions_BT=mb["positions"], features_BTF=mb.get("features"),
                              continuous_BT=mb.get("continuous"))
    zero = jnp.zeros((), jnp.float32)
    aux = zero if stats is None else stats.aux_loss.sum()
    z = zero if stats is None else stats.z_loss.sum()
    sums = loss_sums(logits_BTV, mb["targets"], mb["loss_mask"], mb["task"], aux, z, num_tasks=len(TASKS),
                     vocab=model.cfg.vocab)
    obj = micro_batch_objective(sums, step_loss_tokens=ctx.totals, num_micro_batches=ctx.micro_batches)
    out = {**sums._asdict(),
           # each micro-batch's aux and z losses are means over its rows/tokens: summed over the
           # micro-batches, these shares give the mean over micro-batches
           "aux_loss": sums.aux_loss / ctx.micro_batches, "z_loss": sums.z_loss / ctx.micro_batches}
    if stats is not None:
        out["load_LGE"] = stats.load_GE.astype(jnp.float32)
        out["dropped_LG"] = stats.dropped_G.astype(jnp.float32)
    return obj, out


def count_tokens(batch: dict[str, jax.Array]) -> jax.Array:
    """Real (non-padding) tokens of the batch."""
    return (batch["segment_ids"] != 0).sum(dtype=jnp.float32)


def check_batch(batch: dict[str, np.ndarray], model_cfg: ModelConfig) -> None:
    for key in ("tokens", "targets"):
        ids = np.asarray(batch[key])
        if ids.min() < 0 or ids.max() >= model_cfg.vocab_size:
            raise ValueError(f"batch[{key!r}] holds ids in {ids.min()}..{ids.max()}, outside the vocabulary "
                             f"0..{model_cfg.vocab_size - 1}")
    if "features" in batch and not np.isfinite(batch["features"]).all():
        raise ValueError("batch['features'] holds non-finite continuous speech features")


def moe_layers(model_cfg: ModelConfig) -> tuple[tuple[str, MoEConfig], ...]:
    return (("model.moe", model_cfg.moe),) if model_cfg.num_moe_layers else ()


# ----------------------------------------------------------------------------- metrics

def expert_groups(cfg: Config) -> list[tuple[str, int, int]]:
    """(name, first expert, expert count) per row of the MoE load statistics' G axis."""
    moe = cfg.model.moe
    if not moe.modality_groups:
        return [("all", 0, moe.num_experts)]
    return [(g.name, g.first_expert, g.num_experts) for g in moe.modality_groups]


def load_balance(tokens_per_expert: np.ndarray) -> tuple[float, float]:
    """(max/mean, entropy / log(#experts)) of one layer's assignments over one group's experts;
    both are 1 when perfectly balanced. The caller skips groups that had nothing routed."""
    mean = tokens_per_expert.mean()
    p = tokens_per_expert / tokens_per_expert.sum()
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    return float(tokens_per_expert.max() / mean), entropy / math.log(len(p)) if len(p) > 1 else 1.0


def summarise(cfg: Config, s: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    """Token-weighted losses over the window: overall, per task, per target modality; expert load."""
    rec: dict[str, Any] = {"ce_loss": _ratio(s.get("ce_sum"), s.get("loss_tokens"))}
    for key in ("aux_loss", "z_loss"):
        rec[key] = float(s[key]) / n if n else None
    for i, name in enumerate(TASKS):
        if n and s["task_tokens"][i] > 0:
            rec[f"loss_task/{name}"] = float(s["task_ce_sum"][i] / s["task_tokens"][i])
    for i, name in enumerate(MODALITY_NAMES):
        if n and s["modality_tokens"][i] > 0:
            rec[f"loss_modality/{name}"] = float(s["modality_ce_sum"][i] / s["modality_tokens"][i])
    if n and "load_LGE" in s:
        rec.update(_load_record(cfg, s["load_LGE"], s["dropped_LG"]))
    return rec


def _load_record(cfg: Config, load_LGE: np.ndarray, dropped_LG: np.ndarray) -> dict[str, Any]:
    first_moe_layer = cfg.model.first_k_dense_replace
    out: dict[str, Any] = {}
    for g, (name, first, count) in enumerate(expert_groups(cfg)):
        per_layer = load_LGE[:, g, first:first + count]
        routed = per_layer.sum()
        if routed == 0:
            continue
        balance = [load_balance(row) for row in per_layer]
        out[f"load/{name}/layers"] = [first_moe_layer + i for i in range(len(per_layer))]
        out[f"load/{name}/tokens_per_expert"] = per_layer.round().astype(int).tolist()
        out[f"load/{name}/max_over_mean"] = [b[0] for b in balance]
        out[f"load/{name}/entropy"] = [b[1] for b in balance]
        out[f"dropped/{name}"] = float(dropped_LG[:, g].sum() / routed)
    return out


def _ratio(num, den) -> float | None:
    if num is None or den is None or float(den) == 0:
        return None
    return float(num) / float(den)


# ----------------------------------------------------------------------------- data

def _batches(cfg: Config) -> Iterator[dict[str, np.ndarray]]:
    """Packed batches of the prepared records `data.records` (`most data prepare`)."""
    from most_jax.data.pipeline import PreparedData, build_dataset  # Grain: only where training reads data

    data = PreparedData(cfg.data.records)
    check_vocab(cfg, data)
    check_continuous(cfg, data)
    return iter(build_dataset(cfg.data, data))


def _eval_batches(cfg: Config) -> list[dict[str, np.ndarray]]:
    """train.eval_batches packed batches of the held-out records `data.eval_records`."""
    from most_jax.data.pipeline import PreparedData, build_eval_batches

    data = PreparedData(cfg.data.eval_records)
    check_vocab(cfg, data)
    check_continuous(cfg, data)
    return build_eval_batches(cfg.data, data, cfg.train.eval_batches)


def check_vocab(cfg: Config, data) -> None:
    """The model's token layout must be the one the records were tokenised with."""
    layout = data.layout
    wrong = [f"model.vocab.{f.name}={getattr(cfg.model.vocab, f.name)} (data: {getattr(layout.config, f.name)})"
             for f in dataclasses.fields(layout.config)
             if getattr(cfg.model.vocab, f.name) != getattr(layout.config, f.name)]
    if layout.vocab_size > cfg.model.vocab_size:
        wrong.append(f"model.vocab_size={cfg.model.vocab_size} (data needs {layout.vocab_size})")
    if wrong:
        raise ConfigError(f"the config does not match the vocabulary of {data.directory}: {'; '.join(wrong)}")


def check_continuous(cfg: Config, data) -> None:
    """With continuous speech input, the records' frames must have the model's input width."""
    if cfg.data.speech_input != "features":
        return
    dim = data.continuous_dim()
    if dim != cfg.model.continuous_input_dim:
        raise ConfigError(f"model.continuous_input_dim={cfg.model.continuous_input_dim}, but the continuous "
                          f"features of {data.directory} have {dim} dims")


def _build(model_cfg: ModelConfig, rngs: nnx.Rngs) -> MoST:
    return MoST(model_cfg, rngs=rngs)


FAMILY = Family(
    name="most", config_class=ModelConfig, build=_build, batch_spec=batch_spec, step_totals=step_totals,
    loss_fn=loss_fn, summarise=summarise, count_tokens=count_tokens, moe_layers=moe_layers, check_batch=check_batch,
    train_flops=train_flops_per_step, batches=_batches, eval_batches=_eval_batches)
