"""Model-aware placement: parameter partition specs from a family's abstract model, sharded
initialisation, the golden sharding table and the pre-compile checks of a model against a mesh.

The mesh, the logical-axis rules and batch placement know no model and live in sharding.py.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from most_jax.config import Config
from most_jax.models.family import abstract_model, build_model, get_family
from most_jax.sharding import MeshError, check_batch_fits, logical_to_spec

# ----------------------------------------------------------------------------- parameter specs

def param_logical_names(model_cfg: Any) -> dict:
    """Nested dict (the params layout) of each parameter's logical axis names."""
    abstract = abstract_model(model_cfg)
    specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(abstract, nnx.Param)))
    return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def param_specs(model_cfg: Any, abstract_params: Any, mesh: Mesh | None = None) -> Any:
    """PartitionSpec per parameter (same tree as `abstract_params`, a pure dict of shapes)."""
    names = param_logical_names(model_cfg)
    paths = {jax.tree_util.keystr(p): n for p, n in
             jax.tree_util.tree_leaves_with_path(names, is_leaf=lambda x: isinstance(x, tuple))}

    def spec(path, leaf):
        key = jax.tree_util.keystr(path)
        if key not in paths:
            raise MeshError(f"parameter {key} has no logical axis names")
        return logical_to_spec(paths[key], tuple(leaf.shape), mesh, what=f"parameter {key}")

    return jax.tree_util.tree_map_with_path(spec, abstract_params)


def param_sharding_fn(model_cfg: Any) -> Callable[[Any, Mesh], Any]:
    """`(abstract params, mesh) -> NamedShardings`: what train.state.state_shardings takes."""

    def shardings(abstract_params: Any, mesh: Mesh) -> Any:
        specs = param_specs(model_cfg, abstract_params, mesh)
        return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))

    return shardings


# ----------------------------------------------------------------------------- checks

def check_model_fits(model_cfg: Any, mesh: Mesh) -> None:
    """Expert axis vs the expert count of every MoE layer config of the family (and the balanced
    placement's stricter need)."""
    ep = mesh.shape["expert"]
    layers = get_family(model_cfg).moe_layers(model_cfg)
    if not layers:
        if ep > 1:
            raise MeshError(f"mesh.expert={ep}, but the model has no MoE layers")
        return
    for prefix, moe in layers:
        if moe.num_experts % ep:
            raise MeshError(f"{prefix}.num_experts={moe.num_experts} is not divisible by mesh.expert={ep}")
        if moe.ep_placement == "balanced" and (moe.num_experts // ep) % ep:
            raise MeshError(f"{prefix}.ep_placement=balanced interleaves experts with one all-to-all, which needs "
                            f"the {moe.num_experts // ep} experts per rank to split over mesh.expert={ep} "
                            f"(num_experts divisible by expert^2 = {ep * ep})")


def check_config(cfg: Config, mesh: Mesh) -> None:
    """All pre-compile checks for training `cfg` on `mesh`."""
    check_model_fits(cfg.model, mesh)
    check_batch_fits(cfg.data.batch_size, cfg.train.micro_batches, mesh)


# ----------------------------------------------------------------------------- sharded init / reports

def init_sharded_model(model_cfg: Any, mesh: Mesh, seed: int = 0):
    """The family's model with parameters created directly in their shardings: shapes first, then a
    jitted init with out_shardings, so no device ever holds the whole model."""
    graphdef, abstract_state = nnx.split(abstract_model(model_cfg, seed))
    pure = nnx.to_pure_dict(abstract_state)
    shardings = param_sharding_fn(model_cfg)(pure, mesh)

    def init():
        return nnx.to_pure_dict(nnx.state(build_model(model_cfg, seed)))

    params = jax.jit(init, out_shardings=shardings)()
    nnx.replace_by_pure_dict(abstract_state, params)
    return nnx.merge(graphdef, abstract_state)


def place_params(model_cfg: Any, params: Any, mesh: Mesh) -> Any:
    """Existing params (e.g. restored from a checkpoint) moved into their mesh shardings."""
    return jax.device_put(params, param_sharding_fn(model_cfg)(params, mesh))


def sharding_table(model_cfg: Any) -> dict[str, dict[str, Any]]:
    """{param path: {"shape", "logical", "spec"}} with specs from RULES alone (no mesh sizes): the
    content of the golden file tests/golden/<config>_sharding.json."""
    shapes = nnx.to_pure_dict(nnx.state(abstract_model(model_cfg), nnx.Param))
    names = param_logical_names(model_cfg)
    logical = dict(jax.tree_util.tree_leaves_with_path(names, is_leaf=lambda x: isinstance(x, tuple)))
    table = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        spec = logical_to_spec(logical[path])
        table["/".join(str(k.key) for k in path)] = {
            "shape": list(leaf.shape), "logical": list(logical[path]),
            "spec": [list(s) if isinstance(s, tuple) else s for s in spec]}
    return table
