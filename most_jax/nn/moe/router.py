"""Routers: fp32 logits, top-k experts per token, routing weights, aux losses, statistics.

Pure functions on arrays. Two modes (`MoEConfig.router`):

- `mamoe` follows SPEC section 1 ("MAMoE gate"): softmax (or sigmoid) over ALL routed experts,
  out-of-group scores zeroed with no renormalisation, top-k over the masked scores, weights = the
  masked scores (divided by their sum only if norm_topk_prob) times routed_scaling_factor, as the
  config's `norm_topk_reading` reads the flag (MoEConfig.topk_weight_rule); balance
  loss and z-loss.
- `topk_softmax` is WeNet's MoEFFNLayer: top-k of the raw logits, weights = softmax over the k
  chosen logits, no auxiliary loss and no z-loss (both zero). `scoring`, `topk_method`,
  `norm_topk_prob` and `routed_scaling_factor` do not apply. Ties among equal logits go to the lower
  expert index (jax.lax.top_k); torch.topk's choice among ties is an implementation detail (on CPU
  it picks [1, 3] of [1, 2, 2, 2, 0]), so the two agree wherever the k-th and (k+1)-th logits differ.

Tokens that are padding (or, for mamoe, whose modality has no group) are "inactive": they get no
routed expert and are left out of every loss and statistic. The load statistics are the same in
both modes; `balance` (logged, no gradient) uses the mode's scores: the masked scores for mamoe,
the softmax over all E logits for topk_softmax.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from most_jax.config import MoEConfig

# DeepSeek's guard against a zero denominator in norm_topk_prob.
_NORM_EPS = 1e-20


class Routing(NamedTuple):
    """What dispatch needs: K experts per token, their weights (f32) and which tokens are routed.

    `fair_load_E` (modality groups with moe.group_capacity only): f32 [E], the assignments expert e would get if its group's
    tokens spread evenly over the group's experts (K x the group's routed tokens / its experts; 0
    for an expert in no group); capacity is sized from it. None: every routed token may use every
    expert, and the fair load is K x routed tokens / E for all."""

    expert_NK: jax.Array  # int32; meaningless where not active_N
    weight_NK: jax.Array  # float32; zero where not active_N
    active_N: jax.Array  # bool: valid token whose modality has a group
    fair_load_E: jax.Array | None = None


class RouterStats(NamedTuple):
    aux_loss: jax.Array  # f32 scalar, times aux_loss_alpha (seq-level or batch-level per seq_aux)
    z_loss: jax.Array  # f32 scalar, times z_loss_alpha
    balance: jax.Array  # f32 scalar, batch-level balance sum_e f_e P_e without alpha (for logging)
    load_GE: jax.Array  # f32 [G, E]: top-k assignments of group-g tokens to expert e
    tokens_G: jax.Array  # f32 [G]: routed tokens per group
    group_N: jax.Array  # int32 [N]: modality group of each token, G for none


def num_groups(cfg: MoEConfig) -> int:
    """G: modality groups in the statistics (1 when every token may use every expert)."""
    return max(len(cfg.modality_groups), 1)


def allowed_experts(cfg: MoEConfig) -> np.ndarray:
    """Static bool [G + 1, E]: row g marks group g's experts; the last row (no group) is all False."""
    table = np.zeros((num_groups(cfg) + 1, cfg.num_experts), bool)
    if not cfg.modality_groups:
        table[0] = True
    for g, group in enumerate(cfg.modality_groups):
        table[g, group.first_expert:group.first_expert + group.num_experts] = True
    return table


def token_groups(modality_N: jax.Array | None, valid_N: jax.Array, cfg: MoEConfig) -> jax.Array:
    """int32 [N]: each token's modality group in 0..G-1, or G for padding and ungrouped modalities.

    Without modality groups every valid token is in group 0 and `modality_N` may be None."""
    none = num_groups(cfg)
    if not cfg.modality_groups:
        return jnp.where(valid_N, 0, none).astype(jnp.int32)
    if modality_N is None:
        raise ValueError("MoE: moe.modality_groups route by modality, but modality_BT is None; pass each token's "
                         "modality id (or use no modality groups)")
    group_N = jnp.full(modality_N.shape, none, jnp.int32)
    for g, group in enumerate(cfg.modality_groups):
        group_N = jnp.where(modality_N == group.modality, g, group_N)
    return jnp.where(valid_N, group_N, none)


def router_logits(x_ND: jax.Array, gate_DE: jax.Array) -> jax.Array:
    # Routing decisions are discrete; bf16 logits would flip near-ties, so the router runs in f32.
    return jnp.dot(x_ND.astype(jnp.float32), gate_DE.astype(jnp.float32))


