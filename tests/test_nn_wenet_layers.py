"""The shared WeNet-style layers (LayerNorm, biased Linear, FeedForward, (rel-pos) multi-head
attention with its cache, dropout, the layer stack) against PyTorch and WeNet's transcription."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from most_jax.nn.dropout import dropout
from most_jax.nn.ffn import FeedForward
from most_jax.nn.mha import MultiHeadedAttention, RelPositionMultiHeadedAttention
from most_jax.nn.mlp import Linear
from most_jax.nn.norms import LayerNorm
from most_jax.nn.stack import layer_stack, run_stack
from wenet_ref import modules as ref

KW = dict(std=0.3, param_dtype="float32", dtype="float32")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _copy_linear(dst: Linear, src: torch.nn.Linear) -> None:
    dst.kernel[...] = jnp.asarray(_np(src.weight).T)
    if src.bias is not None:
        dst.bias[...] = jnp.asarray(_np(src.bias))


def _copy_attention(dst: MultiHeadedAttention, src: ref.MultiHeadedAttention) -> None:
    for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
        _copy_linear(getattr(dst, name), getattr(src, name))
    if isinstance(src, ref.RelPositionMultiHeadedAttention):
        _copy_linear(dst.linear_pos, src.linear_pos)
        dst.pos_bias_u[...] = jnp.asarray(_np(src.pos_bias_u))
        dst.pos_bias_v[...] = jnp.asarray(_np(src.pos_bias_v))


def _randn(*shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def test_layernorm_matches_torch():
    torch.manual_seed(0)
    ln = torch.nn.LayerNorm(23, eps=1e-5)
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    ours = LayerNorm(23, eps=1e-5, param_dtype="float32")
    ours.scale[...] = jnp.asarray(_np(ln.weight))
    ours.bias[...] = jnp.asarray(_np(ln.bias))
    x = _randn(3, 5, 23) * 4 + 2
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(_np(x)))), _np(ln(x)), atol=1e-5)


def test_linear_bias_option():
    torch.manual_seed(0)
    lin = torch.nn.Linear(7, 11)
    ours = Linear(7, 11, ("embed", "mlp"), rngs=nnx.Rngs(0), bias=True, **KW)
    _copy_linear(ours, lin)
    x = _randn(2, 3, 7)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(_np(x)))), _np(lin(x)), atol=1e-5)
    assert not hasattr(Linear(7, 11, ("embed", "mlp"), rngs=nnx.Rngs(0), **KW), "bias")
    assert ours.bias.get_metadata()["out_sharding"] == ("mlp",)


@pytest.mark.parametrize("activation,torch_act,bias", [("silu", "swish", True), ("relu", "relu", False)])
def test_feed_forward_matches_wenet(activation, torch_act, bias):
    torch.manual_seed(0)
    theirs = ref.PositionwiseFeedForward(13, 29, 0.0, ref.ACTIVATIONS[torch_act](), bias=bias).eval()
    ours = FeedForward(13, 29, activation=activation, bias=bias, dropout_rate=0.0, rngs=nnx.Rngs(0), **KW)
    _copy_linear(ours.w_1, theirs.w_1)
    _copy_linear(ours.w_2, theirs.w_2)
    x = _randn(2, 5, 13)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(_np(x)))), _np(theirs(x)), atol=1e-5)
    with pytest.raises(ValueError, match="activation"):
        FeedForward(13, 29, activation="tanh", bias=bias, dropout_rate=0.0, rngs=nnx.Rngs(0), **KW)


def _masks(b, t, s):
    rng = np.random.default_rng(1)
    full = rng.random((b, t, s)) < 0.7
    full[0, 1] = False  # one fully masked row: WeNet gives zeros there
    pad = np.ones((b, 1, s), bool)
    pad[1, 0, s - 2:] = False
    return [None, full, pad]


@pytest.mark.parametrize("mask_index", [0, 1, 2])
def test_mha_matches_wenet(mask_index):
    torch.manual_seed(0)
    b, t, s, d, h = 2, 5, 6, 36, 4
    theirs = ref.MultiHeadedAttention(h, d, 0.0).eval()
    ours = MultiHeadedAttention(d, h, dropout_rate=0.0, rngs=nnx.Rngs(0), **KW)
    _copy_attention(ours, theirs)
    q, kv = _randn(b, t, d, seed=2), _randn(b, s, d, seed=3)
    mask = _masks(b, t, s)[mask_index]
    tmask = torch.ones((0, 0, 0), dtype=torch.bool) if mask is None else torch.from_numpy(mask)
    want, _ = theirs(q, kv, kv, tmask)
    got, cache = ours(jnp.asarray(_np(q)), jnp.asarray(_np(kv)), jnp.asarray(_np(kv)),
                      None if mask is None else jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), _np(want), atol=1e-5)
    assert cache.shape == (b, h, s, 2 * (d // h))
    if mask_index == 1:
        np.testing.assert_allclose(np.asarray(got)[0, 1], _np(theirs.linear_out.bias), atol=1e-6)


def test_rel_pos_attention_with_cache_matches_wenet():
    """A chunk attending over cached frames: keys = cache + new, positions of all keys."""
    torch.manual_seed(0)
    b, cached, t, d, h = 1, 4, 3, 36, 4
    theirs = ref.RelPositionMultiHeadedAttention(h, d, 0.0).eval()
    ours = RelPositionMultiHeadedAttention(d, h, dropout_rate=0.0, rngs=nnx.Rngs(0), **KW)
    _copy_attention(ours, theirs)
    x, pos = _randn(b, t, d, seed=4), _randn(1, cached + t, d, seed=5)
    k_cache, v_cache = _randn(b, h, cached, d // h, seed=6), _randn(b, h, cached, d // h, seed=7)
    want, (k_new, v_new) = theirs(x, x, x, torch.ones((0, 0, 0), dtype=torch.bool), pos, (k_cache, v_cache))
    att_cache = jnp.asarray(_np(torch.cat([k_cache, v_cache], dim=-1)))
    xj = jnp.asarray(_np(x))
    got, new_cache = ours(xj, xj, xj, None, jnp.asarray(_np(pos[0])), att_cache=att_cache)
    np.testing.assert_allclose(np.asarray(got), _np(want), atol=1e-5)
    np.testing.assert_allclose(np.asarray(new_cache), _np(torch.cat([k_new, v_new], dim=-1)), atol=1e-5)
    # Without a cache and with a padding mask: WeNet's full-utterance path.
    mask = np.ones((b, 1, t), bool)
    mask[0, 0, -1] = False
    want, _ = theirs(x, x, x, torch.from_numpy(mask), pos[:, :t])
    got, _ = ours(xj, xj, xj, jnp.asarray(mask), jnp.asarray(_np(pos[0, :t])))
    np.testing.assert_allclose(np.asarray(got), _np(want), atol=1e-5)
    with pytest.raises(ValueError, match="pos_emb"):
        ours(xj, xj, xj, None, jnp.asarray(_np(pos[0])))
    with pytest.raises(ValueError, match="att_cache"):
        ours(xj, xj, xj, None, jnp.asarray(_np(pos[0])), att_cache=att_cache[..., :-1])


def test_attention_dropout_drops_probabilities_and_keeps_gradients_finite():
    d, h = 12, 3
    att = RelPositionMultiHeadedAttention(d, h, dropout_rate=0.5, rngs=nnx.Rngs(0), **KW)
    x = jax.random.normal(jax.random.key(1), (2, 5, d))
    pos = jax.random.normal(jax.random.key(2), (5, d))
    mask = jnp.ones((2, 5, 5), bool).at[0, 2].set(False)
    eval_a, _ = att(x, x, x, mask, pos)
    eval_b, _ = att(x, x, x, mask, pos, dropout_rng=None)
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
    train, _ = att(x, x, x, mask, pos, dropout_rng=jax.random.key(3))
    assert not np.allclose(np.asarray(train), np.asarray(eval_a))

    def loss(model):
        return jnp.sum(model(x, x, x, mask, pos, dropout_rng=jax.random.key(3))[0] ** 2)

    grads = nnx.grad(loss)(att)
    leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert all(np.abs(np.asarray(g)).sum() > 0 for g in leaves)


def test_dropout_is_inverted_and_identity_in_eval():
    x = jnp.ones((4000,))
    np.testing.assert_array_equal(np.asarray(dropout(x, 0.3, None)), np.asarray(x))
    y = np.asarray(dropout(x, 0.3, jax.random.key(0)))
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.7], rtol=1e-6)
    assert abs((y == 0).mean() - 0.3) < 0.03


class _Block(nnx.Module):
    """x + tanh(x W) with a per-layer key that adds dropout; returns a per-layer output."""

    def __init__(self, rngs):
        self.proj = Linear(6, 6, ("embed", "mlp"), rngs=rngs, bias=True, **KW)

    def __call__(self, x, scale, rng=None):
        y = dropout(jnp.tanh(self.proj(x)), 0.25, rng)
        return x + scale * y, jnp.sum(y)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_stack_scan_equals_unrolled(remat):
    stack = layer_stack(_Block, 3, nnx.Rngs(0))
    assert stack.proj.kernel.shape == (3, 6, 6)
    assert stack.proj.kernel.get_metadata()["out_sharding"] == ("layers", "embed", "mlp")
    x = jax.random.normal(jax.random.key(0), (2, 6))
    keys = jax.random.split(jax.random.key(1), 3)
    outs = {}
    for scan in (True, False):
        def loss(model, x):
            y, per = run_stack(model, x, (0.5,), scan=scan, remat=remat, per_layer=(keys,))
            return jnp.sum(y ** 2) + jnp.sum(per), (y, per)

        (_, (y, per)), grads = nnx.value_and_grad(loss, has_aux=True)(stack, x)
        outs[scan] = (y, per, jax.tree.leaves(nnx.state(grads, nnx.Param)))
    for a, b in zip(jax.tree.leaves(outs[True]), jax.tree.leaves(outs[False])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert outs[True][1].shape == (3,)
    # The unrolled loop applies layer l's parameters as layer l.
    y = x
    for i in range(3):
        w, bias = stack.proj.kernel[i], stack.proj.bias[i]
        y = y + 0.5 * dropout(jnp.tanh(y @ w + bias[None]), 0.25, keys[i])
    np.testing.assert_allclose(np.asarray(outs[True][0]), np.asarray(y), atol=1e-6)
    assert layer_stack(_Block, 0, nnx.Rngs(0)) is None
    with pytest.raises(ValueError, match="remat"):
        run_stack(stack, x, (0.5,), scan=True, remat="some")
