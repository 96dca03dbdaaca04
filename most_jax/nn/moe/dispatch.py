"""Dispatch/combine strategies: route token rows to experts, run the experts, weight and sum.

Every strategy has the signature `(x_ND, routing, experts, capacity_factor, dropout=None) ->
(y_ND f32, dropped_NK bool)` and computes y[n] = sum_k weight[n,k] * Expert_{expert[n,k]}(x[n]) over the
active, non-dropped assignments, for either expert function (experts.py: swiglu or ffn), with
the same hidden-unit dropout mask per assignment (experts.ExpertDropout) on every path:

- `reference`: loop over experts, each applied to every token; obviously right, E times the work.
- `capacity`: fixed buffers of C rows per expert (C from capacity_factor); assignments beyond an
  expert's C are dropped in token order. Dense batched matmuls, the fast path on CPU. Under
  modality groups (MAMoE) a modality's tokens share only its group's experts, so a buffer split
  evenly over all experts overflows the experts of the larger modality. There, each expert's rows
  fill whole blocks of one buffer of capacity_factor x N x K rows (plus rounding), each block a
  dense matmul with its expert's weights: nothing is dropped while the routed assignments fit it
  (always at a factor >= 1), and past that expert e keeps C_e = capacity_factor x its fair share
  of its own group's tokens (Routing.fair_load_E).
- `dropless`: assignments sorted by expert and multiplied with `jax.lax.ragged_dot`; nothing dropped.
  Fast where ragged_dot is (TPU/GPU); about 12x slower than a dense matmul on XLA:CPU.
- `blocked`: for few tokens (batch-1 decoding): assignments sorted by expert, each expert's run cut
  into blocks of B rows, a loop over the blocks in use (expert weights read once per block);
  nothing dropped, and the work is the assignments plus at most B - 1 padding rows per expert, where
  `capacity` needs C >= N rows per expert to be exact on a few tokens.

The fast paths move rows with gathers only. Their custom VJPs express each transpose as another
gather through the inverse index map, because XLA:CPU scatter-adds of [N, D] rows are slow
(they cost more than the expert matmuls at benchmark size). An ffn expert's output bias is added
on the token side (experts.output_bias).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from most_jax.nn.moe.experts import ExpertDropout, ExpertWeights, on_buffer, on_groups, one_expert, output_bias
from most_jax.nn.moe.router import Routing

# Below this many rows a matmul is bound by reading the expert weights, so a larger buffer is free;
# the floor also keeps small decode batches (<= 16 tokens) from dropping anything.
MIN_CAPACITY = 16
# Rows per block of the group-capacity buffer (at most; fewer when the uniform capacity is small).
BLOCK_ROWS = 256


class Layout(NamedTuple):
    """Where assignments sit in a buffer of P rows; index N, N*K or P marks 'nothing'."""

    token_P: jax.Array  # int32 [P]: token copied into row p (N: an empty row)
    assignment_P: jax.Array  # int32 [P]: flat assignment n*K+k held by row p (N*K: empty)
    row_NK: jax.Array  # int32 [N, K]: buffer row of assignment (n, k) (P: inactive or dropped)


def _append_zero_row(a: jax.Array) -> jax.Array:
    """[rows, D] -> [rows + 1, D]: the extra zero row is what index 'nothing' reads."""
    return jnp.concatenate([a, jnp.zeros((1, a.shape[1]), a.dtype)], axis=0)


@jax.custom_vjp
def gather_tokens(x_ND: jax.Array, layout: Layout) -> jax.Array:
    """x_PD[p] = x_ND[token_P[p]] (zeros for empty rows)."""
    return _append_zero_row(x_ND)[layout.token_P]


def _gather_tokens_fwd(x_ND, layout):
    return gather_tokens(x_ND, layout), layout


def _gather_tokens_bwd(layout, g_PD):
    # Token n was copied to rows row_NK[n, :]; its gradient is their sum (a gather, no scatter).
    g_ND = jnp.sum(_append_zero_row(g_PD)[layout.row_NK], axis=1)
    return g_ND, None


gather_tokens.defvjp(_gather_tokens_fwd, _gather_tokens_bwd)


@jax.custom_vjp
def combine_rows(out_PD: jax.Array, weight_NK: jax.Array, layout: Layout) -> jax.Array:
    """y_ND[n] = sum_k weight_NK[n,k] * out_PD[row_NK[n,k]], accumulated in float32."""
    rows_NKD = _append_zero_row(out_PD)[layout.row_NK].astype(jnp.float32)
    return jnp.einsum("NKD,NK->ND", rows_NKD, weight_NK)


def _combine_rows_fwd(out_PD, weight_NK, layout):
    return combine_rows(out_PD, weight_NK, layout), (out_PD, weight_NK, layout)


def _combine_rows_bwd(res, g_ND):
    out_PD, weight_NK, layout = res
    weight_P = jnp.concatenate([weight_NK.reshape(-1), jnp.zeros((1,), weight_NK.dtype)])[layout.assignment_P]
    g_out_PD = (_append_zero_row(g_ND)[layout.token_P] * weight_P[:, None]).astype(out_PD.dtype)
    rows_NKD = _append_zero_row(out_PD)[layout.row_NK].astype(jnp.float32)
    g_weight_NK = jnp.einsum("NKD,ND->NK", rows_NKD, g_ND)
    return g_out_PD, g_weight_NK, None


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
    assignment_P = jnp.where(filled_EC, order_A[sorted_index_EC], n * k).reshape(empty)
    token_P = jnp.where(assignment_P < n * k, assignment_P // k, n)
    dropped_NK = (active_A & ~kept_A).reshape(n, k)
    return Layout(token_P=token_P, assignment_P=assignment_P, row_NK=row_NK), dropped_NK


def sorted_layout(routing: Routing, num_experts: int) -> tuple[Layout, jax.Array]:
    """Row p holds the p-th assignment in expert order (inactive ones at the end); returns counts_E."""
    n, k = routing.expert_NK.shape
    key_A, order_A, counts_E, _ = _sort_by_expert(routing, num_experts)
    active_sorted_P = key_A[order_A] < num_experts
    assignment_P = jnp.where(active_sorted_P, order_A, n * k)
    token_P = jnp.where(active_sorted_P, order_A // k, n)
    rank_A = _inverse_permutation(order_A)
    row_NK = jnp.where(key_A < num_experts, rank_A, n * k).reshape(n, k)
    return Layout(token_P=token_P, assignment_P=assignment_P, row_NK=row_NK), counts_E


def with_output_bias(y_ND: jax.Array, routing: Routing, experts: ExpertWeights, dropped_NK: jax.Array) -> jax.Array:
    """Adds the ffn experts' output bias of the routed, non-dropped assignments (no-op without one)."""
    if experts.b_out_ED is None:
        return y_ND
    # Inactive tokens' weights are zero already; masking them too keeps their weight gradient zero.
    kept_NK = jnp.where(dropped_NK | ~routing.active_N[:, None], 0.0, routing.weight_NK)
    return y_ND + output_bias(experts.b_out_ED, routing.expert_NK, kept_NK)


