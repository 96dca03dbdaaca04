"""One pure, jitted training step: accumulate gradients over micro-batches, then update (or skip).

`train_step(state, batch) -> (state, metrics)` is compiled once with explicit in/out shardings and
the state donated. Batches are dicts of [B, T] arrays (see BATCH_KEYS); `targets` are already the
next tokens (the data pipeline shifts), so the step shifts nothing.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from most_jax.config import Config
from most_jax.train.loss import LossSums, loss_sums, micro_batch_objective
from most_jax.train.state import TrainState

BATCH_KEYS = ("tokens", "targets", "loss_mask", "modality", "segment_ids", "positions", "task")


def _micro_batches(batch: dict[str, jax.Array], count: int) -> dict[str, jax.Array]:
    """[B, T] -> [count, B/count, T] taking rows count apart: with B sharded over data-parallel
    devices, each device then holds its share of every micro-batch (contiguous chunks would put a
    whole micro-batch on a few devices)."""

    def split(x):
        b = x.shape[0]
        return jnp.swapaxes(x.reshape(b // count, count, *x.shape[1:]), 0, 1)

    return {k: split(v) for k, v in batch.items()}


def _moe_stats(stats) -> dict[str, jax.Array]:
    if stats is None:
        return {}
    return {"load_LGE": stats.load_GE.astype(jnp.float32), "dropped_LG": stats.dropped_G.astype(jnp.float32)}


def accumulate_gradients(graphdef: nnx.GraphDef, params: Any, batch: dict[str, jax.Array], cfg: Config,
                         num_tasks: int) -> tuple[Any, jax.Array, LossSums, dict[str, jax.Array]]:
    """Gradients of the step objective (loss.py) summed over `cfg.train.micro_batches` micro-batches
    run one after another with lax.scan. Returns (float32 grads, objective, loss sums, MoE load
    sums); every returned value is a sum over micro-batches."""
    count = cfg.train.micro_batches
    step_loss_tokens = batch["loss_mask"].astype(jnp.float32).sum()

    def objective(p, mb):
        model = nnx.merge(graphdef, p)
        logits_BTV, stats = model(mb["tokens"], modality_BT=mb["modality"], segment_ids_BT=mb["segment_ids"],
                                  positions_BT=mb["positions"])
        zero = jnp.zeros((), jnp.float32)
        aux = zero if stats is None else stats.aux_loss.sum()
        z = zero if stats is None else stats.z_loss.sum()
        sums = loss_sums(logits_BTV, mb["targets"], mb["loss_mask"], mb["task"], aux, z, num_tasks=num_tasks,
                         vocab=cfg.model.vocab)
        obj = micro_batch_objective(sums, step_loss_tokens=step_loss_tokens, num_micro_batches=count)
        return obj, (sums, _moe_stats(stats))

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    micro = _micro_batches(batch, count)

    def body(totals, mb):
        out = grad_fn(params, mb)
        return jax.tree.map(lambda acc, x: acc + x.astype(acc.dtype), totals, out), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32 if jnp.issubdtype(s.dtype, jnp.floating)
                                             else s.dtype), jax.eval_shape(grad_fn, params, first))
    ((obj, (sums, moe)), grads), _ = jax.lax.scan(body, zeros, micro)
    return grads, obj, sums, moe


def make_train_step(graphdef: nnx.GraphDef, cfg: Config, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, *, num_tasks: int, state_shardings: TrainState,
                    batch_sharding: NamedSharding) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jitted `train_step(state, batch) -> (state, metrics)`; `state` is donated.

    A step whose objective or gradient norm is not finite changes nothing but the counters: params
    and optimizer state (hence the schedule position) stay as they were."""

    abstract_mesh = batch_sharding.mesh.abstract_mesh

    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        # The mesh as trace-time context: MoE layers choose expert parallelism (shard_map) from it.
        with jax.sharding.use_abstract_mesh(abstract_mesh):
            grads, obj, sums, moe = accumulate_gradients(graphdef, state.params, batch, cfg, num_tasks)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(obj) & jnp.isfinite(grad_norm)
        # Accumulated in float32; handed over in the params' dtype so the optimizer state keeps
        # its dtypes from step to step (the step is compiled once for them).
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        def keep_if_finite(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        skipped = (~finite).astype(jnp.int32)
        new_state = TrainState(
            params=keep_if_finite(params, state.params),
            opt_state=keep_if_finite(opt_state, state.opt_state),
            step=state.step + 1,
            skipped=state.skipped + skipped,
            nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
            rng=state.rng,
        )
        count = cfg.train.micro_batches
        metrics = {
            "loss": obj,
            **sums._asdict(),
            # per-micro-batch means summed over micro-batches -> mean over micro-batches
            "aux_loss": sums.aux_loss / count,
            "z_loss": sums.z_loss / count,
            **moe,
            "tokens": (batch["segment_ids"] != 0).sum(dtype=jnp.float32),
            "grad_norm": grad_norm,
            # optax counts applied updates only; skipped steps leave its count where it was
            "lr": schedule(state.step - state.skipped),
            "finite": finite,
            "skipped": new_state.skipped,
            "nonfinite_streak": new_state.nonfinite_streak,
        }
        return new_state, metrics

    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)


def batch_sharding_for(mesh) -> NamedSharding:
    """Rows split over the mesh's data-like axes (parallel.RULES["batch"]), sequence positions whole."""
    from most_jax.parallel import batch_sharding

    return batch_sharding(mesh)


def check_batch(batch: dict[str, np.ndarray], *, batch_size: int, seq_len: int, vocab_size: int) -> None:
    """Clear errors for a batch the step cannot take (missing key, wrong shape, token id out of range)."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; a batch holds {list(BATCH_KEYS)}")
    for key in BATCH_KEYS:
        shape = np.shape(batch[key])
        if shape != (batch_size, seq_len):
            raise ValueError(f"batch[{key!r}] has shape {shape}, expected (data.batch_size, data.seq_len) = "
                             f"({batch_size}, {seq_len})")
    for key in ("tokens", "targets"):
        ids = np.asarray(batch[key])
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"batch[{key!r}] holds ids in {ids.min()}..{ids.max()}, outside the vocabulary "
                             f"0..{vocab_size - 1}")


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Host batch -> global device arrays; each process passes its own rows (one process: all rows)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in BATCH_KEYS}
