"""Expert-parallel exchange: all-to-all bytes per step next to the theoretical minimum, step time on
simulated devices, and per-rank load of the canonical vs the modality-balanced placement.

Bytes: the minimum is what must cross between ranks if only routed assignments moved and none
stayed local: tokens x top_k x D x dtype bytes, twice (there and back) per MoE layer forward, and as
much again in the backward pass. The fixed-capacity exchange moves whole buffers: E x C rows per
device, padding included, the all-to-all operands (the 1/EP of each that stays on its device is
counted too, as it is in the minimum).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from most_jax import parallel, sharding
from most_jax.config import Config
from most_jax.nn.moe import expert_parallel as ep_lib
from most_jax.nn.moe.dispatch import ExpertWeights, expert_capacity
from most_jax.nn.moe.router import route
from most_jax.nn.params import DTYPES


def _problem(cfg: Config, tokens: int, audio_fraction: float, seed: int):
    m, moe = cfg.model, cfg.model.moe
    d, f, e = m.hidden_size, moe.expert_ffn_dim, moe.num_experts
    dtype = DTYPES[m.dtype]
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x_ND = jax.random.normal(k1, (tokens, d), dtype)
    modality = (np.random.default_rng(seed).random(tokens) < audio_fraction).astype(np.int32)
    gate = jax.random.normal(k2, (d, e)) * m.init_std
    routing, _ = route(x_ND[None], jnp.asarray(modality)[None], jnp.ones((1, tokens), bool), gate, moe)
    w = (jax.random.normal(k3, (3, e, d, f)) * m.init_std).astype(dtype)
    return x_ND, routing, ExpertWeights(w[0], w[1], jnp.swapaxes(w[2], 1, 2))


def run(cfg: Config, *, tokens: int, audio_fraction: float = 0.5, skew: float = 0.9, repeats: int = 3,
        seed: int = 0) -> dict:
    mesh = sharding.make_mesh(cfg.mesh)
    parallel.check_model_fits(cfg.model, mesh)
    moe, d = cfg.model.moe, cfg.model.hidden_size
    ep, devices = mesh.shape["expert"], mesh.devices.size
    shards = sharding.batch_shards(mesh)
    if tokens % shards:
        raise sharding.MeshError(f"--tokens {tokens} does not split over the {shards} data-parallel shards")
    itemsize = np.dtype(DTYPES[cfg.model.dtype]).itemsize
    x_ND, routing, experts = _problem(cfg, tokens, audio_fraction, seed)
    exchange = ep_lib.resolve_exchange(moe.ep_exchange)

    def loss(x, w):
        y, _ = ep_lib.expert_parallel(x, routing, w, moe.capacity_factor, exchange=exchange,
                                      placement=moe.ep_placement)
        return jnp.sum(y * y)

    with jax.set_mesh(mesh):
        step = jax.jit(jax.grad(loss, argnums=(0, 1)))
        jax.block_until_ready(step(x_ND, experts))
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            jax.block_until_ready(step(x_ND, experts))
            times.append(time.perf_counter() - started)

    local_tokens = tokens // shards
    capacity = expert_capacity(local_tokens, moe.top_k, moe.num_experts, moe.capacity_factor)
    minimum = tokens * moe.top_k * d * itemsize * 2
    # Every device (tensor ranks included: they hold the same tokens) sends its E x C buffer.
    buffers = devices * moe.num_experts * capacity * d * itemsize * 2
    _, skew_routing, _ = _problem(cfg, tokens, skew, seed + 1)
    expert_NK, active_N = np.asarray(skew_routing.expert_NK), np.asarray(skew_routing.active_N)
    load = {p: ep_lib.rank_load(expert_NK, active_N, ep, moe.num_experts, p).tolist()
            for p in ("canonical", "balanced") if p == "canonical" or moe.num_experts % (ep * ep) == 0}
    return {
        "mesh": sharding.describe(mesh), "devices": int(devices), "simulated": jax.default_backend() == "cpu",
        "backend": jax.default_backend(), "exchange": exchange, "placement": moe.ep_placement,
        "tokens": tokens, "top_k": moe.top_k, "width": d, "dtype": cfg.model.dtype, "capacity_per_expert": capacity,
        "moe_layers": cfg.model.num_moe_layers,
        "bytes_min_per_layer_forward": minimum,
        "bytes_exchanged_per_layer_forward": buffers if exchange == "capacity" else None,
        "bytes_min_per_step": minimum * 2 * cfg.model.num_moe_layers,
        "bytes_exchanged_per_step": buffers * 2 * cfg.model.num_moe_layers if exchange == "capacity" else None,
        "layer_fwd_bwd_seconds": statistics.median(times),
        "skewed_batch_audio_fraction": skew, "rank_load": load,
        "rank_load_max_over_mean": {p: float(max(v) / (sum(v) / len(v))) for p, v in load.items()},
    }


def format_report(r: dict) -> str:
    label = "SIMULATED devices (XLA:CPU, one host)" if r["simulated"] else r["backend"]
    mib = 1024 ** 2
    lines = [f"expert-parallel exchange, mesh {r['mesh']} ({r['devices']} {label}), exchange {r['exchange']}",
             f"  {r['tokens']} tokens x top-{r['top_k']} x width {r['width']} {r['dtype']}, "
             f"capacity {r['capacity_per_expert']} rows per expert per device",
             f"  per MoE layer forward: minimum {r['bytes_min_per_layer_forward'] / mib:.2f} MiB"
             + (f", exchanged {r['bytes_exchanged_per_layer_forward'] / mib:.2f} MiB (capacity buffers)"
                if r["bytes_exchanged_per_layer_forward"] is not None else ""),
             f"  per train step ({r['moe_layers']} MoE layers, forward + backward): minimum "
             f"{r['bytes_min_per_step'] / mib:.1f} MiB"
             + (f", exchanged {r['bytes_exchanged_per_step'] / mib:.1f} MiB"
                if r["bytes_exchanged_per_step"] is not None else ""),
             f"  one layer forward+backward: {r['layer_fwd_bwd_seconds'] * 1e3:.1f} ms ({label})",
             f"  per-rank load, batch {r['skewed_batch_audio_fraction']:.0%} audio:"]
    for placement, load in r["rank_load"].items():
        lines.append(f"    {placement:<9} {load}  max/mean {r['rank_load_max_over_mean'][placement]:.2f}")
    return "\n".join(lines)


__all__ = ["run", "format_report"]
