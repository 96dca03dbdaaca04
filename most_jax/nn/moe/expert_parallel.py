"""Expert parallelism: routed experts partitioned over the mesh's `expert` axis, tokens moved by all-to-all.

One `jax.shard_map` region per MoE layer. Each device holds the tokens of its batch shard and the
weights of E/EP experts: whole over `fsdp` (the region's in_specs gather them, and autodiff turns
that into a reduce-scatter of the gradients) and split over `tensor` along the FFN width (outputs
are partial sums, reduced with one psum over `tensor` after combining). A device sends each of its
routed assignments to the rank owning the expert, the experts run there, and the outputs travel
back to be weighted and summed per token.

Exchanges (`moe.ep_exchange`):
- `capacity`: every (source rank, expert) pair gets a buffer of C rows (C from capacity_factor and
  the local token count); one dense all_to_all each way. Runs everywhere, and is the only choice on
  XLA:CPU, which lacks ragged_all_to_all. Assignments beyond C are dropped in token order.
- `ragged`: assignments sorted by expert; `jax.lax.ragged_all_to_all` sends exactly the routed rows,
  the receiver groups them by expert for `jax.lax.ragged_dot`. The receive buffer holds
  capacity_factor x (local tokens x K) rows; what would overflow it is dropped.

Both expert functions (experts.py) run inside the region; an ffn expert's output bias is added
outside it, on the token side, so that it crosses no exchange and is not summed over `tensor`.
With expert dropout, each row's global assignment id travels with it (one int32 per row), so the
receiving rank draws the reference's mask (its `tensor` slice of the F units).

Placement (`moe.ep_placement`): the exchange addresses *slots*; rank p holds slots p*E_l..(p+1)*E_l-1
(E_l = E/EP; J indexes a rank's slots). `canonical` puts expert e in slot e, so with modality groups stored contiguously
(MoST: text 0..31, audio 32..63) half the ranks hold only text experts and idle on an audio-heavy
batch. `balanced` stores expert r*E_l + p*E_l/EP + i in slot p*E_l + r*E_l/EP + i: every rank gets
an equal share of every contiguous group. Parameters stay in canonical order (checkpoints are
unchanged); one all_to_all of each rank's expert weights per layer moves them into slot order, and
routing indices are mapped through the same permutation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from most_jax.config import MoEConfig
from most_jax.nn.moe.dispatch import (DISPATCH, DispatchFn, capacity_layout, combine_rows, expert_capacity,
                                      gather_tokens, resolve_dispatch, sorted_layout, with_output_bias)
from most_jax.nn.moe.experts import ExpertDropout, ExpertWeights, on_buffer, on_groups
from most_jax.nn.moe.router import Routing
from most_jax.sharding import BATCH_AXES, MeshError, logical_to_spec

EXPERT_AXIS = "expert"
TENSOR_AXIS = "tensor"


def context_mesh():
    """The mesh set with `jax.set_mesh` (None when there is none)."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def expert_axis_size() -> int:
    """Size of the context mesh's expert axis (0 without a mesh or without that axis)."""
    mesh = context_mesh()
    return 0 if mesh is None or EXPERT_AXIS not in mesh.axis_names else mesh.shape[EXPERT_AXIS]


def token_shards(mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names)


