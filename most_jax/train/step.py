"""One pure, jitted training step: accumulate gradients over micro-batches, then update (or skip).

`train_step(state, batch) -> (state, metrics)` is compiled once with explicit in/out shardings and
the state donated. The model family (models/family.py) names the batch and computes the loss; the
step knows neither: it sums what the family's loss returns over micro-batches.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from most_jax import sharding
from most_jax.config import Config
from most_jax.models.family import LossContext, get_family
from most_jax.train.state import TrainState

# The step's own metrics; a family's sums must use other names.
STEP_METRICS = ("loss", "grad_norm", "tokens", "lr", "finite", "skipped", "nonfinite_streak")


def _micro_batches(batch: dict[str, jax.Array], count: int) -> dict[str, jax.Array]:
    """[B, ...] -> [count, B/count, ...] taking rows count apart: with B sharded over data-parallel
    devices, each device then holds its share of every micro-batch (contiguous chunks would put a
    whole micro-batch on a few devices)."""

    def split(x):
        b = x.shape[0]
        return jnp.swapaxes(x.reshape(b // count, count, *x.shape[1:]), 0, 1)

    return {k: split(v) for k, v in batch.items()}


def step_key(rng_data: jax.Array, step: jax.Array) -> jax.Array:
    """The step's random key: the run's key folded with the step number, so a resumed run draws
    what the uninterrupted one would have."""
    return jax.random.fold_in(jax.random.wrap_key_data(rng_data), step)


def accumulate_gradients(graphdef: nnx.GraphDef, params: Any, batch: dict[str, jax.Array], cfg: Config,
                         key: jax.Array, phase: str | None = None) -> tuple[Any, jax.Array, dict[str, jax.Array]]:
    """Gradients of the step objective summed over `cfg.train.micro_batches` micro-batches run one
    after another with lax.scan; micro-batch i gets fold_in(key, i). Returns (float32 grads,
    objective, the family's sums); every returned value is a sum over micro-batches. With `phase`
    (one of Family.phases) the gradients are those of params[phase] only, the rest held fixed."""
    family = get_family(cfg.model)
    count = cfg.train.micro_batches
    ctx = LossContext(totals=family.step_totals(batch), micro_batches=count, phase=phase)

    def objective(p, mb, i):
        full = p if phase is None else {**params, phase: p}
        return family.loss_fn(nnx.merge(graphdef, full), mb, jax.random.fold_in(key, i), ctx)

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    wrt = params if phase is None else params[phase]
    (obj, sums), grads = _sum_over_micro_batches(lambda mb, i: grad_fn(wrt, mb, i), batch, count)
    clash = sorted(set(sums) & set(STEP_METRICS))
    if clash:
        raise ValueError(f"model family {family.name!r}: loss sums {clash} clash with the step's own metrics")
    return grads, obj, sums


def _sum_over_micro_batches(fn: Callable[[dict[str, jax.Array], jax.Array], Any], batch: dict[str, jax.Array],
                            count: int) -> Any:
    """fn(micro-batch i, i) summed over `count` micro-batches with lax.scan (floats in float32).
    One micro-batch is called directly: inside a while loop XLA:CPU runs convolutions and fusions
    many times slower (the demo vocoder's step: 13.4 s in a 1-step scan against 0.86 s)."""
    if count == 1:
        return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                            fn(batch, jnp.int32(0)))
    micro = _micro_batches(batch, count)

    def body(totals, xs):
        return jax.tree.map(lambda acc, x: acc + x.astype(acc.dtype), totals, fn(*xs)), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32 if jnp.issubdtype(s.dtype, jnp.floating)
                                             else s.dtype), jax.eval_shape(fn, first, 0))
    totals, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(count)))
    return totals