def dropout_scale(dropout: ExpertDropout | None, assignment_P: jax.Array, experts: ExpertWeights) -> jax.Array | None:
    """f32 [P, F] hidden-unit scales of the assignments held by P rows (None without dropout)."""
    return None if dropout is None else dropout.keep_scale(assignment_P, experts.w_in_EDF.shape[2])


def reference(x_ND: jax.Array, routing: Routing, experts: ExpertWeights, capacity_factor: float,
              dropout: ExpertDropout | None = None) -> tuple[jax.Array, jax.Array]:
    del capacity_factor  # never drops
    n, k = routing.expert_NK.shape
    scale_A = dropout_scale(dropout, jnp.arange(n * k, dtype=jnp.int32), experts)
    y_ND = jnp.zeros(x_ND.shape, jnp.float32)
    for e in range(experts.num_experts):
        chosen_NK = (routing.expert_NK == e) & routing.active_N[:, None]
        # A token's K experts are distinct: the scales of its one assignment to e (zeros if none).
        scale_NF = None if scale_A is None else jnp.einsum(
            "NK,NKF->NF", chosen_NK.astype(jnp.float32), scale_A.reshape(n, k, -1))
        out_ND = one_expert(x_ND, experts, e, scale_NF).astype(jnp.float32)
        w_N = jnp.sum(jnp.where(chosen_NK, routing.weight_NK, 0.0), axis=1)
        y_ND = y_ND + w_N[:, None] * out_ND
    return y_ND, jnp.zeros(routing.expert_NK.shape, bool)


