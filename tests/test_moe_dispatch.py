"""Every dispatch path against the per-expert reference, for both expert functions (swiglu, ffn with
and without biases) and both routers (mamoe, topk_softmax): outputs, gradients, capacity drops."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from most_jax.config import ModalityGroup, MoEConfig
from most_jax.nn.moe import MoE
from most_jax.nn.moe.dispatch import DISPATCH, ExpertWeights, expert_capacity, resolve_dispatch
from most_jax.nn.moe.experts import ExpertDropout
from most_jax.nn.moe.router import Routing, route

D, E, F, K = 13, 5, 7, 2
GROUPS = (ModalityGroup("text", 0, 0, 3), ModalityGroup("audio", 1, 3, 2))

# (expert, activation, expert_bias, router, modality groups, shared experts)
KINDS = {
    "swiglu_mamoe_groups": ("swiglu", "silu", False, "mamoe", GROUPS, 1),
    "swiglu_mamoe": ("swiglu", "silu", False, "mamoe", (), 1),
    "swiglu_topk_softmax": ("swiglu", "silu", False, "topk_softmax", (), 0),
    "ffn_relu_bias_topk_softmax": ("ffn", "relu", True, "topk_softmax", (), 0),
    "ffn_silu_topk_softmax": ("ffn", "silu", False, "topk_softmax", (), 0),
    "ffn_silu_bias_mamoe_groups": ("ffn", "silu", True, "mamoe", GROUPS, 0),
}


def _moe_cfg(dispatch, capacity_factor=E / K, kind="swiglu_mamoe_groups", shared=None):
    expert, activation, bias, router, groups, default_shared = KINDS[kind]
    cfg = MoEConfig(num_experts=E, top_k=K, expert_ffn_dim=F, modality_groups=groups, group_capacity=bool(groups),
                    num_shared_experts=default_shared if shared is None else shared, dispatch=dispatch,
                    capacity_factor=capacity_factor, aux_loss_alpha=0.01, z_loss_alpha=0.001, router=router,
                    expert=expert, activation=activation, expert_bias=bias)
    cfg.validate("moe")
    return cfg


def _layer(cfg, seed=0, dtype="float32"):
    """An MoE layer; its biases (zero at init) drawn at random so that they count in every output."""
    model = MoE(D, cfg, init_std=0.3, param_dtype="float32", dtype=dtype, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed + 100)
    for name in ("b_1", "b_2"):
        if hasattr(model, name):
            param = getattr(model, name)
            param[...] = jnp.asarray(rng.normal(size=param.shape) * 0.5, jnp.float32)
    return model


def _modality(kind, modality):
    """Without modality groups the layer is called with modality None."""
    return modality if KINDS[kind][4] else None


def _inputs(b, t, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(b, t, D)), jnp.float32)
    modality = jnp.asarray(rng.choice([0, 1, -1], size=(b, t), p=[0.45, 0.45, 0.1]), jnp.int32)
    valid = jnp.asarray(rng.random((b, t)) > 0.1)
    return x, modality, valid


def _loss_and_grads(dispatch, x, modality, valid, kind):
    model = _layer(_moe_cfg(dispatch, kind=kind))
    graphdef, params = nnx.split(model)
    cot = jnp.asarray(np.random.default_rng(9).normal(size=x.shape), jnp.float32)
    modality = _modality(kind, modality)

    def loss(params, x):
        y, stats = nnx.merge(graphdef, params)(x, valid, modality)
        return jnp.sum(y * cot) + stats.aux_loss + stats.z_loss, (y, stats)

    (_, (y, stats)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    return y, stats, grads


def _assert_trees_close(a, b, **tol):
    flat_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
    flat_b, tree_b = jax.tree_util.tree_flatten_with_path(b)
    assert tree_a == tree_b
    for (path, va), (_, vb) in zip(flat_a, flat_b):
        np.testing.assert_allclose(np.asarray(va), np.asarray(vb), err_msg=jax.tree_util.keystr(path), **tol)


@functools.cache
def _run(path, kind):
    x, modality, valid = _inputs(3, 17)
    return _loss_and_grads(path, x, modality, valid, kind)


@pytest.mark.parametrize("path", ["capacity", "dropless", "blocked"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_path_equals_reference_outputs_and_gradients(path, kind):
    y_ref, stats_ref, g_ref = _run("reference", kind)
    y, stats, g = _run(path, kind)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    _assert_trees_close(g, g_ref, rtol=1e-5, atol=1e-5)
    _assert_trees_close(stats, stats_ref, rtol=1e-6)
    assert float(jnp.sum(stats.dropped_G)) == 0.0
    # The gradient must reach every parameter tensor (a path that forgot one would still pass equality
    # if the reference forgot it too).
    for leaf in jax.tree_util.tree_leaves(g):
        assert float(jnp.abs(leaf).max()) > 0


def _routing(n, seed, kind="swiglu_mamoe_groups"):
    x, modality, valid = _inputs(1, n, seed)
    cfg = _moe_cfg("reference", kind=kind)
    gate = jnp.asarray(np.random.default_rng(seed + 1).normal(size=(D, E)), jnp.float32)
    routing, stats = jax.jit(route, static_argnums=4)(x, _modality(kind, modality), valid, gate, cfg)
    return x[0], routing, stats


def _experts(seed, kind="swiglu_mamoe_groups"):
    expert, activation, bias, *_ = KINDS[kind]
    rng = np.random.default_rng(seed)
    w = [jnp.asarray(rng.normal(size=s) * 0.3, jnp.float32) for s in ((E, D, F), (E, D, F), (E, F, D), (E, F), (E, D))]
    if expert == "swiglu":
        return ExpertWeights(w[0], w[1], w[2])
    return ExpertWeights(w[0], None, w[2], w[3] if bias else None, w[4] if bias else None, activation)


def _capacities(group_N, kind, capacity_factor):
    """Independent C_e: without modality groups ceil(cf N K / E) for every expert, at least 16; with
    them, from the routed tokens of e's group over its experts; at most N."""
    n = len(group_N)
    groups = KINDS[kind][4]
    if not groups:
        return np.full(E, min(n, max(math.ceil(capacity_factor * n * K / E), 16)))
    caps = np.zeros(E, int)
    for g, group in enumerate(groups):
        tokens = int((np.asarray(group_N) == g).sum())
        wanted = math.ceil(capacity_factor * K * tokens / group.num_experts)
        caps[group.first_expert:group.first_expert + group.num_experts] = min(n, wanted)
    return caps


