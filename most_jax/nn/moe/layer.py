"""The MoE FFN layer: a router, routed experts (swiglu or ffn), optional always-on shared experts.

Family-neutral: it takes its width and an MoEConfig. MoST uses the MAMoE router with SwiGLU experts
and shared experts; U2++ (WeNet's MoEFFNLayer) the topk_softmax router with ffn experts.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.config import MoEConfig
from most_jax.nn.mlp import SwiGLU
from most_jax.nn.moe.experts import ExpertDropout, ExpertWeights
from most_jax.nn.moe.expert_parallel import select_dispatch
from most_jax.nn.moe.router import num_groups, route
from most_jax.nn.params import DTYPES, normal_param, zeros_param


class MoEStats(NamedTuple):
    """Per-layer routing losses and statistics (a pytree; the decoder stacks it over layers)."""

    aux_loss: jax.Array  # f32 []: balance loss times aux_loss_alpha (seq-level if seq_aux); 0 for topk_softmax
    z_loss: jax.Array  # f32 []: router z-loss times z_loss_alpha; 0 for topk_softmax
    balance: jax.Array  # f32 []: batch-level balance sum_e f_e P_e (no alpha, no gradient), for logging
    load_GE: jax.Array  # f32 [G, E]: routed assignments of group-g tokens to expert e (before drops)
    tokens_G: jax.Array  # f32 [G]: routed tokens per modality group
    dropped_G: jax.Array  # f32 [G]: assignments of group-g tokens dropped by expert capacity


class MoE(nnx.Module):
    """y = sum_k w_k Expert_{e_k}(x) + SharedExperts(x), routed by `cfg.router`.

    Parameters are stored [in, out]; the router `gate` is [D, E] (WeNet's bias-free gate Linear).
    swiglu experts: w_gate, w_up [E, D, F] and w_down [E, F, D] (MoST / DeepSeek-V2). ffn experts:
    w_1 [E, D, F], w_2 [E, F, D] and, with expert_bias, b_1 [E, F] and b_2 [E, D] (WeNet's
    experts.{e}.w_1 / w_2). `shared` is a SwiGLU of width num_shared_experts * F (None without).
    `dropout_rate` drops the routed experts' hidden units in training (WeNet's expert FFNs).
    """

    def __init__(self, d_model: int, cfg: MoEConfig, *, init_std: float, param_dtype: str, dtype: str,
                 rngs: nnx.Rngs, dropout_rate: float = 0.0):
        d, e, f = d_model, cfg.num_experts, cfg.expert_ffn_dim
        std, pdt = init_std, param_dtype
        if cfg.expert not in ("swiglu", "ffn"):
            raise ValueError(f"moe.expert: unknown expert function {cfg.expert!r}; choose swiglu or ffn")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"MoE dropout_rate must be in [0, 1), got {dropout_rate}")
        self.cfg = cfg
        self.dtype = DTYPES[dtype]
        self.dropout_rate = dropout_rate
        self.gate = normal_param(rngs, (d, e), ("embed", None), std, pdt)
        if cfg.expert == "swiglu":
            self.w_gate = normal_param(rngs, (e, d, f), ("expert", "embed", "mlp"), std, pdt)
            self.w_up = normal_param(rngs, (e, d, f), ("expert", "embed", "mlp"), std, pdt)
            self.w_down = normal_param(rngs, (e, f, d), ("expert", "mlp", "embed"), std, pdt)
        else:
            # Biases start at zero, like nn.mlp.Linear's.
            self.w_1 = normal_param(rngs, (e, d, f), ("expert", "embed", "mlp"), std, pdt)
            self.w_2 = normal_param(rngs, (e, f, d), ("expert", "mlp", "embed"), std, pdt)
            if cfg.expert_bias:
                self.b_1 = zeros_param((e, f), ("expert", "mlp"), pdt)
                self.b_2 = zeros_param((e, d), ("expert", "embed"), pdt)
        self.shared = (SwiGLU(d, cfg.num_shared_experts * f, rngs=rngs, std=std, param_dtype=pdt, dtype=dtype)
                       if cfg.num_shared_experts > 0 else None)

    def experts(self) -> ExpertWeights:
        """The routed experts' weights in the compute dtype."""
        def cast(name):
            return getattr(self, name)[...].astype(self.dtype) if hasattr(self, name) else None

        if self.cfg.expert == "swiglu":
            return ExpertWeights(cast("w_gate"), cast("w_up"), cast("w_down"))
        return ExpertWeights(cast("w_1"), None, cast("w_2"), b_in_EF=cast("b_1"), b_out_ED=cast("b_2"),
                             activation=self.cfg.activation)

    def __call__(self, x_BTD: jax.Array, valid_BT: jax.Array, modality_BT: jax.Array | None = None,
                 dropout_rng: jax.Array | None = None) -> tuple[jax.Array, MoEStats]:
        """(y [B, T, D] in the compute dtype, stats). Padding (valid false) gets no routed expert;
        modality_BT is needed only with modality groups (None: every valid token in one group);
        dropout_rng None is evaluation."""
        b, t, d = x_BTD.shape
        routing, rstats = route(x_BTD, modality_BT, valid_BT, self.gate[...], self.cfg)
        x_ND = x_BTD.reshape(b * t, d).astype(self.dtype)
        dispatch = select_dispatch(self.cfg, b * t)  # at trace time: depends on the context mesh
        drop = (ExpertDropout(dropout_rng, self.dropout_rate)
                if dropout_rng is not None and self.dropout_rate > 0.0 else None)
        routed_ND, dropped_NK = dispatch(x_ND, routing, self.experts(), self.cfg.capacity_factor, drop)
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
