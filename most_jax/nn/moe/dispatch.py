"""Dispatch/combine strategies: route token rows to experts, run the SwiGLU experts, weight and sum.

Every strategy has the signature `(x_ND, routing, experts, capacity_factor) -> (y_ND f32,
dropped_NK bool)` and computes y[n] = sum_k weight[n,k] * Expert_{expert[n,k]}(x[n]) over the
active, non-dropped assignments:

- `reference`: loop over experts, each applied to every token; obviously right, E times the work.
- `capacity`: fixed buffers of C rows per expert (C from capacity_factor); assignments beyond an
  expert's C are dropped in token order. Dense batched matmuls, the fast path on CPU.
- `dropless`: assignments sorted by expert and multiplied with `jax.lax.ragged_dot`; nothing dropped.
  Fast where ragged_dot is (TPU/GPU); about 12x slower than a dense matmul on XLA:CPU.

The fast paths move rows with gathers only. Their custom VJPs express each transpose as another
gather through the inverse index map, because XLA:CPU scatter-adds of [N, D] rows are slow
(they cost more than the expert matmuls at benchmark size).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from most_jax.nn.moe.router import Routing

# Below this many rows a matmul is bound by reading the expert weights, so a larger buffer is free;
# the floor also keeps small decode batches (<= 16 tokens) from dropping anything.
MIN_CAPACITY = 16


class ExpertWeights(NamedTuple):
    w_gate_EDF: jax.Array
    w_up_EDF: jax.Array
    w_down_EFD: jax.Array


class Layout(NamedTuple):
    """Where assignments sit in a buffer of R rows; index N, N*K or R marks 'nothing'."""

    token_R: jax.Array  # int32 [R]: token copied into row r (N: an empty row)
    assignment_R: jax.Array  # int32 [R]: flat assignment n*K+k held by row r (N*K: empty)
    row_NK: jax.Array  # int32 [N, K]: buffer row of assignment (n, k) (R: inactive or dropped)


def _append_zero_row(a_XD: jax.Array) -> jax.Array:
    return jnp.concatenate([a_XD, jnp.zeros((1, a_XD.shape[1]), a_XD.dtype)], axis=0)


@jax.custom_vjp
def gather_tokens(x_ND: jax.Array, layout: Layout) -> jax.Array:
    """x_RD[r] = x_ND[token_R[r]] (zeros for empty rows)."""
    return _append_zero_row(x_ND)[layout.token_R]


def _gather_tokens_fwd(x_ND, layout):
    return gather_tokens(x_ND, layout), layout


def _gather_tokens_bwd(layout, g_RD):
    # Token n was copied to rows row_NK[n, :]; its gradient is their sum (a gather, no scatter).
    g_ND = jnp.sum(_append_zero_row(g_RD)[layout.row_NK], axis=1)
    return g_ND, None


gather_tokens.defvjp(_gather_tokens_fwd, _gather_tokens_bwd)


@jax.custom_vjp
def combine_rows(out_RD: jax.Array, weight_NK: jax.Array, layout: Layout) -> jax.Array:
    """y_ND[n] = sum_k weight_NK[n,k] * out_RD[row_NK[n,k]], accumulated in float32."""
    rows_NKD = _append_zero_row(out_RD)[layout.row_NK].astype(jnp.float32)
    return jnp.einsum("NKD,NK->ND", rows_NKD, weight_NK)


def _combine_rows_fwd(out_RD, weight_NK, layout):
    return combine_rows(out_RD, weight_NK, layout), (out_RD, weight_NK, layout)


def _combine_rows_bwd(res, g_ND):
    out_RD, weight_NK, layout = res
    weight_R = jnp.concatenate([weight_NK.reshape(-1), jnp.zeros((1,), weight_NK.dtype)])[layout.assignment_R]
    g_out_RD = (_append_zero_row(g_ND)[layout.token_R] * weight_R[:, None]).astype(out_RD.dtype)
    rows_NKD = _append_zero_row(out_RD)[layout.row_NK].astype(jnp.float32)
    g_weight_NK = jnp.einsum("NKD,ND->NK", rows_NKD, g_ND)
    return g_out_RD, g_weight_NK, None


combine_rows.defvjp(_combine_rows_fwd, _combine_rows_bwd)


def _sort_by_expert(routing: Routing, num_experts: int):
    """Assignments in expert order (inactive ones last, as expert E) and per-expert counts/starts."""
    n, k = routing.expert_NK.shape
    key_A = jnp.where(routing.active_N[:, None], routing.expert_NK, num_experts).reshape(n * k)
    order_A = jnp.argsort(key_A, stable=True).astype(jnp.int32)
    counts_E = jnp.bincount(key_A, length=num_experts + 1)[:num_experts].astype(jnp.int32)
    starts_E = (jnp.cumsum(counts_E) - counts_E).astype(jnp.int32)
    return key_A, order_A, counts_E, starts_E


def _inverse_permutation(order_A: jax.Array) -> jax.Array:
    return jnp.zeros_like(order_A).at[order_A].set(jnp.arange(order_A.shape[0], dtype=order_A.dtype))


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """C = ceil(capacity_factor * N K / E), at least MIN_CAPACITY, at most N (an expert gets <= N)."""
    wanted = math.ceil(capacity_factor * num_tokens * top_k / num_experts)
    return min(num_tokens, max(wanted, MIN_CAPACITY))


def capacity_layout(routing: Routing, num_experts: int, capacity: int) -> tuple[Layout, jax.Array]:
    """Row e*C + c holds the c-th assignment (in token order) of expert e; returns (layout, dropped_NK)."""
    n, k = routing.expert_NK.shape
    key_A, order_A, counts_E, starts_E = _sort_by_expert(routing, num_experts)
    rank_A = _inverse_permutation(order_A)
    key_safe_A = jnp.minimum(key_A, num_experts - 1)
    pos_A = rank_A - starts_E[key_safe_A]
    active_A = key_A < num_experts
    kept_A = active_A & (pos_A < capacity)
    empty = num_experts * capacity
    row_NK = jnp.where(kept_A, key_safe_A * capacity + pos_A, empty).reshape(n, k)

    slot_EC = jnp.arange(capacity, dtype=jnp.int32)[None, :]
    filled_EC = slot_EC < counts_E[:, None]
    sorted_index_EC = jnp.minimum(starts_E[:, None] + slot_EC, n * k - 1)
    assignment_R = jnp.where(filled_EC, order_A[sorted_index_EC], n * k).reshape(empty)
    token_R = jnp.where(assignment_R < n * k, assignment_R // k, n)
    dropped_NK = (active_A & ~kept_A).reshape(n, k)
    return Layout(token_R=token_R, assignment_R=assignment_R, row_NK=row_NK), dropped_NK


def sorted_layout(routing: Routing, num_experts: int) -> tuple[Layout, jax.Array]:
    """Row r holds the r-th assignment in expert order (inactive ones at the end); returns counts_E."""
    n, k = routing.expert_NK.shape
    key_A, order_A, counts_E, _ = _sort_by_expert(routing, num_experts)
    active_sorted_R = key_A[order_A] < num_experts
    assignment_R = jnp.where(active_sorted_R, order_A, n * k)
    token_R = jnp.where(active_sorted_R, order_A // k, n)
    rank_A = _inverse_permutation(order_A)
    row_NK = jnp.where(key_A < num_experts, rank_A, n * k).reshape(n, k)
    return Layout(token_R=token_R, assignment_R=assignment_R, row_NK=row_NK), counts_E


def _swiglu(gate, up):
    return jax.nn.silu(gate) * up


def reference(x_ND: jax.Array, routing: Routing, experts: ExpertWeights,
              capacity_factor: float) -> tuple[jax.Array, jax.Array]:
    del capacity_factor  # never drops
    num_experts = experts.w_gate_EDF.shape[0]
    y_ND = jnp.zeros(x_ND.shape, jnp.float32)
    for e in range(num_experts):
        h_NF = _swiglu(x_ND @ experts.w_gate_EDF[e], x_ND @ experts.w_up_EDF[e])
        out_ND = (h_NF @ experts.w_down_EFD[e]).astype(jnp.float32)
        chosen_NK = (routing.expert_NK == e) & routing.active_N[:, None]
        w_N = jnp.sum(jnp.where(chosen_NK, routing.weight_NK, 0.0), axis=1)
        y_ND = y_ND + w_N[:, None] * out_ND
    return y_ND, jnp.zeros(routing.expert_NK.shape, bool)


def capacity(x_ND: jax.Array, routing: Routing, experts: ExpertWeights,
             capacity_factor: float) -> tuple[jax.Array, jax.Array]:
    num_experts, d, _ = experts.w_gate_EDF.shape
    n, k = routing.expert_NK.shape
    c = expert_capacity(n, k, num_experts, capacity_factor)
    layout, dropped_NK = capacity_layout(routing, num_experts, c)
    x_ECD = gather_tokens(x_ND, layout).reshape(num_experts, c, d)
    h_ECF = _swiglu(jnp.einsum("ECD,EDF->ECF", x_ECD, experts.w_gate_EDF),
                    jnp.einsum("ECD,EDF->ECF", x_ECD, experts.w_up_EDF))
    out_ECD = jnp.einsum("ECF,EFD->ECD", h_ECF, experts.w_down_EFD)
    return combine_rows(out_ECD.reshape(num_experts * c, d), routing.weight_NK, layout), dropped_NK


def dropless(x_ND: jax.Array, routing: Routing, experts: ExpertWeights,
             capacity_factor: float) -> tuple[jax.Array, jax.Array]:
    del capacity_factor  # never drops
    num_experts = experts.w_gate_EDF.shape[0]
    layout, counts_E = sorted_layout(routing, num_experts)
    x_RD = gather_tokens(x_ND, layout)
    # Rows past sum(counts_E) (inactive assignments) belong to no group: ragged_dot gives zeros.
    h_RF = _swiglu(jax.lax.ragged_dot(x_RD, experts.w_gate_EDF, counts_E),
                   jax.lax.ragged_dot(x_RD, experts.w_up_EDF, counts_E))
    out_RD = jax.lax.ragged_dot(h_RF, experts.w_down_EFD, counts_E)
    return combine_rows(out_RD, routing.weight_NK, layout), jnp.zeros(routing.expert_NK.shape, bool)


DispatchFn = Callable[[jax.Array, Routing, ExpertWeights, float], tuple[jax.Array, jax.Array]]

DISPATCH: dict[str, DispatchFn] = {"reference": reference, "capacity": capacity, "dropless": dropless}


def resolve_dispatch(name: str) -> str:
    """The concrete strategy for a config value: `auto` is `capacity` on CPU, `dropless` elsewhere."""
    if name == "auto":
        return "capacity" if jax.default_backend() == "cpu" else "dropless"
    if name not in DISPATCH:
        raise ValueError(f"moe.dispatch: unknown strategy {name!r}; choose from auto, {', '.join(DISPATCH)}")
    return name
