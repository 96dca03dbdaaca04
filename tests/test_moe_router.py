"""Routers against NumPy transcriptions (float64, loops over tokens): MAMoE of SPEC section 1 and
WeNet's MoEFFNLayer gate (topk_softmax)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from most_jax.config import ModalityGroup, MoEConfig
from most_jax.nn.moe.router import route

B, T, D = 3, 11, 13

THREE_GROUPS = (ModalityGroup("text", 0, 0, 3), ModalityGroup("audio", 1, 3, 4), ModalityGroup("image", 2, 7, 2))
ALIGNED_GROUPS = (ModalityGroup("text", 0, 0, 6), ModalityGroup("audio", 1, 6, 6))

CASES = {
    "groups_softmax": MoEConfig(num_experts=9, top_k=2, modality_groups=THREE_GROUPS),
    "groups_sigmoid_norm_scaled": MoEConfig(num_experts=9, top_k=2, modality_groups=THREE_GROUPS, scoring="sigmoid",
                                            norm_topk_prob=True, routed_scaling_factor=2.5, seq_aux=False),
    "groups_norm_scaled_zloss": MoEConfig(num_experts=9, top_k=2, modality_groups=THREE_GROUPS, norm_topk_prob=True,
                                          routed_scaling_factor=1.7, z_loss_alpha=0.01),
    "norm_divide_or_scale": MoEConfig(num_experts=7, top_k=3, norm_topk_prob=True, routed_scaling_factor=1.7,
                                      norm_topk_reading="divide_or_scale"),
    "norm_scale_only": MoEConfig(num_experts=7, top_k=3, norm_topk_prob=True, routed_scaling_factor=1.7,
                                 norm_topk_reading="scale_only"),
    "unnormed_divide_or_scale": MoEConfig(num_experts=7, top_k=3, routed_scaling_factor=1.7,
                                          norm_topk_reading="divide_or_scale"),
    "no_groups_greedy": MoEConfig(num_experts=7, top_k=3, aux_loss_alpha=0.01),
    "no_groups_group_limited": MoEConfig(num_experts=12, top_k=3, topk_method="group_limited_greedy", n_group=4,
                                         topk_group=2, seq_aux=False),
    "groups_group_limited": MoEConfig(num_experts=12, top_k=3, topk_method="group_limited_greedy", n_group=6,
                                      topk_group=2, modality_groups=ALIGNED_GROUPS),
}


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    # Modalities 0..2 have groups in THREE_GROUPS; 3 and -1 never do.
    modality = rng.choice([0, 1, 2, 3, -1], size=(B, T), p=[0.35, 0.35, 0.1, 0.1, 0.1]).astype(np.int32)
    valid = rng.random((B, T)) > 0.15
    valid[2, :] = False  # a row of pure padding must not disturb the per-row means
    return x, modality, valid


def _gate(num_experts, seed=1):
    return (np.random.default_rng(seed).normal(size=(D, num_experts)) * 0.7).astype(np.float32)


def numpy_route(x, modality, valid, gate, cfg: MoEConfig):
    """SPEC section 1, token by token. Returns dense weights [N, E], active [N], aux, balance, z, load, tokens."""
    n_tok, e, k = B * T, cfg.num_experts, cfg.top_k
    groups = cfg.modality_groups or (None,)
    x = x.reshape(n_tok, D).astype(np.float64)
    logits = x @ gate.astype(np.float64)
    if cfg.scoring == "softmax":
        scores = np.exp(logits - logits.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
    else:
        scores = 1.0 / (1.0 + np.exp(-logits))
    dense = np.zeros((n_tok, e))
    masked = np.zeros((n_tok, e))
    group_of = np.full(n_tok, -1)
    for n in range(n_tok):
        if not valid.reshape(-1)[n]:
            continue
        if cfg.modality_groups:
            hits = [g for g, grp in enumerate(groups) if grp.modality == modality.reshape(-1)[n]]
            if not hits:
                continue
            grp = groups[hits[0]]
            allowed = np.zeros(e, bool)
            allowed[grp.first_expert:grp.first_expert + grp.num_experts] = True
            group_of[n] = hits[0]
        else:
            allowed = np.ones(e, bool)
            group_of[n] = 0
        s = np.where(allowed, scores[n], 0.0)  # zeroed, not renormalised
        masked[n] = s
        pick_from = s.copy()
        if cfg.topk_method == "group_limited_greedy":
            per = e // cfg.n_group
            group_best = s.reshape(cfg.n_group, per).max(-1)
            keep = np.argsort(-group_best, kind="stable")[:cfg.topk_group]
            keep_mask = np.zeros(e, bool)
            for gi in keep:
                keep_mask[gi * per:(gi + 1) * per] = True
            pick_from = np.where(keep_mask, s, 0.0)
        chosen = np.argsort(-pick_from, kind="stable")[:k]
        w = s[chosen]
        # SPEC section 1's three readings of norm_topk_prob, spelled as each implementation does.
        if cfg.norm_topk_reading == "divide_then_scale":  # MoST / DeepSeek-V3
            if cfg.norm_topk_prob:
                w = w / (w.sum() + 1e-20)
            w = w * cfg.routed_scaling_factor
        elif cfg.norm_topk_reading == "divide_or_scale":  # DeepSeek-V2 remote code
            if cfg.norm_topk_prob:
                w = w / (w.sum() + 1e-20)
            else:
                w = w * cfg.routed_scaling_factor
        else:  # transformers' deepseek_v2
            assert cfg.norm_topk_reading == "scale_only"
            w = w * cfg.routed_scaling_factor
        dense[n, chosen] = w

    active = group_of >= 0
    slots = (dense != 0).astype(np.float64)
    # Seq-level: per row, over the routed tokens only.
    per_row = []
    for b in range(B):
        rows = slice(b * T, (b + 1) * T)
        t_b = active[rows].sum()
        if t_b == 0:
            continue
        ce = slots[rows].sum(0) / (t_b * k / e)
        p = masked[rows][active[rows]].sum(0) / t_b
        per_row.append((ce * p).sum())
    seq = np.mean(per_row)
    n_act = active.sum()
    f = slots[active].sum(0) * e / (n_act * k)
    balance = (f * masked[active].mean(0)).sum()
    aux = cfg.aux_loss_alpha * (seq if cfg.seq_aux else balance)
    lse = np.log(np.exp(logits).sum(-1))
    z = cfg.z_loss_alpha * np.mean(lse[active] ** 2)
    load = np.zeros((len(groups), e))
    tokens = np.zeros(len(groups))
    for n in np.nonzero(active)[0]:
        load[group_of[n]] += slots[n]
        tokens[group_of[n]] += 1
    return dense, active, aux, balance, z, load, tokens


def _jax_route(x, modality, valid, gate, cfg):
    modality = None if modality is None else jnp.asarray(modality)
    routing, stats = jax.jit(route, static_argnums=4)(jnp.asarray(x), modality, jnp.asarray(valid),
                                                       jnp.asarray(gate), cfg)
    n_tok = B * T
    dense = np.zeros((n_tok, cfg.num_experts))
    expert, weight = np.asarray(routing.expert_NK), np.asarray(routing.weight_NK)
    for n in range(n_tok):
        for j in range(cfg.top_k):
            dense[n, expert[n, j]] += weight[n, j]
    return routing, stats, dense


@pytest.mark.parametrize("name", sorted(CASES))
def test_router_matches_numpy_spec(name):
    cfg = CASES[name]
    x, modality, valid = _inputs()
    gate = _gate(cfg.num_experts)
    dense_ref, active_ref, aux_ref, balance_ref, z_ref, load_ref, tokens_ref = numpy_route(x, modality, valid, gate,
                                                                                           cfg)
    routing, stats, dense = _jax_route(x, modality, valid, gate, cfg)

    np.testing.assert_array_equal(np.asarray(routing.active_N), active_ref)
    np.testing.assert_allclose(dense, dense_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(stats.aux_loss), aux_ref, rtol=1e-5)
    np.testing.assert_allclose(float(stats.balance), balance_ref, rtol=1e-5)
    np.testing.assert_allclose(float(stats.z_loss), z_ref, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(stats.load_GE), load_ref)
    np.testing.assert_array_equal(np.asarray(stats.tokens_G), tokens_ref)


def test_experts_only_from_token_group_and_weights_are_masked_softmax():
    cfg = CASES["groups_softmax"]
    x, modality, valid = _inputs(seed=3)
    gate = _gate(cfg.num_experts, seed=4)
    routing, _, dense = _jax_route(x, modality, valid, gate, cfg)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(x.reshape(-1, D)) @ jnp.asarray(gate), axis=-1))
    for n, (m, ok) in enumerate(zip(modality.reshape(-1), valid.reshape(-1))):
        groups = [g for g in THREE_GROUPS if g.modality == m]
        if not ok or not groups:
            assert not dense[n].any(), f"token {n} (modality {m}, valid {ok}) got routed experts"
            continue
        lo, hi = groups[0].first_expert, groups[0].first_expert + groups[0].num_experts
        chosen = np.nonzero(dense[n])[0]
        assert len(chosen) == cfg.top_k and np.all((chosen >= lo) & (chosen < hi)), (n, chosen, lo, hi)
        # Weights are the softmax over ALL experts, not renormalised inside the group.
        np.testing.assert_allclose(dense[n, chosen], probs[n, chosen], rtol=1e-6)
        assert dense[n].sum() < probs[n, lo:hi].sum() + 1e-6 < 1.0 + 1e-6


@pytest.mark.parametrize("name", ["groups_softmax", "no_groups_greedy"])
def test_inactive_tokens_do_not_touch_losses_or_statistics(name):
    cfg = dataclasses.replace(CASES[name], z_loss_alpha=0.01)
    x, modality, valid = _inputs(seed=5)
    gate = _gate(cfg.num_experts)
    routing, stats, _ = _jax_route(x, modality, valid, gate, cfg)
    inactive = ~np.asarray(routing.active_N).reshape(B, T)
    assert inactive.any() and not inactive.all()
    x2 = np.where(inactive[:, :, None], x * 10.0 + 3.0, x)
    routing2, stats2, _ = _jax_route(x2, modality, valid, gate, cfg)
    for field in ("aux_loss", "z_loss", "balance", "load_GE", "tokens_G"):
        np.testing.assert_allclose(np.asarray(getattr(stats2, field)), np.asarray(getattr(stats, field)), rtol=1e-6,
                                   err_msg=field)
    np.testing.assert_array_equal(np.asarray(routing2.weight_NK)[inactive.reshape(-1)], 0.0)


def test_without_groups_modality_is_ignored():
    cfg = CASES["no_groups_greedy"]
    x, modality, valid = _inputs(seed=6)
    gate = _gate(cfg.num_experts)
    routing, stats, dense = _jax_route(x, modality, valid, gate, cfg)
    _, stats2, dense2 = _jax_route(x, np.full_like(modality, -1), valid, gate, cfg)
    np.testing.assert_array_equal(dense, dense2)
    np.testing.assert_array_equal(dense, _jax_route(x, None, valid, gate, cfg)[2])  # the MoE's modality_BT=None
    np.testing.assert_array_equal(np.asarray(routing.active_N), valid.reshape(-1))
    assert stats.load_GE.shape == (1, cfg.num_experts)
    np.testing.assert_array_equal(np.asarray(stats.load_GE), np.asarray(stats2.load_GE))


def test_aux_loss_gradient_reaches_gate_and_zero_alpha_gives_zero():
    cfg = CASES["groups_softmax"]
    x, modality, valid = _inputs()
    gate = jnp.asarray(_gate(cfg.num_experts))

    def aux(gate_DE, c):
        return route(jnp.asarray(x), jnp.asarray(modality), jnp.asarray(valid), gate_DE, c)[1].aux_loss

    assert float(jnp.abs(jax.grad(aux)(gate, cfg)).max()) > 0
    off = dataclasses.replace(cfg, aux_loss_alpha=0.0)
    assert float(aux(gate, off)) == 0.0


# ----------------------------------------------------------------------------- topk_softmax (WeNet)

def numpy_topk_softmax(x, valid, gate, top_k):
    """WeNet's MoEFFNLayer gate, token by token in float64: top-k of the raw logits (lower index
    first among equal logits), softmax over the k. Returns dense weights [N, E] and the logits."""
    logits = x.reshape(-1, D).astype(np.float64) @ gate.astype(np.float64)
    dense = np.zeros(logits.shape)
    for n, ok in enumerate(valid.reshape(-1)):
        if not ok:
            continue
        chosen = np.argsort(-logits[n], kind="stable")[:top_k]
        w = np.exp(logits[n, chosen] - logits[n, chosen].max())
        dense[n, chosen] = w / w.sum()
    return dense, logits


@pytest.mark.parametrize("num_experts, top_k", [(5, 2), (8, 3), (4, 1)])
def test_topk_softmax_matches_numpy(num_experts, top_k):
    cfg = MoEConfig(num_experts=num_experts, top_k=top_k, router="topk_softmax", num_shared_experts=0,
                    aux_loss_alpha=0.01, z_loss_alpha=0.01)
    x, _, valid = _inputs(seed=7)
    gate = _gate(num_experts, seed=8)
    dense_ref, logits = numpy_topk_softmax(x, valid, gate, top_k)
    routing, stats, dense = _jax_route(x, None, valid, gate, cfg)

    np.testing.assert_array_equal(np.asarray(routing.active_N), valid.reshape(-1))
    np.testing.assert_allclose(dense, dense_ref, rtol=1e-5, atol=1e-7)
    assert float(stats.aux_loss) == 0.0 and float(stats.z_loss) == 0.0  # WeNet has neither
    slots = (dense_ref > 0).astype(np.float64)
    active = valid.reshape(-1)
    np.testing.assert_array_equal(np.asarray(stats.load_GE), slots[active].sum(0)[None])
    np.testing.assert_array_equal(np.asarray(stats.tokens_G), [active.sum()])
    # Logged balance: Switch-style sum_e f_e P_e with P the softmax over all E logits.
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    f = slots[active].sum(0) * num_experts / (active.sum() * top_k)
    np.testing.assert_allclose(float(stats.balance), (f * probs[active].mean(0)).sum(), rtol=1e-5)


def test_topk_softmax_ties_go_to_the_lower_expert_and_gradients_reach_the_gate():
    cfg = MoEConfig(num_experts=6, top_k=2, router="topk_softmax", num_shared_experts=0)
    x, _, valid = _inputs(seed=9)
    x[0, :4] = 0.0  # all logits exactly 0: a six-way tie
    valid[0, :4] = True
    gate = _gate(6, seed=10)
    routing, _, dense = _jax_route(x, None, valid, gate, cfg)
    np.testing.assert_array_equal(np.asarray(routing.expert_NK)[:4], [[0, 1]] * 4)
    np.testing.assert_allclose(dense[:4, :2], 0.5)

    def weight_sum(gate_DE):
        r, _ = route(jnp.asarray(x), None, jnp.asarray(valid), gate_DE, cfg)
        return jnp.sum(r.weight_NK * jnp.arange(2.0)[None, :])

    assert float(jnp.abs(jax.grad(weight_sum)(jnp.asarray(gate))).max()) > 0
