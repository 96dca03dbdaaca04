"""The routed experts' function on stacked weights, in each row layout a dispatch path uses.

Two expert functions (`MoEConfig.expert`), weights stored [in, out] and stacked over E:

- `swiglu`: w_out(silu(x w_in) * (x w_up)), no biases (DeepSeek-V2 / MoST: w_in is `w_gate`,
  w_out is `w_down`).
- `ffn`: w_out(act(x w_in + b_in)) + b_out with act silu or relu and optional biases (WeNet's
  PositionwiseFeedForward: w_in is `w_1`, w_out is `w_2`).

`on_buffer` and `on_groups` compute an expert's output *without* its output bias b_out, on a
[E, C, D] buffer or on rows grouped by expert. The fast paths add sum_k w_k b_out[e_k] on the token
side instead (`output_bias`, one [N, E] x [E, D] matmul): no bias row travels through an
expert-parallel exchange, and where expert outputs are partial sums over the `tensor` axis
(reduced after the combine) the bias is still counted once. `one_expert` is a whole expert, bias
included, for the per-expert reference.

Dropout (`ExpertDropout`, training only) zeroes hidden units as WeNet's expert FFNs do,
w_out(dropout(act(.))). Its mask is a function of the flat assignment n*K+k (global over the
batch), so every dispatch path drops exactly the units the reference drops, wherever the row travels.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from most_jax.nn.ffn import ACTIVATIONS


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ExpertWeights:
    """The E experts' weights (a pytree; absent ones are None). `w_up_EDF` present means swiglu."""

    w_in_EDF: jax.Array
    w_up_EDF: jax.Array | None
    w_out_EFD: jax.Array
    b_in_EF: jax.Array | None = None
    b_out_ED: jax.Array | None = None
    activation: str = dataclasses.field(default="silu", metadata=dict(static=True))

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"expert activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")

    @property
    def num_experts(self) -> int:
        return self.w_in_EDF.shape[0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ExpertDropout:
    """Inverted dropout on the experts' hidden units, keyed by assignment (a pytree)."""

    rng: jax.Array
    rate: float = dataclasses.field(metadata=dict(static=True))

    def keep_scale(self, assignment_P: jax.Array, width: int) -> jax.Array:
        """f32 [P, F]: 1/(1-rate) where assignment_P[p]'s unit is kept, 0 where dropped."""
        def one(a):
            return jax.random.bernoulli(jax.random.fold_in(self.rng, a), 1.0 - self.rate, (width,))

        keep_PF = jax.vmap(one)(assignment_P)
        return jnp.where(keep_PF, 1.0 / (1.0 - self.rate), 0.0).astype(jnp.float32)


def _hidden(pre: jax.Array, up: jax.Array | None, w: ExpertWeights, scale: jax.Array | None) -> jax.Array:
    """act(pre), times the up projection for swiglu, times the dropout scale (any layout: [..., F])."""
    h = ACTIVATIONS[w.activation](pre)
    h = h if up is None else h * up
    return h if scale is None else (h * scale).astype(h.dtype)


def one_expert(x_ND: jax.Array, w: ExpertWeights, e: int, scale_NF: jax.Array | None = None) -> jax.Array:
    """Expert e on every row, output bias included (the reference's obviously right form)."""
    pre_NF = x_ND @ w.w_in_EDF[e]
    if w.b_in_EF is not None:
        pre_NF = pre_NF + w.b_in_EF[e][None, :]
    up_NF = None if w.w_up_EDF is None else x_ND @ w.w_up_EDF[e]
    out_ND = _hidden(pre_NF, up_NF, w, scale_NF) @ w.w_out_EFD[e]
    return out_ND if w.b_out_ED is None else out_ND + w.b_out_ED[e][None, :]


def on_buffer(x_ECD: jax.Array, w: ExpertWeights, scale_ECF: jax.Array | None = None) -> jax.Array:
    """out_ECD[e] = expert e (without b_out) on buffer rows x_ECD[e]: dense batched matmuls."""
    pre_ECF = jnp.einsum("ECD,EDF->ECF", x_ECD, w.w_in_EDF)
    if w.b_in_EF is not None:
        pre_ECF = pre_ECF + w.b_in_EF[:, None, :]
    up_ECF = None if w.w_up_EDF is None else jnp.einsum("ECD,EDF->ECF", x_ECD, w.w_up_EDF)
    return jnp.einsum("ECF,EFD->ECD", _hidden(pre_ECF, up_ECF, w, scale_ECF), w.w_out_EFD)


def on_groups(x_PD: jax.Array, w: ExpertWeights, group_sizes_E: jax.Array,
              scale_PF: jax.Array | None = None) -> jax.Array:
    """Rows grouped by expert (group_sizes_E[e] consecutive rows each, the rest in no group: zeros),
    each through its expert without b_out, with `jax.lax.ragged_dot`."""
    pre_PF = jax.lax.ragged_dot(x_PD, w.w_in_EDF, group_sizes_E)
    if w.b_in_EF is not None:
        # Row p's bias b_in[group of p] as a ragged_dot of a ones column: its transpose sums each
        # group's gradient rows, where a gather's would be a scatter-add.
        ones_P1 = jnp.ones((x_PD.shape[0], 1), x_PD.dtype)
        pre_PF = pre_PF + jax.lax.ragged_dot(ones_P1, w.b_in_EF[:, None, :], group_sizes_E)
    up_PF = None if w.w_up_EDF is None else jax.lax.ragged_dot(x_PD, w.w_up_EDF, group_sizes_E)
    return jax.lax.ragged_dot(_hidden(pre_PF, up_PF, w, scale_PF), w.w_out_EFD, group_sizes_E)


def output_bias(b_out_ED: jax.Array, expert_NK: jax.Array, weight_NK: jax.Array) -> jax.Array:
    """f32 [N, D]: sum_k weight_NK[n,k] * b_out_ED[expert_NK[n,k]], as a dense matmul (no gather)."""
    onehot_NKE = (expert_NK[:, :, None] == jnp.arange(b_out_ED.shape[0])[None, None, :]).astype(jnp.float32)
    weight_NE = jnp.einsum("NKE,NK->NE", onehot_NKE, weight_NK.astype(jnp.float32))
    return jnp.einsum("NE,ED->ND", weight_NE, b_out_ED.astype(jnp.float32))