def _expected_drops(routing, capacity_E):
    """Independent count: each expert keeps its first C_e active assignments in (n, k) order."""
    expert = np.asarray(routing.expert_NK)
    active = np.asarray(routing.active_N)
    taken = np.zeros(E, int)
    dropped = np.zeros(expert.shape, bool)
    for n in range(expert.shape[0]):
        if not active[n]:
            continue
        for j in range(K):
            e = expert[n, j]
            dropped[n, j] = taken[e] >= capacity_E[e]
            taken[e] += 1
    return dropped


@pytest.mark.parametrize("kind", ["swiglu_mamoe_groups", "ffn_relu_bias_topk_softmax"])
def test_capacity_drops_counted_and_output_matches_reference_without_dropped(kind):
    # Without groups C = ceil(0.6 * 97 * 2 / 5) = 24 > MIN_CAPACITY, below the mean load of ~35; with
    # them the ~170 routed assignments overflow the factor's 117 rows, so each group's experts keep
    # 0.6 x their fair share of the group's tokens.
    n = 97
    x_ND, routing, stats = _routing(n, seed=2, kind=kind)
    capacity_E = _capacities(stats.group_N, kind, 0.6)
    assert KINDS[kind][4] or list(capacity_E) == [expert_capacity(n, K, E, 0.6)] * E == [24] * E
    assert len(set(capacity_E)) == (2 if KINDS[kind][4] else 1)
    expected = _expected_drops(routing, capacity_E)
    assert expected.sum() > 5, "the test needs real drops"
    experts = _experts(3, kind)

    y, dropped = jax.jit(DISPATCH["capacity"], static_argnums=3)(x_ND, routing, experts, 0.6)
    np.testing.assert_array_equal(np.asarray(dropped), expected)

    kept = routing._replace(weight_NK=jnp.where(jnp.asarray(expected), 0.0, routing.weight_NK))
    y_ref, _ = jax.jit(DISPATCH["reference"], static_argnums=3)(x_ND, kept, experts, 0.6)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)

    def loss(fn, x, weight, ex):
        r = routing._replace(weight_NK=weight)
        # sin: padding tokens (y = 0) still get a cotangent, so their weight gradient is checked too
        return jnp.sum(jnp.sin(fn(x, r, ex, 0.6)[0]))

    args = (x_ND, jnp.where(jnp.asarray(expected), 0.0, routing.weight_NK), experts)
    g = jax.jit(jax.grad(lambda *a: loss(DISPATCH["capacity"], *a), argnums=(0, 1, 2)))(*args)
    g_ref = jax.jit(jax.grad(lambda *a: loss(DISPATCH["reference"], *a), argnums=(0, 1, 2)))(*args)
    # Dropped slots get no weight gradient from the capacity path; compare the kept ones.
    keep = ~expected
    np.testing.assert_allclose(np.asarray(g[1])[keep], np.asarray(g_ref[1])[keep], rtol=1e-5, atol=1e-5)
    _assert_trees_close((g[0], g[2]), (g_ref[0], g_ref[2]), rtol=1e-5, atol=1e-5)


