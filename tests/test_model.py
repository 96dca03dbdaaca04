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

    def out_at_t(e):
        h, _ = model.hidden_states(tokens, embeds_BTD=e)
        return h[0, t].sum()

    g = jax.grad(out_at_t)(embeds)
    norms = np.abs(np.asarray(g[0])).sum(-1)
    assert np.all(norms[t + 1:] == 0.0)
    assert np.all(norms[: t + 1] > 0.0)


def test_packed_row_equals_separate_segments():
    cfg = tiny()
    model = MoST(cfg, rngs=nnx.Rngs(1))
    a, b = random_tokens(cfg, (1, 7), seed=1), random_tokens(cfg, (1, 6), seed=2)
    pad = jnp.full((1, 3), cfg.vocab.pad_id, jnp.int32)
    packed = jnp.concatenate([a, b, pad], axis=1)
    segment_ids = jnp.asarray([[1] * 7 + [2] * 6 + [0] * 3], jnp.int32)
    positions = jnp.asarray([list(range(7)) + list(range(6)) + [0] * 3], jnp.int32)
    packed_logits, _ = model(packed, segment_ids_BT=segment_ids, positions_BT=positions)
    logits_a, _ = model(a)
    logits_b, _ = model(b)
    np.testing.assert_allclose(packed_logits[:, :7], logits_a, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(packed_logits[:, 7:13], logits_b, atol=1e-5, rtol=1e-5)


def _loss_and_grads(cfg, tokens):
    model = MoST(cfg, rngs=nnx.Rngs(3))

    def loss_fn(m):
        logits, stats = m(tokens)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + jnp.sum(stats.aux_loss)

    return nnx.value_and_grad(loss_fn)(model)


@pytest.mark.parametrize("scan, remat", [(False, "none"), (True, "full"), (True, "dots"), (False, "full")])
def test_scan_and_remat_are_equivalent(scan, remat):
    base = tiny(num_layers=4, first_k_dense_replace=2)
    tokens = random_tokens(base, (2, 9), seed=4)
    loss0, grads0 = _loss_and_grads(base, tokens)
    loss1, grads1 = _loss_and_grads(dataclasses.replace(base, scan_layers=scan, remat=remat), tokens)
    np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5), grads1, grads0)


def test_bfloat16_compute_tracks_float32():
    cfg = tiny()
    tokens = random_tokens(cfg, (2, 8), seed=5)
    logits32, _ = MoST(cfg, rngs=nnx.Rngs(6))(tokens)
    logits16, _ = MoST(dataclasses.replace(cfg, dtype="bfloat16"), rngs=nnx.Rngs(6))(tokens)
    assert logits16.dtype == jnp.float32
    scale = float(jnp.abs(logits32).max())
    assert float(jnp.abs(logits16 - logits32).max()) < 0.05 * scale
