"""Every dispatch path against the per-expert reference: outputs, gradients, capacity drops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from most_jax.config import ModalityGroup, ModelConfig, MoEConfig
from most_jax.nn.moe import MoE
from most_jax.nn.moe.dispatch import DISPATCH, ExpertWeights, expert_capacity, resolve_dispatch
from most_jax.nn.moe.router import Routing, route

D, E, F, K = 13, 5, 7, 2
GROUPS = (ModalityGroup("text", 0, 0, 3), ModalityGroup("audio", 1, 3, 2))


def _model_cfg(dispatch, capacity_factor=E / K, groups=GROUPS, shared=1, dtype="float32"):
    moe = MoEConfig(num_experts=E, top_k=K, expert_ffn_dim=F, num_shared_experts=shared, modality_groups=groups,
                    dispatch=dispatch, capacity_factor=capacity_factor, aux_loss_alpha=0.01, z_loss_alpha=0.001)
    return ModelConfig(hidden_size=D, moe=moe, init_std=0.3, dtype=dtype)


def _inputs(b, t, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(b, t, D)), jnp.float32)
    modality = jnp.asarray(rng.choice([0, 1, -1], size=(b, t), p=[0.45, 0.45, 0.1]), jnp.int32)
    valid = jnp.asarray(rng.random((b, t)) > 0.1)
    return x, modality, valid


def _loss_and_grads(dispatch, x, modality, valid, **kw):
    model = MoE(_model_cfg(dispatch, **kw), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    cot = jnp.asarray(np.random.default_rng(9).normal(size=x.shape), jnp.float32)

    def loss(params, x):
        y, stats = nnx.merge(graphdef, params)(x, modality, valid)
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
def _run(path, groups):
    x, modality, valid = _inputs(3, 17)
    return _loss_and_grads(path, x, modality, valid, groups=groups)


@pytest.mark.parametrize("path", ["capacity", "dropless"])
@pytest.mark.parametrize("groups", [GROUPS, ()], ids=["groups", "no_groups"])
def test_path_equals_reference_outputs_and_gradients(path, groups):
    y_ref, stats_ref, g_ref = _run("reference", groups)
    y, stats, g = _run(path, groups)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    _assert_trees_close(g, g_ref, rtol=1e-5, atol=1e-5)
    _assert_trees_close(stats, stats_ref, rtol=1e-6)
    assert float(jnp.sum(stats.dropped_G)) == 0.0
    # The gradient must reach every parameter tensor (a path that forgot one would still pass equality
    # if the reference forgot it too).
    for leaf in jax.tree_util.tree_leaves(g):
        assert float(jnp.abs(leaf).max()) > 0


def _routing(n, seed):
    x, modality, valid = _inputs(1, n, seed)
    cfg = _model_cfg("reference").moe
    gate = jnp.asarray(np.random.default_rng(seed + 1).normal(size=(D, E)), jnp.float32)
    routing, stats = jax.jit(route, static_argnums=4)(x, modality, valid, gate, cfg)
    return x[0], routing, stats


def _experts(seed, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return ExpertWeights(*(jnp.asarray(rng.normal(size=s) * 0.3, dtype) for s in ((E, D, F), (E, D, F), (E, F, D))))


def _expected_drops(routing, capacity):
    """Independent count: each expert keeps its first `capacity` active assignments in (n, k) order."""
    expert = np.asarray(routing.expert_NK)
    active = np.asarray(routing.active_N)
    taken = np.zeros(E, int)
    dropped = np.zeros(expert.shape, bool)
    for n in range(expert.shape[0]):
        if not active[n]:
            continue
        for j in range(K):
            e = expert[n, j]
            dropped[n, j] = taken[e] >= capacity
            taken[e] += 1
    return dropped


def test_capacity_drops_counted_and_output_matches_reference_without_dropped():
    n = 97  # C = ceil(0.6 * 97 * 2 / 5) = 24 > MIN_CAPACITY, below the mean load of ~35
    x_ND, routing, stats = _routing(n, seed=2)
    capacity = expert_capacity(n, K, E, 0.6)
    assert capacity == 24
    expected = _expected_drops(routing, capacity)
    assert expected.sum() > 5, "the test needs real drops"
    experts = _experts(3)

    y, dropped = jax.jit(DISPATCH["capacity"], static_argnums=3)(x_ND, routing, experts, 0.6)
    np.testing.assert_array_equal(np.asarray(dropped), expected)

    kept = routing._replace(weight_NK=jnp.where(jnp.asarray(expected), 0.0, routing.weight_NK))
    y_ref, _ = jax.jit(DISPATCH["reference"], static_argnums=3)(x_ND, kept, experts, 0.6)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)

    def loss(fn, x, weight, ex):
        r = Routing(routing.expert_NK, weight, routing.active_N)
        return jnp.sum(fn(x, r, ex, 0.6)[0] ** 2)

    args = (x_ND, jnp.where(jnp.asarray(expected), 0.0, routing.weight_NK), experts)
    g = jax.jit(jax.grad(lambda *a: loss(DISPATCH["capacity"], *a), argnums=(0, 1, 2)))(*args)
    g_ref = jax.jit(jax.grad(lambda *a: loss(DISPATCH["reference"], *a), argnums=(0, 1, 2)))(*args)
    # Dropped slots get no weight gradient from the capacity path; compare the kept ones.
    keep = ~expected
    np.testing.assert_allclose(np.asarray(g[1])[keep], np.asarray(g_ref[1])[keep], rtol=1e-5, atol=1e-5)
    _assert_trees_close((g[0], g[2]), (g_ref[0], g_ref[2]), rtol=1e-5, atol=1e-5)


def test_layer_reports_drops_per_modality_group():
    b, t = 2, 53
    x, modality, valid = _inputs(b, t, seed=4)
    model = MoE(_model_cfg("capacity", capacity_factor=0.5), rngs=nnx.Rngs(0))
    _, stats = nnx.jit(lambda m, *a: m(*a))(model, x, modality, valid)
    routing, rstats = jax.jit(route, static_argnums=4)(x, modality, valid, model.gate[...], model.cfg)
    expected = _expected_drops(routing, expert_capacity(b * t, K, E, 0.5))
    assert expected.sum() > 0
    group = np.asarray(rstats.group_N)
    per_group = [expected[group == g].sum() for g in range(len(GROUPS))]
    np.testing.assert_array_equal(np.asarray(stats.dropped_G), per_group)


@pytest.mark.parametrize("path", ["reference", "capacity", "dropless"])
@pytest.mark.parametrize("shared", [1, 0])
def test_shared_experts_always_applied(path, shared):
    x, modality, valid = _inputs(2, 9, seed=7)
    model = MoE(_model_cfg(path, shared=shared), rngs=nnx.Rngs(1))
    y, _ = nnx.jit(lambda m, *a: m(*a))(model, x, modality, valid)
    routing, _ = jax.jit(route, static_argnums=4)(x, modality, valid, model.gate[...], model.cfg)
    inactive = ~np.asarray(routing.active_N)
    assert inactive.any() and not inactive.all()
    x_ND, y_ND = x.reshape(-1, D), np.asarray(y).reshape(-1, D)
    shared_ND = np.asarray(model.shared(x_ND)) if shared else np.zeros(x_ND.shape)
    # No-group and padding tokens: exactly the shared experts; routed tokens: something more.
    np.testing.assert_allclose(y_ND[inactive], shared_ND[inactive], rtol=1e-6, atol=1e-6)
    assert np.abs(y_ND[~inactive] - shared_ND[~inactive]).min(axis=1).max() > 0


def test_bfloat16_compute_close_to_float32():
    x, modality, valid = _inputs(2, 9, seed=8)
    call = nnx.jit(lambda m, *a: m(*a))
    y32, _ = call(MoE(_model_cfg("capacity"), rngs=nnx.Rngs(2)), x, modality, valid)
    y16, _ = call(MoE(_model_cfg("capacity", dtype="bfloat16"), rngs=nnx.Rngs(2)), x.astype(jnp.bfloat16), modality,
                  valid)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(y32), rtol=0.05, atol=0.05)


def test_dispatch_resolution():
    assert resolve_dispatch("auto") == "capacity"  # tests run on CPU (conftest)
    assert resolve_dispatch("dropless") == "dropless"
    with pytest.raises(ValueError, match="moe.dispatch"):
        resolve_dispatch("alltoall")
    assert expert_capacity(4, 6, 64, 1.25) == 4  # never more rows than tokens
    assert expert_capacity(1000, 2, 5, 1.0) == 400