def test_group_capacity_keeps_an_imbalanced_modality_mix():
    """80% audio tokens and a skewed router: a capacity sized for all tokens over all experts (the
    default) drops a third of the audio assignments at factor 1.25; with moe.group_capacity the
    blocked buffer keeps every one (at 1.0 too) and equals the reference."""
    n = 400
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(1, n, D)), jnp.float32)
    modality = jnp.asarray(rng.choice([0, 1], size=(1, n), p=[0.2, 0.8]), jnp.int32)
    gate = jnp.asarray(rng.normal(size=(D, E)) + np.array([3.0, 0, 0, 0, 0]), jnp.float32)  # expert 0 favoured
    routing, stats = jax.jit(route, static_argnums=4)(x, modality, jnp.ones((1, n), bool), gate,
                                                      _moe_cfg("capacity", capacity_factor=1.25))
    uniform = _expected_drops(routing, np.full(E, expert_capacity(n, K, E, 1.25)))
    assert uniform[np.asarray(stats.group_N) == 1].mean() > 0.3
    experts = _experts(0)
    evenly, _ = jax.jit(route, static_argnums=4)(x, modality, jnp.ones((1, n), bool), gate, dataclasses.replace(
        _moe_cfg("capacity", capacity_factor=1.25), group_capacity=False))  # the default: split over all experts
    assert evenly.fair_load_E is None
    _, dropped = jax.jit(DISPATCH["capacity"], static_argnums=3)(x[0], evenly, experts, 1.25)
    np.testing.assert_array_equal(np.asarray(dropped), uniform)
    y_ref, _ = jax.jit(DISPATCH["reference"], static_argnums=3)(x[0], routing, experts, 1.0)
    for factor in (1.25, 1.0):
        y, dropped = jax.jit(DISPATCH["capacity"], static_argnums=3)(x[0], routing, experts, factor)
        assert not np.asarray(dropped).any()
        np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)


def test_layer_reports_drops_per_modality_group():
    b, t = 2, 53
    x, modality, valid = _inputs(b, t, seed=4)
    model = _layer(_moe_cfg("capacity", capacity_factor=0.5))
    _, stats = nnx.jit(lambda m, *a: m(*a))(model, x, valid, modality)
    routing, rstats = jax.jit(route, static_argnums=4)(x, modality, valid, model.gate[...], model.cfg)
    expected = _expected_drops(routing, _capacities(rstats.group_N, "swiglu_mamoe_groups", 0.5))
    assert expected.sum() > 0
    group = np.asarray(rstats.group_N)
    per_group = [expected[group == g].sum() for g in range(len(GROUPS))]
    np.testing.assert_array_equal(np.asarray(stats.dropped_G), per_group)