def fair_capacities(fair_load_E: jax.Array, num_tokens: int, capacity_factor: float) -> jax.Array:
    """int32 [E]: C_e = ceil(capacity_factor x fair load), at most N. The fair load is a float32
    quotient (e.g. 2 x 45 / 3 = 30.000002): shrunk by a millionth before the ceiling, a whole number
    stays itself. No MIN_CAPACITY floor: a small batch never overflows the buffer at a factor >= 1."""
    wanted_E = jnp.ceil(capacity_factor * fair_load_E * (1.0 - 1e-6)).astype(jnp.int32)
    return jnp.minimum(num_tokens, wanted_E)


def blocked_capacity_shape(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> tuple[int, int]:
    """(blocks, rows per block) of the group-capacity buffer: room for every expert's kept rows
    rounded up to whole blocks, whatever the split of the tokens between the groups. The kept rows
    add up to at most capacity_factor N K + E (each C_e rounds up once; the fair loads add up to at
    most N K), and each expert's run wastes less than a block. Blocks are a quarter of the uniform
    capacity, 8 to BLOCK_ROWS rows."""
    quarter = expert_capacity(num_tokens, top_k, num_experts, capacity_factor) / 4
    block = min(BLOCK_ROWS, max(8, math.ceil(quarter / 8) * 8))
    rows = math.ceil(capacity_factor * num_tokens * top_k) + num_experts
    return -(-rows // block) + num_experts + 1, block  # + 1: slack for float rounding in C_e


def group_capacity_layout(routing: Routing, num_experts: int, capacity_factor: float, capacity_E: jax.Array,
                          num_blocks: int, block: int) -> tuple[Layout, jax.Array, jax.Array]:
    """Each expert's kept assignments (token order) in its own run of whole blocks of `block` rows,
    runs in expert order: all of them when the routed assignments fit capacity_factor x N x K
    rows, else each expert's first C_e. Returns (layout, dropped_NK, int32 [num_blocks] expert of
    each block; blocks past the runs belong to the last expert and hold no row)."""
    n, k = routing.expert_NK.shape
    key_A, order_A, counts_E, starts_E = _sort_by_expert(routing, num_experts)
    rank_A = _inverse_permutation(order_A)
    key_safe_A = jnp.minimum(key_A, num_experts - 1)
    pos_A = rank_A - starts_E[key_safe_A]
    # Every assignment is kept while they all fit the rows the capacity factor pays for (always, at
    # a factor >= 1); past that, each expert keeps its first C_e.
    budget = math.ceil(capacity_factor * n * k)
    kept_E = jnp.where(jnp.sum(counts_E) <= budget, counts_E, jnp.minimum(counts_E, capacity_E))
    blocks_E = -(-kept_E // block)
    first_block_E = jnp.cumsum(blocks_E) - blocks_E
    active_A = key_A < num_experts
    kept_A = active_A & (pos_A < kept_E[key_safe_A])
    rows = num_blocks * block
    row_NK = jnp.where(kept_A, first_block_E[key_safe_A] * block + pos_A, rows).reshape(n, k)

    block_expert_B = jnp.minimum(jnp.searchsorted(jnp.cumsum(blocks_E), jnp.arange(num_blocks), side="right"),
                                 num_experts - 1).astype(jnp.int32)
    expert_P = jnp.repeat(block_expert_B, block, total_repeat_length=rows)
    local_P = jnp.arange(rows, dtype=jnp.int32) - first_block_E[expert_P] * block
    filled_P = (local_P >= 0) & (local_P < kept_E[expert_P])
    sorted_index_P = jnp.clip(starts_E[expert_P] + local_P, 0, n * k - 1)
    assignment_P = jnp.where(filled_P, order_A[sorted_index_P], n * k)
    token_P = jnp.where(assignment_P < n * k, assignment_P // k, n)
    dropped_NK = (active_A & ~kept_A).reshape(n, k)
    return Layout(token_P=token_P, assignment_P=assignment_P, row_NK=row_NK), dropped_NK, block_expert_B


def _group_capacity(x_ND: jax.Array, routing: Routing, experts: ExpertWeights, capacity_factor: float,
                    dropout: ExpertDropout | None) -> tuple[jax.Array, jax.Array]:
    """`capacity` under modality groups: the assignments in blocks of rows, each block a dense
    matmul with its expert's weights; when they overflow the factor's rows, C_e per expert from the
    fair load of its group."""
    num_experts, d = experts.num_experts, x_ND.shape[1]
    n, k = routing.expert_NK.shape
    num_blocks, block = blocked_capacity_shape(n, k, num_experts, capacity_factor)
    capacity_E = fair_capacities(routing.fair_load_E, n, capacity_factor)
    layout, dropped_NK, block_expert_B = group_capacity_layout(routing, num_experts, capacity_factor, capacity_E,
                                                               num_blocks, block)
    x_BCD = gather_tokens(x_ND, layout).reshape(num_blocks, block, d)
    # Block b's weights as a one-hot matmul: its transpose sums the blocks' gradients per expert (a
    # gather's would be a scatter-add, slow on XLA:CPU).
    onehot_BE = (block_expert_B[:, None] == jnp.arange(num_experts)[None, :]).astype(experts.w_in_EDF.dtype)
    per_block = jax.tree.map(lambda w: jnp.einsum("BE,E...->B...", onehot_BE, w), experts)
    scale_PF = dropout_scale(dropout, layout.assignment_P, experts)
    out_BCD = on_buffer(x_BCD, per_block, None if scale_PF is None else scale_PF.reshape(num_blocks, block, -1))
    y_ND = combine_rows(out_BCD.reshape(num_blocks * block, d), routing.weight_NK, layout)
    return with_output_bias(y_ND, routing, experts, dropped_NK), dropped_NK


def capacity(x_ND: jax.Array, routing: Routing, experts: ExpertWeights, capacity_factor: float,
             dropout: ExpertDropout | None = None) -> tuple[jax.Array, jax.Array]:
    if routing.fair_load_E is not None:
        return _group_capacity(x_ND, routing, experts, capacity_factor, dropout)
    num_experts, d = experts.num_experts, x_ND.shape[1]
    n, k = routing.expert_NK.shape
    c = expert_capacity(n, k, num_experts, capacity_factor)
    layout, dropped_NK = capacity_layout(routing, num_experts, c)
    x_ECD = gather_tokens(x_ND, layout).reshape(num_experts, c, d)
    scale_PF = dropout_scale(dropout, layout.assignment_P, experts)
    out_ECD = on_buffer(x_ECD, experts, None if scale_PF is None else scale_PF.reshape(num_experts, c, -1))
    y_ND = combine_rows(out_ECD.reshape(num_experts * c, d), routing.weight_NK, layout)
    return with_output_bias(y_ND, routing, experts, dropped_NK), dropped_NK


def dropless(x_ND: jax.Array, routing: Routing, experts: ExpertWeights, capacity_factor: float,
             dropout: ExpertDropout | None = None) -> tuple[jax.Array, jax.Array]:
    del capacity_factor  # never drops
    layout, counts_E = sorted_layout(routing, experts.num_experts)
    # Rows past sum(counts_E) (inactive assignments) belong to no group: ragged_dot gives zeros.
    out_PD = on_groups(gather_tokens(x_ND, layout), experts, counts_E,
                       dropout_scale(dropout, layout.assignment_P, experts))
    dropped_NK = jnp.zeros(routing.expert_NK.shape, bool)
    return with_output_bias(combine_rows(out_PD, routing.weight_NK, layout), routing, experts, dropped_NK), dropped_NK


def block_rows(num_assignments: int, num_experts: int) -> int:
    """B for `blocked`: the power of two >= the mean assignments per expert, within [16, 128]
    (XLA:CPU's loop costs make smaller blocks slower at batch 1)."""
    mean = max(1, math.ceil(num_assignments / num_experts))
    return min(128, max(16, 1 << (mean - 1).bit_length()))


def blocked(x_ND: jax.Array, routing: Routing, experts: ExpertWeights, capacity_factor: float,
            dropout: ExpertDropout | None = None) -> tuple[jax.Array, jax.Array]:
    del capacity_factor  # never drops
    n, k = routing.expert_NK.shape
    num_experts, d, a = experts.num_experts, x_ND.shape[1], n * k
    b = block_rows(a, num_experts)
    key_A, order_A, counts_E, starts_E = _sort_by_expert(routing, num_experts)
    blocks_E = (counts_E + b - 1) // b
    first_block_E = jnp.cumsum(blocks_E) - blocks_E
    max_blocks = math.ceil(a / b) + num_experts  # static bound on sum(blocks_E)
    # Block j: expert expert_J[j], sorted rows start_J[j] .. start_J[j] + b - 1 (those < end_J[j] real).
    j_J = jnp.arange(max_blocks, dtype=jnp.int32)
    expert_J = jnp.minimum(jnp.searchsorted(jnp.cumsum(blocks_E), j_J, side="right"), num_experts - 1)
    start_J = starts_E[expert_J] + (j_J - first_block_E[expert_J]) * b
    end_J = starts_E[expert_J] + counts_E[expert_J]
    used = jnp.sum(blocks_E)
    order_pad = jnp.concatenate([order_A, jnp.full((b,), a, jnp.int32)])
    x_pad = _append_zero_row(x_ND)

    def one_block(j, out_JBD):
        e = expert_J[j]
        assignment_B = jnp.where(start_J[j] + jnp.arange(b) < end_J[j],
                                 jax.lax.dynamic_slice(order_pad, (start_J[j],), (b,)), a)
        x_1BD = x_pad[jnp.where(assignment_B < a, assignment_B // k, n)][None]
        one = jax.tree.map(lambda w: None if w is None else jax.lax.dynamic_slice_in_dim(w, e, 1), experts)
        scale_PF = dropout_scale(dropout, assignment_B, experts)
        out_1BD = on_buffer(x_1BD, one, None if scale_PF is None else scale_PF[None])
        return jax.lax.dynamic_update_slice(out_JBD, out_1BD.astype(out_JBD.dtype), (j, 0, 0))

    def maybe_block(j, out_JBD):
        return jax.lax.cond(j < used, one_block, lambda j, out: out, j, out_JBD)

    # A static trip count (a scan) keeps the loop reverse-differentiable; unused blocks are skipped.
    out_JBD = jax.lax.fori_loop(0, max_blocks, maybe_block, jnp.zeros((max_blocks, b, d), x_ND.dtype))
    rank_A = _inverse_permutation(order_A)
    key_safe_A = jnp.minimum(key_A, num_experts - 1)
    pos_A = rank_A - starts_E[key_safe_A]
    row_A = jnp.where(key_A < num_experts, (first_block_E[key_safe_A] + pos_A // b) * b + pos_A % b, max_blocks * b)
    rows_NKD = _append_zero_row(out_JBD.reshape(max_blocks * b, d))[row_A.reshape(n, k)].astype(jnp.float32)
    y_ND = jnp.einsum("NKD,NK->ND", rows_NKD, routing.weight_NK)
    dropped_NK = jnp.zeros((n, k), bool)
    return with_output_bias(y_ND, routing, experts, dropped_NK), dropped_NK


DispatchFn = Callable[..., tuple[jax.Array, jax.Array]]  # (x_ND, routing, experts, capacity_factor, dropout=None)

DISPATCH: dict[str, DispatchFn] = {"reference": reference, "capacity": capacity, "dropless": dropless,
                                   "blocked": blocked}


def resolve_dispatch(name: str) -> str:
    """The concrete strategy for a config value: `auto` is `capacity` on CPU, `dropless` elsewhere."""
    if name == "auto":
        return "capacity" if jax.default_backend() == "cpu" else "dropless"
    if name not in DISPATCH:
        raise ValueError(f"moe.dispatch: unknown strategy {name!r}; choose from auto, {', '.join(DISPATCH)}")
    return name
