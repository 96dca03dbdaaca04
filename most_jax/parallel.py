"""Device mesh, the one logical-axis rules table, sharded initialisation and pre-compile checks.

Mesh axes, outermost first: `slice` (TPU slices joined over DCN; data parallel), `data` (pure data
parallel: parameters replicated), `fsdp` (data parallel with parameters, gradients and optimizer
state sharded), `expert` (routed experts partitioned; the other layers treat it as data parallel)
and `tensor` (Megatron-style: heads, FFN width and vocabulary split; innermost, fastest links).

Every parameter carries logical axis names (nn/params.py); RULES maps each name to mesh axes. The
batch is split over every axis but `tensor`, so tokens, not weights, are what data, fsdp and expert
ranks divide among themselves.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from most_jax.config import MESH_AXES, Config, ConfigError, MeshConfig, ModelConfig

# Logical axis -> mesh axes. Parameters: `embed` is the FSDP axis (every weight has one, and it is
# never the contracted-then-reduced axis of tensor parallelism); `mlp`, `heads` and `vocab` are the
# tensor-parallel widths; `latent` (MLA's 512-d compressed KV) and `layers` stay whole because
# scan slices layers and the latent feeds every head. Activations: `batch` over the data-like axes.
RULES: Mapping[str, tuple[str, ...]] = {
    "batch": ("slice", "data", "fsdp", "expert"),
    "length": (),
    "embed": ("fsdp",),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "vocab": ("tensor",),
    "expert": ("expert",),
    "latent": (),
    "layers": (),
}

BATCH_AXES = RULES["batch"]


class MeshError(ValueError):
    """The mesh does not fit the devices, the model or the batch (raised before compilation)."""


def axis_sizes(mesh_cfg: MeshConfig, num_devices: int) -> dict[str, int]:
    """{axis: size} with the -1 axis resolved; the product must equal `num_devices`."""
    sizes = {name: getattr(mesh_cfg, name) for name in MESH_AXES}
    fixed = math.prod(v for v in sizes.values() if v != -1)
    rest = [name for name, v in sizes.items() if v == -1]
    described = ", ".join(f"{k}={v}" for k, v in sizes.items() if v != 1)
    if rest:
        if num_devices % fixed:
            raise MeshError(f"mesh {described}: the fixed axes multiply to {fixed}, which does not divide the "
                            f"{num_devices} devices, so mesh.{rest[0]}=-1 has no size")
        sizes[rest[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise MeshError(f"mesh {described}: the axes multiply to {fixed} devices, but there are {num_devices}")
    return sizes


def make_mesh(mesh_cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """The mesh over `devices` (default: all devices of all processes), axes in MESH_AXES order.

    Auto axes: sharding propagation (GSPMD) places intermediates; shard_map regions (expert
    parallelism) take over where the exchange pattern must be explicit."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = axis_sizes(mesh_cfg, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    slices = {getattr(d, "slice_index", 0) for d in devices}
    if len(slices) > 1:
        if sizes["slice"] != len(slices):
            raise MeshError(f"mesh.slice={sizes['slice']}, but the devices span {len(slices)} TPU slices")
        from jax.experimental import mesh_utils

        per_slice = (1,) + shape[1:]
        dcn = (sizes["slice"],) + (1,) * (len(shape) - 1)
        grid = mesh_utils.create_hybrid_device_mesh(per_slice, dcn, devices)
        return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def parse_mesh_arg(text: str) -> list[str]:
    """'data=2,expert=4' -> config overrides ['mesh.data=2', 'mesh.expert=4']."""
    overrides = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in MESH_AXES:
            raise ConfigError(f"--mesh {text!r}: {item!r} is not AXIS=SIZE with AXIS one of {', '.join(MESH_AXES)}")
        try:
            size = int(value)
        except ValueError:
            raise ConfigError(f"--mesh {text!r}: size of {name} must be an integer, got {value!r}") from None
        overrides.append(f"mesh.{name}={size}")
    if not overrides:
        raise ConfigError(f"--mesh {text!r}: expected AXIS=SIZE[,AXIS=SIZE...]")
    return overrides