def slot_of_expert(num_experts: int, ep: int, placement: str) -> np.ndarray:
    """int [E]: the exchange slot of each canonical expert (an involution)."""
    if placement == "canonical" or ep == 1:
        return np.arange(num_experts)
    if placement != "balanced":
        raise ValueError(f"moe.ep_placement: unknown placement {placement!r}")
    per = num_experts // ep
    if num_experts % ep or per % ep:
        raise MeshError(f"moe.ep_placement=balanced needs num_experts={num_experts} divisible by expert^2={ep * ep}")
    # canonical e = r*per + p*piece + i (r: owner rank of e, p: rank that will hold it) -> slot p*per + r*piece + i
    return np.arange(num_experts).reshape(ep, ep, per // ep).transpose(1, 0, 2).reshape(num_experts)


def rank_load(expert_NK: np.ndarray, active_N: np.ndarray, ep: int, num_experts: int, placement: str) -> np.ndarray:
    """int [EP]: routed assignments each expert-parallel rank computes (host-side report)."""
    slots = slot_of_expert(num_experts, ep, placement)[np.asarray(expert_NK)]
    ranks = slots[np.asarray(active_N)] // (num_experts // ep)
    return np.bincount(ranks.reshape(-1), minlength=ep)


def _to_slot_order(w: ExpertWeights) -> ExpertWeights:
    # Each rank's canonical E_l experts split into EP pieces; piece p goes to rank p (see module doc).
    return jax.tree.map(lambda a: jax.lax.all_to_all(a, EXPERT_AXIS, 0, 0, tiled=True), w)


class _RowDropout:
    """Expert dropout inside the region: global assignment ids of local rows, and the scales of
    this `tensor` rank's slice of the F hidden units for rows holding given ids."""

    def __init__(self, dropout: ExpertDropout, shard: jax.Array, num_assignments: int, width: int,
                 tensor_split: bool):
        self.dropout, self.shard, self.num_assignments = dropout, shard, num_assignments
        self.width, self.tensor_split = width, tensor_split

    def global_ids(self, assignment_P: jax.Array) -> jax.Array:
        # Token shards are contiguous blocks of the global rows, in the order of BATCH_AXES.
        return self.shard * self.num_assignments + assignment_P

    def scale(self, ids_P: jax.Array, w: ExpertWeights) -> jax.Array:
        full_PF = self.dropout.keep_scale(ids_P, self.width)
        if not self.tensor_split:
            return full_PF
        local = w.w_in_EDF.shape[2]
        return jax.lax.dynamic_slice_in_dim(full_PF, jax.lax.axis_index(TENSOR_AXIS) * local, local, axis=1)


def _capacity_exchange(x_ND: jax.Array, routing: Routing, w: ExpertWeights, ep: int, num_slots: int,
                       capacity_factor: float, row_dropout: _RowDropout | None) -> tuple[jax.Array, jax.Array]:
    n, k = routing.expert_NK.shape
    d = x_ND.shape[1]
    per = num_slots // ep
    c = expert_capacity(n, k, num_slots, capacity_factor)
    layout, dropped_NK = capacity_layout(routing, num_slots, c)
    # Rows are slot-major, so rank p's slots form the p-th contiguous block: tiled all_to_all sends it there.
    x_PD = jax.lax.all_to_all(gather_tokens(x_ND, layout), EXPERT_AXIS, 0, 0, tiled=True)
    # Each local slot's buffer: the C rows from every source rank, ep * C in all.
    x_JCD = x_PD.reshape(ep, per, c, d).transpose(1, 0, 2, 3).reshape(per, ep * c, d)
    scale_JCF = None
    if row_dropout is not None:
        ids_P = jax.lax.all_to_all(row_dropout.global_ids(layout.assignment_P), EXPERT_AXIS, 0, 0, tiled=True)
        ids_JC = ids_P.reshape(ep, per, c).transpose(1, 0, 2).reshape(per * ep * c)
        scale_JCF = row_dropout.scale(ids_JC, w).reshape(per, ep * c, -1)
    out_JCD = on_buffer(x_JCD, w, scale_JCF)
    out_PD = out_JCD.reshape(per, ep, c, d).transpose(1, 0, 2, 3).reshape(ep * per * c, d)
    out_PD = jax.lax.all_to_all(out_PD, EXPERT_AXIS, 0, 0, tiled=True)
    return combine_rows(out_PD, routing.weight_NK, layout), dropped_NK


def _exclusive_cumsum(a: jax.Array, axis: int) -> jax.Array:
    return jnp.cumsum(a, axis=axis) - a


def _ragged_exchange(x_ND: jax.Array, routing: Routing, w: ExpertWeights, ep: int, num_slots: int,
                     capacity_factor: float, ragged_all_to_all: Callable,
                     row_dropout: _RowDropout | None) -> tuple[jax.Array, jax.Array]:
    n, k = routing.expert_NK.shape
    d = x_ND.shape[1]
    per = num_slots // ep
    me = jax.lax.axis_index(EXPERT_AXIS)
    layout, counts_E = sorted_layout(routing, num_slots)
    x_PD = gather_tokens(x_ND, layout)  # n*k rows in slot order, inactive ones last

    # Every rank learns every rank's per-slot counts (EP x E integers), so all offsets follow locally.
    # [source rank, destination rank] arrays are written _WW.
    counts_WE = jax.lax.all_gather(counts_E, EXPERT_AXIS)  # [source rank, slot]
    sizes_WW = counts_WE.reshape(ep, ep, per).sum(axis=2)  # rows source s sends to rank p
    recv_rows = max(math.ceil(capacity_factor * n * k), 1)
    dest_off_WW = _exclusive_cumsum(sizes_WW, axis=0)  # where s's rows start in p's receive buffer
    sent_WW = jnp.clip(recv_rows - dest_off_WW, 0, sizes_WW)  # the part that fits
    src_off_WW = _exclusive_cumsum(sizes_WW, axis=1)  # where s's rows for p start in s's send buffer

    def send(rows_P, width, dtype):
        return ragged_all_to_all(rows_P, jnp.zeros((recv_rows, width), dtype), src_off_WW[me], sent_WW[me],
                                 dest_off_WW[me], sent_WW[:, me], axis_name=EXPERT_AXIS)

    recv_PD = send(x_PD, d, x_PD.dtype)

    # Received rows are packed source by source, each source's rows ordered by my local slots.
    my_counts_WJ = jax.lax.dynamic_slice_in_dim(counts_WE, me * per, per, axis=1)
    starts = (dest_off_WW[:, me][:, None] + _exclusive_cumsum(my_counts_WJ, axis=1)).reshape(ep * per)
    row_P = jnp.arange(recv_rows)
    slot_P = jnp.searchsorted(starts, row_P, side="right") - 1
    local_P = jnp.where(row_P < sent_WW[:, me].sum(), slot_P % per, per)
    order_P = jnp.argsort(local_P, stable=True)
    group_sizes_J = jnp.bincount(local_P, length=per + 1)[:per].astype(jnp.int32)
    scale_PF = None
    if row_dropout is not None:
        ids_P1 = send(row_dropout.global_ids(layout.assignment_P)[:, None], 1, jnp.int32)
        scale_PF = row_dropout.scale(ids_P1[order_P, 0], w)
    out_sorted_PD = on_groups(recv_PD[order_P], w, group_sizes_J, scale_PF)
    out_recv_PD = jnp.zeros_like(out_sorted_PD).at[order_P].set(out_sorted_PD)

    back_PD = ragged_all_to_all(out_recv_PD, jnp.zeros((n * k, d), out_recv_PD.dtype), dest_off_WW[:, me],
                                sent_WW[:, me], src_off_WW[:, me], sent_WW[me], axis_name=EXPERT_AXIS)

    # Sorted row p belongs to the destination rank whose block holds it; dropped if past what fit.
    dest_P = jnp.searchsorted(src_off_WW[me], jnp.arange(n * k), side="right") - 1
    kept_P = (jnp.arange(n * k) - src_off_WW[me][dest_P]) < sent_WW[me][dest_P]
    active_P = layout.assignment_P < n * k
    dropped_P = jnp.concatenate([active_P & ~kept_P, jnp.zeros((1,), bool)])
    dropped_NK = dropped_P[layout.row_NK]
    return combine_rows(back_PD, routing.weight_NK, layout), dropped_NK


def expert_parallel(x_ND: jax.Array, routing: Routing, experts: ExpertWeights, capacity_factor: float,
                    dropout: ExpertDropout | None = None, *, exchange: str = "capacity", placement: str = "canonical", mesh=None,
                    ragged_all_to_all: Callable = jax.lax.ragged_all_to_all) -> tuple[jax.Array, jax.Array]:
    """The dispatch contract of dispatch.py (y_ND f32, dropped_NK) on the context mesh (or `mesh`).

    Tokens must split evenly over the mesh's data-like axes (slice, data, fsdp, expert)."""
    mesh = mesh or context_mesh()
    if mesh is None or EXPERT_AXIS not in mesh.axis_names:
        raise MeshError("moe.dispatch=expert_parallel needs a mesh with an 'expert' axis; build one with "
                        "most_jax.parallel.make_mesh and enter it with jax.set_mesh")
    ep = mesh.shape[EXPERT_AXIS]
    num_experts, d, f = experts.w_in_EDF.shape
    n = x_ND.shape[0]
    if num_experts % ep:
        raise MeshError(f"{num_experts} experts do not split over mesh.expert={ep}")
    if n % token_shards(mesh):
        raise MeshError(f"expert parallelism: {n} tokens do not split over the {token_shards(mesh)} data-parallel "
                        f"shards of the mesh (batch rows x length must be divisible)")
    if exchange not in ("capacity", "ragged"):
        raise ValueError(f"moe.ep_exchange: unknown exchange {exchange!r}")
    slot_E = jnp.asarray(slot_of_expert(num_experts, ep, placement), jnp.int32)
    slot_NK = slot_E[routing.expert_NK]

    batch_axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    rows = PartitionSpec(batch_axes)
    w_in = logical_to_spec(("expert", None, "mlp"), (num_experts, d, f), mesh, what="moe expert input weights")
    w_out = logical_to_spec(("expert", "mlp", None), (num_experts, f, d), mesh, what="moe expert output weights")
    b_in = logical_to_spec(("expert", "mlp"), (num_experts, f), mesh, what="moe expert hidden bias")
    # The output bias stays outside the region (module doc).
    inner = dataclasses.replace(experts, b_out_ED=None)
    w_specs = ExpertWeights(w_in, None if inner.w_up_EDF is None else w_in, w_out,
                            None if inner.b_in_EF is None else b_in, None, inner.activation)
    tensor_split = TENSOR_AXIS in jax.tree.leaves(tuple(w_in))
    reorder = placement == "balanced" and ep > 1

    def local(x_ND, slot_NK, weight_NK, active_N, w, dropout=None):
        row_dropout = None
        if dropout is not None:
            shard = 0
            for axis in batch_axes:
                shard = shard * mesh.shape[axis] + jax.lax.axis_index(axis)
            row_dropout = _RowDropout(dropout, shard, slot_NK.size, f, tensor_split)
        if reorder:
            w = _to_slot_order(w)
        if tensor_split:
            # Expert outputs are partial sums over `tensor`, so the combine weights take part in a
            # tensor-varying computation; their gradient is then summed over `tensor` (pcast's transpose).
            weight_NK = jax.lax.pcast(weight_NK, TENSOR_AXIS, to="varying")
        r = Routing(expert_NK=slot_NK, weight_NK=weight_NK, active_N=active_N)
        if exchange == "capacity":
            y_ND, dropped_NK = _capacity_exchange(x_ND, r, w, ep, num_experts, capacity_factor, row_dropout)
        else:
            y_ND, dropped_NK = _ragged_exchange(x_ND, r, w, ep, num_experts, capacity_factor, ragged_all_to_all,
                                                row_dropout)
        if tensor_split:
            y_ND = jax.lax.psum(y_ND, TENSOR_AXIS)  # each tensor rank summed over its slice of F
        return y_ND, dropped_NK

    args, specs = (x_ND, slot_NK, routing.weight_NK, routing.active_N, inner), (rows, rows, rows, rows, w_specs)
    if dropout is not None:  # the key is replicated
        args, specs = args + (dropout,), specs + (ExpertDropout(PartitionSpec(), dropout.rate),)
    y_ND, dropped_NK = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=(rows, rows))(*args)
    return with_output_bias(y_ND, routing, experts, dropped_NK), dropped_NK