@pytest.mark.parametrize("path", ["reference", "capacity", "dropless"])
@pytest.mark.parametrize("shared", [1, 0])
def test_shared_experts_always_applied(path, shared):
    x, modality, valid = _inputs(2, 9, seed=7)
    model = _layer(_moe_cfg(path, shared=shared), seed=1)
    y, _ = nnx.jit(lambda m, *a: m(*a))(model, x, valid, modality)
    routing, _ = jax.jit(route, static_argnums=4)(x, modality, valid, model.gate[...], model.cfg)
    inactive = ~np.asarray(routing.active_N)
    assert inactive.any() and not inactive.all()
    x_ND, y_ND = x.reshape(-1, D), np.asarray(y).reshape(-1, D)
    shared_ND = np.asarray(model.shared(x_ND)) if shared else np.zeros(x_ND.shape)
    # No-group and padding tokens: exactly the shared experts; routed tokens: something more.
    np.testing.assert_allclose(y_ND[inactive], shared_ND[inactive], rtol=1e-6, atol=1e-6)
    assert np.abs(y_ND[~inactive] - shared_ND[~inactive]).min(axis=1).max() > 0


@pytest.mark.parametrize("kind", ["swiglu_mamoe_groups", "ffn_relu_bias_topk_softmax"])
def test_bfloat16_compute_close_to_float32(kind):
    x, modality, valid = _inputs(2, 9, seed=8)
    modality = _modality(kind, modality)
    call = nnx.jit(lambda m, *a: m(*a))
    cfg = _moe_cfg("capacity", kind=kind)
    y32, _ = call(_layer(cfg, seed=2), x, valid, modality)
    y16, _ = call(_layer(cfg, seed=2, dtype="bfloat16"), x.astype(jnp.bfloat16), valid, modality)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(y32), rtol=0.05, atol=0.05)


def test_modality_groups_need_the_modality():
    x, _, valid = _inputs(1, 4)
    with pytest.raises(ValueError, match="modality_BT is None"):
        _layer(_moe_cfg("capacity"))(x, valid)


_LAYOUT = {"gate": ((D, E), ("embed", None)),
           "w_gate": ((E, D, F), ("expert", "embed", "mlp")), "w_up": ((E, D, F), ("expert", "embed", "mlp")),
           "w_down": ((E, F, D), ("expert", "mlp", "embed")),
           "w_1": ((E, D, F), ("expert", "embed", "mlp")), "w_2": ((E, F, D), ("expert", "mlp", "embed")),
           "b_1": ((E, F), ("expert", "mlp")), "b_2": ((E, D), ("expert", "embed"))}


@pytest.mark.parametrize("kind, names", [("swiglu_mamoe_groups", ("gate", "w_gate", "w_up", "w_down")),
                                         ("ffn_relu_bias_topk_softmax", ("gate", "w_1", "w_2", "b_1", "b_2")),
                                         ("ffn_silu_topk_softmax", ("gate", "w_1", "w_2"))])
def test_parameter_layout(kind, names):
    """swiglu keeps MoST's layout (checkpoints, HF import/export); ffn has WeNet's experts, stacked."""
    state = nnx.state(_layer(_moe_cfg("capacity", kind=kind, shared=0)), nnx.Param)
    shapes = {k: v.shape for k, v in nnx.to_pure_dict(state).items()}
    specs = {k: tuple(v) for k, v in nnx.to_pure_dict(nnx.get_partition_spec(state)).items()}
    assert shapes == {n: _LAYOUT[n][0] for n in names}
    assert specs == {n: _LAYOUT[n][1] for n in names}