# Set by launch/local.sh (and usable anywhere the cluster is not auto-detected).
ENV_COORDINATOR = "MOST_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "MOST_NUM_PROCESSES"
ENV_PROCESS_ID = "MOST_PROCESS_ID"
# "1": call jax.distributed.initialize() with JAX's own cluster detection (TPU VM slices, SLURM).
ENV_AUTO = "MOST_DISTRIBUTED"


def initialize_distributed(heartbeat_timeout_s: int = 30) -> bool:
    """Joins the JAX processes of a multi-process run, if the environment describes one.

    Must run before anything touches a JAX backend. On CPU, cross-process collectives go through
    gloo. A process that dies stops sending heartbeats; the coordination service then fails the
    others after `heartbeat_timeout_s` instead of letting them wait in a collective forever.
    Returns True when a multi-process run was joined."""
    explicit = os.environ.get(ENV_COORDINATOR)
    if not explicit and os.environ.get(ENV_AUTO) != "1":
        return False
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = dict(heartbeat_timeout_seconds=heartbeat_timeout_s)
    if explicit:
        try:
            kwargs.update(coordinator_address=explicit, num_processes=int(os.environ[ENV_NUM_PROCESSES]),
                          process_id=int(os.environ[ENV_PROCESS_ID]))
        except (KeyError, ValueError) as e:
            raise MeshError(f"{ENV_COORDINATOR} is set, so {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be "
                            f"integers too ({e})") from None
    jax.distributed.initialize(**kwargs)
    return True


# ----------------------------------------------------------------------------- logical -> mesh

def mesh_axes_for(name: str | None) -> tuple[str, ...]:
    if name is None:
        return ()
    if name not in RULES:
        raise MeshError(f"logical axis {name!r} has no sharding rule; known: {', '.join(RULES)}")
    return RULES[name]


def logical_to_spec(names: tuple[str | None, ...], shape: tuple[int, ...] | None = None,
                    mesh: Mesh | None = None, what: str = "array") -> PartitionSpec:
    """PartitionSpec of an array with logical axis `names`.

    With a mesh, axes of size 1 are left out, and a dimension that the mesh axes do not divide is
    kept whole (replicated) rather than failing: small tensors (norm scales, tiny test models) then
    still compile. The expert axis is the exception: its divisibility is a hard requirement
    (check_model_fits), since expert parallelism assigns whole experts to ranks.
    """
    entries = []
    for i, name in enumerate(names):
        axes = mesh_axes_for(name)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1)
            ways = math.prod(mesh.shape[a] for a in axes)
            if axes and shape is not None and shape[i] % ways:
                if name == "expert":
                    raise MeshError(f"{what}: {shape[i]} experts do not split over mesh.expert={ways}")
                axes = ()
        entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*entries)


def _abstract_model(model_cfg: ModelConfig, seed: int = 0):
    # Imported here: nn/moe/expert_parallel.py uses this module's rules, and the model imports nn/.
    from most_jax.models.most import MoST

    return nnx.eval_shape(lambda: MoST(model_cfg, rngs=nnx.Rngs(seed)))


def param_logical_names(model_cfg: ModelConfig) -> dict:
    """Nested dict (the params layout) of each parameter's logical axis names."""
    abstract = _abstract_model(model_cfg)
    specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(abstract, nnx.Param)))
    return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def param_specs(model_cfg: ModelConfig, abstract_params: Any, mesh: Mesh | None = None) -> Any:
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


def param_sharding_fn(model_cfg: ModelConfig) -> Callable[[Any, Mesh], Any]:
    """`(abstract params, mesh) -> NamedShardings`: what train.state.state_shardings takes."""

    def shardings(abstract_params: Any, mesh: Mesh) -> Any:
        specs = param_specs(model_cfg, abstract_params, mesh)
        return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))

    return shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[B, T] batch arrays: rows over every data-like axis, positions whole."""
    return NamedSharding(mesh, logical_to_spec(("batch", "length"), mesh=mesh))


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch rows are split."""
    return math.prod(mesh.shape.get(a, 1) for a in BATCH_AXES)


# ----------------------------------------------------------------------------- checks

