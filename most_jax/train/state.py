"""The train state pytree and its (sharded) initialisation.

Parameters live in the state as the plain nested dict `nnx.state(model, nnx.Param).to_pure_dict()`
(the layout params checkpoints use); the model's graph definition stays outside, static.
Initialisation goes shape first: abstract state -> shardings -> jitted init with out_shardings, so
a full-size model is never materialised whole on one device.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from most_jax.models.family import abstract_model, build_model, get_family


class TrainState(NamedTuple):
    params: Any  # nested dict of arrays, as nnx.state(model, nnx.Param).to_pure_dict()
    opt_state: Any  # optax state for `params`
    step: jax.Array  # int32 []: batches consumed, applied or skipped (the loop's clock)
    skipped: jax.Array  # int32 []: non-finite steps skipped over the whole run
    nonfinite_streak: jax.Array  # int32 []: non-finite steps in a row up to `step`
    # uint32 key data of the run's RNG; it never changes: each step folds in its step number
    # (train/step.py), so a resumed run draws the same keys as an uninterrupted one.
    rng: jax.Array


def model_graphdef(model_cfg: Any) -> tuple[nnx.GraphDef, Any]:
    """(graph definition, abstract params as ShapeDtypeStructs) of the config's model family,
    without allocating anything."""
    graphdef, params, rest = nnx.split(abstract_model(model_cfg), nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"model family {get_family(model_cfg).name!r} has non-parameter state "
                         f"{list(rest.to_pure_dict())}; the trainer keeps params only")
    return graphdef, params.to_pure_dict()


def _fresh_state(params: Any, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    zero = jnp.zeros((), jnp.int32)
    return TrainState(params=params, opt_state=optimizer.init(params), step=zero, skipped=zero,
                      nonfinite_streak=zero, rng=jax.random.key_data(jax.random.key(seed)))


def abstract_state(abstract_params: Any, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    return jax.eval_shape(lambda p: _fresh_state(p, optimizer, seed), abstract_params)


def single_device_mesh() -> Mesh:
    """The default mesh: the first device, one `data` axis (the parallel layer supplies bigger ones)."""
    return Mesh(jax.devices()[:1], ("data",))


def replicated_shardings(tree: Any, mesh: Mesh) -> Any:
    """Every leaf fully replicated over `mesh`: on a one-device mesh, simply "on that device"."""
    return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), tree)


def init_state(model_cfg: Any, optimizer: optax.GradientTransformation, seed: int,
               shardings: TrainState, params: Any | None = None) -> TrainState:
    """A fresh state with params from `seed` (or the given `params`, e.g. imported weights), built
    directly in `shardings`."""
    if params is None:
        def build():
            model = build_model(model_cfg, seed)
            return _fresh_state(nnx.state(model, nnx.Param).to_pure_dict(), optimizer, seed)

        return jax.jit(build, out_shardings=shardings)()
    params = jax.device_put(params, shardings.params)
    return jax.jit(lambda p: _fresh_state(p, optimizer, seed), out_shardings=shardings,
                   donate_argnums=0)(params)


def state_shardings(abstract: TrainState, mesh: Mesh,
                    param_shardings: Callable[[Any, Mesh], Any] = replicated_shardings) -> TrainState:
    """Shardings for every state leaf: `param_shardings` places params (and, leaf for leaf, the
    optimizer moments that mirror them); counters and RNG are replicated."""
    params_sh = param_shardings(abstract.params, mesh)
    opt_sh = _optimizer_shardings(abstract.opt_state, abstract.params, params_sh, mesh)
    return TrainState(params=params_sh, opt_state=opt_sh,
                      **{f: NamedSharding(mesh, PartitionSpec()) for f in TrainState._fields[2:]})


def _optimizer_shardings(opt_state: Any, params: Any, params_sh: Any, mesh: Mesh) -> Any:
    """Optimizer leaves that mirror a parameter (Adam moments) take its sharding; scalars (counts)
    are replicated. The mirror is found by tree position, not by shape, so equal shapes can differ."""
    param_tree = jax.tree.structure(params)
    flat_params_sh = jax.tree.leaves(params_sh)

    def is_param_tree(x):
        return not isinstance(x, jax.ShapeDtypeStruct) and jax.tree.structure(x) == param_tree

    def place(node):
        if is_param_tree(node):
            return jax.tree.unflatten(param_tree, flat_params_sh)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(place, opt_state, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct) or is_param_tree(x))

