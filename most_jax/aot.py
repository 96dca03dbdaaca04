"""Ahead-of-time compilation of the full train step for a TPU topology, on a CPU host.

libtpu (the `aot` extra) compiles for a described topology without the hardware; the compiled
step's memory analysis says what each chip would hold. FLOPs are analytic, from the model family
(XLA's cost analysis counts a scanned layer body once, so it undercounts a stacked model by the
number of layers).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from most_jax import parallel, sharding
from most_jax.atomic import atomic_file
from most_jax.config import Config
from most_jax.models.family import frozen_mask, get_family

GIB = 1024 ** 3

# Per-chip HBM (bytes), TensorCores per chip (the "-N" of a slice name counts cores on v4/v5p, chips
# on v5e/v6e) and the physical topology rank (v4/v5p: 3-D torus, v5e/v6e: 2-D).
CHIPS = {
    "v4": dict(hbm=32 * GIB, cores=2, dims=3, kind="v4"),
    "v5p": dict(hbm=95 * GIB, cores=2, dims=3, kind="v5p"),
    "v5e": dict(hbm=16 * GIB, cores=1, dims=2, kind="v5e"),
    "v6e": dict(hbm=32 * GIB, cores=1, dims=2, kind="v6e"),
}


class TopologyError(ValueError):
    """The topology name is unknown or malformed."""


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # e.g. "v5p-64"
    generation: str  # key of CHIPS
    chips: int
    shape: tuple[int, ...]  # chip grid given to libtpu, e.g. (4, 4, 2)

    @property
    def hbm_bytes(self) -> int:
        return CHIPS[self.generation]["hbm"]

    @property
    def libtpu_name(self) -> str:
        return f"{CHIPS[self.generation]['kind']}:{'x'.join(map(str, self.shape))}"


def _grid(chips: int, dims: int) -> tuple[int, ...]:
    """The most cube-like power-of-two grid of `chips` chips (TPU slices come in these shapes)."""
    if chips < 1 or chips & (chips - 1):
        raise TopologyError(f"{chips} chips: TPU slices have a power-of-two number of chips")
    shape = [1] * dims
    for i in range(int(math.log2(chips))):
        shape[i % dims] *= 2
    return tuple(sorted(shape, reverse=True))  # libtpu names slices largest axis first: 4x4x2


def parse_topology(name: str) -> Topology:
    """'v5p-64' (64 TensorCores = 32 chips), 'v5e-256' (256 chips), 'v4-32', 'v6e-8'."""
    match = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name.strip().lower())
    if not match:
        raise TopologyError(f"unknown topology {name!r}; expected GENERATION-N with GENERATION one of "
                            f"{', '.join(CHIPS)} (e.g. v5p-16, v5e-256, v4-32)")
    generation, count = match.group(1), int(match.group(2))
    spec = CHIPS[generation]
    if count % spec["cores"]:
        raise TopologyError(f"{name}: {generation} slices are named by TensorCores, {spec['cores']} per chip")
    chips = count // spec["cores"]
    return Topology(name=name, generation=generation, chips=chips, shape=_grid(chips, spec["dims"]))


def topology_devices(topology: Topology) -> list:
    """The devices of the described topology (needs libtpu; nothing is attached)."""
    try:
        from jax.experimental import topologies
    except ImportError as e:  # pragma: no cover - part of jax
        raise TopologyError(str(e)) from None
    try:
        desc = topologies.get_topology_desc(topology.libtpu_name, "tpu")
    except Exception as e:  # libtpu missing or the topology rejected: say which
        raise TopologyError(f"{topology.name}: cannot describe TPU topology {topology.libtpu_name!r} ({e}); "
                            "is libtpu installed (pip install -e '.[aot]')?") from None
    return list(desc.devices)


@dataclasses.dataclass
class CompileReport:
    topology: str
    chips: int
    mesh: dict[str, int]
    hbm_bytes_per_chip: int
    per_chip_bytes: dict[str, int]
    fits: bool
    flops_per_step: float | None  # analytic; None when the model family has no formula
    compile_seconds: float

    def as_json(self) -> dict[str, Any]:
        """Exactly the fields `most compile --json` promises."""
        return {"topology": self.topology, "chips": self.chips, "mesh": self.mesh,
                "hbm_bytes_per_chip": self.hbm_bytes_per_chip, "per_chip_bytes": self.per_chip_bytes,
                "fits": self.fits, "flops_per_step": self.flops_per_step}


def _shard_bytes(abstract: Any, shardings: Any) -> int:
    """Bytes of one device's shard of every leaf (the largest shard, for uneven splits)."""
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        shape = sharding.shard_shape(tuple(leaf.shape))
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def compile_train_step(cfg: Config, topology: Topology, *, dump_hlo: Path | None = None,
                       say: Callable[[str], None] = lambda _: None) -> CompileReport:
    """Compiles the trainer's step (optimizer state included) for `topology` and reports per-chip memory."""
    from most_jax.train.optimizer import learning_rate_schedule, make_family_optimizer
    from most_jax.train.state import abstract_state, model_graphdef, state_shardings
    from most_jax.train.step import make_train_step

    devices = topology_devices(topology)
    mesh = sharding.make_mesh(cfg.mesh, devices)
    parallel.check_config(cfg, mesh)
    say(f"{topology.name}: {topology.chips} chips ({topology.libtpu_name}), mesh {sharding.describe(mesh)}")

    graphdef, params_shape = model_graphdef(cfg.model)
    optimizer = make_family_optimizer(cfg.train, params_shape, frozen_mask(cfg.model, params_shape),
                                      get_family(cfg.model).phases)
    abstract = abstract_state(params_shape, optimizer, cfg.train.seed)
    shardings = state_shardings(abstract, mesh, parallel.param_sharding_fn(cfg.model))
    batch_sharding = sharding.batch_sharding(mesh)
    step = make_train_step(graphdef, cfg, optimizer, learning_rate_schedule(cfg.train), state_shardings=shardings,
                           batch_sharding=batch_sharding)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    family = get_family(cfg.model)
    batch = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=batch_sharding)
             for k, s in family.batch_spec(cfg).items()}
    started = time.perf_counter()
    say("lowering and compiling the train step (a 16B model takes minutes) ...")
    compiled = step.lower(target, batch).compile()
    seconds = time.perf_counter() - started
    say(f"compiled in {seconds:.0f} s")
    if dump_hlo is not None:
        dump_hlo.mkdir(parents=True, exist_ok=True)
        out = dump_hlo / f"train_step.{topology.name}.hlo.txt"
        with atomic_file(out) as tmp:
            tmp.write_text(compiled.as_text())
        say(f"wrote {out}")

    memory = compiled.memory_analysis()
    params = _shard_bytes(abstract.params, shardings.params)
    opt = _shard_bytes(abstract.opt_state, shardings.opt_state)
    # The state is donated (aliased to the output), so arguments + outputs - aliases + temporaries
    # is what is live at the peak.
    total = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
             + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
    return CompileReport(
        topology=topology.name, chips=topology.chips, mesh={a: int(n) for a, n in mesh.shape.items()},
        hbm_bytes_per_chip=topology.hbm_bytes,
        per_chip_bytes={"params": params, "optimizer": opt, "temp": int(memory.temp_size_in_bytes),
                        "total": int(total)},
        fits=total <= topology.hbm_bytes,
        flops_per_step=None if family.train_flops is None else family.train_flops(cfg),
        compile_seconds=seconds)