@pytest.mark.parametrize("path", ["capacity", "dropless", "blocked"])
@pytest.mark.parametrize("kind", ["swiglu_mamoe_groups", "ffn_relu_bias_topk_softmax"])
def test_expert_dropout_drops_the_same_units_on_every_path(path, kind):
    """The mask is keyed by assignment, so a fast path under dropout equals the reference under the
    same key, outputs and gradients (capacity large enough that nothing is dropped by capacity)."""
    x_ND, routing, _ = _routing(61, seed=5, kind=kind)
    experts, drop = _experts(6, kind), ExpertDropout(jax.random.key(3), 0.3)

    def loss(fn, x, weight, ex):
        y, dropped = fn(x, Routing(routing.expert_NK, weight, routing.active_N), ex, E / K, drop)
        return jnp.sum(jnp.sin(y)), (y, dropped)

    def run(fn):
        return jax.jit(jax.grad(lambda *a: loss(fn, *a), argnums=(0, 1, 2), has_aux=True))(
            x_ND, routing.weight_NK, experts)

    g, (y, dropped) = run(DISPATCH[path])
    g_ref, (y_ref, _) = run(DISPATCH["reference"])
    assert not np.asarray(dropped).any()
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    _assert_trees_close(g, g_ref, rtol=1e-5, atol=1e-5)
    y_eval, _ = DISPATCH["reference"](x_ND, routing, experts, E / K)
    assert np.abs(np.asarray(y) - np.asarray(y_eval)).max() > 0.1  # dropout really acted


def test_expert_dropout_keeps_units_at_the_rate_and_is_unbiased():
    drop = ExpertDropout(jax.random.key(0), 0.25)
    scale = np.asarray(drop.keep_scale(jnp.arange(4000, dtype=jnp.int32), 50))
    np.testing.assert_allclose(np.unique(scale), [0.0, 1 / 0.75], rtol=1e-6)
    assert abs((scale == 0).mean() - 0.25) < 0.01  # 200,000 draws: sd 0.001
    again = np.asarray(drop.keep_scale(jnp.asarray([7, 3], jnp.int32), 50))
    np.testing.assert_array_equal(again, scale[[7, 3]])  # a function of the assignment alone
    # Averaged over keys, the layer's output tends to its evaluation output (inverted dropout).
    kind = "ffn_relu_bias_topk_softmax"
    x_ND, routing, _ = _routing(8, seed=1, kind=kind)
    experts = _experts(2, kind)
    keys = jax.random.split(jax.random.key(1), 2000)
    ys = jax.jit(jax.vmap(lambda k: DISPATCH["capacity"](x_ND, routing, experts, E / K, ExpertDropout(k, 0.25))[0]))(keys)
    want, _ = DISPATCH["reference"](x_ND, routing, experts, E / K)
    spread = np.asarray(ys).std(axis=0) / np.sqrt(len(keys))
    assert np.asarray(ys).std(axis=0).max() > 0.05
    assert (np.abs(np.asarray(ys).mean(axis=0) - np.asarray(want)) <= 5 * spread + 1e-6).all()


def test_layer_dropout_only_with_a_key():
    x, _, valid = _inputs(2, 9, seed=3)
    cfg = _moe_cfg("capacity", kind="ffn_silu_bias_mamoe_groups")
    with_rate = MoE(D, cfg, init_std=0.3, param_dtype="float32", dtype="float32", rngs=nnx.Rngs(0), dropout_rate=0.5)
    without = MoE(D, cfg, init_std=0.3, param_dtype="float32", dtype="float32", rngs=nnx.Rngs(0))
    modality = jnp.zeros(x.shape[:2], jnp.int32)
    y_eval, _ = with_rate(x, valid, modality)
    np.testing.assert_array_equal(np.asarray(y_eval), np.asarray(without(x, valid, modality)[0]))
    y_a, _ = with_rate(x, valid, modality, dropout_rng=jax.random.key(1))
    y_b, _ = with_rate(x, valid, modality, dropout_rng=jax.random.key(2))
    assert np.abs(np.asarray(y_a) - np.asarray(y_eval)).max() > 0.01
    assert np.abs(np.asarray(y_a) - np.asarray(y_b)).max() > 0.01
    with pytest.raises(ValueError, match="dropout_rate"):
        MoE(D, cfg, init_std=0.3, param_dtype="float32", dtype="float32", rngs=nnx.Rngs(0), dropout_rate=1.0)
