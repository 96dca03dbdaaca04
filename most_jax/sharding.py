"""Device mesh, the one logical-axis rules table and batch placement: everything about sharding
that knows no model (nn/moe/expert_parallel.py imports it; parallel.py adds the model-aware parts).

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
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from most_jax.config import MESH_AXES, ConfigError, MeshConfig

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


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch arrays of any rank: rows over every data-like axis, the other dimensions whole."""
    return NamedSharding(mesh, logical_to_spec(("batch",), mesh=mesh))


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch rows are split."""
    return math.prod(mesh.shape.get(a, 1) for a in BATCH_AXES)


# ----------------------------------------------------------------------------- checks and reports

def check_batch_fits(batch_size: int, micro_batches: int, mesh: Mesh, what: str = "data.batch_size") -> None:
    """Every micro-batch must split evenly over the data-like axes."""
    shards = batch_shards(mesh)
    axes = " x ".join(f"{a}={mesh.shape[a]}" for a in BATCH_AXES if mesh.shape.get(a, 1) > 1) or "1"
    if batch_size % micro_batches or (batch_size // micro_batches) % shards:
        raise MeshError(f"{what}={batch_size} in {micro_batches} micro-batch(es) of {batch_size // max(micro_batches, 1)} "
                        f"rows does not split over the data-parallel axes ({axes} = {shards} ways)")


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