def expert_scores(logits_NE: jax.Array, scoring: str) -> jax.Array:
    if scoring == "softmax":
        return jax.nn.softmax(logits_NE, axis=-1)
    if scoring == "sigmoid":
        return jax.nn.sigmoid(logits_NE)
    raise ValueError(f"unknown scoring {scoring!r}")


def select_experts(masked_NE: jax.Array, allowed_NE: jax.Array, cfg: MoEConfig) -> jax.Array:
    """int32 [N, K]: top-k experts among the allowed ones (greedy or group-limited greedy).

    Disallowed experts compete with -inf rather than 0 so that an allowed expert whose score
    underflowed to 0 still wins over an out-of-group one.
    """
    choice_NE = jnp.where(allowed_NE, masked_NE, -jnp.inf)
    if cfg.topk_method == "group_limited_greedy":
        n, e = choice_NE.shape
        per = e // cfg.n_group
        # DeepSeek ranks routing groups by their best expert's score.
        group_score_NG = jnp.max(choice_NE.reshape(n, cfg.n_group, per), axis=-1)
        _, top_groups_NG = jax.lax.top_k(group_score_NG, cfg.topk_group)
        kept_NG = jnp.any(top_groups_NG[:, :, None] == jnp.arange(cfg.n_group)[None, None, :], axis=1)
        kept_NE = jnp.repeat(kept_NG, per, axis=1)
        choice_NE = jnp.where(kept_NE, choice_NE, -jnp.inf)
    elif cfg.topk_method != "greedy":
        raise ValueError(f"unknown topk_method {cfg.topk_method!r}")
    _, expert_NK = jax.lax.top_k(choice_NE, cfg.top_k)
    return expert_NK.astype(jnp.int32)


def routing_weights(masked_NE: jax.Array, expert_NK: jax.Array, cfg: MoEConfig) -> jax.Array:
    weight_NK = jnp.take_along_axis(masked_NE, expert_NK, axis=-1)
    divide, scale = cfg.topk_weight_rule()
    if divide:
        weight_NK = weight_NK / (jnp.sum(weight_NK, axis=-1, keepdims=True) + _NORM_EPS)
    return weight_NK * scale


def expert_counts(expert_NK: jax.Array, active_N: jax.Array, num_experts: int) -> jax.Array:
    """f32 [N, E]: how many of token n's top-k slots chose expert e (0 or 1; 0 if inactive)."""
    onehot_NKE = expert_NK[:, :, None] == jnp.arange(num_experts)[None, None, :]
    return jnp.sum(onehot_NKE, axis=1).astype(jnp.float32) * active_N[:, None].astype(jnp.float32)


def seq_balance_loss(masked_BTE: jax.Array, counts_BTE: jax.Array, active_BT: jax.Array, top_k: int) -> jax.Array:
    """MoST/DeepSeek sequence-level balance, without alpha: mean_b sum_e ce[b,e] P[b,e].

    ce[b,e] = (slots of row b on e) / (T_b K / E) and P[b,e] = mean over routed tokens of the
    masked score, with T_b the routed tokens of row b; rows without routed tokens are skipped.
    """
    num_experts = masked_BTE.shape[-1]
    active_f_BT = active_BT.astype(jnp.float32)
    tokens_B = jnp.sum(active_f_BT, axis=1)
    denom_B = jnp.maximum(tokens_B, 1.0)
    ce_BE = jnp.sum(counts_BTE, axis=1) * (num_experts / top_k) / denom_B[:, None]
    p_BE = jnp.einsum("BTE,BT->BE", masked_BTE, active_f_BT) / denom_B[:, None]
    per_row_B = jnp.sum(ce_BE * p_BE, axis=-1)
    rows = jnp.sum(tokens_B > 0)
    return jnp.sum(per_row_B) / jnp.maximum(rows, 1).astype(jnp.float32)


def batch_balance_loss(masked_NE: jax.Array, counts_NE: jax.Array, active_N: jax.Array, top_k: int) -> jax.Array:
    """Batch-level balance, without alpha: sum_e f_e P_e, f_e = E x fraction of routed slots on e."""
    num_experts = masked_NE.shape[-1]
    active_f_N = active_N.astype(jnp.float32)
    tokens = jnp.maximum(jnp.sum(active_f_N), 1.0)
    f_E = jnp.sum(counts_NE, axis=0) * (num_experts / top_k) / tokens
    p_E = jnp.einsum("NE,N->E", masked_NE, active_f_N) / tokens
    return jnp.sum(f_E * p_E)


def z_loss(logits_NE: jax.Array, active_N: jax.Array) -> jax.Array:
    """Mean over routed tokens of logsumexp(logits)^2, without alpha (ST-MoE router z-loss)."""
    active_f_N = active_N.astype(jnp.float32)
    lse_N = jax.nn.logsumexp(logits_NE, axis=-1)
    return jnp.sum(lse_N * lse_N * active_f_N) / jnp.maximum(jnp.sum(active_f_N), 1.0)


