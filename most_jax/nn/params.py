"""Parameter creation with logical axis names.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `expert`, `vocab`,
`latent`, ...); sharding.py maps them to mesh axes. Eager sharding is off so modules can be
built without a mesh (tests, eval_shape); sharded init happens by jitting with out_shardings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def normal_param(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str | None, ...], std: float,
                 dtype: str) -> nnx.Param:
    assert len(shape) == len(names), (shape, names)
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value.astype(DTYPES[dtype]), out_sharding=names, eager_sharding=False)


def ones_param(shape: tuple[int, ...], names: tuple[str | None, ...], dtype: str) -> nnx.Param:
    return nnx.Param(jnp.ones(shape, DTYPES[dtype]), out_sharding=names, eager_sharding=False)


def zeros_param(shape: tuple[int, ...], names: tuple[str | None, ...], dtype: str) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, DTYPES[dtype]), out_sharding=names, eager_sharding=False)