def make_train_step(graphdef: nnx.GraphDef, cfg: Config, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, *, state_shardings: TrainState,
                    batch_sharding: NamedSharding) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jitted `train_step(state, batch) -> (state, metrics)`; `state` is donated.

    A step whose objective or gradient norm is not finite changes nothing but the counters: params
    and optimizer state (hence the schedule position) stay as they were."""

    abstract_mesh = batch_sharding.mesh.abstract_mesh
    family = get_family(cfg.model)

    def update(params, opt_state, batch, key, phase=None):
        """(params, opt_state, objective, sums, grad_norm) after one update of all params, or of
        params[phase] by optimizer.parts[phase]."""
        # The mesh as trace-time context: MoE layers choose expert parallelism (shard_map) from it.
        with jax.sharding.use_abstract_mesh(abstract_mesh):
            grads, obj, sums = accumulate_gradients(graphdef, params, batch, cfg, key, phase)
        part = optimizer if phase is None else optimizer.parts[phase]
        own = params if phase is None else params[phase]
        # Accumulated in float32; handed over in the params' dtype so the optimizer state keeps
        # its dtypes from step to step (the step is compiled once for them).
        grad_norm = optax.tree.norm(grads)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, own)
        state_in = opt_state if phase is None else opt_state[phase]
        updates, state_out = part.update(grads, state_in, own)
        own = optax.apply_updates(own, updates)
        if phase is None:
            return own, state_out, obj, sums, grad_norm
        return {**params, phase: own}, {**opt_state, phase: state_out}, obj, sums, grad_norm

    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        key = step_key(state.rng, state.step)
        if not family.phases:
            params, opt_state, obj, sums, grad_norm = update(state.params, state.opt_state, batch, key)
        else:
            # Phase by phase (e.g. discriminators, then the generator against them); one
            # non-finite phase keeps the whole step's old state.
            params, opt_state, obj, sums, squares = state.params, state.opt_state, 0.0, {}, 0.0
            for phase in family.phases:
                params, opt_state, phase_obj, phase_sums, norm = update(params, opt_state, batch, key, phase)
                obj = obj + phase_obj
                sums = {k: sums.get(k, 0.0) + phase_sums.get(k, 0.0) for k in {*sums, *phase_sums}}
                squares = squares + norm ** 2
            grad_norm = jnp.sqrt(squares)
        finite = jnp.isfinite(obj) & jnp.isfinite(grad_norm)

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
        metrics = {
            "loss": obj,
            **sums,
            "tokens": family.count_tokens(batch),
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


def make_eval_step(graphdef: nnx.GraphDef, cfg: Config, *, params_sharding: Any,
                   batch_sharding: NamedSharding) -> Callable[[Any, dict], dict]:
    """The jitted `eval_step(params, batch) -> sums`: the family's loss sums of a held-out batch
    (its micro-batches as in training), no gradient and the same random key at every call."""
    abstract_mesh = batch_sharding.mesh.abstract_mesh
    family = get_family(cfg.model)
    count = cfg.train.micro_batches

    def eval_step(params, batch):
        ctx = LossContext(totals=family.step_totals(batch), micro_batches=count)
        key = jax.random.key(0)

        def sums(mb, i):
            return family.loss_fn(nnx.merge(graphdef, params), mb, jax.random.fold_in(key, i), ctx)[1]

        with jax.sharding.use_abstract_mesh(abstract_mesh):
            return _sum_over_micro_batches(sums, batch, count)

    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(eval_step, in_shardings=(params_sharding, batch_sharding), out_shardings=replicated)


def batch_sharding_for(mesh) -> NamedSharding:
    """Rows split over the mesh's data-like axes (sharding.RULES["batch"]), other dimensions whole."""
    return sharding.batch_sharding(mesh)


def check_batch(batch: dict[str, np.ndarray], spec: dict[str, jax.ShapeDtypeStruct], *, rows: int) -> None:
    """Clear errors for a batch the step cannot take: a missing key or a wrong shape against the
    family's batch spec, with `rows` (this process's share) in place of the global row count."""
    missing = [k for k in spec if k not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; a batch holds {list(spec)}")
    for key, s in spec.items():
        value = np.asarray(batch[key])
        expected = (rows, *s.shape[1:])
        if value.shape != expected:
            raise ValueError(f"batch[{key!r}] has shape {value.shape}, expected {expected} (rows, then the model "
                             "family's batch spec from the config, e.g. data.seq_len)")
        # Same kind (integer, float, bool); the width is the device's business (int64 -> int32).
        if _kind(value.dtype) != _kind(np.dtype(s.dtype)):
            raise ValueError(f"batch[{key!r}] holds {value.dtype}, the model family's batch spec says {np.dtype(s.dtype)}")


def _kind(dtype: np.dtype) -> str:
    return "int" if np.issubdtype(dtype, np.integer) else dtype.kind


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Host batch -> global device arrays; each process passes its own rows (one process: all rows)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