def resolve_exchange(name: str) -> str:
    """`auto`: the ragged exchange where ragged_all_to_all exists (TPU/GPU), fixed capacity on CPU."""
    if name == "auto":
        return "capacity" if jax.default_backend() == "cpu" else "ragged"
    return name


def make_dispatch(moe: MoEConfig) -> DispatchFn:
    """The expert-parallel dispatch configured by `moe` (exchange and placement)."""

    def dispatch(x_ND, routing, experts, capacity_factor, dropout=None):
        return expert_parallel(x_ND, routing, experts, capacity_factor, dropout, exchange=resolve_exchange(moe.ep_exchange),
                               placement=moe.ep_placement)

    return dispatch


def select_dispatch(moe: MoEConfig, num_tokens: int) -> DispatchFn:
    """The strategy for one MoE call, chosen at trace time from the config and the context mesh:
    `expert_parallel` when asked, or under `auto` when the mesh's expert axis is > 1 and the tokens
    split over its data-parallel shards (small decode steps fall back to the local strategies)."""
    ep = expert_axis_size()
    if moe.dispatch == "expert_parallel" or (
            moe.dispatch == "auto" and ep > 1 and num_tokens % token_shards(context_mesh()) == 0):
        return make_dispatch(moe)
    return DISPATCH[resolve_dispatch(moe.dispatch)]


__all__ = ["select_dispatch", "expert_parallel", "make_dispatch", "rank_load", "slot_of_expert", "expert_axis_size",
           "token_shards", "context_mesh"]
