"""Properties of the MoST decoder: size, causality, packing, scan/remat equivalence, dtypes."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from most_jax.config import load_config
from most_jax.models.most import MoST, count_params

CONFIGS = Path(__file__).parent.parent / "configs"


def tiny(**model_overrides):
    cfg = load_config(CONFIGS / "most_tiny.yaml").model
    # Dropless-equivalent routing: per-token results must not depend on the other tokens.
    cfg = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, dispatch="reference"))
    return dataclasses.replace(cfg, **model_overrides)


def random_tokens(cfg, shape, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, cfg.vocab.end_wave_id + 1, shape), jnp.int32)


def test_full_config_parameter_count():
    cfg = load_config(CONFIGS / "most_v2_lite.yaml")
    assert count_params(cfg.model) == 15_706_484_224


def test_causal_by_gradient():
    cfg = tiny()
    model = MoST(cfg, rngs=nnx.Rngs(0))
    tokens = random_tokens(cfg, (1, 11))
    embeds = model.embed(tokens)
    t = 5

    @nnx.jit
    def grad_of_output_t(m, e):
        return jax.grad(lambda e: m.hidden_states(tokens, embeds_BTD=e)[0][0, t].sum())(e)

    norms = np.abs(np.asarray(grad_of_output_t(model, embeds)[0])).sum(-1)
    assert np.all(norms[t + 1:] == 0.0)
    assert np.all(norms[: t + 1] > 0.0)


def test_packed_row_equals_separate_segments():
    cfg = tiny()
    model = MoST(cfg, rngs=nnx.Rngs(1))
    a, b = random_tokens(cfg, (7,), seed=1), random_tokens(cfg, (6,), seed=2)
    pad = cfg.vocab.pad_id
    # Row 0 packs a and b; rows 1 and 2 hold a and b alone, right-padded to the same width.
    tokens = jnp.stack([jnp.concatenate([a, b, jnp.full(3, pad)]), jnp.concatenate([a, jnp.full(9, pad)]),
                        jnp.concatenate([b, jnp.full(10, pad)])]).astype(jnp.int32)
    segment_ids = jnp.asarray([[1] * 7 + [2] * 6 + [0] * 3, [1] * 7 + [0] * 9, [1] * 6 + [0] * 10], jnp.int32)
    positions = jnp.asarray([list(range(7)) + list(range(6)) + [0] * 3, list(range(7)) + [0] * 9,
                             list(range(6)) + [0] * 10], jnp.int32)
    logits, _ = nnx.jit(lambda m: m(tokens, segment_ids_BT=segment_ids, positions_BT=positions))(model)
    np.testing.assert_allclose(logits[0, :7], logits[1, :7], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logits[0, 7:13], logits[2, :6], atol=1e-5, rtol=1e-5)


def _loss_and_grads(cfg, tokens):
    model = MoST(cfg, rngs=nnx.Rngs(3))

    @nnx.jit
    def value_and_grad(m):
        def loss_fn(m):
            logits, stats = m(tokens)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + jnp.sum(stats.aux_loss)

        return nnx.value_and_grad(loss_fn)(m)

    return value_and_grad(model)


SCAN_BASE = tiny(num_layers=4, first_k_dense_replace=2)


@pytest.fixture(scope="module")
def scanned_reference():
    tokens = random_tokens(SCAN_BASE, (2, 9), seed=4)
    return tokens, _loss_and_grads(SCAN_BASE, tokens)


@pytest.mark.parametrize("scan, remat", [(False, "none"), (True, "full"), (True, "dots"), (False, "full")])
def test_scan_and_remat_are_equivalent(scan, remat, scanned_reference):
    tokens, (loss0, grads0) = scanned_reference
    loss1, grads1 = _loss_and_grads(dataclasses.replace(SCAN_BASE, scan_layers=scan, remat=remat), tokens)
    np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5), grads1, grads0)


def test_bfloat16_compute_tracks_float32():
    cfg = tiny()
    tokens = random_tokens(cfg, (2, 8), seed=5)
    forward = nnx.jit(lambda m: m(tokens)[0])
    logits32 = forward(MoST(cfg, rngs=nnx.Rngs(6)))
    logits16 = forward(MoST(dataclasses.replace(cfg, dtype="bfloat16"), rngs=nnx.Rngs(6)))
    assert logits16.dtype == jnp.float32
    scale = float(jnp.abs(logits32).max())
    assert float(jnp.abs(logits16 - logits32).max()) < 0.05 * scale