def check_model_fits(model_cfg: ModelConfig, mesh: Mesh) -> None:
    """Expert axis vs the expert count (and the balanced placement's stricter need)."""
    ep = mesh.shape["expert"]
    moe = model_cfg.moe
    if model_cfg.num_moe_layers == 0:
        if ep > 1:
            raise MeshError(f"mesh.expert={ep}, but the model has no MoE layers")
        return
    if moe.num_experts % ep:
        raise MeshError(f"model.moe.num_experts={moe.num_experts} is not divisible by mesh.expert={ep}")
    if moe.ep_placement == "balanced" and (moe.num_experts // ep) % ep:
        raise MeshError(f"model.moe.ep_placement=balanced interleaves experts with one all-to-all, which needs the "
                        f"{moe.num_experts // ep} experts per rank to split over mesh.expert={ep} "
                        f"(num_experts divisible by expert^2 = {ep * ep})")


def check_batch_fits(batch_size: int, micro_batches: int, mesh: Mesh, what: str = "data.batch_size") -> None:
    """Every micro-batch must split evenly over the data-like axes."""
    shards = batch_shards(mesh)
    axes = " x ".join(f"{a}={mesh.shape[a]}" for a in BATCH_AXES if mesh.shape.get(a, 1) > 1) or "1"
    if batch_size % micro_batches or (batch_size // micro_batches) % shards:
        raise MeshError(f"{what}={batch_size} in {micro_batches} micro-batch(es) of {batch_size // max(micro_batches, 1)} "
                        f"rows does not split over the data-parallel axes ({axes} = {shards} ways)")


def check_config(cfg: Config, mesh: Mesh) -> None:
    """All pre-compile checks for training `cfg` on `mesh`."""
    check_model_fits(cfg.model, mesh)
    check_batch_fits(cfg.data.batch_size, cfg.train.micro_batches, mesh)


# ----------------------------------------------------------------------------- sharded init / reports

def init_sharded_model(model_cfg: ModelConfig, mesh: Mesh, seed: int = 0):
    """A MoST whose parameters are created directly in their shardings: shapes first, then a jitted
    init with out_shardings, so no device ever holds the whole model."""
    from most_jax.models.most import MoST

    graphdef, abstract_state = nnx.split(_abstract_model(model_cfg, seed))
    pure = nnx.to_pure_dict(abstract_state)
    shardings = param_sharding_fn(model_cfg)(pure, mesh)

    def init():
        return nnx.to_pure_dict(nnx.state(MoST(model_cfg, rngs=nnx.Rngs(seed))))

    params = jax.jit(init, out_shardings=shardings)()
    nnx.replace_by_pure_dict(abstract_state, params)
    return nnx.merge(graphdef, abstract_state)


def place_params(model_cfg: ModelConfig, params: Any, mesh: Mesh) -> Any:
    """Existing params (e.g. restored from a checkpoint) moved into their mesh shardings."""
    return jax.device_put(params, param_sharding_fn(model_cfg)(params, mesh))


def sharding_table(model_cfg: ModelConfig) -> dict[str, dict[str, Any]]:
    """{param path: {"shape", "logical", "spec"}} with specs from RULES alone (no mesh sizes): the
    content of the golden file tests/golden/<config>_sharding.json."""
    shapes = nnx.to_pure_dict(nnx.state(_abstract_model(model_cfg), nnx.Param))
    names = param_logical_names(model_cfg)
    logical = dict(jax.tree_util.tree_leaves_with_path(names, is_leaf=lambda x: isinstance(x, tuple)))
    table = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        spec = logical_to_spec(logical[path])
        table["/".join(str(k.key) for k in path)] = {
            "shape": list(leaf.shape), "logical": list(logical[path]),
            "spec": [list(s) if isinstance(s, tuple) else s for s in spec]}
    return table


def bytes_per_device(tree: Any) -> dict[int, int]:
    """{device id: bytes of the tree's shards held there} for committed jax.Arrays."""
    totals: dict[int, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device.id] = totals.get(shard.device.id, 0) + shard.data.size * shard.data.dtype.itemsize
    return totals


def describe(mesh: Mesh) -> str:
    """'data=2 x expert=4' (axes of size 1 left out)."""
    return " x ".join(f"{a}={n}" for a, n in mesh.shape.items() if n > 1) or "1 device"
