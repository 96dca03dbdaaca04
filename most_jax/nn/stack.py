"""A stack of identical layers stored with a leading `layers` axis, run scanned or unrolled.

The storage layout is fixed; `scan` only chooses whether the forward pass runs the layers with
`jax.lax.scan` (one compiled body) or an unrolled Python loop, and `remat` whether each layer's
activations are recomputed in the backward pass (and which are kept).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def layer_stack(make_layer: Callable[[nnx.Rngs], nnx.Module], count: int, rngs: nnx.Rngs) -> nnx.Module | None:
    """`count` layers built by make_layer(rngs), each from its own split of `rngs`, as one module
    whose parameters lead with a `layers` axis; None when count is 0."""
    if count == 0:
        return None

    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(layer_rngs):
        return make_layer(layer_rngs)

    return create(rngs)


def run_stack(stack: nnx.Module, x: jax.Array, inputs: tuple, *, scan: bool, remat: str,
              method: str = "__call__", per_layer: Any = None) -> tuple[jax.Array, Any]:
    """Applies every layer of a stack in order: x = layer.method(x, *inputs, *per_layer[l]).

    `inputs` go to every layer; `per_layer` (a tuple of pytrees with a leading layer axis, e.g.
    caches or dropout keys) is sliced per layer. The method returns (x, output); the result is
    (x, per-layer outputs stacked on axis 0, or None when the layers output None).
    """
    if remat != "none" and remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be 'none' or one of {sorted(REMAT_POLICIES)}, got {remat!r}")
    graphdef, state = nnx.split(stack)

    def body(x, xs):
        layer_state, layer_extra = xs
        layer = nnx.merge(graphdef, layer_state)
        return getattr(layer, method)(x, *inputs, *(layer_extra or ()))

    if remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat])
    if scan:
        return jax.lax.scan(body, x, (state, per_layer))
    count = jax.tree.leaves(state)[0].shape[0]
    outputs = []
    for i in range(count):
        x, out = body(x, jax.tree.map(lambda a: a[i], (state, per_layer)))
        outputs.append(out)
    return x, None if outputs[0] is None else jax.tree.map(lambda *o: jnp.stack(o), *outputs)
