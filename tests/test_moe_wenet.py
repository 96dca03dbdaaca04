"""The MoE layer with router topk_softmax and ffn experts against WeNet's MoEFFNLayer (the PyTorch
transcription in tests/wenet_ref): weights copied across, outputs and gradients, every local
dispatch path, odd sizes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from most_jax.config import MoEConfig
from most_jax.nn.moe import MoE
from wenet_ref.modules import ACTIVATIONS, MoEFFNLayer

D, F, E, K = 13, 19, 5, 2


def _pair(activation, torch_act, bias, dispatch, seed=0):
    """WeNet's layer with N(0, 0.3^2) parameters and ours holding the same values."""
    torch.manual_seed(seed)
    theirs = MoEFFNLayer(D, F, 0.0, ACTIVATIONS[torch_act](), bias=bias, n_expert=E, n_expert_activated=K).eval()
    for p in theirs.parameters():
        torch.nn.init.normal_(p, std=0.3)
    cfg = MoEConfig(num_experts=E, top_k=K, expert_ffn_dim=F, num_shared_experts=0, router="topk_softmax",
                    expert="ffn", activation=activation, expert_bias=bias, dispatch=dispatch, capacity_factor=E / K)
    cfg.validate("moe")
    ours = MoE(D, cfg, init_std=0.02, param_dtype="float32", dtype="float32", rngs=nnx.Rngs(0))

    def stacked(name, attr):
        return jnp.asarray(np.stack([getattr(getattr(x, name), attr).detach().numpy() for x in theirs.experts]))

    ours.gate[...] = jnp.asarray(theirs.gate.weight.detach().numpy().T)
    ours.w_1[...] = jnp.swapaxes(stacked("w_1", "weight"), 1, 2)
    ours.w_2[...] = jnp.swapaxes(stacked("w_2", "weight"), 1, 2)
    if bias:
        ours.b_1[...] = stacked("w_1", "bias")
        ours.b_2[...] = stacked("w_2", "bias")
    return theirs, ours


def _their_grads(theirs, bias):
    """WeNet's parameter gradients in our layout ([in, out], experts stacked)."""
    def stacked(name, attr):
        return np.stack([getattr(getattr(x, name), attr).grad.numpy() for x in theirs.experts])

    grads = {"gate": theirs.gate.weight.grad.numpy().T, "w_1": np.swapaxes(stacked("w_1", "weight"), 1, 2),
             "w_2": np.swapaxes(stacked("w_2", "weight"), 1, 2)}
    if bias:
        grads.update(b_1=stacked("w_1", "bias"), b_2=stacked("w_2", "bias"))
    return grads


@pytest.mark.parametrize("dispatch", ["reference", "capacity", "dropless"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("activation, torch_act", [("relu", "relu"), ("silu", "swish")])
def test_outputs_and_gradients_match_wenet(dispatch, bias, activation, torch_act):
    theirs, ours = _pair(activation, torch_act, bias, dispatch)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 7, D)).astype(np.float32)
    cot = rng.normal(size=x.shape).astype(np.float32)

    x_t = torch.from_numpy(x).requires_grad_(True)
    y_t = theirs(x_t)
    (y_t * torch.from_numpy(cot)).sum().backward()

    graphdef, params = nnx.split(ours, nnx.Param)
    valid = jnp.ones(x.shape[:2], bool)

    def loss(params, x):
        y, stats = nnx.merge(graphdef, params)(x, valid)
        return jnp.sum(y * cot), (y, stats)

    (_, (y, stats)), (g_params, g_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        params, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), y_t.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g_x), x_t.grad.numpy(), rtol=1e-5, atol=1e-5)
    want = _their_grads(theirs, bias)
    got = nnx.to_pure_dict(g_params)
    assert set(got) == set(want)
    for name, g in want.items():
        np.testing.assert_allclose(np.asarray(got[name]), g, rtol=1e-5, atol=1e-5, err_msg=name)
    assert float(stats.aux_loss) == 0.0 and float(stats.z_loss) == 0.0
    assert float(jnp.sum(stats.load_GE)) == x.shape[0] * x.shape[1] * K


def test_padding_frames_get_no_expert_and_leave_the_others_as_wenet():
    theirs, ours = _pair("silu", "swish", True, "capacity", seed=3)
    x = np.random.default_rng(4).normal(size=(2, 9, D)).astype(np.float32)
    valid = np.arange(9)[None, :] < np.array([[9], [5]])
    y, stats = nnx.jit(lambda m, x, v: m(x, v))(ours, jnp.asarray(x), jnp.asarray(valid))
    y_t = theirs(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(y)[valid], y_t[valid], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(y)[~valid], 0.0)
    np.testing.assert_array_equal(np.asarray(stats.tokens_G), [valid.sum()])
