"""The model's parameter tree as flat {path: leaf} dicts, and its expected shapes from shapes alone."""

from __future__ import annotations

from typing import Iterator

import jax
from flax import nnx
from jax.sharding import NamedSharding

from most_jax.models.family import abstract_model
from most_jax.sharding import logical_to_spec

Path_ = tuple[str, ...]


def abstract_params(cfg) -> dict[Path_, jax.ShapeDtypeStruct]:
    """Flat {path: shape and dtype} of the parameters of model section `cfg`'s family; allocates nothing."""
    model = abstract_model(cfg)
    return dict(flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))))


def logical_specs(cfg) -> dict[Path_, jax.sharding.PartitionSpec]:
    """Flat {path: PartitionSpec of logical axis names} of the model's parameters (stacked layers
    lead with 'layers'); sharding.py maps these names onto a mesh."""
    model = abstract_model(cfg)
    return dict(flatten(nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(model, nnx.Param)))))


def shard_shapes(cfg, mesh_sizes: dict[str, int]) -> dict[Path_, tuple[int, ...]]:
    """Flat {path: one device's block of the parameter} under sharding.py's rules on a mesh of
    `mesh_sizes` (axis -> size; no devices needed)."""
    names = tuple(mesh_sizes)
    mesh = jax.sharding.AbstractMesh(tuple(mesh_sizes[a] for a in names), names)
    shapes = abstract_params(cfg)
    return {p: NamedSharding(mesh, logical_to_spec(tuple(spec), tuple(shapes[p].shape), mesh)).shard_shape(
        tuple(shapes[p].shape)) for p, spec in logical_specs(cfg).items()}


def flatten(tree: dict, prefix: Path_ = ()) -> Iterator[tuple[Path_, object]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, prefix + (str(key),))
        else:
            yield prefix + (str(key),), value


def unflatten(flat: dict[Path_, object]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree
