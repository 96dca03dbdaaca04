"""The MoST MoE FFN: MAMoE router, routed SwiGLU experts, always-on shared experts."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.config import ModelConfig
from most_jax.nn.mlp import SwiGLU
from most_jax.nn.moe.dispatch import ExpertWeights
from most_jax.nn.moe.expert_parallel import select_dispatch
from most_jax.nn.moe.router import num_groups, route
from most_jax.nn.params import DTYPES, normal_param


class MoEStats(NamedTuple):
    """Per-layer routing losses and statistics (a pytree; the decoder stacks it over layers)."""

    aux_loss: jax.Array  # f32 []: balance loss times aux_loss_alpha (seq-level if seq_aux)
    z_loss: jax.Array  # f32 []: router z-loss times z_loss_alpha
    balance: jax.Array  # f32 []: batch-level balance sum_e f_e P_e (no alpha, no gradient), for logging
    load_GE: jax.Array  # f32 [G, E]: routed assignments of group-g tokens to expert e (before drops)
    tokens_G: jax.Array  # f32 [G]: routed tokens per modality group
    dropped_G: jax.Array  # f32 [G]: assignments of group-g tokens dropped by expert capacity


class MoE(nnx.Module):
    """y = sum_k w_k Expert_k(x) + SharedExperts(x), routed per SPEC section 1 (MAMoE gate).

    Parameters are stored [in, out]: gate [D, E]; w_gate, w_up [E, D, F]; w_down [E, F, D];
    `shared` is a SwiGLU of width num_shared_experts * F (None without shared experts).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        moe = cfg.moe
        d, e, f = cfg.hidden_size, moe.num_experts, moe.expert_ffn_dim
        std, pdt = cfg.init_std, cfg.param_dtype
        self.cfg = moe
        self.dtype = DTYPES[cfg.dtype]
        self.gate = normal_param(rngs, (d, e), ("embed", None), std, pdt)
        self.w_gate = normal_param(rngs, (e, d, f), ("expert", "embed", "mlp"), std, pdt)
        self.w_up = normal_param(rngs, (e, d, f), ("expert", "embed", "mlp"), std, pdt)
        self.w_down = normal_param(rngs, (e, f, d), ("expert", "mlp", "embed"), std, pdt)
        self.shared = (SwiGLU(d, moe.num_shared_experts * f, rngs=rngs, std=std, param_dtype=pdt, dtype=cfg.dtype)
                       if moe.num_shared_experts > 0 else None)

    def __call__(self, x_BTD: jax.Array, modality_BT: jax.Array, valid_BT: jax.Array) -> tuple[jax.Array, MoEStats]:
        b, t, d = x_BTD.shape
        routing, rstats = route(x_BTD, modality_BT, valid_BT, self.gate[...], self.cfg)
        x_ND = x_BTD.reshape(b * t, d).astype(self.dtype)
        experts = ExpertWeights(self.w_gate[...].astype(self.dtype), self.w_up[...].astype(self.dtype),
                                self.w_down[...].astype(self.dtype))
        dispatch = select_dispatch(self.cfg, b * t)  # at trace time: depends on the context mesh
        routed_ND, dropped_NK = dispatch(x_ND, routing, experts, self.cfg.capacity_factor)
        y_ND = routed_ND.astype(self.dtype)
        if self.shared is not None:
            y_ND = y_ND + self.shared(x_ND)

        g = num_groups(self.cfg)
        member_NG = rstats.group_N[:, None] == jnp.arange(g)[None, :]
        dropped_G = jnp.einsum("NG,N->G", member_NG.astype(jnp.float32),
                               jnp.sum(dropped_NK, axis=1).astype(jnp.float32))
        stats = MoEStats(aux_loss=rstats.aux_loss, z_loss=rstats.z_loss, balance=rstats.balance,
                         load_GE=rstats.load_GE, tokens_G=rstats.tokens_G, dropped_G=dropped_G)
        return y_ND.reshape(b, t, d), stats