def _stats(group_N: jax.Array, counts_NE: jax.Array, aux: jax.Array, zl: jax.Array, balance: jax.Array,
           cfg: MoEConfig) -> RouterStats:
    member_NG = (group_N[:, None] == jnp.arange(num_groups(cfg))[None, :]).astype(jnp.float32)
    return RouterStats(
        aux_loss=aux,
        z_loss=zl,
        balance=jax.lax.stop_gradient(balance),
        load_GE=jnp.einsum("NG,NE->GE", member_NG, counts_NE),
        tokens_G=jnp.sum(member_NG, axis=0),
        group_N=group_N,
    )


def route(x_BTD: jax.Array, modality_BT: jax.Array | None, valid_BT: jax.Array, gate_DE: jax.Array,
          cfg: MoEConfig) -> tuple[Routing, RouterStats]:
    """The routing of cfg.router; modality_BT may be None when cfg has no modality groups."""
    if cfg.router == "topk_softmax":
        return _route_topk_softmax(x_BTD, valid_BT, gate_DE, cfg)
    if cfg.router != "mamoe":
        raise ValueError(f"moe.router: unknown router {cfg.router!r}; choose mamoe or topk_softmax")
    b, t, d = x_BTD.shape
    n, e, g = b * t, cfg.num_experts, num_groups(cfg)
    group_N = token_groups(None if modality_BT is None else modality_BT.reshape(n), valid_BT.reshape(n), cfg)
    active_N = group_N < g
    allowed_NE = jnp.asarray(allowed_experts(cfg))[group_N]

    logits_NE = router_logits(x_BTD.reshape(n, d), gate_DE)
    # MAMoE: scores over all experts, then out-of-group ones zeroed, not renormalised.
    masked_NE = jnp.where(allowed_NE, expert_scores(logits_NE, cfg.scoring), 0.0)
    expert_NK = select_experts(masked_NE, allowed_NE, cfg)
    weight_NK = jnp.where(active_N[:, None], routing_weights(masked_NE, expert_NK, cfg), 0.0)

    counts_NE = expert_counts(expert_NK, active_N, e)
    balance = batch_balance_loss(masked_NE, counts_NE, active_N, cfg.top_k)
    if cfg.aux_loss_alpha == 0.0:
        aux = jnp.zeros((), jnp.float32)
    elif cfg.seq_aux:
        aux = cfg.aux_loss_alpha * seq_balance_loss(masked_NE.reshape(b, t, e), counts_NE.reshape(b, t, e),
                                                    active_N.reshape(b, t), cfg.top_k)
    else:
        aux = cfg.aux_loss_alpha * balance
    zl = cfg.z_loss_alpha * z_loss(logits_NE, active_N) if cfg.z_loss_alpha else jnp.zeros((), jnp.float32)
    stats = _stats(group_N, counts_NE, aux, zl, balance, cfg)
    fair = None
    if cfg.modality_groups and cfg.group_capacity:
        member_GE = allowed_experts(cfg)[:g].astype(np.float32)
        share_GE = member_GE * cfg.top_k / member_GE.sum(axis=1, keepdims=True)
        fair = jnp.einsum("G,GE->E", stats.tokens_G, jnp.asarray(share_GE))
    return Routing(expert_NK=expert_NK, weight_NK=weight_NK, active_N=active_N, fair_load_E=fair), stats


def _route_topk_softmax(x_BTD: jax.Array, valid_BT: jax.Array, gate_DE: jax.Array,
                        cfg: MoEConfig) -> tuple[Routing, RouterStats]:
    """WeNet's MoEFFNLayer gate: top-k of the raw f32 logits, softmax over the k (in f32)."""
    b, t, d = x_BTD.shape
    n = b * t
    active_N = valid_BT.reshape(n)
    logits_NE = router_logits(x_BTD.reshape(n, d), gate_DE)
    top_NK, expert_NK = jax.lax.top_k(logits_NE, cfg.top_k)
    weight_NK = jnp.where(active_N[:, None], jax.nn.softmax(top_NK, axis=-1), 0.0)
    counts_NE = expert_counts(expert_NK, active_N, cfg.num_experts)
    balance = batch_balance_loss(jax.nn.softmax(logits_NE, axis=-1), counts_NE, active_N, cfg.top_k)
    zero = jnp.zeros((), jnp.float32)
    stats = _stats(token_groups(None, active_N, cfg), counts_NE, zero, zero, balance, cfg)
    routing = Routing(expert_NK=expert_NK.astype(jnp.int32), weight_NK=weight_NK, active_N=active_N)
    return routing, stats
